"""rules/*.yaml: promtool accepts and tests them, every alert is tested both
ways, and every alert follows the project's naming/annotation conventions."""
from __future__ import annotations

import re

import pytest

import dashboard_targets as dt
import prom_tools
import rule_files as rf

RULES = rf.load_rules()
ALERTS = [r for r in RULES if r.is_alert]
RECORDS = [r for r in RULES if not r.is_alert]
TEST_FILES = sorted(rf.RULE_TESTS_DIR.glob("*.yaml"))

# The issue's list of alerts, by name: a rename must be deliberate.
REQUIRED_ALERTS = {
    "PodsightTCPConnectErrorBudgetBurnFast", "PodsightTCPConnectErrorBudgetBurnSlow",
    "PodsightTCPRetransmitRatioHigh", "PodsightTCPSmoothedRTTHigh", "PodsightPodEgressSpike",
    "PodsightSecurityCriticalEvent", "PodsightSecurityWarningBurst",
    "PodsightTargetAbsent", "PodsightProbeDown", "PodsightEventsDropped",
    "PodsightKubernetesAPIDisconnected",
    # issue 18
    "PodsightBPFMapNearlyFull", "PodsightEventsThrottled",
    # issue 17
    "PodsightTLSHandshakeFailureRatioHigh", "PodsightTLSHandshakeLatencyRegression",
    # issue 16
    "PodsightFlowConnectFailureRatioHigh", "PodsightFlowRetransmitRatioHigh", "PodsightCrossZonePacketLoss",
}
# The `category` routing label of every alert (docs/alertmanager.example.yml).
CATEGORIES = ("slo", "tcp", "tls", "network", "security", "agent")


def test_promtool_check_rules():
    result = prom_tools.run("promtool", "check", "rules", *map(str, rf.rule_files()))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING" not in (result.stdout + result.stderr).upper(), result.stdout + result.stderr


