"""What this kernel offers podsight: the checks behind ``podsight check``."""
from __future__ import annotations

import ctypes
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
        "skb/kfree_skb",
    ],
    "security": [
        "sched/sched_process_exec",
        "syscalls/sys_enter_execve",
        "syscalls/sys_enter_open",
        "syscalls/sys_enter_creat",
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


class _ProgLoadOpts(ctypes.Structure):
    """The head of libbpf's struct bpf_prog_load_opts, up to attach_btf_id."""

    _fields_ = [("sz", ctypes.c_size_t), ("attempts", ctypes.c_int), ("expected_attach_type", ctypes.c_int),
                ("prog_btf_fd", ctypes.c_uint32), ("prog_flags", ctypes.c_uint32), ("prog_ifindex", ctypes.c_uint32),
                ("kern_version", ctypes.c_uint32), ("attach_btf_id", ctypes.c_uint32)]


BPF_TRACE_RAW_TP = 23


def program_loads(obj_name: str, prog: str) -> tuple[bool, str]:
    """Whether this kernel loads one of our programs, the real one, alone:
    a verifier or a policy may refuse a program whose every ingredient a
    generic probe finds present (the 6.18 development VMs refuse map-element
    iterators with EPERM)."""
    from .loader import BpfObject

    try:
        with BpfObject(obj_name) as obj:
            for name in obj.program_names():
                obj.set_autoload(name, name == prog)
            obj.load()
    except (OSError, ValueError) as e:
        return False, str(e)
    return True, ""


def probe_tp_btf(tracepoint: str = "inet_sock_set_state") -> bool:
    """Load a two-instruction tp_btf program: libbpf's generic prog-type probe
    cannot tell, because a tracing program needs a BTF attach target."""
    btf_id = lib.libbpf_find_vmlinux_btf_id(tracepoint.encode(), BPF_TRACE_RAW_TP)
    if btf_id <= 0:
        return False
    insns = (ctypes.c_uint64 * 2)(0x00000000000000B7, 0x0000000000000095)  # r0 = 0; exit
    opts = _ProgLoadOpts(ctypes.sizeof(_ProgLoadOpts), 0, BPF_TRACE_RAW_TP, 0, 0, 0, 0, btf_id)
    fd = lib.bpf_prog_load(PROG_TYPES["tracing"], b"podsight_probe", b"GPL", insns, 2, ctypes.byref(opts))
    if fd < 0:
        return False
    os.close(fd)
    return True


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
        ("kprobe", False, "optional, never required"),
    ):
        ok = _probe_prog(kind)
        out.append(Check(f"program type {kind}", ok, why, core))
    out.append(Check("program type tracing (tp_btf)", probe_tp_btf(), "tcp probe: connection states", False))
    for obj, prog, what in (("tcp", "tcp_rtt_sample", "tcp probe: RTT sampler"),
                            ("security", "sec_openat", "security probe: the rules' kernel filter (bpf_loop, 5.17+)")):
        ok, why = program_loads(obj, prog)
        out.append(Check(f"program {prog}", ok, what + (f" ({why})" if why else ""), False))
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
