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
import threading
import time
from typing import Callable

from ..kernel.layouts import SEC_ARGS_LEN, SEC_KINDS, SEC_SYSCALLS, SecurityEvent
from ..kernel.libbpf import SAMPLE_FN, check_ptr, lib
from ..security.model import RawEvent

__all__ = ["EventReader", "decode", "boot_to_realtime_offset"]

log = logging.getLogger("podsight.events")

_SIZE = ctypes.sizeof(SecurityEvent)
_AF_INET, _AF_INET6 = 2, 10


def boot_to_realtime_offset() -> int:
    """Add to a CLOCK_BOOTTIME reading (what the kernel stamps) to get wall-clock ns."""
    return time.time_ns() - time.clock_gettime_ns(time.CLOCK_BOOTTIME)


def _text(b: bytes) -> str:
    return b.decode("utf-8", "replace")


def decode(raw: bytes, offset_ns: int) -> RawEvent:
    e = SecurityEvent.from_buffer_copy(raw[:_SIZE])
    kind = SEC_KINDS[e.kind] if e.kind < len(SEC_KINDS) else "unknown"
    ev = RawEvent(
        kind=kind,
        ts_ns=e.ts_ns + offset_ns,
        cgroup_id=e.cgroup_id,
        pid=e.pid,
        tid=e.tid,
        ppid=e.ppid,
        uid=e.uid,
        gid=e.gid,
        comm=_text(e.comm),
        parent_comm=_text(e.parent_comm),
        syscall=SEC_SYSCALLS[e.syscall] if e.syscall < len(SEC_SYSCALLS) else "",
        path=_text(e.path),
        flags=e.flags,
        mode=e.mode,
        ptrace_request=e.ptrace_request,
        target_pid=e.target_pid,
        family=e.family,
        dst_port=e.dst_port,
        ret=e.ret,
    )
    if kind == "exec":
        ev.exe = ev.path
        used = min(e.args_len, SEC_ARGS_LEN)
        # e.args would stop at the first NUL; argv is NUL-separated.
        raw_args = ctypes.string_at(ctypes.addressof(e) + SecurityEvent.args.offset, used)
        ev.args = [_text(a) for a in raw_args.rstrip(b"\0").split(b"\0")] if used else []
        ev.args_truncated = e.args_len > SEC_ARGS_LEN
    if e.family == _AF_INET:
        ev.dst_ip = str(ipaddress.IPv4Address(bytes(e.dst_addr[:4])))
    elif e.family == _AF_INET6:
        ev.dst_ip = str(ipaddress.IPv6Address(bytes(e.dst_addr)))
    return ev


class EventReader:
    """Polls the ring buffer and hands each decoded event to ``handle``."""

    def __init__(self, map_fd: int, handle: Callable[[RawEvent], None]):
        self.handle = handle
        self.decoded = 0
        self.errors = 0
        self._offset = boot_to_realtime_offset()
        self._cb = SAMPLE_FN(self._sample)  # keep a reference: libbpf holds the pointer
        self._rb = check_ptr("ring_buffer__new", lib.ring_buffer__new(map_fd, self._cb, None, None))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="podsight-events", daemon=True)

    def _sample(self, _ctx, data, size) -> int:
        try:
            self.handle(decode(ctypes.string_at(data, size), self._offset))
            self.decoded += 1
        except Exception:  # one bad event must not stop the stream
            self.errors += 1
            log.exception("cannot handle a security event")
        return 0

    def _run(self) -> None:
        while not self._stop.is_set():
            ret = lib.ring_buffer__poll(self._rb, 200)
            if ret < 0 and -ret != 4:  # EINTR is harmless
                log.error("ring buffer poll failed: %s", os.strerror(-ret))
                time.sleep(0.2)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=1.0)
        if self._rb:
            lib.ring_buffer__free(self._rb)
            self._rb = None
