"""What this kernel offers podsight: the checks behind ``podsight check``."""
from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass

from . import mounts
from .families import FAMILIES
from .libbpf import MAP_TYPES, PROG_TYPES, lib

__all__ = ["Check", "run_checks", "TRACEPOINTS"]

# Tracepoints each probe family attaches to (category/name under tracefs
# events/), from the families' declarations.
TRACEPOINTS = {f.name: tps for f in FAMILIES
               if (tps := sorted({h for h in f.programs.values() if h and "/" in h and not h.startswith("cgroup_skb/")}))}

_PERF_TYPE_TRACEPOINT = 2
_SYS_PERF_EVENT_OPEN = {"x86_64": 298, "aarch64": 241}


def perf_event_tracepoint(tracefs: str, tracepoint: str = "sched/sched_process_exec") -> tuple[bool, str]:
    """Open (and close) a perf event on a tracepoint, as libbpf does to
    attach a tracepoint program.  Ubuntu's kernel.perf_event_paranoid = 4
    refuses it to anything without CAP_SYS_ADMIN, CAP_PERFMON or not."""
    nr = _SYS_PERF_EVENT_OPEN.get(os.uname().machine)
    try:
        with open(os.path.join(tracefs, "events", tracepoint, "id")) as f:
            tp_id = int(f.read())
    except (OSError, ValueError) as e:
        return False, f"no tracepoint id: {e}"
    if nr is None:
        return True, "not tried on this architecture"

    class Attr(ctypes.Structure):  # struct perf_event_attr, as far as it is needed (PERF_ATTR_SIZE_VER0 = 64)
        _fields_ = [("type", ctypes.c_uint32), ("size", ctypes.c_uint32), ("config", ctypes.c_uint64),
                    ("sample_period", ctypes.c_uint64), ("sample_type", ctypes.c_uint64),
                    ("read_format", ctypes.c_uint64), ("flags", ctypes.c_uint64), ("wakeup", ctypes.c_uint32),
                    ("bp_type", ctypes.c_uint32), ("config1", ctypes.c_uint64)]

    attr = Attr(type=_PERF_TYPE_TRACEPOINT, size=ctypes.sizeof(Attr), config=tp_id, sample_period=1)
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.syscall(nr, ctypes.byref(attr), -1, 0, -1, ctypes.c_ulong(8))  # pid -1, cpu 0, PERF_FLAG_FD_CLOEXEC
    if fd < 0:
        err = ctypes.get_errno()
        try:
            with open("/proc/sys/kernel/perf_event_paranoid") as f:
                paranoid = f.read().strip()
        except OSError:
            paranoid = "?"
        return False, f"{os.strerror(err)}; kernel.perf_event_paranoid = {paranoid} (deploy/README.md)"
    os.close(fd)
    return True, ""


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


def uprobe_attaches() -> tuple[bool, str]:
    """Attach a tls program as a uprobe on getpid() in our own libc, the way
    the tls probe attaches to libssl (a uprobe_multi link, or before Linux
    6.6 a perf-event one), and detach it."""
    from .families.tls import UPROBE_PMU, attach_file, configure_object, uprobe_multi
    from .loader import BpfObject

    multi = uprobe_multi()
    if not multi and not os.path.exists(UPROBE_PMU):
        return False, f"no uprobe PMU ({UPROBE_PMU}): CONFIG_UPROBES is off"
    with open("/proc/self/maps") as f:
        libc = next((line.split()[-1] for line in f
                     if line.split()[-1].rsplit("/", 1)[-1].startswith(("libc.so", "libc.musl", "ld-musl"))), None)
    if libc is None:
        return False, "no libc mapped to try a uprobe on"
    try:
        with BpfObject("tls") as obj:
            configure_object(obj, multi)
            for name in obj.program_names():
                obj.set_autoload(name, name == "tls_set_role")
            obj.load()
            attach_file(obj, libc, multi, [("tls_set_role", False, (("getpid", 0),))])
    except (OSError, ValueError) as e:
        return False, str(e)
    return True, "uprobe_multi" if multi else "perf-event uprobe (CAP_SYS_ADMIN)"


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
    if tracefs is not None:
        ok, why = perf_event_tracepoint(tracefs)
        out.append(Check("perf_event_open on a tracepoint", ok,
                         "attaching tcp and security tracepoint programs" + (f" ({why})" if why else ""), False))
    for obj, prog, what in (("tcp", "tcp_rtt_sample", "tcp probe: RTT sampler"),
                            ("security", "sec_openat", "security probe: the rules' kernel filter (bpf_loop, 5.17+)")):
        ok, why = program_loads(obj, prog)
        out.append(Check(f"program {prog}", ok, what + (f" ({why})" if why else ""), False))
    ok, why = uprobe_attaches()
    out.append(Check("uprobe attach", ok, f"tls probe: TLS handshakes in libssl ({why})", False))
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
