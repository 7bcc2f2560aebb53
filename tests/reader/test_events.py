"""Decoding security ring-buffer records (pure: records built with the shared layout)."""
from __future__ import annotations

import ctypes

from hypothesis import given, settings
from hypothesis import strategies as st

from podsight.kernel.layouts import SEC_ARGS_LEN, SecurityEvent
from podsight.reader.events import decode


def record(**fields) -> bytes:
    e = SecurityEvent()
    for k, v in fields.items():
        if k == "args":
            ctypes.memmove(ctypes.addressof(e) + SecurityEvent.args.offset, v, len(v))
        elif k == "dst_addr":
            for i, b in enumerate(v):
                e.dst_addr[i] = b
        else:
            setattr(e, k, v)
    return bytes(e)


def test_exec_keeps_every_argument():
    argv = b"sh\0-c\0echo hi\0"
    ev = decode(record(kind=0, syscall=0, pid=7, path=b"/bin/sh", comm=b"sh", args=argv, args_len=len(argv)), 10)
    assert ev.kind == "exec" and ev.exe == "/bin/sh" and ev.args == ["sh", "-c", "echo hi"]
    assert not ev.args_truncated and ev.ts_ns == 10


def test_truncated_argv_is_flagged():
    argv = (b"a" * 100 + b"\0") * 6
    ev = decode(record(kind=0, args=argv[:SEC_ARGS_LEN], args_len=len(argv)), 0)
    assert ev.args_truncated and len(ev.args) == 6


def test_connect_addresses():
    v4 = decode(record(kind=4, family=2, dst_port=6443, dst_addr=bytes([10, 96, 0, 1])), 0)
    assert (v4.dst_ip, v4.dst_port) == ("10.96.0.1", 6443)
    v6 = decode(record(kind=4, family=10, dst_port=443, dst_addr=bytes(15) + b"\x01"), 0)
    assert v6.dst_ip == "::1"


def reference_decode(raw: bytes, offset_ns: int) -> dict:
    """Field by field through the ctypes mirror: what the struct unpack must agree with."""
    e = SecurityEvent.from_buffer_copy(raw)
    used = min(e.args_len, SEC_ARGS_LEN)
    args = ctypes.string_at(ctypes.addressof(e) + SecurityEvent.args.offset, used)
    return {"ts_ns": e.ts_ns + offset_ns, "cgroup_id": e.cgroup_id, "ret": e.ret, "pid": e.pid, "tid": e.tid,
            "ppid": e.ppid, "uid": e.uid, "gid": e.gid, "flags": e.flags, "mode": e.mode,
            "ptrace_request": e.ptrace_request, "target_pid": e.target_pid, "family": e.family,
            "dst_port": e.dst_port, "comm": e.comm.decode("utf-8", "replace"),
            "parent_comm": e.parent_comm.decode("utf-8", "replace"), "path": e.path.decode("utf-8", "replace"),
            "args": [a.decode("utf-8", "replace") for a in args.rstrip(b"\0").split(b"\0")] if used else []}


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=ctypes.sizeof(SecurityEvent), max_size=ctypes.sizeof(SecurityEvent)),
       st.integers(0, 4), st.integers(-2**40, 2**40))
def test_decode_agrees_with_the_ctypes_layout_on_any_bytes(raw, kind, offset):
    raw = bytearray(raw)
    raw[SecurityEvent.kind.offset:SecurityEvent.kind.offset + 4] = kind.to_bytes(4, "little")
    raw = bytes(raw)
    ev = decode(raw, offset)
    want = reference_decode(raw, offset)
    if ev.kind != "exec":
        want["args"] = []
    got = {k: getattr(ev, k) for k in want}
    assert got == want
