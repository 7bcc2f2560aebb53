"""Service backends from conntrack NAT tuples (``podsight.reader.conntrack``).

Unit tests parse messages captured from this kernel (6.18) and messages built
here, and drive ``NatTable`` with them on an injected clock. The root tests
build a kube-proxy-like node: namespace ``pct-h`` plays the host network
namespace (iptables DNAT from a Service VIP to two backends, forwarding),
``pct-c`` holds the clients (two addresses), ``pct-b`` the backends, whose
server records the peer of every connection it accepts. ``NatTable`` runs
inside ``pct-h`` (its sockets are opened while the test's thread is in that
namespace) and each connection's backend is checked against the server's
record and against ``conntrack -L``.
"""
from __future__ import annotations

import contextlib
import ctypes
import json
import os
import queue
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from podsight.reader import conntrack as ct_mod
from podsight.reader.conntrack import (
    IPS_DST_NAT, MSG_CT_DELETE, MSG_CT_NEW, NLMSG_DONE, Conntrack, NatTable, dump_request, event_filter,
    parse_conntrack, parse_messages,
)
from tests.support.clock import Clock
from tests.support.waiting import wait_for

AF4, AF6 = socket.AF_INET, socket.AF_INET6
SRC = str(Path(__file__).resolve().parents[2] / "src")


def ip(a: str) -> bytes:
    return socket.inet_pton(AF6 if ":" in a else AF4, a)


# --- captured from this kernel (6.18, nf_conntrack built in): ctnetlink bytes as received ----------
# NEW event, IPv4: 10.78.0.2:42000 -> 10.96.78.10:80 DNATed to 10.78.1.3:9090.
EV_NEW_V4 = bytes.fromhex(
    "c4000000000100060000000000000000020000003400018014000180080001000a4e0002080002000a604e0a1c0002800500"
    "01000600000006000200a410000006000300005000003400028014000180080001000a4e0103080002000a4e00021c000280"
    "0500010006000000060002002382000006000300a410000008000c00dcc8743108000300000001a808000700000000783000"
    "04802c0001800500010001000000050002000a000000050003000000000006000400030000000600050000000000")
# NEW event, IPv6: [fd78::2]:42001 -> [fd96::78:10]:80 DNATed to [fd78:1::3]:9090.
EV_NEW_V6 = bytes.fromhex(
    "f40000000001000600000000000000000a0000004c0001802c00018014000300fd7800000000000000000000000000021400"
    "0400fd9600000000000000000000007800101c000280050001000600000006000200a411000006000300005000004c000280"
    "2c00018014000300fd78000100000000000000000000000314000400fd7800000000000000000000000000021c0002800500"
    "010006000000060002002382000006000300a411000008000c007c475f7208000300000001a8080007000000007830000480"
    "2c0001800500010001000000050002000a000000050003000000000006000400030000000600050000000000")
# DESTROY event (from `conntrack -D`) of the first connection.
EV_DESTROY_V4 = bytes.fromhex(
    "a400000002010000000000002cf680e4020000003400018014000180080001000a4e0002080002000a604e0a1c0002800500"
    "01000600000006000200a410000006000300005000003400028014000180080001000a4e0103080002000a4e00021c000280"
    "0500010006000000060002002382000006000300a410000008000c00dcc8743108000300000003ae080007000000003b1000"
    "04800c0001800500010005000000")
# A dump (IPv4, seq 77): one NLM_F_MULTI|NLM_F_DUMP_FILTERED message in a datagram, then NLMSG_DONE.
DUMP_V4 = bytes.fromhex(
    "d4000000000122004d0000008fba18ab020000003400018014000180080001000a4e0002080002000a604e0a1c0002800500"
    "01000600000006000200a412000006000300005000003400028014000180080001000a4e0102080002000a4e00021c000280"
    "0500010006000000060002001f90000006000300a412000008000300000001ae080008000000000008000c0017d5716108000b"
    "0000000001080007000000003b300004802c0001800500010005000000050002000a000000050003000a0000000600040027"
    "0000000600050023000000")
DUMP_DONE = bytes.fromhex("14000000030002004d0000008fba18ab00000000")


def only(buf: bytes) -> Conntrack:
    (msg,) = list(parse_messages(buf))
    return parse_conntrack(buf, msg[3], msg[4])


def test_captured_new_event_v4():
    (typ, flags, seq, a, b), = parse_messages(EV_NEW_V4)
    assert typ == MSG_CT_NEW and seq == 0 and flags == 0x600  # NLM_F_CREATE | NLM_F_EXCL
    c = parse_conntrack(EV_NEW_V4, a, b)
    assert c == Conntrack(AF4, 6, c.status, 0xDCC87431, ip("10.78.0.2"), ip("10.96.78.10"), 42000, 80,
                          ip("10.78.1.3"), ip("10.78.0.2"), 9090, 42000)
    assert c.status & IPS_DST_NAT


