"""log2 histograms from the kernel → Prometheus cumulative buckets."""
from __future__ import annotations

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

    def cumulative(self, slots) -> list[tuple[str, int]]:
        acc = sum(slots[: self.lo + 1])
        out = [(self.les[0], acc)]
        for i, s in enumerate(range(self.lo + 1, self.hi + 1), start=1):
            acc += slots[s]
            out.append((self.les[i], acc))
        out.append(("+Inf", acc + sum(slots[self.hi + 1 :])))
        return out


def _le(x: float) -> str:
    return f"{x:.9g}"
