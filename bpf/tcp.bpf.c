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
#include <bpf/bpf_endian.h>
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

/* Per-edge flows (tcp_config.flows): what tcp_stats and tcp_histograms
 * count per cgroup, counted per (cgroup, peer, server port, role) instead;
 * the agent sums a cgroup's edges for the per-cgroup families.  Shared by
 * all CPUs (a per-CPU copy of 600 bytes per edge would cost 64x the memory
 * on a 64-CPU node), so every add is atomic. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct flow_key);
	__type(value, struct flow_counters);
} tcp_flows SEC(".maps");

/* Client connections to a Service address, one entry each (the key holds
 * the client port) until the agent has asked conntrack which backend each
 * reached and deleted it.  Apart from tcp_flows so that following them,
 * every sampler interval, reads these few entries and not every edge. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct flow_key);
	__type(value, struct flow_counters);
} tcp_flow_conns SEC(".maps");

/* The Service ClusterIP ranges (written by the agent as it learns them). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct flow_services);
} flow_services SEC(".maps");

/* Per-socket state the kernel does not keep for us, keyed by the socket's
 * address from the handshake to TCP_CLOSE (every TCP socket reaches it
 * before it is freed, so nothing leaks).  A preallocated hash, not socket
 * storage: storage costs two allocations, a memory-cgroup charge and an RCU
 * free per socket, which under connection churn cost more than all of our
 * programs (bench/README.md). */
