// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * The floor of the TLS handshake figure: programs that do nothing, attached
 * (benchlib/floor.py, uprobe_floor) on the same OpenSSL functions of the same
 * library file as bpf/tls.bpf.c, entry and return probes alike.  What a
 * uprobe costs before a program does anything: the trap into the kernel,
 * the return trampoline, the program's dispatch.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

SEC("uprobe")
int empty_uprobe(void *ctx)
{
	return 0;
}

SEC("uprobe")
int empty_uretprobe(void *ctx)
{
	return 0;
}
