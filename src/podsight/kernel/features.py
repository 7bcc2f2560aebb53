"""What this kernel offers podsight: the checks behind ``podsight check``."""
from __future__ import annotations

import os
from dataclasses import dataclass

from . import mounts
from .libbpf import MAP_TYPES, PROG_TYPES, lib

__all__ = ["Check", "run_checks", "TRACEPOINTS"]

# Tracepoints each probe family attaches to (category/name under tracefs events/).
TRACEPOINTS = {
    "tcp": [
        "sock/inet_sock_set_state",
        "tcp/tcp_retransmit_skb",
        "tcp/tcp_send_reset",
        "tcp/tcp_receive_reset",
        "tcp/tcp_probe",
        "skb/kfree_skb",
    ],
    "security": [
        "sched/sched_process_exec",
        "syscalls/sys_enter_execve",
        "syscalls/sys_enter_openat",
        "syscalls/sys_exit_openat",
        "syscalls/sys_enter_fchmodat",
        "syscalls/sys_enter_ptrace",
        "syscalls/sys_enter_connect",
    ],
}

BPF_FUNC_SKB_CGROUP_ID = 79


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    core: bool  # the agent cannot run at all without it


def _probe_prog(kind: str) -> bool:
    return lib.libbpf_probe_bpf_prog_type(PROG_TYPES[kind], None) == 1


def run_checks() -> list[Check]:
    out: list[Check] = []
    btf = "/sys/kernel/btf/vmlinux"
    out.append(Check("kernel BTF", os.path.exists(btf), btf if os.path.exists(btf) else f"{btf} missing (CONFIG_DEBUG_INFO_BTF)", True))
    try:
        root = mounts.cgroup2_root()
        out.append(Check("cgroup v2", True, root, True))
    except mounts.MountError as e:
        out.append(Check("cgroup v2", False, str(e), True))
    try:
        tracefs = mounts.tracefs_root()
        out.append(Check("tracefs", True, tracefs, False))
    except mounts.MountError as e:
        tracefs = None
        out.append(Check("tracefs", False, str(e), False))

    for kind, core, why in (
        ("cgroup_skb", True, "network probe"),
        ("tracepoint", False, "tcp and security probes"),
        ("raw_tracepoint", False, "tcp probe (inet_sock_set_state, tcp_probe)"),
        ("kprobe", False, "optional, never required"),
        ("tracing", False, "fentry/tp_btf, optional, never required"),
    ):
        ok = _probe_prog(kind)
        out.append(Check(f"program type {kind}", ok, why, core))
    for kind, core in (("percpu_hash", True), ("ringbuf", False)):
        ok = lib.libbpf_probe_bpf_map_type(MAP_TYPES[kind], None) == 1
        out.append(Check(f"map type {kind}", ok, "", core))
    ok = lib.libbpf_probe_bpf_helper(PROG_TYPES["cgroup_skb"], BPF_FUNC_SKB_CGROUP_ID, None) == 1
    out.append(Check("helper bpf_skb_cgroup_id in cgroup_skb", ok, "socket cgroup attribution", True))

    for family, tps in TRACEPOINTS.items():
        for tp in tps:
            ok = tracefs is not None and os.path.isdir(os.path.join(tracefs, "events", tp))
            out.append(Check(f"tracepoint {tp}", ok, f"{family} probe", False))
    return out