struct sock_state {
	__u64 syn_sent_ns;	/* 0: not an outbound handshake we saw start */
	__u64 bytes_acked;	/* tcp_sock counters already on the edge (flows) */
	__u64 bytes_received;
	struct flow_key flow;	/* its edge; flow.cgroup_id also serves the sampler without flows */
	/* u32 tcp_sock counters in u64s: BPF's 32-bit exchange needs -mcpu=v3. */
	__u64 segs_out;
	__u64 last_segs_in;	/* tcp_sock.segs_in at the last RTT sample (and on the edge) */
	__u32 established;	/* we counted its open (enum flow_role with flows), so we count its close */
	__u32 pad;
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

/* ---- flows ---- */

/* The edge of a socket: its peer and server port as this side sees them.
 * An IPv4-mapped IPv6 peer (a dual-stack socket talking IPv4) is IPv4, so
 * both ends of one connection name the same address. */
static __always_inline void flow_peer(struct flow_key *k, struct sock *sk, __u16 family, __u32 role)
{
	if (family == AF_INET6) {
		__u32 *a = sk->__sk_common.skc_v6_daddr.in6_u.u6_addr32;
		__u32 w0 = a[0], w1 = a[1], w2 = a[2], w3 = a[3];

		if (!(w0 | w1) && w2 == bpf_htonl(0xffff)) {
			family = AF_INET;
			__builtin_memcpy(&k->addr[0], &w3, 4);
		} else {
			__builtin_memcpy(&k->addr[0], &w0, 4);
			__builtin_memcpy(&k->addr[4], &w1, 4);
			__builtin_memcpy(&k->addr[8], &w2, 4);
			__builtin_memcpy(&k->addr[12], &w3, 4);
		}
	} else {
		__u32 d = sk->__sk_common.skc_daddr;

		__builtin_memcpy(&k->addr[0], &d, 4);
	}
	k->family = family;
	k->role = role;
	k->port = role == FLOW_CLIENT ? bpf_ntohs(sk->__sk_common.skc_dport) : sk->__sk_common.skc_num;
}

/* A client connection to a Service address is its own edge (our port in
 * the key) until the agent has asked conntrack where it went: the socket
 * only ever sees the ClusterIP.  One array read and a masked compare. */
static __always_inline void flow_service(struct flow_key *k, struct sock *sk)
{
	__u32 zero = 0, a[4];
	struct flow_services *s = bpf_map_lookup_elem(&flow_services, &zero);

	if (!s)
		return;
	__builtin_memcpy(a, k->addr, 16);
	if (k->family == AF_INET) {
		if (!s->v4_mask || (a[0] & s->v4_mask) != s->v4_net)
			return;
	} else if (!(s->v6_mask[0] | s->v6_mask[1] | s->v6_mask[2] | s->v6_mask[3]) ||
		   (a[0] & s->v6_mask[0]) != s->v6_net[0] || (a[1] & s->v6_mask[1]) != s->v6_net[1] ||
		   (a[2] & s->v6_mask[2]) != s->v6_net[2] || (a[3] & s->v6_mask[3]) != s->v6_net[3]) {
		return;
	}
	k->client_port = sk->__sk_common.skc_num;
}

/* A new edge's first value: 600 bytes, more than fits on the BPF stack. */
const struct flow_counters flow_zero = {};

static __always_inline struct flow_counters *flow(const struct flow_key *k)
{
	if (k->client_port)
		return lookup_or_init(&tcp_flow_conns, k, &flow_zero);
	return lookup_or_init(&tcp_flows, k, &flow_zero);
}

/* The socket's counters since the last visit, onto its edge.  Exchanged,
 * not read then written: the sampler and the close can visit one socket at
 * once on two CPUs, and each byte must land once. */
static __always_inline void flow_delta(struct flow_counters *f, struct sock_state *st, __u64 acked,
				       __u64 received, __u32 segs_out, __u32 segs_in)
{
	__u64 d = acked - __sync_lock_test_and_set(&st->bytes_acked, acked);

	if (d)
		__sync_fetch_and_add(&f->bytes_sent, d);
	d = received - __sync_lock_test_and_set(&st->bytes_received, received);
	if (d)
		__sync_fetch_and_add(&f->bytes_received, d);
	__u32 n = segs_out - (__u32)__sync_lock_test_and_set(&st->segs_out, (__u64)segs_out);

	if (n)
		__sync_fetch_and_add(&f->segs_sent, n);
	n = segs_in - (__u32)__sync_lock_test_and_set(&st->last_segs_in, (__u64)segs_in);
	if (n)
		__sync_fetch_and_add(&f->segs_received, n);
}

/* One RTT sample if the connection received segments since its last one:
 * the rule of both the periodic sampler and the sample taken at close, so
 * short connections count too.  srtt_us holds 8 x the smoothed RTT in us.
 * Without flows only. */
static __always_inline void record_srtt(struct sock_state *st, __u32 segs_in, __u32 srtt8)
{
	if (segs_in == st->last_segs_in)
		return;
	st->last_segs_in = segs_in;
	observe(st->flow.cgroup_id, HIST_SRTT, srtt8 >> 3);
}

/* With flows: the socket's counters and an RTT sample (if it received
 * since the last visit) onto its edge; false if no edge could hold them. */
static __always_inline bool flow_visit(struct sock_state *st, __u64 acked, __u64 received, __u32 segs_out,
				       __u32 segs_in, __u32 srtt8)
{
	if (segs_in == st->last_segs_in && segs_out == st->segs_out)
		return true;	/* nothing new: no edge lookup */
	struct flow_counters *f = flow(&st->flow);

	if (!f)
		return false;
	bool received_any = segs_in != st->last_segs_in;

	flow_delta(f, st, acked, received, segs_out, segs_in);
	if (received_any)
		hist_add(&f->srtt, srtt8 >> 3);
	return true;
}

/* An event no edge could hold: counted per cgroup as without flows. */
static __always_inline struct tcp_counters *untracked(__u64 cgid)
{
	struct tcp_counters *c = counters(cgid);

	if (c)
		__sync_fetch_and_add(&c->flow_untracked, 1);
	return c;
}

/* ---- the connection lifecycle ---- */

static __always_inline void established(struct sock *sk, int old, __u16 family, __u64 key)
{
	struct sock_state *st = NULL;
	struct tcp_counters *c;
	__u64 connect_us = 0;
	__u64 cgid;

	if (old == TCP_SYN_SENT) {
		st = bpf_map_lookup_elem(&tcp_socks, &key);
		if (st && st->syn_sent_ns)
			connect_us = (bpf_ktime_get_ns() - st->syn_sent_ns) / 1000;
	}
	if (cfg.flows) {
		struct sock_state fresh = {};
		struct flow_counters *f;
		__u32 role = old == TCP_SYN_SENT ? FLOW_CLIENT : FLOW_SERVER;

		if (!st) {
			/* A child socket (TCP_SYN_RECV) is never in the map yet: no lookup. */
			fresh.flow.cgroup_id = btf_sk_cgroup_id(sk);
			flow_peer(&fresh.flow, sk, family, role);
			st = &fresh;
		}
		if (role == FLOW_CLIENT)
			flow_service(&st->flow, sk);	/* our port is known only now */
		st->established = role;
		f = flow(&st->flow);
		if (f) {
			__sync_fetch_and_add(&f->opened, 1);
			if (connect_us)
				hist_add(&f->connect, connect_us);
		} else {
			c = untracked(st->flow.cgroup_id);
			if (c)
				__sync_fetch_and_add(role == FLOW_CLIENT ? &c->opened_outbound : &c->opened_inbound, 1);
			if (connect_us)
				observe(st->flow.cgroup_id, HIST_CONNECT, connect_us);
		}
		if (st == &fresh)
			bpf_map_update_elem(&tcp_socks, &key, &fresh, BPF_ANY);
		return;
	}

	cgid = btf_sk_cgroup_id(sk);	/* only for transitions we count */
	c = counters(cgid);
	if (!c)
		return;
	if (old == TCP_SYN_SENT) {
		__sync_fetch_and_add(&c->opened_outbound, 1);
		if (connect_us)
			observe(cgid, HIST_CONNECT, connect_us);
	} else {
		__sync_fetch_and_add(&c->opened_inbound, 1);
	}
	if (st) {
		st->flow.cgroup_id = cgid;
		st->established = 1;
	} else {
		struct sock_state fresh = { .flow.cgroup_id = cgid, .established = 1 };

		bpf_map_update_elem(&tcp_socks, &key, &fresh, BPF_ANY);
	}
}

static __always_inline void closed(struct sock *sk, int old, __u16 family, __u64 key)
{
	struct sock_state *st = bpf_map_lookup_elem(&tcp_socks, &key);
	bool tracked = st != NULL;
	struct tcp_counters *c;

	if (cfg.flows) {
		struct sock_state fresh = {};
		bool failed = old == TCP_SYN_SENT || old == TCP_SYN_RECV;

		if (!failed && !(st && st->established))
			goto out;	/* opened before we ran: not counted, as without flows */
		if (!st) {
			fresh.flow.cgroup_id = btf_sk_cgroup_id(sk);
			flow_peer(&fresh.flow, sk, family, old == TCP_SYN_SENT ? FLOW_CLIENT : FLOW_SERVER);
			st = &fresh;
		}
		if (old == TCP_SYN_SENT)
			flow_service(&st->flow, sk);
		struct flow_counters *f = flow(&st->flow);
		struct tcp_sock *tp = bpf_skc_to_tcp_sock(sk);

		if (f) {
			__sync_fetch_and_add(failed ? &f->failed : &f->closed, 1);
			if (tp) {
				/* Before the exchange below moves last_segs_in. */
				bool received_any = tp->segs_in != st->last_segs_in;

				flow_delta(f, st, tp->bytes_acked, tp->bytes_received, tp->segs_out, tp->segs_in);
				if (!failed && received_any)
					hist_add(&f->srtt, tp->srtt_us >> 3);
			}
		} else {
			c = untracked(st->flow.cgroup_id);
			if (c) {
				if (!failed)
					__sync_fetch_and_add(&c->closed, 1);
				else
					__sync_fetch_and_add(old == TCP_SYN_SENT ? &c->failed_outbound : &c->failed_inbound, 1);
			}
		}
		goto out;
	}

	c = counters(btf_sk_cgroup_id(sk));
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
out:
	if (tracked)
		bpf_map_delete_elem(&tcp_socks, &key);
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

	if (old == TCP_CLOSE && new == TCP_SYN_SENT) {
		struct sock_state fresh = { .syn_sent_ns = bpf_ktime_get_ns() };

		/* The peer is set before this transition, our port after it
		 * (tcp_v4_connect: tcp_set_state, then inet_hash_connect). */
		if (cfg.flows) {
			fresh.flow.cgroup_id = btf_sk_cgroup_id(sk);
			flow_peer(&fresh.flow, sk, family, FLOW_CLIENT);
		}
		bpf_map_update_elem(&tcp_socks, &key, &fresh, BPF_ANY);
		return 0;
	}
	if (new == TCP_ESTABLISHED)
		established(sk, old, family, key);
	else
		closed(sk, old, family, key);
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
	__u16 segs = 1;

	/* tcp_skb_pcount(): a TSO skb is several segments, as TcpRetransSegs counts them. */
	bpf_probe_read_kernel(&segs, sizeof(segs), (void *)skb + bpf_core_field_offset(struct sk_buff, cb) + 8);
	segs = segs ? segs : 1;
	if (cfg.flows) {
		/* The edge of a connection we track (its key is in its state,
		 * from SYN_SENT on); others are counted per cgroup. */
		__u64 key = (__u64)ctx->skaddr;
		struct sock_state *st = bpf_map_lookup_elem(&tcp_socks, &key);

		if (st && st->flow.role) {
			struct flow_counters *f = flow(&st->flow);

			if (f) {
				__sync_fetch_and_add(&f->retransmits, segs);
				return 0;
			}
			struct tcp_counters *c = untracked(st->flow.cgroup_id);

			if (c)
				__sync_fetch_and_add(&c->retransmits, segs);
			return 0;
		}
	}
	struct tcp_counters *c = counters(sk_cgroup_id(ctx->skaddr));

	if (c)
		__sync_fetch_and_add(&c->retransmits, segs);
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

	if (cfg.flows) {
		if (!flow_visit(st, BPF_CORE_READ(tp, bytes_acked), BPF_CORE_READ(tp, bytes_received),
				BPF_CORE_READ(tp, segs_out), BPF_CORE_READ(tp, segs_in), BPF_CORE_READ(tp, srtt_us)))
			untracked(st->flow.cgroup_id);
		return 0;
	}
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
