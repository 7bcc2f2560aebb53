"""Summaries and budgets.  Pure; no I/O."""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

__all__ = ["summary", "percentile", "Budget", "ratio_pairs", "median_ci"]


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


def median_ci(values: list[float], level: float = 0.95) -> dict | None:
    """A distribution-free confidence interval for the median: the order
    statistics x(k) and x(n-k+1) with the largest k whose binomial coverage
    still reaches ``level``.  None below 6 values, where no such k exists
    at 95 %.  It says whether a median sits clearly on one side of a budget
    line or the rounds cannot tell."""
    s = sorted(float(v) for v in values)
    n = len(s)
    below = 0.0  # P(Binomial(n, 1/2) < k)
    best = None
    for k in range(1, n // 2 + 1):
        below += math.comb(n, k - 1) / 2 ** n
        coverage = 1 - 2 * below
        if coverage < level:
            break
        best = (k, coverage)
    if best is None:
        return None
    k, coverage = best
    return {"low": s[k - 1], "high": s[n - k], "level": coverage}


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

    def as_dict(self, value: float | None, ci: dict | None = None, spread: dict | None = None) -> dict:
        """The verdict, with the value judged and its spread (the figure's
        min/max) kept beside it, so two runs can be compared from the JSON alone."""
        ok = self.holds(value)
        out = {"op": self.op, "limit": self.limit, "unit": self.unit, "value": value,
               "verdict": None if ok is None else ("PASS" if ok else "MISS")}
        if spread is not None and spread.get("min") is not None:
            out["min"], out["max"] = spread["min"], spread["max"]
        if ci is not None:
            # Settled: the whole interval is on the verdict's side of the line.
            out["ci"] = ci
            out["settled"] = self.holds(ci["low"]) == self.holds(ci["high"])
        return out

    def judge(self, stats: dict, ci: dict | None = None) -> dict:
        """as_dict() for a summary(): judged on its median, with its min..max."""
        return self.as_dict(stats["median"], ci, stats)
