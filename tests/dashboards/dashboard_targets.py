"""Reading Grafana dashboards the way Grafana does, for the static and e2e tests.

Pure functions, no I/O beyond reading the dashboard files: list every panel
target, substitute template variables, and pull the metric names out of a
PromQL expression (a small tokenizer, good enough for the expressions we
write; the e2e test cross-checks it against a real Prometheus).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DASHBOARD_DIR = REPO / "dashboards"
RULES_DIR = REPO / "rules"
DEFAULT_SECURITY_RULES = REPO / "src" / "podsight" / "security" / "default_rules.yaml"

# Metric names the agent exports (../shared/DESIGN.md catalog and the
# exporter's process collector). Histograms add _bucket/_sum/_count.
AGENT_METRICS = frozenset({
    "podsight_network_bytes_total",
    "podsight_network_packets_total",
    "podsight_network_drops_total",
    "podsight_tcp_connections_opened_total",
    "podsight_tcp_connections_failed_total",
    "podsight_tcp_connections_closed_total",
    "podsight_tcp_connections_active",
    "podsight_tcp_retransmits_total",
    "podsight_tcp_resets_total",
    "podsight_tls_handshakes_total",
    "podsight_tls_handshakes_untracked_total",
    "podsight_tls_libraries_attached",
    "podsight_tls_library_processes",
    "podsight_flow_bytes_total",
    "podsight_flow_segments_total",
    "podsight_flow_connections_opened_total",
    "podsight_flow_connections_failed_total",
    "podsight_flow_connections_closed_total",
    "podsight_flow_retransmits_total",
    "podsight_flow_edges",
    "podsight_flow_peers_folded",
    "podsight_flow_edges_expired_total",
    "podsight_flow_untracked_total",
    "podsight_flow_backends_unresolved_total",
    "podsight_security_events_total",
    "podsight_events_dropped_total",
    "podsight_bpf_program_runs_total",
    "podsight_bpf_program_run_seconds_total",
    "podsight_probe_up",
    "podsight_probe_state",
    "podsight_bpf_map_entries",
    "podsight_bpf_map_max_entries",
    "podsight_build_info",
    "podsight_kubernetes_api_up",
    "process_resident_memory_bytes",
    "process_cpu_seconds_total",
})
AGENT_HISTOGRAMS = ("podsight_tcp_srtt_seconds", "podsight_tcp_connect_duration_seconds",
                    "podsight_tls_handshake_duration_seconds", "podsight_flow_srtt_seconds")
# Series Prometheus itself writes for every scrape target.
PROMETHEUS_SCRAPE_METRICS = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped"})

# The label names each series carries, for the checks that a dashboard filters
# only on labels that exist (an always-empty variable or panel otherwise).
# From the exporter (src/podsight/exporters/prometheus.py) and the label
# policy (src/podsight/identity/labels.py); the e2e test compares them with
# the series a real agent exports.
_POD = frozenset({"node", "namespace", "pod", "container", "host_cgroup"})
# Pod-attributed series carry these only with labels.image / labels.workload
# in the agent config (and label_<key> with labels.pod_labels).
OPTIONAL_POD_LABELS = frozenset({"image", "workload", "workload_kind"})
# Every scraped series: the target's job and instance; `cluster` where a
# multi-cluster setup adds it (external labels, relabeling). The chart's
# scrape relabeling also adds `node` from the pod's node, but a plain scrape
# config does not, so process_* and scrape metrics are joined to
# podsight_build_info to filter by node.
TARGET_LABELS = frozenset({"job", "instance", "cluster"})
_PODS = _POD | OPTIONAL_POD_LABELS
# Flow series (issue 16): the local workload and its peer, always at
# workload level (flows carry workload whatever labels.workload says);
# flows.level: pod adds pod and peer_pod, flows.external.raw_ips peer_ip.
_FLOW = frozenset({"node", "namespace", "workload", "workload_kind", "zone", "role", "port", "peer_kind",
                   "peer_namespace", "peer_workload", "peer_workload_kind", "peer_zone", "peer_service"})
OPTIONAL_FLOW_LABELS = frozenset({"pod", "peer_pod", "peer_ip"})
_FLOWS = _FLOW | OPTIONAL_FLOW_LABELS
METRIC_LABELS: dict[str, frozenset[str]] = {
    "podsight_network_bytes_total": _PODS | {"direction"},
    "podsight_network_packets_total": _PODS | {"direction"},
    "podsight_network_drops_total": _PODS | {"reason"},
    "podsight_tcp_connections_opened_total": _PODS | {"direction"},
    "podsight_tcp_connections_failed_total": _PODS | {"direction"},
    "podsight_tcp_connections_closed_total": _PODS,
    "podsight_tcp_connections_active": _PODS,
    "podsight_tcp_retransmits_total": _PODS,
    "podsight_tcp_resets_total": _PODS | {"direction"},
    **{f"{h}{suffix}": _PODS | ({"le"} if suffix == "_bucket" else set())
       for h in ("podsight_tcp_srtt_seconds", "podsight_tcp_connect_duration_seconds")
       for suffix in ("_bucket", "_sum", "_count")},
    # The tls probe's uprobes fire in every process that maps a probed
    # library file, host processes included (host_cgroup: see SOMETIMES_LABELS).
    "podsight_tls_handshakes_total": _PODS | {"role", "result"},
    "podsight_tls_handshakes_untracked_total": _PODS | {"role"},
    **{f"podsight_tls_handshake_duration_seconds{suffix}": _PODS | {"role"} | ({"le"} if suffix == "_bucket" else set())
       for suffix in ("_bucket", "_sum", "_count")},
    "podsight_tls_libraries_attached": frozenset({"library", "node"}),
    # Pod processes only (the /proc scan looks in pod cgroups): never host_cgroup.
    "podsight_tls_library_processes": _PODS - {"host_cgroup"},
    "podsight_flow_bytes_total": _FLOWS | {"direction"},
    "podsight_flow_segments_total": _FLOWS | {"direction"},
    "podsight_flow_connections_opened_total": _FLOWS,
    "podsight_flow_connections_failed_total": _FLOWS,
    "podsight_flow_connections_closed_total": _FLOWS,
    "podsight_flow_retransmits_total": _FLOWS,
    **{f"podsight_flow_srtt_seconds{suffix}": _FLOWS | ({"le"} if suffix == "_bucket" else set())
       for suffix in ("_bucket", "_sum", "_count")},
    "podsight_flow_edges": frozenset({"node"}),
    "podsight_flow_peers_folded": frozenset({"node"}),
    "podsight_flow_edges_expired_total": frozenset({"node"}),
    "podsight_flow_untracked_total": _PODS,  # per workload, like the podsight_tcp_* it completes
    "podsight_flow_backends_unresolved_total": frozenset({"node"}),
    # No pod label: one series per pod and rule would cost too much.
    "podsight_security_events_total": frozenset({"rule", "severity", "namespace", "node"}),
    "podsight_events_dropped_total": frozenset({"reason", "event", "node"}),
    "podsight_bpf_program_runs_total": frozenset({"program", "node"}),
    "podsight_bpf_program_run_seconds_total": frozenset({"program", "node"}),
    "podsight_probe_up": frozenset({"probe", "node"}),
    "podsight_probe_state": frozenset({"probe", "state", "node"}),
    "podsight_bpf_map_entries": frozenset({"map", "node"}),
    "podsight_bpf_map_max_entries": frozenset({"map", "node"}),
    "podsight_build_info": frozenset({"version", "python_version", "node"}),
    "podsight_kubernetes_api_up": frozenset({"node"}),
    "process_resident_memory_bytes": frozenset(),
    "process_cpu_seconds_total": frozenset(),
    "up": frozenset(),
    "scrape_duration_seconds": frozenset(),
    "scrape_samples_scraped": frozenset(),
}

# Labels a series can carry that a given run may well not show, and why: the
# tls probe charges a handshake to a host process (host_cgroup) only when the
# host process itself uses a library file that pod processes map, which the
# end-to-end test's host processes do not.
SOMETIMES_LABELS: dict[str, frozenset[str]] = {
    name: frozenset({"host_cgroup"}) for name in METRIC_LABELS
    if name.startswith(("podsight_tls_handshakes", "podsight_tls_handshake_duration_seconds"))
}
# Flow series: the opt-in labels, and labels that are empty (so absent in
# Prometheus) unless the run has such a peer: peer_service without a
# connection to a ClusterIP, zone and peer_zone without zone-labelled Nodes,
# peer_namespace and peer_workload_kind with only external peers.
SOMETIMES_LABELS.update({
    name: OPTIONAL_FLOW_LABELS | {"peer_service", "zone", "peer_zone", "peer_namespace", "peer_workload_kind"}
    for name in METRIC_LABELS if name.startswith("podsight_flow_") and "peer_kind" in METRIC_LABELS[name]
})


def catalog_metric_names() -> frozenset[str]:
    names = set(AGENT_METRICS) | set(PROMETHEUS_SCRAPE_METRICS)
    for h in AGENT_HISTOGRAMS:
        names |= {f"{h}_bucket", f"{h}_sum", f"{h}_count"}
    return frozenset(names)


@dataclass(frozen=True)
class Target:
    file: Path
    dashboard_uid: str
    panel_id: int
    panel_title: str
    ref_id: str
    expr: str

    def where(self) -> str:
        return f"{self.file.name}: panel {self.panel_id} {self.panel_title!r} target {self.ref_id}"


def load_dashboard(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise AssertionError(f"{path}:{exc.lineno}:{exc.colno}: not valid JSON: {exc.msg}") from exc


def dashboard_files() -> list[Path]:
    return sorted(DASHBOARD_DIR.glob("*.json"))


def iter_panels(dashboard: dict):
    """Every panel, including those nested in collapsed rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def targets(path: Path) -> list[Target]:
    dash = load_dashboard(path)
    out = []
    for panel in iter_panels(dash):
        for t in panel.get("targets", []):
            out.append(Target(path, dash.get("uid", ""), panel.get("id"), panel.get("title", ""),
                              t.get("refId", "?"), t.get("expr", "")))
    return out


