"""Agent off vs on, back to back: the shape of the throughput and churn figures."""
from __future__ import annotations

import contextlib
import time
from typing import Callable, ContextManager

from . import env
from .floor import floor_programs
from .stats import median_ci, ratio_pairs, summary

__all__ = ["alternate", "rotate"]


def alternate(measure: Callable[[], float | tuple[float, dict]], repeats: int, log: Callable[[str], None], *,
              on: Callable[[], ContextManager] | None = None, floor: Callable[[], ContextManager] | None = None,
              after_on: Callable[[object], None] | None = None) -> dict:
    """``repeats`` rounds of off, on and floor runs of ``measure``.

    "floor" has only the empty programs of bench/bpf/empty.bpf.c on podsight's
    hooks: what any program on those hooks costs before doing anything, so
    the best on/off ratio an in-kernel design could reach here.  The order
    rotates every round so a machine that warms up or slows down favours no
    side; ratios pair each round's runs.

    ``on`` (default: ``env.agent()``) yields the running agent; ``floor``
    (default: bench/bpf/empty.bpf.c on podsight's network and TCP hooks)
    yields None.  ``after_on(agent)`` runs after each "on" measurement, the
    agent still running: to check that it saw what the load did.
    ``measure`` returns the figure, or (the figure, {name: number}): the
    numbers are summarised per side under "details".
    """
    sides = {"off": contextlib.nullcontext, "on": on or env.agent, "floor": floor or _floor}
    runs: dict[str, list[float]] = {s: [] for s in sides}
    agent_cpu: list[float] = []
    names = list(sides)
    details: dict[str, dict[str, list[float]]] = {s: {} for s in sides}

    def run(side: str) -> None:
        value = measure()
        if isinstance(value, tuple):  # (the figure, {name: another number of this run})
            value, more = value
            for k, v in more.items():
                details[side].setdefault(k, []).append(v)
        runs[side].append(value)

    for i in range(repeats):
        for side in names[i % 3:] + names[: i % 3]:
            with sides[side]() as agent:
                if agent is None:
                    run(side)
                    continue
                # The agent's own user-space work during the load (sampler,
                # rescans), apart from what its programs cost in the kernel.
                pid = agent.proc.pid
                c0, t0 = env.cpu_seconds(pid), time.monotonic()
                run(side)
                agent_cpu.append((env.cpu_seconds(pid) - c0) / (time.monotonic() - t0) * 100)
                if after_on is not None:
                    after_on(agent)
        last = {side: values[-1] for side, values in runs.items()}
        log(f"  round {i + 1}/{repeats}: off {last['off']:,.1f}  on {last['on']:,.1f}"
            f"  ratio {last['on'] / last['off']:.4f}  (empty programs {last['floor'] / last['off']:.4f})")
    out = {"off": summary(runs["off"]), "on": summary(runs["on"]), "empty_programs": summary(runs["floor"])}
    for name, ratios in (("ratio", ratio_pairs(runs["on"], runs["off"])),
                         ("empty_programs_ratio", ratio_pairs(runs["floor"], runs["off"])),
                         # What podsight's own code costs on top of the hooks' floor.
                         ("on_vs_empty_ratio", ratio_pairs(runs["on"], runs["floor"]))):
        out[name], out[f"{name}_ci"] = summary(ratios), median_ci(ratios)
    if any(details.values()):
        label = {"off": "off", "on": "on", "floor": "empty_programs"}
        out["details"] = {label[side]: {k: summary(v) for k, v in d.items()} for side, d in details.items()}
    # % of one CPU the agent process used while the load ran.
    return {**out, "agent_cpu_percent": summary(agent_cpu)}


@contextlib.contextmanager
def _floor():
    with floor_programs(env.build_tools()["empty_dir"]):
        yield


def rotate(measure: Callable[[], float], repeats: int, arms: dict[str, Callable[[], ContextManager]],
           log: Callable[[str], None], *, after: Callable[[str, object, float], None] | None = None) -> dict:
    """``repeats`` rounds of every arm of ``arms`` (name → context manager
    factory yielding the running agent, or None for an arm without one), in
    an order that rotates by one every round, so no arm always runs first or
    after the same neighbour.  ``after(arm, agent, value)`` runs after each
    measurement, the arm still up: to check that an agent saw the load.

    Returns {"runs": {arm: [value per round]}, "agent_cpu_percent": {arm:
    summary}}: the raw values in round order, so any two arms can be paired
    by round (``stats.ratio_pairs``).
    """
    names = list(arms)
    runs: dict[str, list[float]] = {a: [] for a in names}
    cpu: dict[str, list[float]] = {a: [] for a in names}
    for i in range(repeats):
        k = i % len(names)
        for arm in names[k:] + names[:k]:
            with arms[arm]() as agent:
                if agent is None:
                    value = measure()
                else:
                    pid = agent.proc.pid
                    c0, t0 = env.cpu_seconds(pid), time.monotonic()
                    value = measure()
                    cpu[arm].append((env.cpu_seconds(pid) - c0) / (time.monotonic() - t0) * 100)
                if after is not None:
                    after(arm, agent, value)
            runs[arm].append(value)
        log(f"  round {i + 1}/{repeats}: " + "  ".join(f"{a} {runs[a][-1]:,.1f}" for a in names))
    return {"runs": runs, "agent_cpu_percent": {a: summary(v) for a, v in cpu.items() if v}}
