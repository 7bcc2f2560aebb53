"""Figure 6: the /metrics renderer alone, in-process, at ``pods`` pods.

The scale figure scrapes a node whose counters stand still (its traffic is
over before the scrapes), the renderer's best case.  Here the same page is
rendered while a share of the pods changes every value between scrapes (0 %,
10 %, 100 %: a busy node), plain and gzip, against the renderer podsight had
before (tests/exporters/legacy_renderer.py) on the same snapshots in the
same run: ratios, not absolute figures, are what compares across machines.
"""
from __future__ import annotations

import random
import time
from dataclasses import replace

from .stats import summary

__all__ = ["run"]

SHARES = (0.0, 0.1, 1.0)


def _snapshots(n_pods: int, share: float, scrapes: int, seed: int):
    """``scrapes + 1`` snapshots; between two, ``share`` of the pods change every value."""
    from tests.exporters.test_prometheus import pod, snapshot

    labelsets = [pod(i) for i in range(n_pods)]
    rng = random.Random(seed)
    base = snapshot(labelsets, rng)
    out = [base]
    changing = labelsets[: int(n_pods * share)]
    for _ in range(scrapes):
        fresh = snapshot(changing, rng) if changing else None
        series = {m: dict(rows) for m, rows in out[-1].series.items()}
        if fresh is not None:
            for m, rows in fresh.series.items():
                series[m].update(rows)
        out.append(replace(base, series=series))
    return out


def _time(fn, snaps) -> float:
    """ms per render, the first snapshot rendered once beforehand (the agent's steady state)."""
    fn(snaps[0])
    t0 = time.process_time()
    for s in snaps[1:]:
        fn(s)
    return (time.process_time() - t0) / (len(snaps) - 1) * 1000


def run(n_pods: int, scrapes: int, repeats: int, log) -> dict:
    from podsight.exporters.prometheus import MetricsRenderer
    from podsight.kernel.families import COUNTER_FAMILIES
    from tests.exporters.legacy_renderer import legacy_render
    from tests.exporters.test_prometheus import NAMES

    log(f"render: {n_pods} pods in-process, {scrapes} renders per share changed x {repeats}")
    out: dict = {"pods": n_pods}
    legacy = []
    for r in range(repeats):
        snaps = _snapshots(n_pods, 1.0, scrapes, r)
        legacy.append(_time(legacy_render, snaps))
    out["legacy_ms"] = summary(legacy)
    for share in SHARES:
        plain, gz = [], []
        for r in range(repeats):
            snaps = _snapshots(n_pods, share, scrapes, r)
            new = MetricsRenderer(NAMES, COUNTER_FAMILIES)
            plain.append(_time(lambda s: b"".join(new.render(s)), snaps))
            new = MetricsRenderer(NAMES, COUNTER_FAMILIES)
            gz.append(_time(lambda s: b"".join(new.render(s, gzip=True)), snaps))
        key = f"changed_{int(share * 100)}pct"
        out[key] = {"plain_ms": summary(plain), "gzip_ms": summary(gz),
                    "plain_vs_legacy": summary([p / q for p, q in zip(plain, legacy)]),
                    "gzip_vs_legacy": summary([g / q for g, q in zip(gz, legacy)])}
        log(f"  {share:4.0%} changed: plain {out[key]['plain_ms']['median']:.1f} ms, "
            f"gzip {out[key]['gzip_ms']['median']:.1f} ms (legacy, plain: {out['legacy_ms']['median']:.1f} ms)")
    return out
