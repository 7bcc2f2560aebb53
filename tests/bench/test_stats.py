"""The benchmark's statistics (pure): the interval that says whether a
median ratio is clearly on one side of its budget line."""
from __future__ import annotations

import math
import sys
from pathlib import Path

from hypothesis import given, strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from benchlib.stats import Budget, median_ci  # noqa: E402


def coverage(n: int, k: int) -> float:
    """P(x(k) <= median <= x(n-k+1)) for a continuous distribution."""
    return 1 - 2 * sum(math.comb(n, i) for i in range(k)) / 2 ** n


def test_order_statistics_match_the_binomial_tables():
    # Published 95 % ranks for the median: n=6 -> (1, 6), 9 -> (2, 8), 15 -> (4, 12), 20 -> (6, 15).
    for n, k in ((6, 1), (9, 2), (15, 4), (20, 6)):
        ci = median_ci(list(range(1, n + 1)))
        assert (ci["low"], ci["high"]) == (k, n - k + 1)
        assert ci["level"] == coverage(n, k) >= 0.95
        assert coverage(n, k + 1) < 0.95  # the narrowest that still covers


def test_too_few_rounds_give_no_interval():
    assert median_ci([1.0, 2.0, 3.0, 4.0, 5.0]) is None  # even min..max covers only 93.75 %


@given(st.lists(st.floats(0.5, 1.5), min_size=6, max_size=40))
def test_interval_holds_the_median(values):
    ci = median_ci(values)
    s = sorted(values)
    mid = (s[(len(s) - 1) // 2] + s[len(s) // 2]) / 2
    assert ci["low"] <= mid <= ci["high"]


def test_settled_only_when_the_whole_interval_is_on_one_side():
    b = Budget(">=", 0.97)
    assert b.as_dict(0.96, {"low": 0.94, "high": 0.965, "level": 0.96})["settled"] is True
    unsettled = b.as_dict(0.96, {"low": 0.95, "high": 0.98, "level": 0.96})
    assert unsettled["verdict"] == "MISS" and unsettled["settled"] is False
    assert "settled" not in b.as_dict(0.98)
