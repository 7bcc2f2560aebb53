"""A background thread's promise to show progress again by a deadline.

``/healthz`` fails when a thread misses its deadline: a ring-buffer reader,
sampler or Kubernetes watch that stopped moving is a stuck agent the kubelet
should restart, even while HTTP still answers.
"""
from __future__ import annotations

import math
import time
from typing import Callable, Iterable

__all__ = ["Heartbeat", "late"]


class Heartbeat:
    def __init__(self, name: str, clock: Callable[[], float] = time.monotonic):
        self.name = name
        self._clock = clock
        self._deadline = math.inf  # nothing promised until the thread runs

    def beat(self, within: float) -> None:
        """Progress now; the next is due within ``within`` seconds."""
        self._deadline = self._clock() + within

    def done(self) -> None:
        """The thread ended on purpose: nothing more is due."""
        self._deadline = math.inf

    def overdue(self) -> float:
        """Seconds past the deadline (<= 0: on time)."""
        return self._clock() - self._deadline


def late(beats: Iterable[Heartbeat]) -> list[str]:
    """What is overdue, as "name (N s overdue)"."""
    return [f"{b.name} ({b.overdue():.0f} s overdue)" for b in beats if b.overdue() > 0]
