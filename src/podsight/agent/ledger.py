"""Per label-set totals that stay monotonic while cgroups come and go.

Many cgroups can share one label set (all of a pod's containers at pod level,
every session scope under ``user.slice``).  When a cgroup's map entry is
deleted, its last values move into ``retired`` so the label set's counter
never goes backwards.  A label set is forgotten only when its owner is gone
for good (a deleted pod after its grace period).
"""
from __future__ import annotations

from operator import add
from typing import Callable, Hashable, Mapping

__all__ = ["Ledger"]

Labels = tuple[str, ...]


class Ledger:
    def __init__(self, width: int):
        self.width = width
        self.retired: dict[Labels, tuple[int, ...]] = {}

    def aggregate(
        self,
        current: Mapping[Hashable, tuple[int, ...]],
        label_of: Callable[[Hashable], Labels | None],
    ) -> dict[Labels, tuple[int, ...]]:
        """Sum ``current`` by label set, on top of what retired entries left.

        ``label_of`` returns None for entries to hold back this time (not yet
        resolved); their counts stay in the kernel map and show up later.
        A label set fed by one entry alone gets that entry's tuple itself: an
        unchanged entry stays the same object, which the renderer compares
        cheaply.
        """
        out = dict(self.retired)
        for key, vals in current.items():
            labels = label_of(key)
            if labels is None:
                continue
            acc = out.get(labels)
            out[labels] = vals if acc is None else tuple(map(add, acc, vals))
        return out

    def retire(self, labels: Labels, vals: tuple[int, ...]) -> None:
        acc = self.retired.get(labels)
        self.retired[labels] = tuple(vals) if acc is None else tuple(map(add, acc, vals))

    def forget(self, labels: Labels) -> None:
        self.retired.pop(labels, None)
