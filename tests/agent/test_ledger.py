"""Ledger: per label-set totals stay monotonic while the cgroups behind them come and go."""
from __future__ import annotations

from podsight.agent.ledger import Ledger

WEB = ("system.slice", "web.service")
DB = ("system.slice", "db.service")


def test_retired_counts_stay_in_the_total():
    """cgroups 1 and 2 share a label set; 1 is deleted: the total keeps its last values."""
    ledger = Ledger(2)
    labels = {1: WEB, 2: WEB, 3: DB}.get
    before = ledger.aggregate({1: (100, 1), 2: (20, 2), 3: (5, 5)}, labels)
    assert before == {WEB: (120, 3), DB: (5, 5)}
    ledger.retire(WEB, (100, 1))  # cgroup 1's map entry is deleted
    after = ledger.aggregate({2: (25, 3), 3: (5, 5)}, labels)
    assert after == {WEB: (125, 4), DB: (5, 5)}


def test_a_label_set_with_only_retired_counts_is_still_exported():
    ledger = Ledger(1)
    ledger.retire(WEB, (7,))
    ledger.retire(WEB, (3,))  # retirements add up
    assert ledger.aggregate({}, lambda key: WEB) == {WEB: (10,)}


def test_aggregate_does_not_consume_retired_counts():
    """Each scrape starts from the retired totals: summing must not add into them."""
    ledger = Ledger(1)
    ledger.retire(WEB, (10,))
    current = {2: (5,)}
    assert ledger.aggregate(current, lambda key: WEB) == {WEB: (15,)}
    assert ledger.aggregate(current, lambda key: WEB) == {WEB: (15,)}
    assert ledger.retired == {WEB: (10,)}


def test_held_back_entries_are_left_out():
    """label_of None: not resolved yet, the counts stay in the kernel map for a later scrape."""
    ledger = Ledger(1)
    assert ledger.aggregate({1: (5,), 2: (9,)}, {1: WEB}.get) == {WEB: (5,)}


def test_forget_drops_a_label_set_for_good():
    ledger = Ledger(1)
    ledger.retire(WEB, (10,))
    ledger.retire(DB, (4,))
    ledger.forget(WEB)
    ledger.forget(("never", "seen"))  # no error
    assert ledger.aggregate({}, lambda key: None) == {DB: (4,)}
