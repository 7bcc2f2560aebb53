// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * TLS handshakes per cgroup and role, timed inside the TLS library (uprobes
 * on OpenSSL 1.1/3): what TCP connect time cannot see (certificate chains,
 * OCSP, a cipher change, an overloaded terminator).  The agent attaches
 * these programs once per distinct library file that pod processes map
 * (podsight.kernel.tls_libraries).
 *
 * Only functions whose first instruction the kernel emulates (a push) are
 * probed: SSL_do_handshake (which SSL_connect and SSL_accept end in) and
 * SSL_set_connect_state / SSL_set_accept_state (the role; every SSL object
 * passes one before its handshake).  SSL_connect, SSL_accept, SSL_free and
 * SSL_get_error begin with instructions a uprobe must single-step, 10-15 us
 * a hit in the development VM (bench/README.md), and SSL_get_error runs on
 * every would-block read of a non-blocking server.
 *
 * A handshake is one SSL object from its first SSL_do_handshake call until
 * a call returns 1 (success).  A call that returns <= 0 leaves it pending:
 * a non-blocking retry continues it, so it counts once with its full
 * duration.  It failed when it is still unfinished handshake_timeout after
 * its first call (tls_sweep, run by the agent), or when a new SSL object
 * takes its address (the old one was freed unfinished).  An SSL whose
 * handshake finished is not timed again.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include "podsight.h"
#include "maps.bpf.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* podsight_tls_handshakes_total and ..._untracked_total. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct tls_key);
	__type(value, struct tls_counters);
} tls_stats SEC(".maps");

/* podsight_tls_handshake_duration_seconds (successful handshakes, us). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct tls_key);
	__type(value, struct hist);
} tls_histograms SEC(".maps");

/* Set by the agent before load (probes.tls.handshake_timeout). */
const volatile struct tls_config cfg SEC(".rodata.config") = {};

/* One SSL object: its role and its handshake.  LRU: nothing tells us when
 * an SSL is freed, so entries of finished handshakes wait for the sweep or
 * for eviction. */
struct ssl_key {
	__u32 tgid;
	__u32 pad;
	__u64 ssl;
};

struct ssl_state {
	__u64 start_ns;		/* first handshake call; 0: none in progress */
	__u64 last_ns;		/* last handshake call or its end */
	__u64 cgroup_id;	/* of the thread that last ran it, for the sweep */
	__u32 role;		/* enum tls_role */
	__u8 pending;		/* the last call returned <= 0 */
	__u8 done;		/* finished once: later calls are not handshakes we time */
	__u16 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct ssl_key);
	__type(value, struct ssl_state);
} tls_ssl SEC(".maps");

/* The SSL of a handshake call in progress on a thread (return probes have
 * no arguments).  LRU: a thread that dies inside a call leaves its entry. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, __u64);	/* pid_tgid */
	__type(value, __u64);
} tls_calls SEC(".maps");

static __always_inline void count(__u64 cgid, __u32 role, int what)
{
	struct tls_key key = { .cgroup_id = cgid, .role = role };
	struct tls_counters zero = {};
	struct tls_counters *c = lookup_or_init(&tls_stats, &key, &zero);

	if (!c)
		return;
	if (what > 0)
		__sync_fetch_and_add(&c->succeeded, 1);
	else if (what < 0)
		__sync_fetch_and_add(&c->failed, 1);
	else
		__sync_fetch_and_add(&c->untracked, 1);
}

static __always_inline void handshake_done(struct ssl_state *st, __u64 now)
{
	struct tls_key key = { .cgroup_id = st->cgroup_id, .role = st->role };
	struct hist zero = {};
	struct hist *h = lookup_or_init(&tls_histograms, &key, &zero);

	if (h)
		hist_add(h, (now - st->start_ns) / 1000);
	count(st->cgroup_id, st->role, 1);
	st->start_ns = 0;
	st->pending = 0;
	st->done = 1;
	st->last_ns = now;
}

