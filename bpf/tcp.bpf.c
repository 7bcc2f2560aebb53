// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * TCP health per cgroup, from stable tracepoints only: connection lifecycle
 * (sock:inet_sock_set_state), retransmits, resets and drops with the
 * kernel's reason (skb:kfree_skb); RTT samples from a walk over the
 * connections we track, not from a per-segment hook.
 *
 * Every event is charged to the *socket's* cgroup: most of these fire in
 * softirq context, where the current task has nothing to do with the socket.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include "podsight.h"
#include "maps.bpf.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct tcp_counters);
} tcp_stats SEC(".maps");

/* podsight_tcp_srtt_seconds and podsight_tcp_connect_duration_seconds. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 32768);
	__type(key, struct hist_key);
	__type(value, struct hist);
} tcp_histograms SEC(".maps");

/* podsight_network_drops_total, by kernel drop reason. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct drop_key);
	__type(value, __u64);
} network_drops SEC(".maps");

/* Set by the agent before load (podsight.kernel.probes.tcp_config). */
const volatile struct tcp_config cfg SEC(".rodata.config") = {};

/* Per-socket state the kernel does not keep for us, keyed by the socket's
 * address from the handshake to TCP_CLOSE (every TCP socket reaches it
 * before it is freed, so nothing leaks).  A preallocated hash, not socket
 * storage: storage costs two allocations, a memory-cgroup charge and an RCU
 * free per socket, which under connection churn cost more than all of our
 * programs (bench/README.md). */
struct sock_state {
	__u64 syn_sent_ns;	/* 0: not an outbound handshake we saw start */
	__u64 cgroup_id;	/* for the sampler, which has only the address */
	__u32 established;	/* we counted its open, so we count its close */
	__u32 last_segs_in;	/* tcp_sock.segs_in at the last RTT sample */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct sock_state);
} tcp_socks SEC(".maps");

/* Tracepoint contexts are typed with this kernel's trace_event_raw_* names
 * (vmlinux.h); fields are CO-RE relocated, and fields that newer kernels
 * added are guarded with bpf_core_field_exists(). */

/* Before 5.15 ("bpf, cgroups: Fix cgroup v2 fallback on v1/v2 mixed mode")
 * sock_cgroup_data packed the cgroup pointer into a u64 whose low bit
 * flagged v1 data; now it is a plain pointer. */
struct sock_cgroup_data___old {
	__u64 val;
};

static __always_inline __u64 sk_cgroup_id(const struct sock *sk)
{
	struct cgroup *cg;

	if (!sk)
		return 0;
	if (bpf_core_field_exists(struct sock_cgroup_data, cgroup)) {
		cg = BPF_CORE_READ(sk, sk_cgrp_data.cgroup);
	} else {
		struct sock_cgroup_data___old *old = (void *)&sk->sk_cgrp_data;
		__u64 val = BPF_CORE_READ(old, val);

		if (val & 1)
			return 0;
		cg = (struct cgroup *)val;
	}
	if (!cg)
		return 0;
	return BPF_CORE_READ(cg, kn, id);
}

/* The same for a BTF-typed socket (tp_btf): plain loads the
 * verifier guards, instead of a probe-read helper call per pointer. */
static __always_inline __u64 btf_sk_cgroup_id(struct sock *sk)
{
	if (bpf_core_field_exists(struct sock_cgroup_data, cgroup)) {
		struct cgroup *cg = sk->sk_cgrp_data.cgroup;

		return cg ? cg->kn->id : 0;
	}
	return sk_cgroup_id(sk);
}

static __always_inline struct tcp_counters *counters(__u64 cgid)
{
	struct tcp_counters zero = {};

	return lookup_or_init(&tcp_stats, &cgid, &zero);
}

static __always_inline void observe(__u64 cgid, __u32 kind, __u64 value)
{
	struct hist_key key = { .cgroup_id = cgid, .kind = kind };
	struct hist zero = {};
	struct hist *h = lookup_or_init(&tcp_histograms, &key, &zero);

	if (h)
		hist_add(h, value);
}

/* One RTT sample if the connection received segments since its last one:
 * the rule of both the periodic sampler and the sample taken at close, so
 * short connections count too.  srtt_us holds 8 x the smoothed RTT in us. */
