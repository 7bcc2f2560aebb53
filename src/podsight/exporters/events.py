"""Security events out: rule matching, JSON lines, and the counters behind
``podsight_security_events_total``.

When every event matches (a pod flooding a watched file) each one pays for
its JSON line, so the per-event work is kept to what differs between events:
a cgroup's identity is looked up and rendered at most every half second, a
process's exe is read from /proc at most once a second, and lines are
written in batches (one write per ring-buffer poll, each event still one
line).
"""
from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections import OrderedDict
from typing import Callable, Mapping, TextIO

from ..security.aggregate import EMIT, LIMITED, Aggregator
from ..security.events import IdentityPart, event_line
from ..security.fields import EventView, normalize_path
from ..security.model import RawEvent
from ..security.rules import RuleSet

__all__ = ["EventSink", "ProcessInfo"]

log = logging.getLogger("podsight.security")


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
        self._size = size

    def remember_exec(self, pid: int, exe: str, comm: str = "") -> None:
        self._exe[pid] = (comm, exe)
        self._exe.move_to_end(pid)
        if len(self._exe) > self._size:
            self._exe.popitem(last=False)

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


def _target(ev: RawEvent, view: EventView) -> object:
    """What a detection is about, beside its rule, cgroup and process."""
    if ev.kind == "connect":
        return ev.dst_ip, ev.dst_port
    if ev.kind == "ptrace":
        return ev.ptrace_request, ev.target_pid
    if ev.kind == "exec":
        return view.path, tuple(ev.args)
    return view.path


class EventSink:
    """Matches events and writes one JSON line per match, repeats aggregated
    (podsight.security.aggregate).

    Lines are buffered until ``flush()`` (the reader calls it after each
    ring-buffer poll, at least every 200 ms) or until ``BATCH`` lines are
    waiting, so a flood is written in large writes and a single event is out
    within one poll.  The match counters move with the lines they count;
    every match is counted, written, aggregated or dropped.
    """

    BATCH = 256
    IDENTITY_TTL = 0.5  # seconds an identity is reused: pod names appear (and rescans happen) on this scale

    def __init__(
        self,
        rules: RuleSet,
        identity_of: Callable[[int], Mapping[str, object]],
        proc: ProcessInfo,
        stdout: bool = True,
        file: str = "",
        clock: Callable[[], float] = time.monotonic,
        aggregator: Aggregator | None = None,
    ):
        self.rules = rules
        self.identity_of = identity_of
        self.proc = proc
        self._clock = clock
        self._outs: list[TextIO] = []
        if stdout:
            self._outs.append(sys.stdout)
        self._file = open(file, "a", buffering=1) if file else None
        if self._file is not None:
            self._outs.append(self._file)
        self._lock = threading.Lock()
        self.aggregator = aggregator or Aggregator(window=0, max_lines=1)
        self.matches: dict[tuple[str, str, str], int] = {}
        self.drops: dict[tuple[str, str], int] = {}  # (reason, event kind): matches not written
        self._lines: list[str] = []
        self._pending: dict[tuple[str, str, str], int] = {}
        self._identities: dict[int, tuple[float, Mapping[str, object], IdentityPart]] = {}

    def _identity(self, cgroup_id: int) -> tuple[Mapping[str, object], IdentityPart]:
        now = self._clock()
        hit = self._identities.get(cgroup_id)
        if hit is not None and hit[0] > now:
            return hit[1], hit[2]
        identity = self.identity_of(cgroup_id)
        part = IdentityPart(identity)
        if len(self._identities) >= 4096:
            self._identities.clear()
        self._identities[cgroup_id] = (now + self.IDENTITY_TTL, identity, part)
        return identity, part

    def handle(self, ev: RawEvent) -> None:
        if ev.path and not ev.path.startswith("/") and not ev.cwd:
            ev.cwd = self.proc.cwd(ev.pid)  # the kernel could not walk it: too deep or too long
        if ev.kind == "exec":
            if not ev.exe.startswith("/") and ev.cwd:
                ev.exe = normalize_path(ev.exe, ev.cwd)  # ./run.sh, run from its directory
            self.proc.remember_exec(ev.pid, ev.exe, ev.comm)
        elif not ev.exe:  # the kernel could not walk it: too deep or too long
            ev.exe = self.proc.exe(ev.pid, ev.comm)
        identity, part = self._identity(ev.cgroup_id)
        view = EventView(ev, identity)
        rules = self.rules.match_view(view)
        if not rules:
            return
        ns = str(identity.get("namespace", ""))
        lines, pending = self._lines, self._pending
        now = self._clock()
        target = _target(ev, view)
        for rule in rules:
            what = self.aggregator.offer((rule.name, ev.cgroup_id, ev.exe, ev.ppid, target), (rule.name, ev.cgroup_id),
                                         ev.ts_ns, now, (rule, ev, part, view))
            if what == EMIT:
                lines.append(event_line(rule, ev, part, view))
            elif what == LIMITED:
                with self._lock:
                    self.drops[("output_limited", ev.kind)] = self.drops.get(("output_limited", ev.kind), 0) + 1
            key = (rule.name, rule.severity, ns)
            pending[key] = pending.get(key, 0) + 1
        if len(lines) >= self.BATCH:
            self.flush()

    def flush(self, now: float | None = None) -> None:
        """Write the waiting lines and the summaries of windows closed by ``now``
        (one write per output) and count them."""
        for rep in self.aggregator.closed(self._clock() if now is None else now):
            rule, ev, part, view = rep.last
            self._lines.append(event_line(rule, ev, part, view, rep))
        if not self._lines and not self._pending:
            return
        text = "\n".join(self._lines) + "\n" if self._lines else ""
        pending = self._pending
        self._lines, self._pending = [], {}
        with self._lock:
            for key, n in pending.items():
                self.matches[key] = self.matches.get(key, 0) + n
            for out in self._outs if text else ():
                try:
                    out.write(text)
                    out.flush()
                except (OSError, ValueError) as e:  # a closed or full output must not stop the others
                    log.error("cannot write security events: %s", e)

    def counts(self) -> dict[tuple[str, str, str], int]:
        with self._lock:
            return dict(self.matches)

    def dropped(self) -> dict[tuple[str, str], int]:
        with self._lock:
            return dict(self.drops)

    def close(self) -> None:
        self.flush(now=float("inf"))  # open windows: their summaries now
        if self._file is not None:
            self._file.close()
