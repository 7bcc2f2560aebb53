"""Evaluate dashboard panel targets the way Grafana would, through
Prometheus' HTTP API (range queries over the test's time span): with every
variable at "All", and with each variable at the concrete values its own
query offers."""
from __future__ import annotations

import re
import time

import dashboard_targets as dt
import prom_stack

# Every variable at "All": its allValue '.*' (which also matches series that
# lack the label, e.g. no `cluster` on a single Prometheus).
ALL_VARIABLES = {
    "datasource": "prometheus",
    "cluster": ".*",
    "node": ".*",
    "namespace": ".*",
    "pod": ".*",
    "workload": ".*",
    # The service map's price per GB (a textbox, not a query variable).
    "price_per_gb": "0.01",
    "__rate_interval": prom_stack.RATE_INTERVAL,
    "__interval": f"{prom_stack.SCRAPE_INTERVAL_S}s",
    "__range": "5m",
}

# Variables that may list no value, and why ("All" still matches every series).
MAY_LIST_NOTHING = {
    "cluster": "only a multi-cluster setup (external labels, relabeling) adds a cluster label",
}

# Values of one variable tried per dashboard (preferred ones first): enough to
# find the test's own pods among whatever else the node has, few enough that a
# poll of every board stays at a few seconds.
MAX_VALUES = 3


def evaluate_all(prom: prom_stack.Prometheus, start: float, end: float | None = None,
                 step: float = 2.0, variables: dict[str, str] | None = None) -> dict[dt.Target, tuple[str, int]]:
    """{target: (substituted expr, number of finite points)} for every panel
    target of every dashboard. A query Prometheus rejects raises, naming the
    panel."""
    end = end or time.time()
    out = {}
    for target in dt.all_targets():
        out[target] = _evaluate(prom, target, variables or ALL_VARIABLES, start, end, step)
    return out


def _evaluate(prom, target: dt.Target, variables: dict[str, str], start: float, end: float,
              step: float) -> tuple[str, int]:
    expr = dt.substitute(target.expr, variables)
    try:
        result = prom.query_range(expr, start, end, step)
    except prom_stack.PromQueryError as exc:
        raise AssertionError(f"{target.where()}: Prometheus rejected {expr!r}: {exc}") from exc
    return expr, prom_stack.finite_points(result)


def grafana_regex_value(value: str) -> str:
    """A chosen value as Grafana writes it into a `=~"$var"` matcher of a
    Prometheus query: regex metacharacters escaped, then backslashes doubled
    for the PromQL string."""
    value = value.replace("\\", "\\" * 4)
    return re.sub(r"([$^*+?.()|{}\[\]'])", r"\\\\\1", value)


def variable_values(prom: prom_stack.Prometheus, variable: dict, start: float, end: float,
                    variables: dict[str, str] = ALL_VARIABLES) -> list[str]:
    """What Grafana lists for a `label_values(selector, label)` variable, the
    variables it depends on at All."""
    parsed = dt.label_values_query(variable)
    if parsed is None:
        raise AssertionError(f"variable {variable.get('name')}: not a label_values() query: {variable.get('query')!r}")
    selector, label = parsed
    values = prom.api(f"label/{label}/values", **{"match[]": dt.substitute(selector, variables),
                                                   "start": f"{start:.3f}", "end": f"{end:.3f}"})
    return sorted(v for v in values if v)


def evaluate_variable_choices(prom: prom_stack.Prometheus, start: float, end: float | None = None,
                              step: float = 2.0, prefer: dict[str, list[str]] | None = None,
                              max_values: int = MAX_VALUES) -> tuple[list[str], dict[str, list[str]]]:
    """Every variable choice a dashboard offers, not only All.

    For each dashboard and each of its query variables: the values the
    variable's own query lists (as Grafana would), preferred values first,
    at most ``max_values``; each panel target that uses the variable is
    evaluated with it at those values (the others at All) and must return
    data for at least one of them. A variable that lists no value is a
    problem (unless MAY_LIST_NOTHING says why), and so is one whose list
    lacks every value ``prefer`` names for it (the test's own node,
    namespace, pods).

    Returns (problems, {"<board> $<variable>": values tried}).
    """
    end = end or time.time()
    prefer = prefer or {}
    problems: list[str] = []
    tried: dict[str, list[str]] = {}
    for path in dt.dashboard_files():
        dash = dt.load_dashboard(path)
        targets = dt.targets(path)
        for variable in dt.query_variables(dash):
            name = variable["name"]
            key = f"{path.name} ${name}"
            offered = variable_values(prom, variable, start, end)
            wanted = [v for v in prefer.get(name, []) if v in offered]
            if not offered:
                if name not in MAY_LIST_NOTHING:
                    problems.append(f"{key}: the variable lists no value ({variable['query']})")
                continue
            if prefer.get(name) and not wanted:
                problems.append(f"{key}: lists {offered}, none of the test's own {prefer[name]}")
            values = (wanted + [v for v in offered if v not in wanted])[:max_values]
            tried[key] = values
            pattern = re.compile(rf"\$\{{?{name}\b|\[\[{name}\]\]")
            for target in targets:
                if not pattern.search(target.expr):
                    continue
                empty = []
                for value in values:
                    expr, n = _evaluate(prom, target, {**ALL_VARIABLES, name: grafana_regex_value(value)},
                                        start, end, step)
                    if n:
                        break
                    empty.append(expr)
                else:
                    problems.append(f"{target.where()}: no data with ${name} at any of {values}\n    "
                                    + "\n    ".join(empty))
    return problems, tried


def label_catalog_problems(prom: prom_stack.Prometheus) -> list[str]:
    """The label catalog the static dashboard checks rely on
    (dashboard_targets.METRIC_LABELS) against the series a real agent
    exports: no label it lacks, none it claims that no series has (the
    opt-in pod labels and dashboard_targets.SOMETIMES_LABELS aside)."""
    problems = []
    for metric, catalog in sorted(dt.METRIC_LABELS.items()):
        series = prom.api("series", **{"match[]": metric})
        if not series:
            continue
        seen = {k for s in series for k in s if k != "__name__"}
        extra = {k for k in seen - catalog - dt.TARGET_LABELS if not k.startswith("label_")}
        missing = catalog - dt.OPTIONAL_POD_LABELS - dt.SOMETIMES_LABELS.get(metric, frozenset()) - seen
        if extra:
            problems.append(f"{metric}: series carry {sorted(extra)}, not in METRIC_LABELS")
        if missing:
            problems.append(f"{metric}: METRIC_LABELS claims {sorted(missing)}, no series has them")
    return problems