def test_captured_new_event_v6():
    c = only(EV_NEW_V6)
    assert (c.family, c.proto, c.orig_src, c.orig_dst, c.orig_sport, c.orig_dport) == (
        AF6, 6, ip("fd78::2"), ip("fd96::78:10"), 42001, 80)
    assert (c.reply_src, c.reply_sport, c.reply_dst, c.reply_dport) == (ip("fd78:1::3"), 9090, ip("fd78::2"), 42001)
    assert c.status & IPS_DST_NAT


def test_captured_destroy_event():
    (typ, *_), = parse_messages(EV_DESTROY_V4)
    c = only(EV_DESTROY_V4)
    assert typ == MSG_CT_DELETE
    assert c.ct_id == only(EV_NEW_V4).ct_id and c.orig_sport == 42000 and c.reply_src == ip("10.78.1.3")


def test_captured_dump_is_multipart_until_done():
    msgs = list(parse_messages(DUMP_V4)) + list(parse_messages(DUMP_DONE))
    assert [(t, f & ct_mod.NLM_F_MULTI, s) for t, f, s, _, _ in msgs] == [(MSG_CT_NEW, 2, 77), (NLMSG_DONE, 2, 77)]
    c = parse_conntrack(DUMP_V4, msgs[0][3], msgs[0][4])
    assert (c.orig_sport, c.reply_src, c.reply_sport) == (42002, ip("10.78.1.2"), 8080)


# --- built here: the encoding as the UAPI headers describe it --------------------------------------

def nla(typ: int, payload: bytes, *, nested: bool = False, netorder: bool = False) -> bytes:
    typ |= (ct_mod.NLA_F_NESTED if nested else 0) | (ct_mod.NLA_F_NET_BYTEORDER if netorder else 0)
    raw = struct.pack("=HH", 4 + len(payload), typ) + payload
    return raw + bytes(-len(raw) % 4)


def tuple_attr(which: int, src: bytes, dst: bytes, sport: int | None, dport: int | None, proto: int = 6,
               nested_flag: bool = True) -> bytes:
    v6 = len(src) == 16
    ips = nla(3 if v6 else 1, src) + nla(4 if v6 else 2, dst)
    pro = nla(1, bytes([proto]))
    if sport is not None:
        pro += nla(2, struct.pack("!H", sport), netorder=True) + nla(3, struct.pack("!H", dport), netorder=True)
    return nla(which, nla(1, ips, nested=nested_flag) + nla(2, pro, nested=nested_flag), nested=nested_flag)


def ct_msg(typ: int, client: str, cport: int, vip: str, vport: int, backend: str, bport: int, *, proto: int = 6,
           status: int = IPS_DST_NAT | 0x8, ct_id: int = 1, seq: int = 0, flags: int = 0, extra: bytes = b"",
           nested_flag: bool = True) -> bytes:
    fam = AF6 if ":" in client else AF4
    ports = (cport, vport) if proto in (6, 17) else (None, None)
    rports = (bport, cport) if proto in (6, 17) else (None, None)
    body = struct.pack("=BBH", fam, 0, 0)
    body += tuple_attr(1, ip(client), ip(vip), *ports, proto=proto, nested_flag=nested_flag)
    body += tuple_attr(2, ip(backend), ip(client), *rports, proto=proto, nested_flag=nested_flag)
    body += extra + nla(3, struct.pack("!I", status)) + nla(12, struct.pack("!I", ct_id))
    return struct.pack("=IHHII", 16 + len(body), typ, flags, seq, 0) + body


def new(*a, **kw) -> bytes:
    return ct_msg(MSG_CT_NEW, *a, **kw)


def destroy(*a, **kw) -> bytes:
    return ct_msg(MSG_CT_DELETE, *a, **kw)


def test_nested_and_byte_order_flags_are_masked():
    for nested_flag in (True, False):
        c = only(new("10.0.0.5", 40000, "10.96.0.10", 53, "10.1.2.3", 5353, nested_flag=nested_flag))
        assert (c.orig_src, c.orig_sport, c.orig_dst, c.orig_dport) == (ip("10.0.0.5"), 40000, ip("10.96.0.10"), 53)
        assert (c.reply_src, c.reply_sport) == (ip("10.1.2.3"), 5353)


def test_unknown_attributes_are_skipped():
    extra = nla(4, nla(1, nla(1, b"\x03"), nested=True), nested=True) + nla(7, b"\0\0\0\x78") + nla(99, b"abcde")
    c = only(new("10.0.0.5", 40000, "10.96.0.10", 80, "10.1.2.3", 8080, extra=extra))
    assert (c.reply_src, c.reply_sport, c.ct_id) == (ip("10.1.2.3"), 8080, 1)


