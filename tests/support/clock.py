"""A clock the test moves by hand, for code that takes ``clock=``."""
from __future__ import annotations

__all__ = ["Clock"]


class Clock:
    def __init__(self, now: float = 100.0):
        self.now = now

    def __call__(self) -> float:
        return self.now
