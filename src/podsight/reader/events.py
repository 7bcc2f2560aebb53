"""Security ring buffer → ``RawEvent``s, on a thread of its own.

The decoding is a pure function (``decode``) so it can be benchmarked and
tested without the kernel; ``EventReader`` only owns the libbpf ring buffer
and its polling thread.
"""
from __future__ import annotations

import ctypes
import ipaddress
import logging
import os
import struct
import threading
import time
from typing import Callable

from ..heartbeat import Heartbeat
from ..kernel.layouts import SEC_ARGS_LEN, SEC_KINDS, SEC_SYSCALLS, SecurityEvent
from ..kernel.libbpf import SAMPLE_FN, check_ptr, lib
from ..security.model import RawEvent

__all__ = ["EventReader", "decode", "boot_to_realtime_offset"]

log = logging.getLogger("podsight.events")

_AF_INET, _AF_INET6 = 2, 10
_INT_CODES = {1: "b", 2: "h", 4: "i", 8: "q"}
# The fields ``decode`` unpacks, in layout order (all but ``args``).
_HEAD_FIELDS = ("ts_ns", "cgroup_id", "ret", "ptrace_request", "start_ns", "parent_start_ns", "kind", "syscall",
                "pid", "tid", "ppid", "uid", "gid", "flags", "mode", "target_pid", "family", "dst_port", "args_len",
                "clauses", "pad", "dst_addr", "comm", "parent_comm", "path", "cwd", "exe")


def _head_struct() -> struct.Struct:
    """One ``struct`` unpack for every field before ``args``, derived from the
    ctypes mirror of ``struct security_event`` so the two cannot drift.

    Reading fields through a ctypes Structure costs a descriptor call each;
    one unpack into local names is several times cheaper, and the 512-byte
    argv area is only sliced for exec events.
    """
    fmt, pos, names = "=", 0, []
    for name, ctype in SecurityEvent._fields_:
        if name == "args":
            break
        f = getattr(SecurityEvent, name)
        if f.offset > pos:
            fmt += f"{f.offset - pos}x"
        if issubclass(ctype, ctypes.Array):
            fmt += f"{f.size}s"
        else:
            code = _INT_CODES[f.size]
            fmt += code.upper() if ctype._type_.isupper() else code  # upper-case ctypes codes are unsigned
        pos = f.offset + f.size
        names.append(name)
    if tuple(names) != _HEAD_FIELDS:
        raise ImportError(f"struct security_event changed ({', '.join(names)}): update podsight.reader.events.decode")
    return struct.Struct(fmt)


_HEAD = _head_struct()
_ARGS_OFFSET = SecurityEvent.args.offset


def boot_to_realtime_offset() -> int:
    """Add to a CLOCK_BOOTTIME reading (what the kernel stamps) to get wall-clock ns."""
    return time.time_ns() - time.clock_gettime_ns(time.CLOCK_BOOTTIME)


def _text(b: bytes) -> str:
    """A C string field: up to the first NUL, as UTF-8 with replacement."""
    return b.partition(b"\0")[0].decode("utf-8", "replace")


def decode(raw: bytes, offset_ns: int) -> RawEvent:
    (ts_ns, cgroup_id, ret, ptrace_request, start_ns, parent_start_ns, kind_no, syscall_no, pid, tid, ppid, uid, gid, flags, mode, target_pid,
     family, dst_port, args_len, _clauses, _pad, dst_addr, comm, parent_comm, path, cwd, exe) = _HEAD.unpack_from(raw)
    kind = SEC_KINDS[kind_no] if kind_no < len(SEC_KINDS) else "unknown"
    ev = RawEvent(
        kind=kind,
        ts_ns=ts_ns + offset_ns,
        start_ns=start_ns + offset_ns if start_ns else 0,
        parent_start_ns=parent_start_ns + offset_ns if parent_start_ns else 0,
        cgroup_id=cgroup_id,
        pid=pid,
        tid=tid,
        ppid=ppid,
        uid=uid,
        gid=gid,
        comm=_text(comm),
        parent_comm=_text(parent_comm),
        syscall=SEC_SYSCALLS[syscall_no] if syscall_no < len(SEC_SYSCALLS) else "",
        path=_text(path),
        cwd=_text(cwd),
        exe=_text(exe),
        flags=flags,
        mode=mode,
        ptrace_request=ptrace_request,
        target_pid=target_pid,
        family=family,
        dst_port=dst_port,
        ret=ret,
    )
    if kind == "exec":
        ev.exe = ev.path
        used = min(args_len, SEC_ARGS_LEN)
        # argv is NUL-separated: split the raw bytes, not a C string.
        raw_args = raw[_ARGS_OFFSET:_ARGS_OFFSET + used]
        ev.args = [a.decode("utf-8", "replace") for a in raw_args.rstrip(b"\0").split(b"\0")] if used else []
        ev.args_truncated = args_len > SEC_ARGS_LEN
    if family == _AF_INET:
        ev.dst_ip = str(ipaddress.IPv4Address(dst_addr[:4]))
    elif family == _AF_INET6:
        ev.dst_ip = str(ipaddress.IPv6Address(dst_addr))
    return ev


class EventReader:
    """Polls the ring buffer and hands each decoded event to ``handle``.

    ``flush`` is called after each poll, once the records that were waiting
    have been handled, so the consumer can write them out together.
    """

    def __init__(self, map_fd: int, handle: Callable[[RawEvent], None],
                 flush: Callable[[], None] | None = None):
        self.handle = handle
        self.flush = flush
        self.decoded = 0
        self.errors = 0
        self._offset = boot_to_realtime_offset()
        self._cb = SAMPLE_FN(self._sample)  # keep a reference: libbpf holds the pointer
        self._rb = check_ptr("ring_buffer__new", lib.ring_buffer__new(map_fd, self._cb, None, None))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="podsight-events", daemon=True)
        self.heartbeat = Heartbeat("security event reader")

    def _sample(self, _ctx, data, size) -> int:
        try:
            self.handle(decode(ctypes.string_at(data, size), self._offset))
            self.decoded += 1
        except Exception:  # one bad event must not stop the stream
            self.errors += 1
            log.exception("cannot handle a security event")
        return 0

    # A poll returns within 200 ms; writing a batch out may wait on a slow
    # stdout reader, but not for a minute.
    PROGRESS_WITHIN = 60.0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.heartbeat.beat(self.PROGRESS_WITHIN)
            ret = lib.ring_buffer__poll(self._rb, 200)
            if ret < 0 and -ret != 4:  # EINTR is harmless
                log.error("ring buffer poll failed: %s", os.strerror(-ret))
                time.sleep(0.2)
            self._flush()
        self.heartbeat.done()

    def _flush(self) -> None:
        if self.flush is None:
            return
        try:
            self.flush()
        except Exception:  # as for one bad event: the stream goes on
            self.errors += 1
            log.exception("cannot write security events")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=1.0)
        if self._rb:
            lib.ring_buffer__free(self._rb)
            self._rb = None