def test_no_ports_no_entry():
    assert only(new("10.0.0.5", 0, "10.96.0.10", 0, "10.1.2.3", 0, proto=1)) is None  # ICMP


def test_several_messages_in_one_datagram():
    buf = (new("10.0.0.5", 1, "10.96.0.10", 80, "10.1.2.3", 8080, flags=2, seq=9)
           + new("10.0.0.6", 2, "10.96.0.10", 80, "10.1.2.4", 8080, flags=2, seq=9)
           + struct.pack("=IHHIIi", 20, NLMSG_DONE, 2, 9, 0, 0))
    msgs = list(parse_messages(buf))
    assert [m[0] for m in msgs] == [MSG_CT_NEW, MSG_CT_NEW, NLMSG_DONE]
    assert [parse_conntrack(buf, a, b).reply_src for t, _, _, a, b in msgs[:2]] == [ip("10.1.2.3"), ip("10.1.2.4")]


def test_malformed_lengths_raise():
    good = new("10.0.0.5", 1, "10.96.0.10", 80, "10.1.2.3", 8080)
    with pytest.raises(ValueError):
        list(parse_messages(good[:-4]))  # the header says more than there is
    (_, _, _, a, b), = parse_messages(good)
    bad = bytearray(good)
    struct.pack_into("=H", bad, a + 4, 0xFFF0)  # first attribute longer than the message
    with pytest.raises(ValueError):
        parse_conntrack(bad, a, b)


def test_dump_request_layout():
    req = dump_request(AF6, 1234)
    (typ, flags, seq, a, b), = parse_messages(req)
    assert typ == ct_mod.NFNL_SUBSYS_CTNETLINK << 8 | ct_mod.IPCTNL_MSG_CT_GET and seq == 1234
    assert flags == ct_mod.NLM_F_REQUEST | ct_mod.NLM_F_DUMP and req[a] == AF6
    attrs, off = {}, a + 4
    while off < b:
        length, typ = struct.unpack_from("=HH", req, off)
        attrs[typ] = req[off + 4:off + length]
        off += (length + 3) & ~3
    dnat = struct.pack("!I", IPS_DST_NAT)
    assert attrs == {ct_mod.CTA_STATUS: dnat, ct_mod.CTA_STATUS_MASK: dnat}


def test_event_filter_jumps_stay_inside():
    prog = event_filter()
    assert prog[-1] == (0x06, 0, 0, 0) and prog[-2] == (0x06, 0, 0, 0xFFFFFFFF)  # reject, accept
    for i, (code, jt, jf, _k) in enumerate(prog):
        if code & 0x07 == 0x05:  # BPF_JMP
            assert i + 1 + jt < len(prog) and i + 1 + jf < len(prog)


# --- NatTable fed with messages, on an injected clock ---------------------------------------------

def fed(table: NatTable, *msgs: bytes) -> NatTable:
    for m in msgs:
        table._on_events(bytearray(m), len(m))
    return table


VIP = ip("10.96.0.10")


def test_new_then_backend():
    t = fed(NatTable(clock=Clock()), new("10.0.0.5", 40000, "10.96.0.10", 80, "10.1.2.3", 8080))
    assert t.backend(AF4, VIP, 80, 40000) == (ip("10.1.2.3"), 8080)
    assert t.backend(AF4, VIP, 80, 40001) is None and t.backend(AF4, VIP, 81, 40000) is None
    assert t.backend(AF6, VIP, 80, 40000) is None  # a 4-byte address is no IPv6 address
    assert t.counts() == {"entries": 1, "events": 1, "lost": 0, "resyncs": 0, "refused": 0}


def test_ipv6_entry():
    t = fed(NatTable(clock=Clock()), EV_NEW_V6)
    assert t.backend(AF6, ip("fd96::78:10"), 80, 42001) == (ip("fd78:1::3"), 9090)


def test_only_dnat_tcp_is_kept():
    t = fed(NatTable(clock=Clock()),
            new("10.0.0.5", 1, "10.96.0.10", 80, "10.1.2.3", 8080, status=0x8 | 1 << 4),  # SNAT only
            new("10.0.0.5", 2, "10.96.0.10", 53, "10.1.2.3", 53, proto=17),  # UDP
            new("10.0.0.5", 3, "10.96.0.10", 80, "10.1.2.3", 8080))
    assert t.counts()["entries"] == 1 and t.backend(AF4, VIP, 80, 3) == (ip("10.1.2.3"), 8080)
    assert t.backend(AF4, VIP, 80, 1) is None and t.backend(AF4, VIP, 53, 2) is None


