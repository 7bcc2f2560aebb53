"""log2 histograms from the kernel → Prometheus cumulative buckets."""
from __future__ import annotations

from itertools import accumulate

__all__ = ["Buckets"]


class Buckets:
    """Exported bucket bounds for a kernel log2 histogram.

    Kernel slot s counts values in [2^(s-1), 2^s) base units (slot 0: only 0),
    so every slot ends exactly on a bound ``le = 2^s * unit``.  Only slots
    ``lo..hi`` get a bucket of their own (cardinality); smaller values fold
    into the first bucket, larger ones only into +Inf.
    """

    def __init__(self, unit_seconds: float, lo: int, hi: int):
        self.lo, self.hi = lo, hi
        self.les = [_le((2**s) * unit_seconds) for s in range(lo, hi + 1)] + ["+Inf"]

    def cumulative_counts(self, slots) -> list[int]:
        """Cumulative count at each bound of ``les`` (the last is +Inf: all of them)."""
        counts = list(accumulate(slots[self.lo + 1 : self.hi + 1], initial=sum(slots[: self.lo + 1])))
        counts.append(counts[-1] + sum(slots[self.hi + 1 :]))
        return counts


def _le(x: float) -> str:
    return f"{x:.9g}"
