"""Benchmark: security events matched (and matches rendered to JSON) per
second on one core, on pre-built RawEvents.

    .venv/bin/python bench/benchlib/match.py [N]

The mix is mostly events no default rule matches (as on a real node, after
the kernel's cheap filters), plus a share of matches that go through
redaction and JSON encoding.  ``decode`` lets the loader add its ring-buffer
decoding to the measured loop: it is called with each item and must return
the RawEvent.
"""
from __future__ import annotations

import sys
import time
from typing import Callable, Sequence

from podsight.security.events import event_json
from podsight.security.fields import EventView
from podsight.security.model import RawEvent
from podsight.security.rules import DEFAULT_RULES_PATH, RuleSet, load_rules

__all__ = ["bench_decode_match", "sample_events"]

_POD = {
    "node": "node-1", "namespace": "shop", "pod": "web-7d9f", "container": "app",
    "image": "registry.example/web:1.2", "workload": "web", "workload_kind": "Deployment",
    "pod_uid": "5f0c", "container_id": "c0ffee", "host_cgroup": "", "in_pod": True,
}


def sample_events(n: int) -> list[tuple[RawEvent, dict]]:
    """A deterministic mix; about 1 in 10 events matches a default rule."""
    base = dict(ts_ns=1_764_136_000_000_000_000, cgroup_id=4242, pid=100, tid=100, ppid=1, uid=1000,
                gid=1000, comm="python3", exe="/usr/bin/python3", parent_comm="gunicorn", cwd="/srv")
    templates = [
        RawEvent("open", **base, path="/srv/app/static/main.css", flags=0o2000000),
        RawEvent("open", **base, path="/srv/app/cache/x.tmp", flags=0o2000101, mode=0o644),
        RawEvent("open", **base, path="templates/index.html", flags=0),
        RawEvent("open", **base, path="/usr/lib/python3.11/json/__init__.py", flags=0o2000000),
        RawEvent("exec", **{**base, "comm": "ls", "exe": "/usr/bin/ls"}, path="/usr/bin/ls",
                 args=["ls", "-la", "/srv"]),
        RawEvent("connect", **base, family=2, dst_ip="10.96.0.10", dst_port=53),
        RawEvent("connect", **base, family=2, dst_ip="10.1.2.3", dst_port=5432),
        RawEvent("open", **base, path="/proc/self/status", flags=0),
        RawEvent("chmod", **base, path="/srv/app/run.sh", mode=0o755),
        # matches:
        RawEvent("exec", **{**base, "comm": "sh", "exe": "/bin/dash"}, path="/bin/sh",
                 args=["sh", "-c", "mysql -uroot -phunter2 shop -e 'select 1'"]),
    ]
    idn = dict(_POD)
    return [(templates[i % len(templates)], idn) for i in range(n)]


def bench_decode_match(n: int = 200_000, ruleset: RuleSet | None = None,
                       items: Sequence | None = None,
                       decode: Callable[[object], RawEvent] | None = None) -> dict[str, float]:
    """Run ``n`` events through match (+ JSON for matches); return the figures."""
    if ruleset is None:
        ruleset = load_rules([DEFAULT_RULES_PATH],
                             lists={"allowed_egress_cidrs": ["10.0.0.0/8"], "kubernetes_api_cidrs": ["10.96.0.1"]})
    events = list(items) if items is not None else sample_events(n)
    matched = 0
    out_bytes = 0
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for item in events:
        if decode is not None:
            ev, idn = decode(item)
        else:
            ev, idn = item
        view = EventView(ev, idn)  # one view for matching and rendering, as the agent's sink does
        rules = ruleset.match_view(view)
        if rules:
            for rule in rules:
                out_bytes += len(event_json(rule, ev, idn, view))
                matched += 1
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return {
        "events": len(events),
        "matches": matched,
        "cpu_seconds": cpu,
        "wall_seconds": wall,
        "events_per_second": len(events) / cpu if cpu > 0 else float("inf"),
        "json_bytes": out_bytes,
    }


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    n = int(args[0]) if args else 200_000
    r = bench_decode_match(n)
    print(f"security match: {r['events']} events, {r['matches']} matches, {r['cpu_seconds']:.3f} s CPU "
          f"→ {r['events_per_second']:,.0f} events/s on one core ({r['json_bytes'] / max(r['matches'], 1):.0f} "
          "bytes per JSON event)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
