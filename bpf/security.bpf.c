// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Opt-in security events: exec, open, chmod, ptrace, connect, from syscall
 * tracepoints (and sched_process_exec for successful execs).
 *
 * Cheap filters run at syscall entry (inside a pod? a write? a watched path?
 * a setuid bit?), the entry is held per thread until the syscall's exit adds
 * its return code, then a per-cgroup token bucket decides whether it may use
 * the ring buffer.  Every event not sent is counted by reason.
 *
 * Arguments are read at entry: a racing thread can change user memory after
 * we read it (TOCTOU); docs/security.md spells out what that means.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include "podsight.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define AF_INET 2
#define AF_INET6 10
#define O_WRONLY 01
#define O_RDWR 02
#define O_CREAT 0100
#define O_TRUNC 01000
#define MAX_ARGS 20
#define TOKEN 1000000000ULL	/* one event, in token-nanoseconds */

const volatile struct security_config cfg SEC(".rodata.config") = {};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);	/* resized from security.ringbuf_size_kb */
} security_events SEC(".maps");

/* podsight_events_dropped_total{reason,event}: index reason * SEC_KINDS + kind. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SEC_DROP_REASONS * SEC_KINDS);
	__type(key, __u32);
	__type(value, __u64);
} security_drops SEC(".maps");

/* Filled by the agent: the kubepods cgroups (usually one). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, struct pod_root);
} pod_roots SEC(".maps");

/* An entry waiting for its syscall's exit, per thread. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__type(key, __u32);
	__type(value, struct security_event);
} pending SEC(".maps");

/* Scratch space: an event is too big for the 512-byte BPF stack. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct security_event);
} scratch SEC(".maps");

/* A path (cwd, exe) is built from its last component back, here. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, char[2 * SEC_PATH_LEN]);
} path_scratch SEC(".maps");

struct rate_bucket {
	__u64 tokens;		/* token-nanoseconds: TOKEN per event */
	__u64 last_ns;
};

/* Token buckets: one per (cgroup, clause) for candidate matches, so a flood
 * of one rule's matches cannot spend another's budget, and one per cgroup
 * (slot GUARD_SLOT) for paths the kernel cannot judge.  No spin locks in
 * tracing programs, so updates are atomic adds and one compare-and-swap:
 * under a burst from one cgroup on several CPUs at once a bucket may grant a
 * few events more or less than exact. */
#define GUARD_SLOT SEC_CLAUSES

struct bucket_key {
	__u64 cgroup_id;
	__u32 slot;		/* clause, or GUARD_SLOT */
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct bucket_key);
	__type(value, struct rate_bucket);
} rate_buckets SEC(".maps");

static __always_inline void count_drop(__u32 reason, __u32 kind)
{
	__u32 idx = reason * SEC_KINDS + kind;
	__u64 *n = bpf_map_lookup_elem(&security_drops, &idx);

	if (n)
		__sync_fetch_and_add(n, 1);
}

static __always_inline bool in_pod(void)
{
	if (cfg.include_host)
		return true;
#pragma unroll
	for (__u32 i = 0; i < 4; i++) {
		__u32 k = i;
		struct pod_root *r = bpf_map_lookup_elem(&pod_roots, &k);

		if (r && r->cgroup_id && bpf_get_current_ancestor_cgroup_id(r->level) == r->cgroup_id)
			return true;
	}
	return false;
}

static __always_inline bool take_token(__u64 cgid, __u32 slot, __u64 rate, __u64 burst)
{
	struct bucket_key key = { .cgroup_id = cgid, .slot = slot };
	__u64 now = bpf_ktime_get_ns();
	__u64 cap = burst * TOKEN;
	struct rate_bucket *b = bpf_map_lookup_elem(&rate_buckets, &key);

	if (!b) {
		struct rate_bucket fresh = { .tokens = cap - TOKEN, .last_ns = now };

		bpf_map_update_elem(&rate_buckets, &key, &fresh, BPF_NOEXIST);
		return true;
	}
	__u64 last = b->last_ns;

	if (now > last && __sync_val_compare_and_swap(&b->last_ns, last, now) == last) {
		/* Only the CPU that moved last_ns refills, so no refill counts twice. */
		__u64 add = (now - last) * rate;
		__u64 t = b->tokens + add;

		b->tokens = t > cap ? cap : t;
	}
	if (b->tokens < TOKEN)
		return false;
	__sync_fetch_and_sub(&b->tokens, TOKEN);
	return true;
}