def test_promtool_test_rules():
    assert TEST_FILES, f"no promtool tests in {rf.RULE_TESTS_DIR}"
    result = prom_tools.run("promtool", "test", "rules", *map(str, TEST_FILES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_rule_file_has_a_test_file_that_loads_it():
    for f in rf.rule_files():
        test = rf.RULE_TESTS_DIR / f"{f.stem}_test.yaml"
        assert test.exists(), f"{f}: no promtool test file {test}"
        import yaml
        loaded = yaml.safe_load(test.read_text()).get("rule_files", [])
        assert f"../{f.name}" in loaded, f"{test}: rule_files {loaded} does not load ../{f.name}"


def test_every_alert_fires_in_one_test_and_stays_quiet_in_another():
    problems = rf.missing_coverage([a.name for a in ALERTS], rf.alert_coverage(TEST_FILES))
    assert not problems, "\n".join(problems)


def test_coverage_check_reports_an_alert_without_a_quiet_case(tmp_path):
    """The coverage check itself must be able to fail."""
    f = tmp_path / "x_test.yaml"
    f.write_text("tests:\n  - name: t\n    alert_rule_test:\n"
                 "      - eval_time: 1m\n        alertname: A\n        exp_alerts: [{exp_labels: {severity: warning}}]\n")
    assert rf.missing_coverage(["A", "B"], rf.alert_coverage([f])) == [
        "A: no promtool test case where it must not fire (no exp_alerts)",
        "B: no promtool test case where it fires (exp_alerts)",
        "B: no promtool test case where it must not fire (no exp_alerts)",
    ]


def test_firing_cases_assert_severity_and_all_annotations():
    """promtool compares labels/annotations exactly, so a firing case that lists
    them proves the rendered summary, description and runbook_url."""
    import yaml
    by_name = {a.name: a for a in ALERTS}
    bad = []
    for f in TEST_FILES:
        for test in yaml.safe_load(f.read_text()).get("tests", []):
            for case in test.get("alert_rule_test", []):
                for exp in case.get("exp_alerts") or []:
                    rule = by_name.get(case["alertname"])
                    where = f"{f.name}: {test['name']} @ {case['eval_time']}"
                    if rule is None:
                        bad.append(f"{where}: unknown alert {case['alertname']}")
                        continue
                    if exp.get("exp_labels", {}).get("severity") != rule.body["labels"]["severity"]:
                        bad.append(f"{where}: exp_labels.severity missing or wrong")
                    if set(exp.get("exp_annotations", {})) != {"summary", "description", "runbook_url"}:
                        bad.append(f"{where}: exp_annotations must give summary, description, runbook_url")
    assert not bad, "\n".join(bad)


def test_issue_alerts_exist():
    assert REQUIRED_ALERTS <= {a.name for a in ALERTS}, REQUIRED_ALERTS - {a.name for a in ALERTS}


@pytest.mark.parametrize("rule", ALERTS, ids=[a.name for a in ALERTS])
def test_alert_conventions(rule: rf.Rule):
    where = f"{rule.file.name}: {rule.name}"
    assert re.fullmatch(r"Podsight[A-Z][A-Za-z0-9]+", rule.name), f"{where}: name must be CamelCase with prefix Podsight"
    labels = rule.body.get("labels", {})
    assert labels.get("severity") in ("critical", "warning", "info"), f"{where}: severity {labels.get('severity')!r}"
    assert labels.get("category") in CATEGORIES, f"{where}: category"
    ann = rule.body.get("annotations", {})
    assert set(ann) == {"summary", "description", "runbook_url"}, f"{where}: annotations {sorted(ann)}"
    assert ann["summary"].endswith(".") and "{{" not in ann["summary"], f"{where}: summary is a static sentence"
    assert "{{" in ann["description"], f"{where}: description should name the affected object"
    assert ann["runbook_url"] == f"{rf.RUNBOOK_BASE_URL}{rule.name}.md", f"{where}: runbook_url {ann['runbook_url']}"
    page = rf.RUNBOOK_DIR / f"{rule.name}.md"
    assert page.exists(), f"{where}: runbook {page} missing"
    assert page.read_text().startswith(f"# {rule.name}\n"), f"{page}: must start with '# {rule.name}'"


def test_no_orphan_runbooks():
    pages = {p.stem for p in rf.RUNBOOK_DIR.glob("*.md")} - {"README"}
    assert pages == {a.name for a in ALERTS}, f"runbooks without alert: {pages - {a.name for a in ALERTS}}"


@pytest.mark.parametrize("rule", RECORDS, ids=[r.name for r in RECORDS])
def test_recording_rule_names_are_level_metric_operations(rule: rf.Rule):
    assert re.fullmatch(r"[a-z_]+:[a-z0-9_]+:[a-z0-9_]+", rule.name), \
        f"{rule.file.name}: {rule.name} is not level:metric:operations"


def test_rules_use_only_catalog_and_recorded_metrics():
    known = dt.catalog_metric_names() | rf.RULE_AGENT_METRICS | {r.name for r in RECORDS}
    bad = [f"{r.file.name}: {r.name}: {sorted(dt.metric_names(r.body['expr']) - known)}"
           for r in RULES if dt.metric_names(r.body["expr"]) - known]
    assert not bad, "\n".join(bad)


def test_slo_thresholds_derive_from_the_single_objective():
    """Changing the objective in one place must move every burn-rate alert."""
    objective = [r for r in RECORDS if r.name == "podsight:tcp_connect_slo_objective:ratio"]
    assert len(objective) == 1 and re.fullmatch(r"vector\(0\.\d+\)", objective[0].body["expr"])
    for a in ALERTS:
        if a.body["labels"]["category"] == "slo":
            assert "podsight:tcp_connect_slo_error_budget:ratio" in a.body["expr"], a.name
            assert not re.search(r"0\.99", a.body["expr"]), f"{a.name}: hard-coded objective"


def test_metrics_the_rules_add_to_the_catalog_are_written_by_the_agent():
    """The rules' contract with the agent (rule_files.RULE_AGENT_METRICS): the
    exporter writes each of these names."""
    text = rf.EXPORTER.read_text()
    missing = [m for m in sorted(rf.RULE_AGENT_METRICS) if f'"{m}"' not in text]
    assert not missing, f"{rf.EXPORTER} does not write {missing}"


def _or_branches(expr: str) -> list[str]:
    """The top-level `or` operands of an expression."""
    depth, start, out = 0, 0, []
    for i, c in enumerate(expr):
        depth += c == "("
        depth -= c == ")"
        if depth == 0 and re.match(r"\bor\b", expr[i:]) and (i == 0 or not expr[i - 1].isalnum()):
            out.append(expr[start:i])
            start = i + 2
    return out + [expr[start:]]


def test_every_burn_rate_pair_has_the_traffic_floor_of_its_long_window():
    floor = [r for r in RECORDS if r.name == "podsight:tcp_connect_slo_min_attempts:count"]
    assert len(floor) == 1, "one traffic floor, in rules/slo.yaml"
    # Default: derived from the objective, like every threshold.
    assert "podsight:tcp_connect_slo_error_budget:ratio" in floor[0].body["expr"]
    pairs = 0
    for a in ALERTS:
        if a.body["labels"]["category"] != "slo":
            continue
        for branch in _or_branches(a.body["expr"]):
            windows = re.findall(r"podsight_tcp_connect_failure:ratio_rate(\w+)", branch)
            assert len(windows) == 2, f"{a.name}: branch without a window pair:\n{branch}"
            long = max(windows, key=lambda w: {"m": 60, "h": 3600, "d": 86400}[w[-1]] * int(w[:-1]))
            assert re.search(rf"namespace_workload:podsight_tcp_connections_attempted:increase{long}\s*>=\s*"
                             r"on \(\) group_left \(\) podsight:tcp_connect_slo_min_attempts:count", branch), \
                f"{a.name}: the {'/'.join(windows)} pair has no traffic floor on its {long} window"
            pairs += 1
    assert pairs == 4


def test_every_tls_alert_has_a_traffic_floor_on_each_window_it_judges():
    """A TLS ratio or quantile of a quiet workload is noise (1 failure in 12
    handshakes is 8 %): each TLS alert requires a handshake rate, in the
    current window and, when it compares with a baseline, in the baseline's."""
    tls = [a for a in ALERTS if a.body["labels"]["category"] == "tls"]
    assert {a.name for a in tls} == {"PodsightTLSHandshakeFailureRatioHigh", "PodsightTLSHandshakeLatencyRegression"}
    floor = r"and on \(cluster, namespace, workload, role\)\s+{}namespace_workload_role(?:_result)?:" \
            r"podsight_tls_handshakes:rate5m(?:\{{[^}}]*\}})?{}\s*>=\s*0\.2\b"
    for a in tls:
        expr = a.body["expr"]
        assert re.search(floor.format("", ""), expr), f"{a.name}: no floor on the current 5m window:\n{expr}"
        if "offset" in expr:
            assert re.search(floor.format(r"avg_over_time\(", r"\[1h\] offset 1d\)"), expr), \
                f"{a.name}: compares with a day earlier but has no floor on that hour:\n{expr}"
