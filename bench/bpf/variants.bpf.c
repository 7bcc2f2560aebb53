// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Cost breakdown for bench/profile_kernel.py --variants: each program does
 * one more step of what network.bpf.c / tcp.bpf.c do, on the same hook, so
 * BPF stats give each step's price (ns/run of a step minus the previous one).
 * Not part of the agent; results land in a .bss sink so nothing is optimized out.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include "podsight.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

__u64 sink;

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct net_counters);
} v_traffic SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct net_counters);
} v_array SEC(".maps");

static __always_inline struct net_counters *slot(struct __sk_buff *skb)
{
	__u64 id = bpf_skb_cgroup_id(skb);
	struct net_counters *c = bpf_map_lookup_elem(&v_traffic, &id);

	if (!c) {
		struct net_counters zero = {};

		bpf_map_update_elem(&v_traffic, &id, &zero, BPF_NOEXIST);
		c = bpf_map_lookup_elem(&v_traffic, &id);
	}
	return c;
}

/* 1: the socket's cgroup id only. */
SEC("cgroup_skb/egress")
int v1_cgroup_id(struct __sk_buff *skb)
{
	sink = bpf_skb_cgroup_id(skb);
	return 1;
}

/* 2: + the per-CPU hash lookup by cgroup id. */
SEC("cgroup_skb/egress")
int v2_hash_lookup(struct __sk_buff *skb)
{
	sink = (__u64)slot(skb);
	return 1;
}

/* 3: + plain (non-atomic) adds of bytes and packets. */
SEC("cgroup_skb/egress")
int v3_plain_add(struct __sk_buff *skb)
{
	struct net_counters *c = slot(skb);

	if (c) {
		c->tx_bytes += skb->len;
		c->tx_packets += skb->gso_segs ? skb->gso_segs : 1;
	}
	return 1;
}

/* 4: atomic adds instead, as network.bpf.c does today. */
SEC("cgroup_skb/egress")
int v4_atomic_add(struct __sk_buff *skb)
{
	struct net_counters *c = slot(skb);

	if (c) {
		__sync_fetch_and_add(&c->tx_bytes, skb->len);
		__sync_fetch_and_add(&c->tx_packets, skb->gso_segs ? skb->gso_segs : 1);
	}
	return 1;
}

/* 5: the floor of a keyed design: one per-CPU array slot, plain adds. */
SEC("cgroup_skb/egress")
int v5_array_add(struct __sk_buff *skb)
{
	__u32 k = 0;
	struct net_counters *c = bpf_map_lookup_elem(&v_array, &k);

	if (c) {
		c->tx_bytes += skb->len;
		c->tx_packets += 1;
	}
	return 1;
}

/* tcp_probe: what tcp_rtt pays on its common path (no sample). */
SEC("tracepoint/tcp/tcp_probe")
int t1_core_read(struct trace_event_raw_tcp_probe *ctx)
{
	sink = (__u64)BPF_CORE_READ(ctx, skaddr);	/* bpf_probe_read_kernel */
	return 0;
}

SEC("tracepoint/tcp/tcp_probe")
int t2_direct_read(struct trace_event_raw_tcp_probe *ctx)
{
	sink = (__u64)ctx->skaddr;	/* plain ctx load, CO-RE relocated */
	return 0;
}

SEC("tracepoint/tcp/tcp_probe")
int t3_ktime(struct trace_event_raw_tcp_probe *ctx)
{
	sink = bpf_ktime_get_ns();
	return 0;
}

/* The same hook as a raw tracepoint: the program gets the kernel's own
 * arguments (sk, skb) and the kernel skips filling the classic tracepoint's
 * record (perf_trace_tcp_probe), a cost BPF stats never show. */
SEC("raw_tp/tcp_probe")
int t4_raw_tp(struct bpf_raw_tracepoint_args *ctx)
{
	sink = ctx->args[0];
	return 0;
}

/* Socket-local storage instead of the tcp_socks LRU hash: a pointer walk from
 * the socket, no hashing, freed with the socket.  Needs a BTF-typed hook. */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, __u64);
} v_sk SEC(".maps");

