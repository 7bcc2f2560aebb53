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
	__u64 flow_untracked;	/* with flows on: events no edge of tcp_flows could hold (counted here instead) */
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

/* Load-time knobs of tcp.bpf.c: a bitmap of the kernel drop reasons
 * (enum skb_drop_reason, numbered by this kernel) that are not counted.
 * Reasons from 256 up (subsystem ones) are always counted. */
#define PODSIGHT_DROP_REASON_WORDS 4
struct tcp_config {
	__u64 ignored_drop_reasons[PODSIGHT_DROP_REASON_WORDS];
	__u32 flows;		/* count per edge in tcp_flows, not per cgroup */
	__u32 pad;
};

/* ---- peer flows (tcp.bpf.c, with tcp_config.flows) ---- */

enum flow_role {
	FLOW_UNKNOWN = 0,	/* no edge yet */
	FLOW_CLIENT = 1,	/* we sent the SYN */
	FLOW_SERVER = 2,	/* we accepted it */
};

/* An edge of tcp_flows: the socket's cgroup, the peer, the server port and
 * our role; never the ephemeral port, except for a connection to a Service
 * address (flow_services), which is its own edge until the agent has read
 * which backend conntrack sent it to. */
struct flow_key {
	__u64 cgroup_id;
	__u8 addr[16];		/* the peer; IPv4 (and IPv4-mapped IPv6) in the first 4 bytes */
	__u16 port;		/* server port, host order */
	__u16 client_port;	/* 0, or our port on a connection to a Service address */
	__u8 family;		/* AF_INET or AF_INET6 */
	__u8 role;		/* enum flow_role */
	__u16 pad;
};

/* Value of tcp_flows.  Bytes and segments are the socket's own counters
 * (bytes_acked, bytes_received, segs_out, segs_in), added by the RTT sampler
 * and at close: no per-packet work. */
struct flow_counters {
	__u64 opened;
	__u64 failed;
	__u64 closed;
	__u64 bytes_sent;
	__u64 bytes_received;
	__u64 segs_sent;
	__u64 segs_received;
	__u64 retransmits;
	struct hist srtt;	/* microseconds */
	struct hist connect;	/* microseconds, client side */
};

/* flow_services[0]: the Service ClusterIP ranges, written by the agent as it
 * learns them.  A zero mask: no range of that family. */
struct flow_services {
	__u32 v4_net;		/* network order */
	__u32 v4_mask;
	__u32 v6_net[4];
	__u32 v6_mask[4];
};

/* ---- TLS handshakes (tls.bpf.c) ---- */

/* Who ran the handshake: the SSL object's SSL_set_connect_state or
 * SSL_set_accept_state (SSL_connect and SSL_accept call them). */
enum tls_role {
	TLS_ROLE_UNKNOWN = 0,	/* state set before the library was probed */
	TLS_ROLE_CLIENT = 1,
	TLS_ROLE_SERVER = 2,
};

/* tls_stats and tls_histograms: per (cgroup, role). */
struct tls_key {
	__u64 cgroup_id;
	__u32 role;
	__u32 pad;
};

struct tls_counters {
	__u64 succeeded;
	__u64 failed;
	__u64 untracked;	/* handshake calls not timed: their state could not be stored */
};

/* Load-time knobs of tls.bpf.c. */
struct tls_config {
	__u64 handshake_timeout_ns;	/* unfinished this long after its first call: failed */
};

/* ---- security events (security.bpf.c) ---- */

#define SEC_COMM_LEN 16
#define SEC_PATH_LEN 256
#define SEC_ARGS_LEN 512
/* The kernel filter (podsight.security.kernel_filter): clauses, and the
 * path and comm tables whose entries name the clauses they satisfy. */
#define SEC_CLAUSES 32		/* a u32 bitmask */
#define SEC_MATCH_PATHS 48
#define SEC_MATCH_PATH_LEN 64
#define SEC_MATCH_COMMS 96
#define SEC_REQUESTS 16
#define SEC_FAMILIES 4

enum sec_kind {
	SEC_EXEC = 0,
	SEC_OPEN = 1,
	SEC_CHMOD = 2,
	SEC_PTRACE = 3,
	SEC_CONNECT = 4,
	SEC_KINDS = 5,
};

enum sec_syscall {
	SYSC_EXECVE = 0,	/* sched_process_exec: after a successful execve/execveat */
	SYSC_OPENAT = 1,
	SYSC_OPENAT2 = 2,
	SYSC_CHMOD = 3,
	SYSC_FCHMODAT = 4,
	SYSC_FCHMODAT2 = 5,
	SYSC_FCHMOD = 6,
	SYSC_PTRACE = 7,
	SYSC_CONNECT = 8,
	SYSC_OPEN = 9,		/* open(2): what musl's open() and fopen() call on x86_64 */
	SYSC_CREAT = 10,
};