def all_targets() -> list[Target]:
    return [t for f in dashboard_files() for t in targets(f)]


_VAR = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\$(\w+)|\[\[(\w+)\]\]")


def substitute(expr: str, variables: dict[str, str]) -> str:
    """Replace Grafana template variables ($x, ${x}, ${x:fmt}, [[x]]) in an expr.

    `variables` must also give Grafana's built-ins the expr uses, e.g.
    `__rate_interval`. An unknown variable is an error, not left in place:
    Prometheus would reject it with a less helpful message.
    """
    def repl(m: re.Match) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        if name not in variables:
            raise KeyError(f"template variable ${name} has no value (known: {sorted(variables)})")
        return variables[name]
    return _VAR.sub(repl, expr)


# PromQL words that look like identifiers but are not metric names.
_KEYWORDS = frozenset({
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
    "group_right", "offset", "bool", "inf", "nan", "atan2", "start", "end",
})
_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENT = re.compile(r"(?<![\w.:$])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?")


def metric_names(expr: str) -> set[str]:
    """Metric names referenced by a PromQL expression (functions, keywords,
    label names and durations excluded)."""
    return set(_metric_names_in_order(expr))


def _metric_names_in_order(expr: str) -> list[str]:
    s = _STRING.sub('""', expr)
    s = re.sub(r"\{[^}]*\}", "{}", s)          # label matchers
    s = re.sub(r"\[[^\]]*\]", "[]", s)         # range / subquery windows
    s = _GROUPING.sub(" ", s)                  # label lists of by/on/...
    s = re.sub(r"\boffset\s+-?[0-9a-z]+", " ", s)
    names = []
    for m in _IDENT.finditer(s):
        word, call = m.group(1), m.group(2)
        if call or word in _KEYWORDS:
            continue
        names.append(word)
    return names


