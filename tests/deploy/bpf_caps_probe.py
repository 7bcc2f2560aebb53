"""Try the kernel operations the agent performs, report which succeed.

Run by test_capabilities.py under `setpriv` with a chosen capability set.
Plain bpf()/perf_event_open() syscalls through ctypes, with the smallest
programs the verifier accepts (r0 = 1; exit), so it needs neither clang nor
the project's objects. Prints one JSON object: operation → "ok" or errno name.
Usage: bpf_caps_probe.py CGROUP_DIR TRACEFS_DIR OTHER_USERS_PID
"""
from __future__ import annotations

import ctypes
import errno
import json
import os
import platform
import struct
import sys

SYSCALLS = {"x86_64": (321, 298), "aarch64": (280, 241)}  # (bpf, perf_event_open)
NR_BPF, NR_PERF_EVENT_OPEN = SYSCALLS[platform.machine()]

BPF_MAP_CREATE, BPF_PROG_LOAD, BPF_PROG_TEST_RUN, BPF_LINK_CREATE, BPF_ENABLE_STATS = 0, 5, 10, 28, 32
PROG_KPROBE, PROG_TRACEPOINT, PROG_CGROUP_SKB, PROG_RAW_TRACEPOINT, PROG_TRACING = 2, 5, 8, 17, 26
BPF_TRACE_RAW_TP = 23  # tp_btf
BPF_TRACE_UPROBE_MULTI = 48
MAP_RINGBUF = 27
CGROUP_INET_INGRESS = 0
PERF_TYPE_TRACEPOINT = 2
PERF_FLAG_FD_CLOEXEC = 8
ATTR_SIZE = 144

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
_keep = []  # buffers referenced by address must outlive the call


def result(ret: int) -> str:
    return "ok" if ret >= 0 else errno.errorcode.get(-ret, str(-ret))


def bpf(cmd: int, attr: bytes) -> int:
    buf = ctypes.create_string_buffer(attr.ljust(ATTR_SIZE, b"\0"), ATTR_SIZE)
    ret = libc.syscall(NR_BPF, cmd, buf, ATTR_SIZE)
    return ret if ret >= 0 else -ctypes.get_errno()


def prog_load(prog_type: int, expected_attach_type: int = 0, attach_btf_id: int = 0) -> int:
    insns = struct.pack("<BBhi", 0xB7, 0, 0, 1) + struct.pack("<BBhi", 0x95, 0, 0, 0)
    code, lic = ctypes.create_string_buffer(insns), ctypes.create_string_buffer(b"GPL")
    _keep.extend([code, lic])
    # prog_type, insn_cnt, insns, license, log_level, log_size, log_buf, kern_version, prog_flags
    attr = struct.pack("<IIQQIIQII", prog_type, 2, ctypes.addressof(code), ctypes.addressof(lic), 0, 0, 0, 0, 0)
    attr = attr.ljust(68, b"\0") + struct.pack("<I", expected_attach_type)  # expected_attach_type @ 68
    attr = attr.ljust(108, b"\0") + struct.pack("<I", attach_btf_id)  # attach_btf_id @ 108
    return bpf(BPF_PROG_LOAD, attr)


def tp_btf_id(tracepoint: str) -> int:
    """BTF id of the tracepoint's btf_trace_* type, the way libbpf finds it."""
    lib = ctypes.CDLL("libbpf.so.1")
    lib.libbpf_find_vmlinux_btf_id.argtypes = [ctypes.c_char_p, ctypes.c_int]
    return lib.libbpf_find_vmlinux_btf_id(tracepoint.encode(), BPF_TRACE_RAW_TP)


def uprobe_target() -> tuple[bytes, int]:
    """(libc's path, file offset of getpid()): a function for the tls probe's kind of uprobe."""
    addr = ctypes.cast(libc.getpid, ctypes.c_void_p).value
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split()
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            if lo <= addr < hi:
                return parts[5].encode(), addr - lo + int(parts[2], 16)
    raise RuntimeError("getpid() is in no mapping")


def main() -> None:
    cgroup_dir, tracefs, other_pid = sys.argv[1], sys.argv[2], sys.argv[3]
    res = {}
    res["map_create_ringbuf"] = result(bpf(BPF_MAP_CREATE, struct.pack("<IIII", MAP_RINGBUF, 0, 0, 4096)))

    skb = prog_load(PROG_CGROUP_SKB, CGROUP_INET_INGRESS)
    res["prog_load_cgroup_skb"] = result(skb)
    if skb >= 0:
        cg = os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY)
        res["link_cgroup_skb"] = result(bpf(BPF_LINK_CREATE, struct.pack("<IIII", skb, cg, CGROUP_INET_INGRESS, 0)))
    else:
        res["link_cgroup_skb"] = "not-loaded"

    tp = prog_load(PROG_TRACEPOINT)
    res["prog_load_tracepoint"] = result(tp)
    # The TCP probe's inet_sock_set_state program is a tracing program.
    res["prog_load_tp_btf"] = result(prog_load(PROG_TRACING, BPF_TRACE_RAW_TP, tp_btf_id("inet_sock_set_state")))
    # The RTT sampler: a raw_tp program the agent runs on demand (attached nowhere).
    raw = prog_load(PROG_RAW_TRACEPOINT)
    res["prog_load_raw_tp"] = result(raw)
    res["prog_test_run_raw_tp"] = result(bpf(BPF_PROG_TEST_RUN, struct.pack("<I", raw))) if raw >= 0 else "not-loaded"
    with open(os.path.join(tracefs, "events/sched/sched_process_exec/id")) as f:
        tp_id = int(f.read())
    # perf_event_attr: type, size, config, sample_period, sample_type, read_format, flags
    attr = ctypes.create_string_buffer(struct.pack("<IIQQQQQ", PERF_TYPE_TRACEPOINT, 128, tp_id, 1, 0, 0, 0).ljust(128, b"\0"), 128)
    pfd = libc.syscall(NR_PERF_EVENT_OPEN, attr, -1, 0, -1, PERF_FLAG_FD_CLOEXEC)
    res["perf_event_open_tracepoint"] = result(pfd if pfd >= 0 else -ctypes.get_errno())

    # The tls probe: a uprobe_multi link (Linux 6.6) on a library function ...
    um = prog_load(PROG_KPROBE, BPF_TRACE_UPROBE_MULTI)
    res["prog_load_uprobe_multi"] = result(um)
    if um >= 0:
        path, offset = uprobe_target()
        cpath, offs = ctypes.create_string_buffer(path), (ctypes.c_uint64 * 1)(offset)
        _keep.extend([cpath, offs])
        attr = struct.pack("<IIIIQQQQI", um, 0, BPF_TRACE_UPROBE_MULTI, 0, ctypes.addressof(cpath),
                           ctypes.addressof(offs), 0, 0, 1)
        res["link_uprobe_multi"] = result(bpf(BPF_LINK_CREATE, attr))
    else:
        res["link_uprobe_multi"] = "not-loaded"
    # ... in the libssl another user's process maps: its maps, and the file through its root.
    for op, look in (("read_other_users_maps", lambda: open(f"/proc/{other_pid}/maps").read()),
                     ("open_other_users_root", lambda: os.listdir(f"/proc/{other_pid}/root/"))):
        try:
            look()
            res[op] = "ok"
        except OSError as e:
            res[op] = errno.errorcode.get(e.errno, str(e.errno))

    res["enable_stats"] = result(bpf(BPF_ENABLE_STATS, struct.pack("<I", 0)))
    print(json.dumps(res))


if __name__ == "__main__":
    main()