/* Why an event did not reach user space: index of security_drops. */
enum sec_drop {
	SEC_DROP_RATE_LIMITED = 0,
	SEC_DROP_RINGBUF_FULL = 1,
	SEC_DROP_PENDING_FULL = 2,	/* no room to hold an entry until its exit */
	SEC_DROP_GUARD_LIMITED = 3,	/* a path the kernel cannot judge, over the pod's guard */
	SEC_DROP_REASONS = 4,
};

/* One record of the security ring buffer. */
struct security_event {
	__u64 ts_ns;		/* CLOCK_BOOTTIME */
	__u64 cgroup_id;
	__s64 ret;		/* syscall return value; 0 for exec */
	__s64 ptrace_request;
	__u64 start_ns;		/* the process's start (CLOCK_BOOTTIME): with pid, an identity PID reuse cannot fake */
	__u64 parent_start_ns;	/* the parent process's start (CLOCK_BOOTTIME) */
	__u32 kind;		/* enum sec_kind */
	__u32 syscall;		/* enum sec_syscall */
	__u32 pid;		/* tgid */
	__u32 tid;
	__u32 ppid;
	__u32 uid;
	__u32 gid;
	__u32 flags;		/* open flags */
	__u32 mode;		/* chmod mode, open creation mode */
	__u32 target_pid;	/* ptrace */
	__u16 family;		/* connect */
	__u16 dst_port;		/* host byte order */
	__u32 args_len;		/* bytes of args used: NUL-separated argv */
	__u32 clauses;		/* filter clauses it satisfies; 0: a path the kernel could not judge */
	__u32 pad;
	__u8 dst_addr[16];	/* IPv4 in the first 4 bytes */
	char comm[SEC_COMM_LEN];
	char parent_comm[SEC_COMM_LEN];
	char path[SEC_PATH_LEN];
	char cwd[SEC_PATH_LEN];	/* exec and relative paths: working directory, from the kernel; "" if unknown */
	char exe[SEC_PATH_LEN];	/* all but exec (whose path it is): the executable, from the kernel; "" if unknown */
	char args[SEC_ARGS_LEN];
};

/* A clause: an event of its kind that passes every test it needs is a
 * candidate match of a rule.  comm exclusions come from the comm table. */
#define CLAUSE_PATH 1		/* the path is in a path entry naming this clause */
#define CLAUSE_COMM 2		/* the comm is in a comm entry including this clause */
#define CLAUSE_READ 4		/* opened for reading (not O_WRONLY, not O_PATH) */
#define CLAUSE_WRITE 8		/* O_WRONLY, O_RDWR, O_CREAT or O_TRUNC */
struct sec_clause {
	__u32 kind;		/* enum sec_kind */
	__u32 need;		/* CLAUSE_* */
	__u32 mode_any;		/* 0: any mode; else one of these mode bits */
	__u32 pad;
};

struct sec_match_path {
	__u32 clauses;		/* bit k: a path matching this satisfies clause k's path test */
	__u16 len;
	__u8 exact;		/* else a prefix */
	__u8 pad;
	char s[SEC_MATCH_PATH_LEN];
};

struct sec_match_comm {
	__u32 include;		/* clauses whose comm test this comm passes */
	__u32 exclude;		/* clauses whose rule excepts this comm */
	char s[SEC_COMM_LEN];	/* NUL-padded, as bpf_get_current_comm() writes it */
};

/* Load-time knobs of security.bpf.c, from the rules (podsight.security.kernel_filter). */
struct security_config {
	__u64 rate_per_sec;	/* token bucket per (cgroup, clause): candidate matches */
	__u64 burst;
	__u64 guard_per_sec;	/* token bucket per cgroup: paths the kernel cannot judge */
	__u64 guard_burst;
	__u32 include_host;	/* else only tasks below a kubepods cgroup */
	__u32 n_clauses;
	__u32 n_paths;
	__u32 n_comms;
	__u32 kind_clauses[8];	/* by enum sec_kind: the clauses of that kind */
	__u32 n_requests;	/* ptrace requests some rule needs; 0: any */
	__u32 n_families;	/* connect families some rule needs; 0: any */
	__s64 requests[SEC_REQUESTS];
	__u32 families[SEC_FAMILIES];
	struct sec_clause clauses[SEC_CLAUSES];
	struct sec_match_path paths[SEC_MATCH_PATHS];
	struct sec_match_comm comms[SEC_MATCH_COMMS];
};

/* Where pods live: cgroup id of a kubepods directory and its depth. */
struct pod_root {
	__u64 cgroup_id;
	__u32 level;
	__u32 pad;
};

#endif /* PODSIGHT_H */