static __always_inline void record_srtt(struct sock_state *st, __u32 segs_in, __u32 srtt8)
{
	if (segs_in == st->last_segs_in)
		return;
	st->last_segs_in = segs_in;
	observe(st->cgroup_id, HIST_SRTT, srtt8 >> 3);
}

/* A BTF tracepoint: the kernel's own arguments, no classic record to fill
 * on each of a connection's ~10 state changes, and a trusted socket. */
SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(tcp_state, struct sock *sk, int old, int new)
{
	/* The transitions we count, before touching the socket. */
	if (!(new == TCP_CLOSE || (old == TCP_CLOSE && new == TCP_SYN_SENT) ||
	      (new == TCP_ESTABLISHED && (old == TCP_SYN_SENT || old == TCP_SYN_RECV))))
		return 0;
	/* sk_protocol was a bitfield before 5.6 ("sock: Make sk_protocol a
	 * 16-bit value", for MPTCP): the bitfield read fits both. */
	if (BPF_CORE_READ_BITFIELD(sk, sk_protocol) != IPPROTO_TCP)
		return 0;
	__u16 family = sk->__sk_common.skc_family;

	if (family != AF_INET && family != AF_INET6)
		return 0;

	__u64 key = (__u64)sk;	/* tcp_socks is keyed by the socket's address */
	__u64 cgid;
	struct tcp_counters *c;
	struct sock_state *st;

	if (old == TCP_CLOSE && new == TCP_SYN_SENT) {
		struct sock_state fresh = { .syn_sent_ns = bpf_ktime_get_ns() };

		bpf_map_update_elem(&tcp_socks, &key, &fresh, BPF_ANY);
		return 0;
	}
	if (new == TCP_ESTABLISHED && (old == TCP_SYN_SENT || old == TCP_SYN_RECV)) {
		cgid = btf_sk_cgroup_id(sk);	/* only for transitions we count */
		c = counters(cgid);
		if (!c)
			return 0;
		st = bpf_map_lookup_elem(&tcp_socks, &key);
		if (old == TCP_SYN_SENT) {
			__sync_fetch_and_add(&c->opened_outbound, 1);
			if (st && st->syn_sent_ns)
				observe(cgid, HIST_CONNECT, (bpf_ktime_get_ns() - st->syn_sent_ns) / 1000);
		} else {
			__sync_fetch_and_add(&c->opened_inbound, 1);
		}
		if (st) {
			st->cgroup_id = cgid;
			st->established = 1;
		} else {
			struct sock_state fresh = { .cgroup_id = cgid, .established = 1 };

			bpf_map_update_elem(&tcp_socks, &key, &fresh, BPF_ANY);
		}
		return 0;
	}

	cgid = btf_sk_cgroup_id(sk);
	c = counters(cgid);
	st = bpf_map_lookup_elem(&tcp_socks, &key);
	if (c) {
		if (old == TCP_SYN_SENT) {
			__sync_fetch_and_add(&c->failed_outbound, 1);
		} else if (old == TCP_SYN_RECV) {
			__sync_fetch_and_add(&c->failed_inbound, 1);
		} else if (st && st->established) {
			/* Only closes of connections whose open we counted, so
			 * that opened - closed is the number still active. */
			__sync_fetch_and_add(&c->closed, 1);
			struct tcp_sock *tp = bpf_skc_to_tcp_sock(sk);

			if (tp)
				record_srtt(st, tp->segs_in, tp->srtt_us);
		}
	}
	if (st)
		bpf_map_delete_elem(&tcp_socks, &key);
	return 0;
}