def test_same_port_from_two_clients():
    t = fed(NatTable(clock=Clock()),
            new("10.0.0.5", 40000, "10.96.0.10", 80, "10.1.2.3", 8080, ct_id=1),
            new("10.0.0.6", 40000, "10.96.0.10", 80, "10.1.2.4", 9090, ct_id=2))
    assert t.backend(AF4, VIP, 80, 40000, [ip("10.0.0.6")]) == (ip("10.1.2.4"), 9090)
    assert t.backend(AF4, VIP, 80, 40000, [ip("10.9.9.9"), ip("10.0.0.5")]) == (ip("10.1.2.3"), 8080)
    assert t.backend(AF4, VIP, 80, 40000) is None  # ambiguous
    assert t.backend(AF4, VIP, 80, 40000, [ip("10.9.9.9")]) is None
    fed(t, new("10.0.0.5", 40000, "10.96.0.10", 80, "10.1.2.7", 7070, ct_id=3))  # its tuple again: replaces
    assert t.counts()["entries"] == 2 and t.backend(AF4, VIP, 80, 40000, [ip("10.0.0.5")]) == (ip("10.1.2.7"), 7070)
    fed(t, destroy("10.0.0.6", 40000, "10.96.0.10", 80, "10.1.2.4", 9090, ct_id=2))
    t._clock.now += t.grace
    assert t.backend(AF4, VIP, 80, 40000, [ip("10.9.9.9")]) == (ip("10.1.2.7"), 7070)  # the only one left
    assert t.counts()["entries"] == 1


def test_destroyed_entry_resolves_for_grace_only():
    clock = Clock()
    t = fed(NatTable(grace=30, clock=clock), EV_NEW_V4, EV_DESTROY_V4)
    vip = ip("10.96.78.10")
    clock.now += 29.9
    assert t.backend(AF4, vip, 80, 42000) == (ip("10.78.1.3"), 9090) and t.counts()["entries"] == 1
    clock.now += 0.1
    assert t.backend(AF4, vip, 80, 42000) is None and t.counts()["entries"] == 0


def test_reused_tuple_outlives_the_old_deadline():
    clock = Clock()
    t = NatTable(grace=30, clock=clock)
    fed(t, new("10.0.0.5", 40000, "10.96.0.10", 80, "10.1.2.3", 8080, ct_id=1),
        destroy("10.0.0.5", 40000, "10.96.0.10", 80, "10.1.2.3", 8080, ct_id=1))
    clock.now += 10
    fed(t, new("10.0.0.5", 40000, "10.96.0.10", 80, "10.1.2.4", 9090, ct_id=2))
    fed(t, destroy("10.0.0.5", 40000, "10.96.0.10", 80, "10.1.2.3", 8080, ct_id=1))  # late duplicate: not this one
    clock.now += 25  # past the first entry's deadline
    assert t.backend(AF4, VIP, 80, 40000) == (ip("10.1.2.4"), 9090) and t.counts()["entries"] == 1
    clock.now += 1000  # and the duplicate set no deadline on the new one
    assert t.backend(AF4, VIP, 80, 40000) == (ip("10.1.2.4"), 9090)


def test_expiry_follows_deadlines_without_scanning():
    clock = Clock()
    t = NatTable(grace=10, clock=clock)
    n = 2000
    fed(t, *(new("10.0.0.5", p, "10.96.0.10", 80, "10.1.2.3", 8080, ct_id=p) for p in range(1, n + 1)))
    for p in range(1, n + 1):
        fed(t, destroy("10.0.0.5", p, "10.96.0.10", 80, "10.1.2.3", 8080, ct_id=p))
        clock.now += 0.01  # deadline of port p: 100 + (p - 1) * 0.01 + 10
    # Port p died at 100 + (p - 1) * 0.01 and goes 10 s later; now = 120: ports 1..1001 are gone.
    assert t.backend(AF4, VIP, 80, 1001) is None and t.backend(AF4, VIP, 80, 1002) == (ip("10.1.2.3"), 8080)
    assert t.counts()["entries"] == n - 1001 and len(t._dying) == n - 1001


def test_full_table_refuses_and_counts():
    t = fed(NatTable(max_entries=2, clock=Clock()),
            *(new("10.0.0.5", p, "10.96.0.10", 80, "10.1.2.3", 8080) for p in (1, 2, 3)),
            new("10.0.0.6", 1, "10.96.0.10", 80, "10.1.2.3", 8080),
            new("10.0.0.5", 1, "10.96.0.10", 80, "10.1.2.9", 8080))  # the same tuple again: replaces
    assert t.counts()["entries"] == 2 and t.counts()["refused"] == 2
    assert t.backend(AF4, VIP, 80, 1) == (ip("10.1.2.9"), 8080) and t.backend(AF4, VIP, 80, 3) is None


