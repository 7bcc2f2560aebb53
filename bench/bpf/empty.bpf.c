// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * The floor for the in-kernel cost figures: programs that do nothing, on
 * exactly the hooks podsight's probes use.  The kernel's BPF stats charge
 * every run the hook's own dispatch and the two clock reads around it, so
 * "podsight ns/run ÷ empty ns/run" isolates what our code adds.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Same return as network.bpf.c (allow): a 0 here would drop the bench's traffic. */
SEC("cgroup_skb/ingress")
int empty_ingress(struct __sk_buff *skb)
{
	return 1;
}

SEC("cgroup_skb/egress")
int empty_egress(struct __sk_buff *skb)
{
	return 1;
}

SEC("tp_btf/inet_sock_set_state")
int empty_state(void *ctx)
{
	return 0;
}

SEC("tracepoint/tcp/tcp_retransmit_skb")
int empty_retransmit(void *ctx)
{
	return 0;
}

SEC("tracepoint/tcp/tcp_send_reset")
int empty_send_reset(void *ctx)
{
	return 0;
}

SEC("tracepoint/tcp/tcp_receive_reset")
int empty_recv_reset(void *ctx)
{
	return 0;
}


SEC("tracepoint/skb/kfree_skb")
int empty_skb_drop(void *ctx)
{
	return 0;
}