static __always_inline void handshake_failed(struct ssl_state *st)
{
	count(st->cgroup_id, st->role, -1);
	st->start_ns = 0;
	st->pending = 0;
}

SEC("uprobe")
int BPF_KPROBE(tls_handshake_enter, void *ssl)
{
	__u64 id = bpf_get_current_pid_tgid(), now = bpf_ktime_get_ns();
	struct ssl_key key = { .tgid = id >> 32, .ssl = (__u64)ssl };
	struct ssl_state fresh = {};
	struct ssl_state *st = lookup_or_init(&tls_ssl, &key, &fresh);

	if (!st) {		/* an LRU map refuses only when it cannot allocate */
		count(bpf_get_current_cgroup_id(), TLS_ROLE_UNKNOWN, 0);
		return 0;
	}
	if (st->done)
		return 0;
	if (!st->start_ns)
		st->start_ns = now;
	st->last_ns = now;
	st->cgroup_id = bpf_get_current_cgroup_id();
	st->pending = 0;
	if (bpf_map_update_elem(&tls_calls, &id, &key.ssl, BPF_ANY)) {
		count(st->cgroup_id, st->role, 0);
		st->start_ns = 0;
	}
	return 0;
}

SEC("uprobe")
int BPF_KRETPROBE(tls_handshake_exit, int ret)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u64 *ssl = bpf_map_lookup_elem(&tls_calls, &id);

	if (!ssl)
		return 0;
	struct ssl_key key = { .tgid = id >> 32, .ssl = *ssl };

	bpf_map_delete_elem(&tls_calls, &id);
	struct ssl_state *st = bpf_map_lookup_elem(&tls_ssl, &key);

	if (!st || !st->start_ns)
		return 0;	/* timed out meanwhile, or not ours */
	if (ret == 1) {
		handshake_done(st, bpf_ktime_get_ns());
	} else {
		st->pending = 1;
		st->last_ns = bpf_ktime_get_ns();
	}
	return 0;
}

/* SSL_set_connect_state (cookie: client) and SSL_set_accept_state (server):
 * a new SSL object, or one about to start over.  An unfinished handshake
 * still recorded at this address belonged to an SSL freed before it
 * finished: a failure. */
SEC("uprobe")
int BPF_KPROBE(tls_set_role, void *ssl)
{
	struct ssl_key key = { .tgid = bpf_get_current_pid_tgid() >> 32, .ssl = (__u64)ssl };
	struct ssl_state fresh = { .role = bpf_get_attach_cookie(ctx), .last_ns = bpf_ktime_get_ns() };
	struct ssl_state *st = bpf_map_lookup_elem(&tls_ssl, &key);

	if (st && st->start_ns)
		handshake_failed(st);
	bpf_map_update_elem(&tls_ssl, &key, &fresh, BPF_ANY);
	return 0;
}

/* Signed: an entry another CPU stamped after the sweep read the clock is
 * younger than "now", not 584 years old. */
static __always_inline bool older_than_timeout(__u64 now, __u64 then)
{
	return (__s64)(now - then) > (__s64)cfg.handshake_timeout_ns;
}

static long sweep_one(struct bpf_map *map, struct ssl_key *key, struct ssl_state *st, __u64 *now)
{
	if (st->start_ns && older_than_timeout(*now, st->start_ns))
		handshake_failed(st);
	else if (st->done && older_than_timeout(*now, st->last_ns))
		bpf_map_delete_elem(map, key);
	return 0;
}

/* Run by the agent every second (BPF_PROG_TEST_RUN, attached nowhere):
 * handshakes unfinished handshake_timeout after their first call failed.
 * Returns the entries it walked (podsight_bpf_map_entries{map="tls_ssl"}). */
SEC("raw_tp")
int tls_sweep(void *ctx)
{
	__u64 now = bpf_ktime_get_ns();

	return bpf_for_each_map_elem(&tls_ssl, sweep_one, &now, 0);
}
