"""Evaluate dashboard panel targets the way Grafana would, through
Prometheus' HTTP API (range queries over the test's time span)."""
from __future__ import annotations

import time

import dashboard_targets as dt
import prom_stack

# Every variable at "All": its allValue '.*' (which also matches series that
# lack the label, e.g. no `cluster` on a single Prometheus).
ALL_VARIABLES = {
    "datasource": "prometheus",
    "cluster": ".*",
    "namespace": ".*",
    "pod": ".*",
    "__rate_interval": prom_stack.RATE_INTERVAL,
    "__interval": f"{prom_stack.SCRAPE_INTERVAL_S}s",
    "__range": "5m",
}


def evaluate_all(prom: prom_stack.Prometheus, start: float, end: float | None = None,
                 step: float = 2.0, variables: dict[str, str] | None = None) -> dict[dt.Target, tuple[str, int]]:
    """{target: (substituted expr, number of finite points)} for every panel
    target of every dashboard. A query Prometheus rejects raises, naming the
    panel."""
    end = end or time.time()
    out = {}
    for target in dt.all_targets():
        expr = dt.substitute(target.expr, variables or ALL_VARIABLES)
        try:
            result = prom.query_range(expr, start, end, step)
        except prom_stack.PromQueryError as exc:
            raise AssertionError(f"{target.where()}: Prometheus rejected {expr!r}: {exc}") from exc
        out[target] = (expr, prom_stack.finite_points(result))
    return out
