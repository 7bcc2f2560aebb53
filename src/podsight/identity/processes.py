"""exe and cwd of the processes security events are about."""
from __future__ import annotations

import os
import time
from collections import OrderedDict
from typing import Callable

_TICK_NS = 1_000_000_000 // os.sysconf("SC_CLK_TCK")

__all__ = ["ProcessInfo"]


class ProcessInfo:
    """exe and cwd of a pid: remembered from exec events, else read from /proc.

    /proc is read only when an event needs it (non-exec events, relative
    paths); a process that already exited leaves the field empty.  An exe
    read from /proc is reused for ``ttl`` seconds for the same pid *and*
    comm: exec changes the comm, and the kernel filter may drop the exec
    itself, so a process that runs another program is read afresh.  cwd is
    never reused: a chdir between two relative opens must not misplace the
    second path.
    """

    def __init__(self, proc_root: str = "/proc", size: int = 4096, ttl: float = 1.0,
                 clock: Callable[[], float] = time.monotonic):
        self.proc_root = proc_root
        self.ttl = ttl
        self._clock = clock
        self._exe: OrderedDict[int, tuple[str, str]] = OrderedDict()  # pid → (comm, exe) from exec events
        self._read: dict[tuple[int, str], tuple[float, str]] = {}     # (pid, comm) → (until, exe) from /proc
        self._parents: OrderedDict[tuple[int, int], str] = OrderedDict()  # (pid, start) → exe: never stale
        self._size = size
        self._boot_offset = time.time_ns() - time.clock_gettime_ns(time.CLOCK_BOOTTIME)

    def remember_exec(self, pid: int, exe: str, comm: str = "", start_ns: int = 0) -> None:
        self._exe[pid] = (comm, exe)
        self._exe.move_to_end(pid)
        if start_ns:
            self._parents[(pid, start_ns)] = exe  # a later exec of the same process replaces it
            self._parents.move_to_end((pid, start_ns))
        if len(self._exe) > self._size:
            self._exe.popitem(last=False)
        while len(self._parents) > self._size:
            self._parents.popitem(last=False)

    def parent_exe(self, ppid: int, start_ns: int) -> str:
        """The executable of process ``ppid`` if it is the one started at
        ``start_ns`` (CLOCK_REALTIME, as events carry it; /proc counts from
        boot), "" otherwise: a reused PID never lends its exe."""
        if not ppid or not start_ns:
            return ""
        key = (ppid, start_ns)
        exe = self._parents.get(key)
        if exe is not None:
            return exe
        exe = ""
        try:
            with open(f"{self.proc_root}/{ppid}/stat", "rb") as f:
                stat = f.read()
            ticks = int(stat.rpartition(b")")[2].split()[19])  # field 22, after the comm
            if abs(ticks * _TICK_NS - (start_ns - self._boot_offset)) <= 2 * _TICK_NS:
                exe = self._link(ppid, "exe")
        except (OSError, ValueError, IndexError):
            pass
        self._parents[key] = exe
        if len(self._parents) > self._size:
            self._parents.popitem(last=False)
        return exe

    def exe(self, pid: int, comm: str | None = None) -> str:
        """``comm`` None: whatever is known for the pid, without the comm check."""
        known = self._exe.get(pid)
        if known is not None and (comm is None or known[0] == comm):
            return known[1]
        key = (pid, comm or "")
        now = self._clock()
        hit = self._read.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        # Gone from /proc: the last exec we saw is the best we know.
        exe = self._link(pid, "exe") or (known[1] if known is not None else "")
        if len(self._read) >= self._size:
            self._read = {k: v for k, v in self._read.items() if v[0] > now}
            if len(self._read) >= self._size:
                self._read.clear()
        self._read[key] = (now + self.ttl, exe)
        return exe

    def cwd(self, pid: int) -> str:
        return self._link(pid, "cwd")

    def _link(self, pid: int, what: str) -> str:
        try:
            return os.readlink(f"{self.proc_root}/{pid}/{what}")
        except OSError:
            return ""
