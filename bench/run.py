#!/usr/bin/env python3
"""podsight's benchmark: `make bench` (ARGS="--quick", "--only scale", ...).

Each figure is a ratio or a cost measured in this run against its own
baseline, repeated, and reported as median [min..max]; budgets print next to
them.  Results go to bench/results/latest.json (git-ignored) and stdout.
Needs root: it loads BPF programs and makes network namespaces and cgroups,
all under names of its own (psb-*, <cgroup2>/psbench), removed on exit.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))  # tests.support

from benchlib import churn, compare, env, events, flows, kernel_cost, render, report, scale, throughput, tls  # noqa: E402
from benchlib.machine import bpf_stats_sysctl, machine_info  # noqa: E402

FIGURES = ("throughput", "churn", "tls", "kernel_cost", "scale", "events", "render", "flows")


def _args(argv):
    p = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks the plumbing, figures are not meaningful")
    p.add_argument("--only", action="append", choices=FIGURES, help="run only these figures (repeatable)")
    p.add_argument("--repeats", type=int, help="repeats per figure (default 5; quick 1)")
    p.add_argument("--rounds", type=int,
                   help="off/on/empty rounds of the iperf3 and churn figures (default 15; quick 1): "
                        "single rounds vary by +-5 %% here, and 15 give a 95 %% interval for the median")
    p.add_argument("--seconds", type=float, help="length of each iperf3/wrk run (default 3; quick 1)")
    p.add_argument("--pods", type=int, help="simulated pods for the scale and flows figures (default 1000; quick 20)")
    p.add_argument("--scrapes", type=int,
                   help="scrapes per repeat and kind (gzip, as Prometheus asks, and plain) for the scale figure "
                        "(default 100; quick 5)")
    p.add_argument("--idle-seconds", type=float, help="idle CPU window (default 30; quick 2)")
    p.add_argument("--interval-seconds", type=float,
                   help="window of the simulated 15 s scrape interval (default 60; quick 1: one scrape)")
    p.add_argument("--events", type=int, help="events per events-path run (default 200000; quick 2000)")
    p.add_argument("--agent-env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra environment for the agent (e.g. MALLOC_ARENA_MAX=2), to compare settings")
    p.add_argument("--output", type=Path, default=report.LATEST)
    a = p.parse_args(argv)
    quick = a.quick
    defaults = dict(repeats=1 if quick else 5, rounds=1 if quick else 15, seconds=1 if quick else 3,
                    pods=20 if quick else 1000,
                    scrapes=5 if quick else 100, idle_seconds=2 if quick else 30,
                    interval_seconds=1 if quick else 60, events=2000 if quick else 200_000)
    for k, v in defaults.items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    a.only = a.only or list(FIGURES)
    return a


def _previous(output: Path) -> dict | None:
    """Keep the run this one replaces, for bench/compare.py; None if there is none."""
    if not output.exists():
        return None
    kept = compare.previous_path(output)
    output.replace(kept)
    try:
        return compare.load(kept)
    except ValueError:
        return None


def main(argv=None) -> int:
    a = _args(argv)
    if os.geteuid() != 0:
        print("bench/run.py: needs root (loads BPF programs, creates netns and cgroups)", file=sys.stderr)
        return 2

    def log(msg: str) -> None:
        print(msg, flush=True)

    for kv in a.agent_env:
        key, sep, value = kv.partition("=")
        if not sep or not key:
            print(f"bench/run.py: --agent-env {kv!r}: expected KEY=VALUE", file=sys.stderr)
            return 2
        env.AGENT_ENV[key] = value
    res = {"machine": machine_info(), "quick": a.quick, "agent_env": dict(env.AGENT_ENV),
           "params": {k: getattr(a, k) for k in ("repeats", "rounds", "seconds", "pods", "scrapes", "idle_seconds",
                                                 "interval_seconds", "events")},
           "figures": {}, "errors": {}}
    t_start = time.monotonic()
    bpf_stats_before = bpf_stats_sysctl()
    tools = env.build_tools()
    with env.bench_node() as node:
        steps = {
            "throughput": lambda: throughput.run(node, a.rounds, a.seconds, log),
            "churn": lambda: churn.run(node, tools["httpd"], a.rounds, a.seconds, log),
            "tls": lambda: tls.run(node, tools, a.rounds, a.seconds, log),
            "kernel_cost": lambda: kernel_cost.run(node, tools["httpd"], max(1, min(a.repeats, 3)), a.seconds,
                                                   50 if a.quick else 500, log),
            "scale": lambda: scale.run(node, a.pods, 3, a.scrapes, max(1, min(a.repeats, 3)), a.idle_seconds,
                                       a.interval_seconds, log),
            "events": lambda: events.run(a.events, a.repeats, log, node, 1 if a.quick else 5),
            "render": lambda: render.run(a.pods, 3 if a.quick else 20, max(1, min(a.repeats, 3)), log),
            "flows": lambda: flows.run(node, tools, a.repeats, a.rounds, a.seconds, a.pods, a.scrapes,
                                       flows.QUICK_SIZES if a.quick else flows.SIZES, log),
        }
        for name in FIGURES:
            if name not in a.only:
                continue
            t0 = time.monotonic()
            try:
                res["figures"][name] = steps[name]()
            except Exception as e:  # one broken figure must not lose the others
                res["errors"][name] = f"{type(e).__name__}: {e}"
                traceback.print_exc()
            log(f"  ({name}: {time.monotonic() - t0:.0f} s)")
    res["duration_seconds"] = round(time.monotonic() - t_start, 1)
    res["bpf_stats_enabled"] = {"before": bpf_stats_before, "after": bpf_stats_sysctl()}
    res["verdicts"] = report.verdicts(res)
    previous = _previous(a.output)
    report.write_json(res, a.output)
    print()
    print(report.table(res))
    print(f"\nwritten {a.output} in {res['duration_seconds']:.0f} s")
    if previous is not None:
        print(f"\nagainst the run before (kept as {compare.previous_path(a.output)}):")
        print(compare.table(previous, res, compare.compare(previous, res)))
    return 1 if res["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