SEC("tracepoint/tcp/tcp_retransmit_skb")
int tcp_retransmit(struct trace_event_raw_tcp_retransmit_skb *ctx)
{
	/* Since 6.13 (commit "tcp: add the err to tcp_retransmit_skb tracepoint")
	 * the tracepoint also fires for attempts that never left; count only
	 * the ones the kernel counts in TcpRetransSegs. */
	if (bpf_core_field_exists(ctx->err)) {
		int err = ctx->err;

		if (err == -16 /* EBUSY */ || err == -12 /* ENOMEM */ || err == -11 /* EAGAIN */ ||
		    err == -113 /* EHOSTUNREACH */)
			return 0;
	}
	const struct sk_buff *skb = ctx->skbaddr;
	struct tcp_counters *c = counters(sk_cgroup_id(ctx->skaddr));
	__u16 segs = 1;

	/* tcp_skb_pcount(): a TSO skb is several segments, as TcpRetransSegs counts them. */
	bpf_probe_read_kernel(&segs, sizeof(segs), (void *)skb + bpf_core_field_offset(struct sk_buff, cb) + 8);
	if (c)
		__sync_fetch_and_add(&c->retransmits, segs ? segs : 1);
	return 0;
}

SEC("tracepoint/tcp/tcp_send_reset")
int tcp_send_reset(struct trace_event_raw_tcp_send_reset *ctx)
{
	/* No socket: a reset for a port nobody listens on; no workload to charge. */
	if (!ctx->skaddr)
		return 0;
	struct tcp_counters *c = counters(sk_cgroup_id(ctx->skaddr));

	if (c)
		__sync_fetch_and_add(&c->resets_sent, 1);
	return 0;
}

SEC("tracepoint/tcp/tcp_receive_reset")
int tcp_receive_reset(struct trace_event_raw_tcp_event_sk *ctx)
{
	struct tcp_counters *c = counters(sk_cgroup_id(ctx->skaddr));

	if (c)
		__sync_fetch_and_add(&c->resets_received, 1);
	return 0;
}

/* RTT samples without a program per received segment: every
 * probes.tcp.srtt_sample_interval the agent runs this program once
 * (BPF_PROG_TEST_RUN: nothing is attached) and it walks the connections
 * whose open we counted; each one that received segments since its last
 * sample adds the kernel's smoothed RTT once (and once more as it closes).
 * A walk with bpf_for_each_map_elem, not a map-element iterator: some
 * kernels refuse iter/bpf_map_elem programs at load (EPERM on the 6.18
 * development VMs), and a program run on demand needs no link.
 *
 * The key is the socket's address.  Its entry goes at TCP_CLOSE, before the
 * socket can be freed; if a close races with these reads, the memory is
 * still a tcp_sock (the slab is SLAB_TYPESAFE_BY_RCU and the test run holds
 * the RCU read lock), so the worst case is one sample read from the
 * connection that reused it, recorded for this entry's cgroup. */
static long sample_one(struct bpf_map *map, __u64 *key, struct sock_state *st, void *ctx)
{
	if (!st->established)
		return 0;
	const struct tcp_sock *tp = (const struct tcp_sock *)*key;

	record_srtt(st, BPF_CORE_READ(tp, segs_in), BPF_CORE_READ(tp, srtt_us));
	return 0;
}

/* Returns the entries it walked: how full tcp_socks is, for the agent's
 * map-pressure gauge, with no count kept on the per-connection path. */
SEC("raw_tp")
int tcp_rtt_sample(void *ctx)
{
	return bpf_for_each_map_elem(&tcp_socks, sample_one, NULL, 0);
}

SEC("tracepoint/skb/kfree_skb")
int skb_drop(struct trace_event_raw_kfree_skb *ctx)
{
	__u32 reason = ctx->reason;

	/* Ignored reasons (by default QUEUE_PURGE: a closed socket's queue freed,
	 * once per actively closed connection) leave before any socket read. */
	if (reason < PODSIGHT_DROP_REASON_WORDS * 64 &&
	    (cfg.ignored_drop_reasons[reason / 64] >> (reason % 64)) & 1)
		return 0;
	const struct sk_buff *skb = ctx->skbaddr;
	const struct sock *sk = BPF_CORE_READ(skb, sk);

	/* rx_sk (6.10+) names the receiving socket when the skb has none yet. */
	if (!sk && bpf_core_field_exists(ctx->rx_sk))
		sk = ctx->rx_sk;
	struct drop_key key = { .cgroup_id = sk_cgroup_id(sk), .reason = reason };
	__u64 zero = 0;
	__u64 *n = lookup_or_init(&network_drops, &key, &zero);

	if (n)
		__sync_fetch_and_add(n, 1);
	return 0;
}
