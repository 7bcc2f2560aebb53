// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Per-cgroup bytes and packets, from cgroup_skb programs attached to the
 * cgroup v2 root: every socket on the node passes through them, whatever its
 * network namespace, so one attachment covers host and pods alike.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "podsight.h"
#include "maps.bpf.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct net_counters);
} network_traffic SEC(".maps");

static __always_inline void count(struct __sk_buff *skb, bool egress)
{
	/* The socket's cgroup, not the current task's: ingress runs in softirq. */
	__u64 id = bpf_skb_cgroup_id(skb);
	struct net_counters zero = {};
	struct net_counters *c = lookup_or_init(&network_traffic, &id, &zero);

	if (!c)
		return;
	/* A GSO/GRO skb stands for gso_segs packets on the wire. */
	__u64 segs = skb->gso_segs ? skb->gso_segs : 1;

	/* Plain adds on the per-CPU slot: this runs for every packet and a
	 * locked add costs as much as the rest of the program.  The only race
	 * is a softirq interrupting a task-context update of the *same* field
	 * of the same cgroup on the same CPU between its load and store (a
	 * window of two instructions); Cilium's metrics map makes the same
	 * trade.  Ingress and egress write different fields. */
	if (egress) {
		c->tx_bytes += skb->len;
		c->tx_packets += segs;
	} else {
		c->rx_bytes += skb->len;
		c->rx_packets += segs;
	}
}

/* Observing must never change traffic: both programs always return 1 (allow). */
SEC("cgroup_skb/ingress")
int network_ingress(struct __sk_buff *skb)
{
	count(skb, false);
	return 1;
}

SEC("cgroup_skb/egress")
int network_egress(struct __sk_buff *skb)
{
	count(skb, true);
	return 1;
}