struct budget {
	__u64 cgroup_id;
	__u32 clauses;
	__u32 granted;
};

static long try_clause(__u32 k, struct budget *b)
{
	if (k >= SEC_CLAUSES || !(b->clauses >> k))
		return 1;
	if ((b->clauses >> k) & 1 && take_token(b->cgroup_id, k, cfg.rate_per_sec, cfg.burst)) {
		b->granted = 1;
		return 1;
	}
	return 0;
}

/* A candidate takes a token from the first of its clauses that has one; a
 * path the kernel could not judge (clauses 0) from the pod's guard.
 * Returns the drop reason + 1, or 0. */
static __always_inline __u32 budget_refusal(__u64 cgid, __u32 clauses)
{
	if (!clauses)
		return take_token(cgid, GUARD_SLOT, cfg.guard_per_sec, cfg.guard_burst) ? 0 : SEC_DROP_GUARD_LIMITED + 1;
	struct budget b = { .cgroup_id = cgid, .clauses = clauses };

	bpf_loop(SEC_CLAUSES, try_clause, &b, 0);
	return b.granted ? 0 : SEC_DROP_RATE_LIMITED + 1;
}

static __always_inline struct security_event *begin(__u32 kind, __u32 syscall)
{
	__u32 zero = 0;
	struct security_event *ev = bpf_map_lookup_elem(&scratch, &zero);

	if (!ev)
		return NULL;
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u64 uid_gid = bpf_get_current_uid_gid();

	ev->ts_ns = bpf_ktime_get_boot_ns();
	ev->cgroup_id = bpf_get_current_cgroup_id();
	ev->ret = 0;
	ev->ptrace_request = 0;
	ev->kind = kind;
	ev->syscall = syscall;
	ev->pid = pid_tgid >> 32;
	ev->tid = (__u32)pid_tgid;
	ev->ppid = BPF_CORE_READ(task, real_parent, tgid);
	/* The thread group leader's: a thread starts later than its process. */
	ev->start_ns = BPF_CORE_READ(task, group_leader, start_boottime);
	ev->parent_start_ns = BPF_CORE_READ(task, real_parent, group_leader, start_boottime);
	ev->uid = (__u32)uid_gid;
	ev->gid = uid_gid >> 32;
	ev->flags = 0;
	ev->mode = 0;
	ev->target_pid = 0;
	ev->family = 0;
	ev->dst_port = 0;
	ev->args_len = 0;
	__builtin_memset(ev->dst_addr, 0, sizeof(ev->dst_addr));
	bpf_get_current_comm(ev->comm, sizeof(ev->comm));
	BPF_CORE_READ_STR_INTO(&ev->parent_comm, task, real_parent, comm);
	ev->clauses = 0;
	ev->pad = 0;
	ev->path[0] = 0;
	ev->cwd[0] = 0;
	ev->exe[0] = 0;
	ev->args[0] = 0;
	return ev;
}

#define PATH_DEPTH 64	/* directory levels walked; deeper: left empty, user space reads /proc */
#define PATH_MASK (SEC_PATH_LEN - 1)

struct path_walk {
	char *buf;
	struct dentry *d, *root;
	struct vfsmount *vm, *root_mnt;
	struct mount *mnt;
	__u32 mnt_off;
	__u32 pos;		/* buf[pos..255] holds the path so far */
	int done;		/* 1: reached the root; -1: too long */
};

/* One step up: a name, or a mount crossed.  Fields of w are copied to locals
 * first: inside BPF_CORE_READ they would be taken for kernel types. */