def range_windows(expr: str) -> list[tuple[str, str]]:
    """[(enclosing function name, window)] for every `[window]` in the expr."""
    out = []
    s = _STRING.sub(lambda m: " " * len(m.group(0)), expr)
    for m in re.finditer(r"\[([^\]]*)\]", s):
        depth, i = 0, m.start() - 1
        while i >= 0:
            c = s[i]
            if c == ")":
                depth += 1
            elif c == "(":
                if depth == 0:
                    break
                depth -= 1
            i -= 1
        fn = re.search(r"([a-zA-Z_]\w*)\s*$", s[:max(i, 0)])
        out.append((fn.group(1) if fn and i >= 0 else "", m.group(1)))
    return out


def recorded_names(rules_dir: Path = RULES_DIR) -> set[str]:
    import yaml
    names = set()
    for f in sorted(rules_dir.glob("*.yaml")):
        for group in (yaml.safe_load(f.read_text()) or {}).get("groups", []):
            for rule in group.get("rules", []):
                if "record" in rule:
                    names.add(rule["record"])
    return names


# -- labels: what a dashboard may filter on ---------------------------------

@dataclass(frozen=True)
class Matcher:
    label: str
    op: str          # =, !=, =~, !~
    value: str       # the string's content, PromQL escapes undone

    def matches(self, candidates) -> set[str]:
        """Which of ``candidates`` this matcher lets through."""
        if self.op in ("=", "!="):
            hit = {c for c in candidates if c == self.value}
        else:
            hit = {c for c in candidates if re.fullmatch(self.value, c)}
        return hit if self.op in ("=", "=~") else set(candidates) - hit


