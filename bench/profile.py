#!/usr/bin/env python3
"""Where the agent's user-space time goes at scale: py-spy on the real agent.

    .venv/bin/python bench/profile.py [--pods 1000] [--seconds 20] [--idle] [--flows replicas|per_pod]

Sets up the scale figure's pods (traffic + test API server metadata), then
records the agent with py-spy while scraping back to back (or, with --idle,
while nobody scrapes) and prints the functions by self and by inclusive time.
Needs `pip install py-spy` (a benchmark-only tool).
"""
from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))

from benchlib import env, scale  # noqa: E402


def _pyspy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(found).exists():
        sys.exit("bench/profile.py: py-spy not found; pip install py-spy")
    return found


def _frame(f: str) -> str:
    # py-spy raw frames: "function (path/to/file.py:line)"; drop the line for grouping.
    name, _, where = f.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "src/"):
        if marker in where:
            where = where.split(marker, 1)[1]
    return f"{name} ({where})"


def summarize(collapsed: str, top: int = 25) -> str:
    self_t: collections.Counter = collections.Counter()
    incl: collections.Counter = collections.Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack:
            continue
        n = int(n)
        frames = [_frame(f) for f in stack.split(";")]
        total += n
        self_t[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    out = [f"{total} samples"]
    for title, c in (("self", self_t), ("inclusive", incl)):
        out.append(f"\n-- top {top} by {title} time --")
        out += [f"{100 * n / total:5.1f}%  {f}" for f, n in c.most_common(top)]
    return "\n".join(out)


def _record(spy: str, pid: int, a, gil: bool = True) -> str:
    with tempfile.NamedTemporaryFile(suffix=".txt") as out:
        r = subprocess.run([spy, "record", "--pid", str(pid), "--duration", f"{a.seconds:g}", "--rate", str(a.rate),
                            "--format", "raw", "--output", out.name, "--nonblocking"] + (["--gil"] if gil else []),
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if r.returncode != 0:
            raise SystemExit(r.stderr)
        return Path(out.name).read_text()


def profile_events(spy: str, a) -> int:
    from benchlib import events

    with env.bench_node() as node:
        pod = node.pod(env.pod_name("sec"), netns=False)
        with env.agent(events.SECURITY_CONFIG, check_probes=("security",)) as agent:
            gen = pod.run(sys.executable, "-c", events.GENERATOR, f"{a.seconds + 2:g}", text=True)
            time.sleep(0.5)
            collapsed = _record(spy, agent.proc.pid, a)
            gen.communicate()
    print(summarize(collapsed))
    return 0


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--pods", type=int, default=1000)
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--idle", action="store_true", help="profile the agent while nobody scrapes")
    p.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    p.add_argument("--flows", choices=("replicas", "per_pod"),
                   help="figure 8's setup instead (flows on, a cluster of 10,000 pods; the local pods' shape)")
    p.add_argument("--events", action="store_true",
                   help="profile the security events path instead (figure 5's kernel run), no pods at scale")
    a = p.parse_args()
    spy = _pyspy()
    if a.events:
        return profile_events(spy, a)
    if a.flows:
        return profile_flows(spy, a)
    with env.bench_node() as node, scale.scaled_agent(node, a.pods, 3, print) as (agent, info):
        print(f"series {info['series']:,}, body {info['body_bytes']:,} bytes")
        return _scrapes_or_idle(spy, agent, a)


def profile_flows(spy: str, a) -> int:
    """Figure 8's scrape setup: --pods local pods with 10 peers each, the
    cluster of 10,000 pods, 2,000 services and 500 nodes, flows on."""
    from benchlib import flows

    with env.bench_node() as node:
        pods = flows.local_pods(node, a.pods, print)
        with flows.cluster_agent(node, pods, a.flows, True, flows.SIZES, print) as (agent, info):
            print(f"edges {info['edges']}, RSS stages {info['rss_stages_mb']}")
            return _scrapes_or_idle(spy, agent, a)


def _scrapes_or_idle(spy: str, agent, a) -> int:
    stop = threading.Event()
    n = [0]

    def scrape_loop():
        while not stop.is_set():
            scale._scrape(agent.url)
            n[0] += 1

    t = None
    if not a.idle:
        t = threading.Thread(target=scrape_loop, daemon=True)
        t.start()
    # Idle: sample threads in system calls too (scandir of the cgroup tree releases the GIL).
    collapsed = _record(spy, agent.proc.pid, a, gil=not a.idle)
    stop.set()
    if t is not None:
        t.join()
    print(f"{n[0]} scrapes during {a.seconds:g} s" if not a.idle else f"idle {a.seconds:g} s")
    print(summarize(collapsed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