def test_resync_retires_what_the_dump_no_longer_shows(monkeypatch):
    clock = Clock()
    t = NatTable(grace=30, clock=clock)
    kernel = [only(new("10.0.0.5", p, "10.96.0.10", 80, "10.1.2.3", 8080)) for p in (1, 2)]
    monkeypatch.setattr(t, "_dump", lambda family, sink: [sink(c) for c in kernel if c.family == family])
    t._resync()
    del kernel[0]  # destroyed while we were not told (events lost, or created before anyone listened)
    t._resync()  # one dump without it is not enough: a dump may miss an entry the table moved
    clock.now += 1000
    assert t.backend(AF4, VIP, 80, 1) == (ip("10.1.2.3"), 8080)
    t._resync()
    assert t.counts()["resyncs"] == 3 and t.backend(AF4, VIP, 80, 1) == (ip("10.1.2.3"), 8080)
    clock.now += 30
    assert t.backend(AF4, VIP, 80, 1) is None and t.backend(AF4, VIP, 80, 2) == (ip("10.1.2.3"), 8080)


def test_malformed_event_is_skipped():
    bad = bytearray(new("10.0.0.5", 1, "10.96.0.10", 80, "10.1.2.3", 8080))
    struct.pack_into("=H", bad, 20, 0xFFF0)
    t = fed(NatTable(clock=Clock()), bytes(bad), new("10.0.0.5", 2, "10.96.0.10", 80, "10.1.2.3", 8080))
    assert t.counts()["entries"] == 1


# --- the real kernel ------------------------------------------------------------------------------

H, C, B = "pct-h", "pct-c", "pct-b"
VIP4, VIP6 = "10.96.78.10", "fd96::78:10"
CLIENTS = {AF4: ("10.78.0.2", "10.78.0.3"), AF6: ("fd78::2", "fd78::3")}
BACKENDS = {AF4: (("10.78.1.2", 8080), ("10.78.1.3", 9090)), AF6: (("fd78:1::2", 8080), ("fd78:1::3", 9090))}
CLONE_NEWNET = 0x40000000

SERVER = textwrap.dedent("""
    import json, selectors, socket, sys
    sel = selectors.DefaultSelector()
    for spec in sys.argv[1:]:
        host, port = spec.rsplit(" ", 1)
        s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, int(port))); s.listen(256); sel.register(s, selectors.EVENT_READ)
    print("ready", flush=True)
    conns = []
    while True:
        for key, _ in sel.select():
            c, peer = key.fileobj.accept(); conns.append(c)
            print(json.dumps({"local": list(c.getsockname()[:2]), "peer": list(peer[:2])}), flush=True)
""")

CLIENT = textwrap.dedent("""
    import socket, sys
    socks = {}
    for line in sys.stdin:
        cmd = line.split()
        if cmd[0] == "connect":  # connect SRC SPORT DST DPORT
            s = socket.socket(socket.AF_INET6 if ":" in cmd[3] else socket.AF_INET)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((cmd[1], int(cmd[2]))); s.connect((cmd[3], int(cmd[4])))
            socks[(cmd[1], s.getsockname()[1])] = s
            print("ok", s.getsockname()[1], flush=True)
        elif cmd[0] == "close":  # close SRC SPORT
            socks.pop((cmd[1], int(cmd[2]))).close()
            print("ok", flush=True)
""")


def sh(*cmd: str, ns: str | None = None, check: bool = True) -> str:
    full = (["ip", "netns", "exec", ns] if ns else []) + list(cmd)
    r = subprocess.run(full, capture_output=True, text=True, timeout=30)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(full)}: {r.stderr.strip()}")
    return r.stdout


