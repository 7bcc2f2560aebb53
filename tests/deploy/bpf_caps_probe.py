"""Try the kernel operations the agent performs, report which succeed.

Run by test_capabilities.py under `setpriv` with a chosen capability set.
Plain bpf()/perf_event_open() syscalls through ctypes, with the smallest
programs the verifier accepts (r0 = 1; exit), so it needs neither clang nor
the project's objects. Prints one JSON object: operation → "ok" or errno name.
Usage: bpf_caps_probe.py CGROUP_DIR TRACEFS_DIR
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
PROG_TRACEPOINT, PROG_CGROUP_SKB, PROG_RAW_TRACEPOINT, PROG_TRACING = 5, 8, 17, 26
BPF_TRACE_RAW_TP = 23  # tp_btf
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


def main() -> None:
    cgroup_dir, tracefs = sys.argv[1], sys.argv[2]
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

    res["enable_stats"] = result(bpf(BPF_ENABLE_STATS, struct.pack("<I", 0)))
    print(json.dumps(res))


if __name__ == "__main__":
    main()