static long path_step(__u32 i, struct path_walk *w)
{
	struct dentry *d = w->d;
	struct vfsmount *vm = w->vm;
	struct mount *mnt = w->mnt;

	if (d == w->root && vm == w->root_mnt) {
		w->done = 1;
		return 1;
	}
	struct dentry *parent = BPF_CORE_READ(d, d_parent);

	if (d == BPF_CORE_READ(vm, mnt_root) || d == parent) {
		struct mount *up = BPF_CORE_READ(mnt, mnt_parent);

		if (up == mnt) {
			w->done = 1;	/* the namespace's root */
			return 1;
		}
		w->d = BPF_CORE_READ(mnt, mnt_mountpoint);
		w->mnt = up;
		w->vm = (void *)up + w->mnt_off;
		return 0;
	}
	__u32 len = BPF_CORE_READ(d, d_name.len);
	__u32 pos = w->pos;

	if (len == 0 || len >= pos) {
		w->done = -1;
		return 1;
	}
	pos -= len;
	bpf_probe_read_kernel(w->buf + (pos & PATH_MASK), len & PATH_MASK, BPF_CORE_READ(d, d_name.name));
	pos--;
	w->buf[pos & PATH_MASK] = '/';
	w->pos = pos;
	w->d = parent;
	return 0;
}

/* A path as the calling task sees it (up to its own root, so a container's
 * path), walked from a dentry and mount in the kernel: short-lived processes
 * keep it, and reading it needs no access to /proc/<pid>.  The dentry walk
 * Falco and Tracee do, crossing mounts, in bpf_loop so the verifier checks
 * one step, not every depth.  Names are written from the end of a
 * 2 x 256-byte buffer back, offsets masked so every access is in bounds.  A
 * path longer than 255 bytes or deeper than PATH_DEPTH leaves ``out`` empty
 * rather than cut (user space then reads /proc). */
static __always_inline void read_path(char *out, struct fs_struct *fs, struct dentry *d, struct vfsmount *vm)
{
	__u32 zero = 0;
	char *buf = bpf_map_lookup_elem(&path_scratch, &zero);

	if (!buf || !d || !vm)
		return;
	/* container_of(), with the offset relocated for the running kernel. */
	__u32 mnt_off = bpf_core_field_offset(struct mount, mnt);
	struct path_walk w = {
		.buf = buf,
		.root = BPF_CORE_READ(fs, root.dentry),
		.root_mnt = BPF_CORE_READ(fs, root.mnt),
		.d = d,
		.vm = vm,
		.mnt_off = mnt_off,
		.pos = PATH_MASK,
	};

	w.mnt = (void *)w.vm - mnt_off;
	buf[PATH_MASK] = 0;
	bpf_loop(PATH_DEPTH, path_step, &w, 0);
	if (w.done != 1)
		return;
	if (w.pos == PATH_MASK) {	/* the root itself */
		out[0] = '/';
		out[1] = 0;
		return;
	}
	bpf_probe_read_kernel(out, (SEC_PATH_LEN - w.pos) & PATH_MASK, buf + (w.pos & PATH_MASK));
	out[PATH_MASK] = 0;
}

static __always_inline struct fs_struct *current_fs(void)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();

	return BPF_CORE_READ(task, fs);
}

/* The working directory, for exec and relative-path events. */
static __always_inline void read_cwd(struct security_event *ev)
{
	struct fs_struct *fs = current_fs();

	if (fs)
		read_path(ev->cwd, fs, BPF_CORE_READ(fs, pwd.dentry), BPF_CORE_READ(fs, pwd.mnt));
}

/* The executable, for the events that are sent (not exec: its path is it). */
static __always_inline void read_exe(struct security_event *ev)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct file *exe = BPF_CORE_READ(task, mm, exe_file);
	struct fs_struct *fs = current_fs();

	if (exe && fs)
		read_path(ev->exe, fs, BPF_CORE_READ(exe, f_path.dentry), BPF_CORE_READ(exe, f_path.mnt));
}

/* Send now (exec: no exit to wait for). */
static __always_inline void emit(struct security_event *ev)
{
	__u32 refused = budget_refusal(ev->cgroup_id, ev->clauses);

	if (refused) {
		count_drop(refused - 1, ev->kind);
		return;
	}
	if (bpf_ringbuf_output(&security_events, ev, sizeof(*ev), 0))
		count_drop(SEC_DROP_RINGBUF_FULL, ev->kind);
}