SEC("tp_btf/tcp_probe")
int t5_btf_sk_storage(__u64 *ctx)
{
	struct sock *sk = (struct sock *)ctx[0];
	__u64 *last = bpf_sk_storage_get(&v_sk, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);

	if (last)
		sink = *last;
	return 0;
}

/* The common path of an sk_storage design: look up only (entries are made
 * once per connection, at the handshake, not per segment). */
SEC("tp_btf/tcp_probe")
int t6_btf_sk_lookup(__u64 *ctx)
{
	struct sock *sk = (struct sock *)ctx[0];
	__u64 *last = bpf_sk_storage_get(&v_sk, sk, 0, 0);

	sink = last ? *last : 1;
	return 0;
}

/* cgroup_skb with socket-local storage: the socket's own counters, found by
 * a pointer walk from the socket instead of hashing its cgroup id. */
struct sock_counters_v {
	__u64 cgroup_id;
	struct net_counters c;
};

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct sock_counters_v);
} v_sk_traffic SEC(".maps");

static __always_inline struct sock_counters_v *sock_slot(struct __sk_buff *skb)
{
	struct bpf_sock *sk = skb->sk;

	if (!sk)
		return 0;
	sk = bpf_sk_fullsock(sk);
	if (!sk || sk->protocol != 6 || sk->state == 10 || sk->state == 7)
		return 0;
	struct sock_counters_v *s = bpf_sk_storage_get(&v_sk_traffic, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);

	if (s && !s->cgroup_id)
		s->cgroup_id = bpf_skb_cgroup_id(skb);
	return s;
}

/* 6: socket storage, plain adds. */
SEC("cgroup_skb/egress")
int v6_sk_plain(struct __sk_buff *skb)
{
	struct sock_counters_v *s = sock_slot(skb);

	if (s) {
		s->c.tx_bytes += skb->len;
		s->c.tx_packets += skb->gso_segs ? skb->gso_segs : 1;
	}
	return 1;
}

/* 7: socket storage, atomic adds. */
SEC("cgroup_skb/egress")
int v7_sk_atomic(struct __sk_buff *skb)
{
	struct sock_counters_v *s = sock_slot(skb);

	if (s) {
		__sync_fetch_and_add(&s->c.tx_bytes, skb->len);
		__sync_fetch_and_add(&s->c.tx_packets, skb->gso_segs ? skb->gso_segs : 1);
	}
	return 1;
}

/* 8: socket storage on ingress, atomic adds (ingress runs unlocked). */
SEC("cgroup_skb/ingress")
int v8_sk_atomic_in(struct __sk_buff *skb)
{
	struct sock_counters_v *s = sock_slot(skb);

	if (s) {
		__sync_fetch_and_add(&s->c.rx_bytes, skb->len);
		__sync_fetch_and_add(&s->c.rx_packets, skb->gso_segs ? skb->gso_segs : 1);
	}
	return 1;
}

/* 9: per-CPU cgroup storage: the counters of the cgroup the program is
 * attached to, found through the run context (no id, no key, no hash).
 * Keyed by cgroup id alone, so ingress and egress share one slot. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_CGROUP_STORAGE);
	__type(key, __u64);
	__type(value, struct net_counters);
} v_cg_traffic SEC(".maps");

SEC("cgroup_skb/egress")
int v9_cg_storage(struct __sk_buff *skb)
{
	struct net_counters *c = bpf_get_local_storage(&v_cg_traffic, 0);

	c->tx_bytes += skb->len;
	c->tx_packets += skb->gso_segs ? skb->gso_segs : 1;
	return 1;
}

SEC("cgroup_skb/ingress")
int v9_cg_storage_in(struct __sk_buff *skb)
{
	struct net_counters *c = bpf_get_local_storage(&v_cg_traffic, 0);

	c->rx_bytes += skb->len;
	c->rx_packets += skb->gso_segs ? skb->gso_segs : 1;
	return 1;
}

/* 10: as 9 on ingress, counting skbs instead of segments (no skb_shinfo read). */
SEC("cgroup_skb/ingress")
int v10_cg_no_segs_in(struct __sk_buff *skb)
{
	struct net_counters *c = bpf_get_local_storage(&v_cg_traffic, 0);

	c->rx_bytes += skb->len;
	c->rx_packets += 1;
	return 1;
}
