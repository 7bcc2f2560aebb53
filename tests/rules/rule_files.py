"""Reading the shipped rule files and their promtool unit tests (pure)."""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
RULES_DIR = REPO / "rules"
RULE_TESTS_DIR = RULES_DIR / "tests"
RUNBOOK_DIR = REPO / "docs" / "runbooks"
# Placeholder base of every runbook_url, documented in docs/runbooks/README.md.
RUNBOOK_BASE_URL = "https://github.com/podsight/podsight/blob/main/docs/runbooks/"


@dataclass
class Rule:
    file: Path
    group: str
    body: dict

    @property
    def name(self) -> str:
        return self.body.get("alert") or self.body.get("record")

    @property
    def is_alert(self) -> bool:
        return "alert" in self.body


def rule_files() -> list[Path]:
    return sorted(RULES_DIR.glob("*.yaml"))


def load_rules(files: list[Path] | None = None) -> list[Rule]:
    out = []
    for f in files if files is not None else rule_files():
        doc = yaml.safe_load(f.read_text()) or {}
        for group in doc.get("groups", []):
            for body in group.get("rules", []):
                out.append(Rule(f, group["name"], body))
    return out


@dataclass
class AlertCoverage:
    fires: list[str] = field(default_factory=list)   # "file: test name @ eval_time"
    quiet: list[str] = field(default_factory=list)


def alert_coverage(test_files: list[Path]) -> dict[str, AlertCoverage]:
    """For each alert name, the promtool test cases where it must fire and
    where it must not (an alert_rule_test entry without exp_alerts)."""
    cov: dict[str, AlertCoverage] = {}
    for f in test_files:
        doc = yaml.safe_load(f.read_text()) or {}
        for test in doc.get("tests", []):
            for case in test.get("alert_rule_test", []):
                c = cov.setdefault(case["alertname"], AlertCoverage())
                where = f"{f.name}: {test.get('name', '?')} @ {case.get('eval_time')}"
                (c.fires if case.get("exp_alerts") else c.quiet).append(where)
    return cov


def missing_coverage(alerts: list[str], cov: dict[str, AlertCoverage]) -> list[str]:
    problems = []
    for name in alerts:
        c = cov.get(name, AlertCoverage())
        if not c.fires:
            problems.append(f"{name}: no promtool test case where it fires (exp_alerts)")
        if not c.quiet:
            problems.append(f"{name}: no promtool test case where it must not fire (no exp_alerts)")
    return problems


# -- what the agent exports, read from its source -----------------------------

SRC = REPO / "src" / "podsight"
EXPORTER = SRC / "exporters" / "prometheus.py"

# Agent metrics the rules read that the dashboards' metric catalog
# (tests/dashboards/dashboard_targets.py) does not list: the issue-18
# contract with the agent. test_rules checks the exporter writes each.
RULE_AGENT_METRICS = frozenset({
    "podsight_probe_state",          # {probe, state="up"|"unsupported"|"failed", node}
    "podsight_bpf_map_entries",      # {map, node}
    "podsight_bpf_map_max_entries",  # {map, node}
})

# podsight_events_dropped_total{reason}: budgets refuse events by design;
# the rest is real loss. The rules and PodsightEventsDropped.md follow this.
BUDGET_DROP_REASONS = frozenset({"rate_limited", "guard_limited", "output_limited"})
LOSS_DROP_REASONS = frozenset({"ringbuf_full", "pending_full", "http_queue_full", "http_failed"})

# Where the agent names its drop reasons: the kernel's enum (mirrored in
# layouts.SEC_DROPS) and the user-space stages that drop.
_DROP_REASON_LITERAL = re.compile(r"[a-z]+(?:_[a-z]+)*_(?:full|limited|failed)")
_USER_SPACE_DROPPERS = (SRC / "agent" / "security.py", SRC / "exporters" / "http_output.py")


def emitted_drop_reasons() -> set[str]:
    """Every reason the agent's source can put in podsight_events_dropped_total."""
    tree = ast.parse((SRC / "kernel" / "layouts.py").read_text())
    reasons: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "SEC_DROPS" for t in node.targets):
            reasons |= set(ast.literal_eval(node.value))
    if not reasons:
        raise AssertionError("SEC_DROPS not found in src/podsight/kernel/layouts.py")
    for path in _USER_SPACE_DROPPERS:
        if path.exists():
            reasons |= {n.value for n in ast.walk(ast.parse(path.read_text()))
                        if isinstance(n, ast.Constant) and isinstance(n.value, str)
                        and _DROP_REASON_LITERAL.fullmatch(n.value)}
    return reasons
