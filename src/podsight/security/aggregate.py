"""Repeats of one detection become one summary line.  Pure; the clock is given.

A detection is (rule, cgroup, program, parent, target): the 20 connection
retries of one ``kubectl get secrets``, or a shell loop running ``cat
/etc/shadow`` (a new pid each time, the same program, parent and target).
Its first occurrence is written at once, so no detection waits.  Repeats
within ``window`` seconds of it are only counted; when the window closes, one
summary line stands for them all: ``count`` occurrences from ``first_time`` to
``last_time``, the first one included.

Distinct detections are written one line each, up to ``max_lines`` per rule
and cgroup per window; beyond that they are dropped and counted
(``output_limited``), so a pod flooding one rule with distinct targets cannot
flood the output, and cannot hide what other rules report.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Hashable

__all__ = ["Aggregator", "Repeat", "EMIT", "REPEAT", "LIMITED"]

EMIT, REPEAT, LIMITED = "emit", "repeat", "limited"


@dataclass
class Repeat:
    """A detection written once whose window is open."""

    closes_at: float
    first_ns: int
    last_ns: int = 0
    count: int = 1  # occurrences in the window, the first (already written) included
    last: object = None  # what the caller needs to write the summary line (its latest occurrence)


@dataclass
class Aggregator:
    window: float
    max_lines: int
    max_open: int = 16384  # open detections tracked; beyond, lines are written unaggregated
    _open: dict[Hashable, Repeat] = field(default_factory=dict)
    _lines: dict[tuple[Hashable, Hashable], tuple[float, int]] = field(default_factory=dict)

    def offer(self, key: Hashable, budget_key: tuple[Hashable, Hashable], ts_ns: int, now: float,
              last: object) -> str:
        """What to do with one occurrence: EMIT its line, it is a REPEAT (counted), or LIMITED (drop it)."""
        if self.window <= 0:
            return EMIT
        rep = self._open.get(key)
        if rep is not None and now < rep.closes_at:
            rep.count += 1
            rep.last_ns = ts_ns
            rep.last = last
            return REPEAT
        closes, used = self._lines.get(budget_key, (0.0, 0))
        if now >= closes:
            closes, used = now + self.window, 0
        if used >= self.max_lines:
            return LIMITED
        self._lines[budget_key] = (closes, used + 1)
        if rep is None and len(self._open) >= self.max_open:
            return EMIT  # no room to remember it: write every occurrence rather than lose one
        self._open[key] = Repeat(now + self.window, ts_ns)
        return EMIT

    def closed(self, now: float) -> list[Repeat]:
        """Windows that closed by ``now`` with repeats in them (each to be written as one summary)."""
        if not self._open:
            return []
        done = [k for k, r in self._open.items() if now >= r.closes_at]
        out = [r for r in (self._open.pop(k) for k in done) if r.count > 1]
        if len(self._lines) > self.max_open:
            self._lines = {k: v for k, v in self._lines.items() if v[0] > now}
        return out
