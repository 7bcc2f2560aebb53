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
    "podsight_security_events_total",
    "podsight_events_dropped_total",
    "podsight_bpf_program_runs_total",
    "podsight_bpf_program_run_seconds_total",
    "podsight_probe_up",
    "podsight_build_info",
    "podsight_kubernetes_api_up",
    "process_resident_memory_bytes",
    "process_cpu_seconds_total",
})
AGENT_HISTOGRAMS = ("podsight_tcp_srtt_seconds", "podsight_tcp_connect_duration_seconds")
# Series Prometheus itself writes for every scrape target.
PROMETHEUS_SCRAPE_METRICS = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped"})


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
    s = _STRING.sub('""', expr)
    s = re.sub(r"\{[^}]*\}", "{}", s)          # label matchers
    s = re.sub(r"\[[^\]]*\]", "[]", s)         # range / subquery windows
    s = _GROUPING.sub(" ", s)                  # label lists of by/on/...
    s = re.sub(r"\boffset\s+-?[0-9a-z]+", " ", s)
    names = set()
    for m in _IDENT.finditer(s):
        word, call = m.group(1), m.group(2)
        if call or word in _KEYWORDS:
            continue
        names.add(word)
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
