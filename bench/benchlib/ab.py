"""Agent off vs on, back to back: the shape of the throughput and churn figures."""
from __future__ import annotations

import contextlib
import time
from typing import Callable

from . import env
from .floor import floor_programs
from .stats import median_ci, ratio_pairs, summary

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
    agent_cpu: list[float] = []
    names = list(sides)
    for i in range(repeats):
        for side in names[i % 3:] + names[: i % 3]:
            with sides[side]() as agent:
                if agent is None:
                    runs[side].append(measure())
                    continue
                # The agent's own user-space work during the load (sampler,
                # rescans), apart from what its programs cost in the kernel.
                pid = agent.proc.pid
                c0, t0 = env.cpu_seconds(pid), time.monotonic()
                runs[side].append(measure())
                agent_cpu.append((env.cpu_seconds(pid) - c0) / (time.monotonic() - t0) * 100)
        off, on, floor = runs["off"][-1], runs["on"][-1], runs["floor"][-1]
        log(f"  round {i + 1}/{repeats}: off {off:,.1f}  on {on:,.1f}  ratio {on / off:.4f}"
            f"  (empty programs {floor / off:.4f})")
    out = {"off": summary(runs["off"]), "on": summary(runs["on"]), "empty_programs": summary(runs["floor"])}
    for name, ratios in (("ratio", ratio_pairs(runs["on"], runs["off"])),
                         ("empty_programs_ratio", ratio_pairs(runs["floor"], runs["off"])),
                         # What podsight's own code costs on top of the hooks' floor.
                         ("on_vs_empty_ratio", ratio_pairs(runs["on"], runs["floor"]))):
        out[name], out[f"{name}_ci"] = summary(ratios), median_ci(ratios)
    # % of one CPU the agent process used while the load ran.
    return {**out, "agent_cpu_percent": summary(agent_cpu)}


@contextlib.contextmanager
def _floor():
    with floor_programs(env.build_tools()["empty_dir"]):
        yield