/* Hold until the syscall's exit tracepoint adds the return code. */
static __always_inline void hold(struct security_event *ev)
{
	read_exe(ev);
	if (bpf_map_update_elem(&pending, &ev->tid, ev, BPF_ANY))
		count_drop(SEC_DROP_PENDING_FULL, ev->kind);
}

static __always_inline int finish(struct trace_event_raw_sys_exit *ctx)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct security_event *ev = bpf_map_lookup_elem(&pending, &tid);

	if (!ev)
		return 0;
	ev->ret = ctx->ret;
	emit(ev);
	bpf_map_delete_elem(&pending, &tid);
	return 0;
}

/* A path the prefix test may not judge: user space normalizes it before
 * matching (fields.normalize_path), or sees only part of it.  That is a path
 * that is relative or unreadable, fills the buffer (n, the read's length with
 * its NUL, is SEC_PATH_LEN: the cut may hide a "/../"), or holds //, /./ or
 * /../ anywhere, or ends in /. or /..
 *
 * The whole string is scanned, not a prefix of it: /opt/<27 a>/../../etc/shadow
 * is /etc/shadow.  A plain bounded loop that stops at the NUL: per byte of an
 * ordinary path a load and two compares (only a '/' looks ahead), and the
 * verifier walks it once per byte (unrolled, 255 steps would bloat every open
 * program).  A byte is read only after the one before it was non-NUL, so no
 * read goes past the string. */
static __always_inline bool unnormalized(const char *p, long n)
{
	if (n <= 1 || n >= SEC_PATH_LEN || p[0] != '/')
		return true;
	for (__u32 i = 0; i < SEC_PATH_LEN - 1; i++) {
		if (p[i] == 0)
			return false;
		if (p[i] != '/')
			continue;
		char a = p[i + 1];

		if (a == '/')
			return true;	/* "//" */
		if (a != '.')
			continue;
		char b = p[i + 2];

		if (b == 0 || b == '/')
			return true;	/* "/./", trailing "/." */
		if (b != '.')
			continue;
		char c = p[i + 3];

		if (c == 0 || c == '/')
			return true;	/* "/../", trailing "/.." */
	}
	return false;
}

/* ---- the filter: clauses from the rules (podsight.security.kernel_filter) ---- */

struct path_match {
	const char *p;
	__u32 clauses;		/* of the entries the path matched */
};

/* One path entry: equal to it, or starting with it. */
static long match_path(__u32 i, struct path_match *m)
{
	__u64 idx = i;

	barrier_var(idx);	/* a 64-bit copy, checked and used as is (see test_clause) */
	if (idx >= cfg.n_paths || idx >= SEC_MATCH_PATHS)
		return 1;
	const volatile struct sec_match_path *e = &cfg.paths[idx];
	const char *p = m->p;
	__u32 len = e->len;

	for (__u32 j = 0; j < SEC_MATCH_PATH_LEN; j++) {
		if (j >= len)
			break;
		if (p[j] != e->s[j])
			return 0;
	}
	if (!e->exact || (len < SEC_MATCH_PATH_LEN && p[len & (SEC_MATCH_PATH_LEN - 1)] == 0))
		m->clauses |= e->clauses;
	return 0;
}

struct comm_match {
	__u64 comm[2];		/* the task comm, NUL-padded as bpf_get_current_comm() writes it */
	__u32 include;
	__u32 exclude;
};

/* One comm entry: two word compares. */
static long match_comm(__u32 i, struct comm_match *m)
{
	__u64 idx = i;

	barrier_var(idx);	/* a 64-bit copy, checked and used as is (see test_clause) */
	if (idx >= cfg.n_comms || idx >= SEC_MATCH_COMMS)
		return 1;
	const volatile struct sec_match_comm *e = &cfg.comms[idx];
	const volatile __u64 *w = (const volatile __u64 *)e->s;	/* 8-aligned: include, exclude before it */

	if (w[0] != m->comm[0] || w[1] != m->comm[1])
		return 0;
	m->include = e->include;
	m->exclude = e->exclude;
	return 1;
}

