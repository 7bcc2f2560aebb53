"""Agent off vs on, back to back: the shape of the throughput and churn figures."""
from __future__ import annotations

from typing import Callable

from . import env
from .stats import ratio_pairs, summary

__all__ = ["alternate"]


def alternate(measure: Callable[[], float], repeats: int, log: Callable[[str], None]) -> dict:
    """``repeats`` pairs of (off, on) runs of ``measure``; the order flips every
    pair so a machine that warms up or slows down favours neither side."""
    off: list[float] = []
    on: list[float] = []
    for i in range(repeats):
        order = ("off", "on") if i % 2 == 0 else ("on", "off")
        for side in order:
            if side == "on":
                with env.agent():
                    on.append(measure())
            else:
                off.append(measure())
        log(f"  pair {i + 1}/{repeats}: off {off[-1]:,.1f}  on {on[-1]:,.1f}  ratio {on[-1] / off[-1]:.4f}")
    return {"off": summary(off), "on": summary(on), "ratio": summary(ratio_pairs(on, off))}
