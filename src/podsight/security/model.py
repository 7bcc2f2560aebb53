"""The plain objects the kernel side hands to rule matching.  Pure; no I/O.

``RawEvent`` is one observation decoded from the security ring buffer.  The
loader fills every field it knows and leaves the defaults otherwise; fields
that make no sense for a kind keep their default (e.g. ``dst_ip`` of an exec).
Identity travels separately as a plain mapping (see ``IDENTITY_KEYS``) so the
identity resolver and this package do not import each other.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..kernel.layouts import SEC_KINDS

__all__ = ["EVENT_KINDS", "IDENTITY_KEYS", "RawEvent", "host_identity"]

# One kind per family of syscalls; the loader folds variants together
# (execve/execveat/sched_process_exec → exec, open/creat/openat/openat2 → open,
# chmod/fchmod/fchmodat/fchmodat2 → chmod) and names the real one in ``syscall``.
EVENT_KINDS = SEC_KINDS  # enum sec_kind, by value (bpf/podsight.h)

# Keys of the identity mapping.  Host processes: in_pod False, names empty.
IDENTITY_KEYS = (
    "node",
    "namespace",
    "pod",
    "container",
    "image",
    "workload",
    "workload_kind",
    "pod_uid",
    "container_id",
    "host_cgroup",
    "in_pod",
)


@dataclass(slots=True)
class RawEvent:
    """One syscall (or exec) observation.

    Strings are what the kernel read, decoded as UTF-8 with replacement.
    ``path`` is the argument as the process passed it (possibly relative;
    ``cwd`` lets user space resolve it), read at syscall entry: see the
    TOCTOU section of docs/security.md.
    """

    kind: str                      # one of EVENT_KINDS
    ts_ns: int = 0                 # CLOCK_REALTIME, nanoseconds
    cgroup_id: int = 0
    pid: int = 0                   # thread-group id (what ps calls PID)
    tid: int = 0
    ppid: int = 0
    uid: int = 0
    gid: int = 0
    comm: str = ""                 # task comm, at most 15 bytes
    exe: str = ""                  # executable path of the process
    parent_comm: str = ""
    parent_exe: str = ""           # the parent's executable, when its start time proves it is still the parent
    start_ns: int = 0              # process start, CLOCK_REALTIME ns: (pid, start_ns) survives PID reuse
    parent_start_ns: int = 0
    args: list[str] = field(default_factory=list)  # argv incl. argv[0] (exec only), bounded
    args_truncated: bool = False   # the kernel hit its argv bound
    cwd: str = ""                  # working directory, "" when unknown
    syscall: str = ""              # e.g. "openat2", "fchmodat", "execve"
    path: str = ""                 # open/chmod/exec filename
    flags: int = 0                 # open flags
    mode: int = 0                  # chmod mode / open creation mode
    ptrace_request: int = 0
    target_pid: int = 0            # ptrace target
    family: int = 0                # connect: address family (AF_INET, AF_INET6, ...)
    dst_ip: str = ""               # connect: textual address, "" when not IP
    dst_port: int = 0
    ret: int = 0                   # syscall return value (0 / fd / -errno)


def host_identity(node: str = "", host_cgroup: str = "") -> dict[str, object]:
    """The identity mapping of a process outside any pod."""
    ident: dict[str, object] = {k: "" for k in IDENTITY_KEYS}
    ident.update(node=node, host_cgroup=host_cgroup, in_pod=False)
    return ident
