"""Agent off vs on, back to back: the shape of the throughput and churn figures."""
from __future__ import annotations

import contextlib
from typing import Callable

from . import env
from .stats import ratio_pairs, summary

__all__ = ["alternate"]


def alternate(measure: Callable[[], float], repeats: int, log: Callable[[str], None]) -> dict:
    """``repeats`` rounds of off, on and floor runs of ``measure``.

    "floor" has only the empty programs of bench/bpf/empty.bpf.c on podsight's
    hooks: what any program on those hooks costs before doing anything, so
    the best on/off ratio an in-kernel design could reach here.  The order
    rotates every round so a machine that warms up or slows down favours no
    side; ratios pair each round's runs.
    """
    sides = {"off": contextlib.nullcontext, "on": env.agent, "floor": _floor}
    runs: dict[str, list[float]] = {s: [] for s in sides}
    names = list(sides)
    for i in range(repeats):
        for side in names[i % 3:] + names[: i % 3]:
            with sides[side]():
                runs[side].append(measure())
        off, on, floor = runs["off"][-1], runs["on"][-1], runs["floor"][-1]
        log(f"  round {i + 1}/{repeats}: off {off:,.1f}  on {on:,.1f}  ratio {on / off:.4f}"
            f"  (empty programs {floor / off:.4f})")
    return {"off": summary(runs["off"]), "on": summary(runs["on"]),
            "ratio": summary(ratio_pairs(runs["on"], runs["off"])),
            "empty_programs": summary(runs["floor"]),
            "empty_programs_ratio": summary(ratio_pairs(runs["floor"], runs["off"])),
            # What podsight's own code costs on top of the hooks' floor.
            "on_vs_empty_ratio": summary(ratio_pairs(runs["on"], runs["floor"]))}


@contextlib.contextmanager
def _floor():
    from .kernel_cost import floor_programs  # kernel_cost imports this module's users

    with floor_programs(env.build_tools()["empty_dir"]):
        yield