#define O_PATH 010000000

struct clause_test {
	__u32 mine;		/* clauses of the event's kind, less those whose rule excepts the comm */
	__u32 path_clauses;	/* of the path entries the path matched */
	__u32 comm_clauses;	/* of the comm entry the comm matched */
	__u32 mode;
	bool read, write;
	__u32 ok;		/* out: the clauses passed */
};

/* One clause: does the event pass every test it needs? */
static long test_clause(__u32 k, struct clause_test *t)
{
	if (k >= SEC_CLAUSES || !(t->mine >> k))
		return 1;
	if (!((t->mine >> k) & 1))
		return 0;
	/* clang proves k < 32 and indexes with a zero-extended copy the
	 * verifier has no bound for; a 64-bit copy clang cannot see through,
	 * masked, keeps one. */
	__u64 i = k;

	barrier_var(i);
	i &= SEC_CLAUSES - 1;
	const volatile struct sec_clause *c = &cfg.clauses[i];
	__u32 bit = 1u << i;
	__u32 need = c->need, mode_any = c->mode_any;

	if ((need & CLAUSE_PATH) && !(t->path_clauses & bit))
		return 0;
	if ((need & CLAUSE_COMM) && !(t->comm_clauses & bit))
		return 0;
	if ((need & CLAUSE_READ) && !t->read)
		return 0;
	if ((need & CLAUSE_WRITE) && !t->write)
		return 0;
	if (mode_any && !(t->mode & mode_any))
		return 0;
	t->ok |= bit;
	return 0;
}

/* The clauses of ``kind`` the event passes, its path having matched the
 * entries in ``path_clauses``. */
static __always_inline __u32 passes(__u32 kind, __u32 path_clauses, __u64 flags, __u32 mode,
				    const struct comm_match *cm)
{
	struct clause_test t = {
		.mine = cfg.kind_clauses[kind & 7] & ~cm->exclude,
		.path_clauses = path_clauses,
		.comm_clauses = cm->include,
		.mode = mode,
		.read = (flags & 3) != O_WRONLY && !(flags & O_PATH),
		.write = flags & (O_WRONLY | O_RDWR | O_CREAT | O_TRUNC),
	};

	if (t.mine)
		bpf_loop(SEC_CLAUSES, test_clause, &t, 0);
	return t.ok;
}

/* Sets ev->clauses, the clauses the event is a candidate for; false: it can
 * match no rule, drop it.  A path the kernel cannot judge is sent with no
 * clause (it spends the guard) unless a clause passes whatever the path is,
 * and dropped only when no path at all would make it pass. */
static __always_inline bool judge(struct security_event *ev, bool has_path, long n, __u64 flags, __u32 mode)
{
	struct comm_match cm = {};

	__builtin_memcpy(cm.comm, ev->comm, sizeof(cm.comm));	/* begin() read it, NUL-padded */
	bpf_loop(SEC_MATCH_COMMS, match_comm, &cm, 0);
	if (has_path && unnormalized(ev->path, n)) {
		if (!passes(ev->kind, ~0u, flags, mode, &cm))
			return false;
		ev->clauses = passes(ev->kind, 0, flags, mode, &cm);
		return true;
	}
	struct path_match pm = { .p = ev->path };

	if (has_path)
		bpf_loop(SEC_MATCH_PATHS, match_path, &pm, 0);
	ev->clauses = passes(ev->kind, pm.clauses, flags, mode, &cm);
	return ev->clauses != 0;
}

/* ---- exec ---- */

