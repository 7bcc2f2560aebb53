"""Summaries and budgets.  Pure; no I/O."""
from __future__ import annotations

import statistics
from dataclasses import dataclass

__all__ = ["summary", "percentile", "Budget", "ratio_pairs"]


def summary(values: list[float]) -> dict:
    """Median with min/max over the repeats (the form every figure is reported in)."""
    vals = [float(v) for v in values]
    if not vals:
        return {"median": None, "min": None, "max": None, "n": 0, "values": []}
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals), "values": vals}


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100): p99 of 100 samples is the 99th smallest."""
    if not values:
        raise ValueError("percentile of no values")
    s = sorted(values)
    rank = max(1, -(-len(s) * q // 100))  # ceil without floats drifting
    return s[int(rank) - 1]


def ratio_pairs(on: list[float], off: list[float]) -> list[float]:
    """on/off of each back-to-back pair: the drift of a noisy machine cancels within a pair."""
    if len(on) != len(off):
        raise ValueError(f"unpaired runs: {len(on)} on, {len(off)} off")
    return [a / b for a, b in zip(on, off) if b > 0]


@dataclass(frozen=True)
class Budget:
    """``value <op> limit`` with op ">=" or "<="; judged on the median."""

    op: str
    limit: float
    unit: str = ""

    def holds(self, value: float | None) -> bool | None:
        if value is None:
            return None
        return value >= self.limit if self.op == ">=" else value <= self.limit

    def text(self) -> str:
        return f"{self.op} {self.limit:g}{self.unit}"

    def as_dict(self, value: float | None) -> dict:
        ok = self.holds(value)
        return {"op": self.op, "limit": self.limit, "unit": self.unit,
                "verdict": None if ok is None else ("PASS" if ok else "MISS")}