_SELECTOR = re.compile(r"(?<![\w:.$])([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}")
_MATCHER = re.compile(r'([a-zA-Z_]\w*)\s*(=~|!~|!=|=)\s*"((?:\\.|[^"\\])*)"')


def selectors(expr: str) -> list[tuple[str, list[Matcher]]]:
    """Every `metric{matchers}` of a PromQL expression, in order."""
    out = []
    for m in _SELECTOR.finditer(expr):
        matchers = [Matcher(lm.group(1), lm.group(2), re.sub(r"\\(.)", r"\1", lm.group(3)))
                    for lm in _MATCHER.finditer(m.group(2))]
        out.append((m.group(1), matchers))
    return out


_LABEL_VALUES = re.compile(r"label_values\((.+),\s*(\w+)\)")


def query_variables(dashboard: dict) -> list[dict]:
    return [v for v in dashboard.get("templating", {}).get("list", []) if v.get("type") == "query"]


def label_values_query(variable: dict) -> tuple[str, str] | None:
    """(series selector, label) of a `label_values(selector, label)` variable."""
    m = _LABEL_VALUES.fullmatch(variable.get("query", ""))
    return (m.group(1).strip(), m.group(2)) if m else None


_AGGREGATION_BY = re.compile(
    r"\s*(?:sum|min|max|avg|count|group|stddev|stdvar|topk|bottomk|quantile)\s+by\s*\(([^)]*)\)")


def recorded_labels(rules_dir: Path = RULES_DIR) -> dict[str, frozenset[str]]:
    """The labels each recording rule's series carry: the outer `by (...)`
    of its expression, else those of the first metric it reads (less `le`
    under histogram_quantile), plus the rule's own labels."""
    import yaml
    rules = {}
    for f in sorted(rules_dir.glob("*.yaml")):
        for group in (yaml.safe_load(f.read_text()) or {}).get("groups", []):
            for rule in group.get("rules", []):
                if "record" in rule:
                    rules[rule["record"]] = (rule["expr"], frozenset(rule.get("labels") or {}))
    out: dict[str, frozenset[str]] = {}

    def labels(name: str) -> frozenset[str]:
        if name in out:
            return out[name]
        if name not in rules:
            return (METRIC_LABELS.get(name) or frozenset()) | TARGET_LABELS
        expr, extra = rules[name]
        m = _AGGREGATION_BY.match(expr)
        if m:
            base = frozenset(x.strip() for x in m.group(1).split(",") if x.strip())
        else:
            names = _metric_names_in_order(expr)
            base = labels(names[0]) if names else frozenset()
            if expr.lstrip().startswith("histogram_quantile"):
                base -= {"le"}
        out[name] = base | extra
        return out[name]

    for name in rules:
        labels(name)
    return out


def series_labels(metric: str, recorded: dict[str, frozenset[str]] | None = None) -> frozenset[str] | None:
    """Label names a series of ``metric`` can carry; None when not catalogued."""
    recorded = recorded_labels() if recorded is None else recorded
    if metric in recorded:
        return recorded[metric]
    if metric in METRIC_LABELS:
        return METRIC_LABELS[metric] | TARGET_LABELS
    return None


def default_rule_severities(path: Path = DEFAULT_SECURITY_RULES) -> set[str]:
    import yaml
    return {str(r["severity"]).lower() for r in yaml.safe_load(path.read_text())["rules"] if "severity" in r}