SEC("tracepoint/sched/sched_process_exec")
int sec_exec(struct trace_event_raw_sched_process_exec *ctx)
{
	if (!in_pod())
		return 0;
	struct security_event *ev = begin(SEC_EXEC, SYSC_EXECVE);

	if (!ev)
		return 0;
	unsigned int off = ctx->__data_loc_filename & 0xFFFF;

	long n = bpf_probe_read_kernel_str(ev->path, sizeof(ev->path), (void *)ctx + off);

	if (!judge(ev, true, n, 0, 0))
		return 0;
	read_cwd(ev);

	/* argv from the new image's memory: NUL-separated, bounded. */
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	__u64 start = BPF_CORE_READ(task, mm, arg_start);
	__u64 end = BPF_CORE_READ(task, mm, arg_end);
	__u64 len = end - start;

	if (end > start) {
		barrier_var(len);
		if (len > SEC_ARGS_LEN)
			len = SEC_ARGS_LEN;
		if (bpf_probe_read_user(ev->args, len, (void *)start) == 0)
			ev->args_len = end - start;	/* > SEC_ARGS_LEN means truncated */
	}
	emit(ev);
	return 0;
}

/* ---- open ---- */

static __always_inline int open_enter(__u32 syscall, const char *path, __u64 flags, __u32 mode)
{
	if (!in_pod())
		return 0;
	struct security_event *ev = begin(SEC_OPEN, syscall);

	if (!ev)
		return 0;
	long n = bpf_probe_read_user_str(ev->path, sizeof(ev->path), path);

	if (!judge(ev, true, n, flags, mode))
		return 0;
	if (ev->path[0] != '/')
		read_cwd(ev);
	ev->flags = flags;
	ev->mode = mode;
	hold(ev);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_openat")
int sec_openat(struct trace_event_raw_sys_enter *ctx)
{
	return open_enter(SYSC_OPENAT, (const char *)ctx->args[1], ctx->args[2], ctx->args[3]);
}

SEC("tracepoint/syscalls/sys_enter_openat2")
int sec_openat2(struct trace_event_raw_sys_enter *ctx)
{
	struct open_how how = {};

	bpf_probe_read_user(&how, sizeof(how), (void *)ctx->args[2]);
	return open_enter(SYSC_OPENAT2, (const char *)ctx->args[1], how.flags, how.mode);
}

/* open(2) and creat(2): not on every architecture (arm64 has only openat),
 * so their tracepoints may be missing and stay unattached. */
SEC("tracepoint/syscalls/sys_enter_open")
int sec_open(struct trace_event_raw_sys_enter *ctx)
{
	return open_enter(SYSC_OPEN, (const char *)ctx->args[0], ctx->args[1], ctx->args[2]);
}

SEC("tracepoint/syscalls/sys_enter_creat")
int sec_creat(struct trace_event_raw_sys_enter *ctx)
{
	return open_enter(SYSC_CREAT, (const char *)ctx->args[0], O_CREAT | O_WRONLY | O_TRUNC, ctx->args[1]);
}

SEC("tracepoint/syscalls/sys_exit_open")
int sec_open_exit(struct trace_event_raw_sys_exit *ctx) { return finish(ctx); }

SEC("tracepoint/syscalls/sys_exit_creat")
int sec_creat_exit(struct trace_event_raw_sys_exit *ctx) { return finish(ctx); }

SEC("tracepoint/syscalls/sys_exit_openat")
int sec_openat_exit(struct trace_event_raw_sys_exit *ctx) { return finish(ctx); }

SEC("tracepoint/syscalls/sys_exit_openat2")
int sec_openat2_exit(struct trace_event_raw_sys_exit *ctx) { return finish(ctx); }

/* ---- chmod ---- */

static __always_inline int chmod_enter(__u32 syscall, const char *path, __u32 mode)
{
	if (!in_pod())
		return 0;
	struct security_event *ev = begin(SEC_CHMOD, syscall);

	if (!ev)
		return 0;
	long n = path ? bpf_probe_read_user_str(ev->path, sizeof(ev->path), path) : 0;

	if (!judge(ev, path != NULL, n, 0, mode))	/* fchmod: no path, none matches */
		return 0;
	if (path && ev->path[0] != '/')
		read_cwd(ev);
	ev->mode = mode;
	hold(ev);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_chmod")
int sec_chmod(struct trace_event_raw_sys_enter *ctx)
{
	return chmod_enter(SYSC_CHMOD, (const char *)ctx->args[0], ctx->args[1]);
}

SEC("tracepoint/syscalls/sys_enter_fchmodat")
int sec_fchmodat(struct trace_event_raw_sys_enter *ctx)
{
	return chmod_enter(SYSC_FCHMODAT, (const char *)ctx->args[1], ctx->args[2]);
}

SEC("tracepoint/syscalls/sys_enter_fchmodat2")
int sec_fchmodat2(struct trace_event_raw_sys_enter *ctx)
{
	return chmod_enter(SYSC_FCHMODAT2, (const char *)ctx->args[1], ctx->args[2]);
}

SEC("tracepoint/syscalls/sys_enter_fchmod")
int sec_fchmod(struct trace_event_raw_sys_enter *ctx)
{
	return chmod_enter(SYSC_FCHMOD, NULL, ctx->args[1]);
}

SEC("tracepoint/syscalls/sys_exit_chmod")
int sec_chmod_exit(struct trace_event_raw_sys_exit *ctx) { return finish(ctx); }

SEC("tracepoint/syscalls/sys_exit_fchmodat")
int sec_fchmodat_exit(struct trace_event_raw_sys_exit *ctx) { return finish(ctx); }

SEC("tracepoint/syscalls/sys_exit_fchmodat2")
int sec_fchmodat2_exit(struct trace_event_raw_sys_exit *ctx) { return finish(ctx); }

SEC("tracepoint/syscalls/sys_exit_fchmod")
int sec_fchmod_exit(struct trace_event_raw_sys_exit *ctx) { return finish(ctx); }

/* ---- ptrace ---- */

SEC("tracepoint/syscalls/sys_enter_ptrace")
int sec_ptrace(struct trace_event_raw_sys_enter *ctx)
{
	if (!in_pod())
		return 0;
	struct security_event *ev = begin(SEC_PTRACE, SYSC_PTRACE);

	if (!ev)
		return 0;
	ev->ptrace_request = ctx->args[0];
	ev->target_pid = ctx->args[1];
	if (cfg.n_requests) {
		bool wanted = false;

		for (__u32 i = 0; i < SEC_REQUESTS; i++)
			if (i < cfg.n_requests && cfg.requests[i] == ev->ptrace_request)
				wanted = true;
		if (!wanted)
			return 0;
	}
	if (!judge(ev, false, 0, 0, 0))
		return 0;
	hold(ev);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_ptrace")
int sec_ptrace_exit(struct trace_event_raw_sys_exit *ctx) { return finish(ctx); }

/* ---- connect ---- */

SEC("tracepoint/syscalls/sys_enter_connect")
int sec_connect(struct trace_event_raw_sys_enter *ctx)
{
	if (!in_pod())
		return 0;
	const void *uaddr = (const void *)ctx->args[1];
	__u16 family = 0;

	bpf_probe_read_user(&family, sizeof(family), uaddr);
	if (cfg.n_families) {
		bool wanted = false;

		for (__u32 i = 0; i < SEC_FAMILIES; i++)
			if (i < cfg.n_families && cfg.families[i] == family)
				wanted = true;
		if (!wanted)
			return 0;
	}
	struct security_event *ev = begin(SEC_CONNECT, SYSC_CONNECT);

	if (!ev)
		return 0;
	if (!judge(ev, false, 0, 0, 0))
		return 0;
	ev->family = family;
	if (family == AF_INET) {
		struct sockaddr_in sin = {};

		bpf_probe_read_user(&sin, sizeof(sin), uaddr);
		ev->dst_port = __builtin_bswap16(sin.sin_port);
		__builtin_memcpy(ev->dst_addr, &sin.sin_addr, 4);
	} else {
		struct sockaddr_in6 sin6 = {};

		bpf_probe_read_user(&sin6, sizeof(sin6), uaddr);
		ev->dst_port = __builtin_bswap16(sin6.sin6_port);
		__builtin_memcpy(ev->dst_addr, &sin6.sin6_addr, 16);
	}
	hold(ev);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_connect")
int sec_connect_exit(struct trace_event_raw_sys_exit *ctx) { return finish(ctx); }