class Lines:
    """A helper process's output, line by line, each wait bounded."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self.q: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [self.q.put(line) for line in proc.stdout], daemon=True).start()

    def readline(self, timeout: float = 10.0) -> str:
        try:
            return self.q.get(timeout=timeout).strip()
        except queue.Empty:
            raise AssertionError(f"no line from {self.proc.args[4:6]} in {timeout} s") from None

    def ask(self, line: str) -> str:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self.readline()


class Node:
    """A host namespace with kube-proxy-style DNAT, clients behind it, backends beside it."""

    def __init__(self):
        self.procs: list[subprocess.Popen] = []
        self.teardown()  # what an interrupted run left
        try:
            self._build()
        except BaseException:
            self.teardown()
            raise

    def _build(self) -> None:
        for n in (H, C, B):
            sh("ip", "netns", "add", n)
        sh("ip", "link", "add", "c0", "netns", C, "type", "veth", "peer", "name", "h0", "netns", H)
        sh("ip", "link", "add", "b0", "netns", B, "type", "veth", "peer", "name", "h1", "netns", H)
        addrs = {C: [("c0", "10.78.0.2/24"), ("c0", "10.78.0.3/24"), ("c0", "fd78::2/64"), ("c0", "fd78::3/64")],
                 H: [("h0", "10.78.0.1/24"), ("h0", "fd78::1/64"), ("h1", "10.78.1.1/24"), ("h1", "fd78:1::1/64")],
                 B: [("b0", "10.78.1.2/24"), ("b0", "10.78.1.3/24"), ("b0", "fd78:1::2/64"), ("b0", "fd78:1::3/64")]}
        for ns, pairs in addrs.items():
            sh("ip", "link", "set", "lo", "up", ns=ns)
            for dev, a in pairs:
                sh("ip", "addr", "add", a, "dev", dev, *(["nodad"] if ":" in a else []), ns=ns)
            for dev in {d for d, _ in pairs}:
                sh("ip", "link", "set", dev, "up", ns=ns)
        for ns, gw4, gw6 in ((C, "10.78.0.1", "fd78::1"), (B, "10.78.1.1", "fd78:1::1")):
            sh("ip", "route", "add", "default", "via", gw4, ns=ns)
            sh("ip", "-6", "route", "add", "default", "via", gw6, ns=ns)
        sh("sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1", ns=H)
        # kube-proxy's iptables mode: the first of every two new connections to backend 1, the rest to 2.
        for tool, vip, (b1, b2) in (("iptables", VIP4, BACKENDS[AF4]), ("ip6tables", VIP6, BACKENDS[AF6])):
            fmt = "{}:{}" if tool == "iptables" else "[{}]:{}"
            base = ["-t", "nat", "-A", "PREROUTING", "-d", vip, "-p", "tcp", "--dport", "80"]
            sh(tool, *base, "-m", "statistic", "--mode", "nth", "--every", "2", "--packet", "0",
               "-j", "DNAT", "--to-destination", fmt.format(*b1), ns=H)
            sh(tool, *base, "-j", "DNAT", "--to-destination", fmt.format(*b2), ns=H)
        self.server = self.spawn(B, "-c", SERVER, *(f"{a} {p}" for fam in (AF4, AF6) for a, p in BACKENDS[fam]))
        assert self.server.readline() == "ready"
        self.client = self.spawn(C, "-c", CLIENT, stdin=subprocess.PIPE)
        self.accepted: dict[tuple[str, int], tuple[str, int]] = {}  # client (addr, port) -> backend (addr, port)

    def spawn(self, ns: str, *args: str, **kw) -> "Lines":
        p = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, *args], stdout=subprocess.PIPE,
                             text=True, **kw)
        self.procs.append(p)
        return Lines(p)

    def connect(self, src: str, sport: int, dst: str, dport: int = 80) -> int:
        ok, port = self.client.ask(f"connect {src} {sport} {dst} {dport}").split()
        rec = json.loads(self.server.readline())  # the server prints each accept as it happens
        self.accepted[tuple(rec["peer"])] = tuple(rec["local"])
        return int(port)

    def close(self, src: str, sport: int) -> None:
        assert self.client.ask(f"close {src} {sport}") == "ok"

    def conntrack_dnat(self, family: int) -> dict[tuple[str, int], tuple[str, int]]:
        """``conntrack -L`` (DNATed TCP entries only): client (addr, port) -> reply source."""
        out = sh("conntrack", "-L", "-f", "ipv6" if family == AF6 else "ipv4", "-p", "tcp", "--dst-nat", ns=H)
        got = {}
        for line in out.splitlines():
            kv = [w.split("=", 1) for w in line.split() if "=" in w]
            orig = {k: v for k, v in kv[:4]}
            reply = {k: v for k, v in kv[4:8]}
            got[(orig["src"], int(orig["sport"]))] = (reply["src"], int(reply["sport"]))
        return got

    def teardown(self) -> None:
        for p in self.procs:
            p.kill()
            p.wait()
            p.stdout.close()
            if p.stdin:
                p.stdin.close()
        self.procs.clear()
        for n in (H, C, B):
            sh("ip", "netns", "del", n, check=False)


@pytest.fixture
def kube_node():
    n = Node()
    try:
        yield n
    finally:
        n.teardown()


@contextlib.contextmanager
def in_netns(name: str):
    """This thread in ``name``'s network namespace (sockets made meanwhile stay there), then back."""
    libc = ctypes.CDLL(None, use_errno=True)
    back = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    there = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(there, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns")
        try:
            yield
        finally:
            if libc.setns(back, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back")
    finally:
        os.close(there)
        os.close(back)


def started(**kw) -> NatTable:
    t = NatTable(**kw)
    with in_netns(H):
        t.start()  # its sockets, and its reader thread, belong to the host namespace
    assert t.up
    return t


def vip(family: int) -> bytes:
    return ip(VIP6 if family == AF6 else VIP4)


@pytest.mark.root
@pytest.mark.parametrize("family", [AF4, AF6], ids=["ipv4", "ipv6"])
def test_backends_match_accepted_peers_and_conntrack(kube_node, family):
    t = started()
    try:
        c1, c2 = CLIENTS[family]
        conns = [(c1, kube_node.connect(c1, 0, VIP6 if family == AF6 else VIP4)) for _ in range(6)]
        # Two clients on the same port towards the same service: told apart by client address.
        conns += [(c1, kube_node.connect(c1, 45000, VIP6 if family == AF6 else VIP4)),
                  (c2, kube_node.connect(c2, 45000, VIP6 if family == AF6 else VIP4))]
        wait_for(lambda: t.counts()["entries"] == len(conns), timeout=10, what="an entry per connection")
        table = kube_node.conntrack_dnat(family)
        used = set()
        for addr, port in conns:
            got = t.backend(family, vip(family), 80, port, [ip(addr)])
            want = kube_node.accepted[(addr, port)]
            assert got == (ip(want[0]), want[1]), (addr, port)
            assert table[(addr, port)] == want
            used.add(want)
        assert used == set(BACKENDS[family])  # both backends were reached
        assert t.backend(family, vip(family), 80, 45000) is None  # ambiguous without the client address
        assert t.counts()["events"] == len(conns) and t.counts()["lost"] == 0
    finally:
        t.stop()
    assert not t.up


@pytest.mark.root
def test_dump_at_start_finds_earlier_connections(kube_node):
    before = [(a, kube_node.connect(a, 0, VIP4)) for a in CLIENTS[AF4]]
    before6 = [(a, kube_node.connect(a, 0, VIP6)) for a in CLIENTS[AF6]]
    t = started()
    try:
        assert t.counts()["entries"] == 4 and t.counts()["events"] == 0 and t.counts()["resyncs"] == 1
        for family, conns in ((AF4, before), (AF6, before6)):
            for addr, port in conns:
                want = kube_node.accepted[(addr, port)]
                assert t.backend(family, vip(family), 80, port) == (ip(want[0]), want[1])
    finally:
        t.stop()


@pytest.mark.root
def test_destroyed_entry_resolves_within_grace_only(kube_node):
    clock = Clock()
    t = started(grace=60, clock=clock)
    try:
        port = kube_node.connect("10.78.0.2", 0, VIP4)
        want = kube_node.accepted[("10.78.0.2", port)]
        wait_for(lambda: t.counts()["events"] == 1, timeout=10, what="the NEW event")
        kube_node.close("10.78.0.2", port)
        time.sleep(0.1)  # the FIN and its ACK pass first: no packet of it follows the deletion
        sh("conntrack", "-D", "-p", "tcp", "--orig-port-src", str(port), ns=H)  # DESTROY now, not at timeout
        wait_for(lambda: t.counts()["events"] == 2, timeout=10, what="the DESTROY event")
        assert sh("conntrack", "-L", "-p", "tcp", "--orig-port-src", str(port), ns=H, check=False) == ""
        clock.now += 59
        assert t.backend(AF4, vip(AF4), 80, port) == (ip(want[0]), want[1])
        clock.now += 1
        assert t.backend(AF4, vip(AF4), 80, port) is None and t.counts()["entries"] == 0
    finally:
        t.stop()


@pytest.mark.root
def test_entry_made_before_start_goes_after_two_resyncs(kube_node):
    """With nf_conntrack_events=2 an entry made while nobody listened is
    destroyed without an event: the periodic dumps retire it."""
    port = kube_node.connect("10.78.0.2", 0, VIP4)
    clock = Clock()
    t = started(grace=60, clock=clock, resync_interval=300)
    try:
        assert t.backend(AF4, vip(AF4), 80, port) is not None
        kube_node.close("10.78.0.2", port)
        sh("conntrack", "-D", "-p", "tcp", "--orig-port-src", str(port), ns=H)
        time.sleep(0.3)
        assert t.counts()["events"] == 0  # no DESTROY for it
        for n in (2, 3):  # retired when two dumps in a row miss it
            assert t.backend(AF4, vip(AF4), 80, port) is not None
            clock.now += 300
            wait_for(lambda: t.counts()["resyncs"] == n, timeout=10, what=f"periodic dump {n}")
        clock.now += 59
        assert t.backend(AF4, vip(AF4), 80, port) is not None
        clock.now += 1
        assert t.backend(AF4, vip(AF4), 80, port) is None
    finally:
        t.stop()


@pytest.mark.root
def test_kernel_passes_only_dnat_tcp(kube_node):
    """The socket filter and the dump's status filter leave non-NAT and non-TCP entries in the kernel."""
    sh("iptables", "-t", "nat", "-A", "PREROUTING", "-d", VIP4, "-p", "udp", "--dport", "53",
       "-j", "DNAT", "--to-destination", "10.78.1.2:5353", ns=H)
    direct = kube_node.connect("10.78.0.2", 0, "10.78.1.2", 8080)  # routed, not NATed
    t = started()
    try:
        assert t.counts()["entries"] == 0
        kube_node.connect("10.78.0.3", 0, "10.78.1.3", 9090)
        sh("python3", "-c", "import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM)"
           ".sendto(b'x', ('10.96.78.10', 53))", ns=C)
        wait_for(lambda: "dport=53" in sh("conntrack", "-L", "-p", "udp", ns=H), timeout=10, what="the UDP entry")
        port = kube_node.connect("10.78.0.2", 0, VIP4)
        wait_for(lambda: t.counts()["events"] >= 1, timeout=10, what="the NEW event")
        time.sleep(0.2)
        assert t.counts()["events"] == 1 and t.counts()["entries"] == 1
        assert t.backend(AF4, vip(AF4), 80, port) is not None and t.backend(AF4, ip("10.78.1.2"), 8080, direct) is None
        # A raw dump as NatTable asks for it: of the 4 entries, the kernel sends the 2 DNATed ones.
        assert len(sh("conntrack", "-L", ns=H).splitlines()) == 4
        with in_netns(H):
            s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, ct_mod.NETLINK_NETFILTER)
        with s:
            s.bind((0, 0))
            s.settimeout(5)
            s.send(dump_request(AF4, 5))
            got, done = [], False
            while not done:
                buf = s.recv(65536)
                for typ, _, _, a, b in parse_messages(buf):
                    done = done or typ == NLMSG_DONE
                    if typ == MSG_CT_NEW:
                        got.append(parse_conntrack(buf, a, b))
        assert sorted((c.proto, c.orig_dport) for c in got) == [(6, 80), (17, 53)]
    finally:
        t.stop()


@pytest.mark.root
def test_lost_events_are_counted_and_resynced(kube_node, monkeypatch):
    monkeypatch.setattr(ct_mod, "RCVBUF_BYTES", 4096)  # the kernel's floor: a few events
    t = started()
    try:
        with t._lock:  # the reader blocks on its next event while the queue overflows
            conns = [("10.78.0.2", kube_node.connect("10.78.0.2", 0, VIP4)) for _ in range(40)]
        # The dump at start is under MIN_RESYNC_GAP old: the one the overflow asks for waits that long.
        wait_for(lambda: t.counts()["lost"] >= 1 and t.counts()["resyncs"] >= 2, timeout=20, what="ENOBUFS and a new dump")
        wait_for(lambda: t.counts()["entries"] == len(conns), timeout=10, what="every connection from the dump")
        for addr, port in conns:
            want = kube_node.accepted[(addr, port)]
            assert t.backend(AF4, vip(AF4), 80, port) == (ip(want[0]), want[1])
        assert t.counts()["events"] < len(conns)
    finally:
        t.stop()


CHILD = textwrap.dedent("""
    import json, socket, sys
    sys.path.insert(0, sys.argv[1])
    from podsight.reader.conntrack import NatTable
    caps = [l.split()[1] for l in open("/proc/self/status") if l.startswith("CapEff")][0]
    t = NatTable()
    try:
        t.start()
    except OSError as e:
        print(json.dumps({"caps": caps, "errno": e.errno, "type": type(e).__name__}))
    else:
        b = t.backend(socket.AF_INET, socket.inet_aton(sys.argv[2]), 80, int(sys.argv[3]))
        print(json.dumps({"caps": caps, "up": t.up, "backend": b and [socket.inet_ntoa(b[0]), b[1]],
                          "counts": t.counts()}))
        t.stop()
""")


def run_child(setpriv: list[str], port: int) -> dict:
    # A copy of the package another user can read: a clone in a mktemp -d
    # directory (CI's) is root's alone.
    import shutil
    import tempfile

    src = tempfile.mkdtemp(prefix="podsight-src-")
    try:
        os.chmod(src, 0o755)
        shutil.copytree(os.path.join(SRC, "podsight"), os.path.join(src, "podsight"))
        r = subprocess.run(["ip", "netns", "exec", H, "setpriv", *setpriv, "--", sys.executable, "-c", CHILD, src,
                            VIP4, str(port)], capture_output=True, text=True, timeout=30)
    finally:
        shutil.rmtree(src, ignore_errors=True)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


CAP_NET_ADMIN = 12


@pytest.mark.root
def test_without_cap_net_admin_start_raises(kube_node):
    out = run_child(["--inh-caps=-net_admin", "--bounding-set=-net_admin"], 1)
    assert not int(out["caps"], 16) & 1 << CAP_NET_ADMIN
    assert out["type"] == "PermissionError" and out["errno"] == 1, out


@pytest.mark.root
def test_cap_net_admin_alone_suffices(kube_node):
    port = kube_node.connect("10.78.0.2", 0, VIP4)
    want = kube_node.accepted[("10.78.0.2", port)]
    out = run_child(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all,+net_admin",
                     "--ambient-caps=-all,+net_admin", "--bounding-set=-all,+net_admin"], port)
    assert int(out["caps"], 16) == 1 << CAP_NET_ADMIN
    assert out["up"] and out["backend"] == list(want), out
