/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Layouts shared by the kernel programs and the agent.  Every struct here is
 * mirrored in src/podsight/kernel/layouts.py; tests/kernel/test_layouts.py
 * compares the mirror with the BTF of the compiled objects, so the two
 * cannot drift apart silently.
 */
#ifndef PODSIGHT_H
#define PODSIGHT_H

/* log2 histogram: slot i counts values in [2^(i-1), 2^i) of the base unit. */
#define PODSIGHT_HIST_SLOTS 32

/* Value of network_traffic (per-CPU hash keyed by cgroup v2 id). */
struct net_counters {
	__u64 rx_bytes;
	__u64 rx_packets;
	__u64 tx_bytes;
	__u64 tx_packets;
};

/* Value of tcp_stats (per-CPU hash keyed by cgroup v2 id). */
struct tcp_counters {
	__u64 opened_outbound;
	__u64 opened_inbound;
	__u64 failed_outbound;
	__u64 failed_inbound;
	__u64 closed;
	__u64 retransmits;
	__u64 resets_sent;
	__u64 resets_received;
};

/* Histogram keys: one histogram per (cgroup, kind). */
enum hist_kind {
	HIST_SRTT = 0,		/* base unit: microseconds */
	HIST_CONNECT = 1,	/* base unit: microseconds */
};

struct hist_key {
	__u64 cgroup_id;
	__u32 kind;
	__u32 pad;
};

struct hist {
	__u64 slots[PODSIGHT_HIST_SLOTS];
	__u64 sum;		/* in the base unit, for a real Prometheus _sum */
};

/* Drops: per (cgroup, kernel drop reason). */
struct drop_key {
	__u64 cgroup_id;
	__u32 reason;
	__u32 pad;
};

/* Load-time knobs of tcp.bpf.c (the object's only .rodata variable). */
struct tcp_config {
	__u64 srtt_sample_interval_ns;
};

#endif /* PODSIGHT_H */
