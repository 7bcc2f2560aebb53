"""The security event path, one pipeline: the kernel's ring buffer (reader
thread) → who the cgroup is (the identity service the metrics share) →
rules → JSON lines out, and the counts ``/metrics`` shows.

When every event matches (a pod flooding a watched file) each one pays for
its JSON line, so the per-event work is kept to what differs between events:
a cgroup's identity is looked up and rendered at most every half second, a
process's exe is read from /proc at most once a second, and lines are
written in batches (one write per ring-buffer poll, each event still one
line).
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Mapping

from ..config import Config
from ..exporters.event_output import EventOutput
from ..exporters.snapshot import SecurityCounts
from ..identity.node import NodeIdentity
from ..identity.processes import ProcessInfo
from ..kernel.families.security import SecurityProbe
from ..reader.events import EventReader
from ..security.aggregate import EMIT, LIMITED, Aggregator
from ..security.events import IdentityPart
from ..security.formats import Formatter, make_formatter
from ..security.fields import EventView, normalize_path
from ..security.kernel_filter import kernel_filter
from ..security.model import RawEvent
from ..security.rules import RuleSet

__all__ = ["EventSink", "SecurityPipeline"]

log = logging.getLogger("podsight.security")


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
        output: EventOutput,
        clock: Callable[[], float] = time.monotonic,
        aggregator: Aggregator | None = None,
        formatter: Formatter | None = None,
    ):
        self.rules = rules
        self.identity_of = identity_of
        self.proc = proc
        self.output = output
        self.formatter = formatter or make_formatter("podsight")
        self._clock = clock
        self._lock = threading.Lock()
        self.aggregator = aggregator or Aggregator(window=0, max_lines=1)
        self.matches: dict[tuple[str, str, str], int] = {}
        self.drops: dict[tuple[str, str], int] = {}  # (reason, event kind): matches not written
        self._lines: list[str] = []
        self._kinds: list[str] = []  # each line's event kind: the HTTP output counts its drops by kind
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
            self.proc.remember_exec(ev.pid, ev.exe, ev.comm, ev.start_ns)
        elif not ev.exe:  # the kernel could not walk it: too deep or too long
            ev.exe = self.proc.exe(ev.pid, ev.comm)
        identity, part = self._identity(ev.cgroup_id)
        view = EventView(ev, identity)
        rules = self.rules.match_view(view)
        if not rules:
            return
        if not ev.parent_exe:  # only for what is written: it may read /proc
            ev.parent_exe = self.proc.parent_exe(ev.ppid, ev.parent_start_ns)
        ns = str(identity.get("namespace", ""))
        lines, kinds, pending, line = self._lines, self._kinds, self._pending, self.formatter.line
        now = self._clock()
        target = _target(ev, view)
        for rule in rules:
            what = self.aggregator.offer((rule.name, ev.cgroup_id, ev.exe, ev.ppid, target), (rule.name, ev.cgroup_id),
                                         ev.ts_ns, now, (rule, ev, part, view))
            if what == EMIT:
                lines.append(line(rule, ev, part, view))
                kinds.append(ev.kind)
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
            self._lines.append(self.formatter.line(rule, ev, part, view, rep))
            self._kinds.append(ev.kind)
        if not self._lines and not self._pending:
            return
        lines, kinds, pending = self._lines, self._kinds, self._pending
        self._lines, self._kinds, self._pending = [], [], {}
        with self._lock:
            for key, n in pending.items():
                self.matches[key] = self.matches.get(key, 0) + n
            if lines:
                self.output.write_lines(lines, kinds)

    def counts(self) -> dict[tuple[str, str, str], int]:
        with self._lock:
            return dict(self.matches)

    def dropped(self) -> dict[tuple[str, str], int]:
        with self._lock:
            return dict(self.drops)

    def close(self) -> None:
        self.flush(now=float("inf"))  # open windows: their summaries now
        self.output.close()


class SecurityPipeline:
    """Owns the security probe, its ring-buffer reader thread and the sink.

    Made before anything is attached (a rules file that does not compile, or
    an output file that cannot be opened, stops the agent there: the caller
    loads the rules and opens the output first); ``start()`` runs after the
    probe is attached.
    """

    def __init__(self, cfg: Config, rules: RuleSet, identity: NodeIdentity, output: EventOutput):
        agg = cfg.security.output.aggregate
        self.identity = identity
        self.sink = EventSink(rules, identity.describe, ProcessInfo(cfg.security.proc_root), output,
                              aggregator=Aggregator(agg.window, agg.max_lines),
                              formatter=make_formatter(cfg.security.output.format))
        self.probe = SecurityProbe(kernel_filter(rules))
        self.reader: EventReader | None = None

    def start(self) -> None:
        """After the probe's start: nothing to read from a probe that is down."""
        probe = self.probe
        if not probe.up:
            return
        self.refresh_pod_roots()
        self.reader = EventReader(probe.obj.maps["security_events"].fd, self.sink.handle, self.sink.flush)
        self.reader.start()

    def refresh_pod_roots(self) -> None:
        """The kubelet's top cgroups, for the kernel's "in a pod?" test (they may appear after us)."""
        self.probe.set_pod_roots(self.identity.pod_roots())

    def counts(self) -> SecurityCounts:
        """Matches and every loss, the kernel's and ours, for one snapshot."""
        return SecurityCounts(self.sink.counts(),
                              {**self.probe.drops(), **self.sink.dropped(), **self.sink.output.dropped()})

    def stop(self) -> None:
        """Before the probe stops: the reader must not poll a freed ring buffer."""
        if self.reader is not None:
            self.reader.stop()

    def close(self) -> None:
        self.sink.close()
