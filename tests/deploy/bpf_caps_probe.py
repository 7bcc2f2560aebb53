"""Try the kernel operations the agent performs, report which succeed.

Run by test_capabilities.py under `setpriv` with a chosen capability set.
Plain bpf()/perf_event_open() syscalls through ctypes, with the smallest
programs the verifier accepts (r0 = 1; exit), so it needs neither clang nor
the project's objects. Prints one JSON object: operation → "ok" or errno name.
Usage: bpf_caps_probe.py CGROUP_DIR TRACEFS_DIR OTHER_USERS_PID
       bpf_caps_probe.py --conntrack   (the dump's result and the original
                                        tuples it returned, as JSON)
       bpf_caps_probe.py --setns-net PID   (setns() into /proc/PID/ns/net)

The conntrack operations are flows' (config.flows.conntrack): a
NETLINK_NETFILTER socket asks ctnetlink for a dump of this network
namespace's conntrack table (IPCTNL_MSG_CT_GET, NLM_F_DUMP) and subscribes
to its event groups; nfnetlink answers EPERM to both without CAP_NET_ADMIN
in the user namespace that owns the network namespace.
"""
from __future__ import annotations

import ctypes
import errno
import json
import os
import platform
import socket
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


# netlink / nfnetlink / ctnetlink (linux/netlink.h, linux/netfilter/nfnetlink*.h)
NETLINK_NETFILTER = 12
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
NFNL_SUBSYS_CTNETLINK, IPCTNL_MSG_CT_GET = 1, 1
NFNLGRP_CONNTRACK_NEW, NFNLGRP_CONNTRACK_DESTROY = 1, 3
CTA_TUPLE_ORIG, CTA_TUPLE_IP, CTA_TUPLE_PROTO = 1, 1, 2
CTA_IP_V4_SRC, CTA_IP_V4_DST, CTA_IP_V6_SRC, CTA_IP_V6_DST = 1, 2, 3, 4
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3
NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED / NLA_F_NET_BYTEORDER


def _attrs(buf: bytes) -> dict[int, bytes]:
    out, off = {}, 0
    while off + 4 <= len(buf):
        length, typ = struct.unpack_from("=HH", buf, off)
        if length < 4:
            break
        out[typ & NLA_TYPE_MASK] = buf[off + 4:off + length]
        off += (length + 3) & ~3
    return out


def _orig_tuple(payload: bytes) -> list:
    """[src, dst, proto, sport, dport] of a conntrack message's original direction."""
    orig = _attrs(_attrs(payload[4:]).get(CTA_TUPLE_ORIG, b""))  # after the nfgenmsg
    ip, proto = _attrs(orig.get(CTA_TUPLE_IP, b"")), _attrs(orig.get(CTA_TUPLE_PROTO, b""))
    if CTA_IP_V4_SRC in ip:
        src, dst = (socket.inet_ntop(socket.AF_INET, ip[k]) for k in (CTA_IP_V4_SRC, CTA_IP_V4_DST))
    else:
        src, dst = (socket.inet_ntop(socket.AF_INET6, ip[k]) for k in (CTA_IP_V6_SRC, CTA_IP_V6_DST))
    port = lambda k: struct.unpack("!H", proto[k])[0] if k in proto else 0  # noqa: E731
    return [src, dst, proto[CTA_PROTO_NUM][0], port(CTA_PROTO_SRC_PORT), port(CTA_PROTO_DST_PORT)]


def conntrack_dump(family: int = socket.AF_INET) -> tuple[str, list]:
    """Dump this network namespace's conntrack table: ("ok", tuples) or (errno name, [])."""
    try:
        return _conntrack_dump(family)
    except OSError as e:  # socket() refused (a seccomp profile), say
        return errno.errorcode.get(e.errno, str(e.errno)), []


def _conntrack_dump(family: int) -> tuple[str, list]:
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER) as s:
        s.bind((0, 0))
        # nlmsghdr (len, type, flags, seq, pid) + nfgenmsg (family, version, res_id)
        s.send(struct.pack("=IHHII", 20, NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_GET,
                           NLM_F_REQUEST | NLM_F_DUMP, 1, 0) + struct.pack("=BBH", family, 0, 0))
        tuples = []
        while True:
            data, off = s.recv(1 << 16), 0
            while off + 16 <= len(data):
                length, typ = struct.unpack_from("=IH", data, off)
                if typ == NLMSG_DONE:
                    return "ok", tuples
                if typ == NLMSG_ERROR:
                    err = -struct.unpack_from("=i", data, off + 16)[0]
                    return ("ok" if err == 0 else errno.errorcode.get(err, str(err))), tuples
                tuples.append(_orig_tuple(data[off + 16:off + length]))
                off += (length + 3) & ~3


def conntrack_subscribe() -> str:
    """Join the conntrack new/destroy event groups, as an event-driven reader would."""
    groups = 1 << (NFNLGRP_CONNTRACK_NEW - 1) | 1 << (NFNLGRP_CONNTRACK_DESTROY - 1)
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER) as s:
            s.bind((0, groups))
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))


CLONE_NEWNET = 0x40000000


def setns_netns(pid: str) -> str:
    """The alternative to hostNetwork: enter a host process's network namespace
    (/proc/<pid>/ns/net) from the pod's own."""
    try:
        fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        return "open: " + errno.errorcode.get(e.errno, str(e.errno))
    try:
        ret = libc.setns(fd, CLONE_NEWNET)
        return result(ret if ret >= 0 else -ctypes.get_errno())
    finally:
        os.close(fd)


def main() -> None:
    if sys.argv[1:] == ["--conntrack"]:
        res, tuples = conntrack_dump()
        print(json.dumps({"conntrack_dump": res, "tuples": tuples}))
        return
    if sys.argv[1:2] == ["--setns-net"]:
        print(json.dumps({"setns_host_netns": setns_netns(sys.argv[2])}))
        return
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
    # flows: Service backends from conntrack (a dump, and the event groups).
    res["conntrack_dump"] = conntrack_dump()[0]
    res["conntrack_events"] = conntrack_subscribe()
    print(json.dumps(res))


if __name__ == "__main__":
    main()
