"""The e2e harness itself, proven without the agent: real Prometheus loads
the rendered rules and evaluates dashboard queries, real Alertmanager routes
alerts from the example config to the local webhook receiver."""
from __future__ import annotations

import time

import dashboard_queries
import dashboard_targets as dt
import rule_files as rf
from rendered_rules import render_rules


def test_prometheus_scrapes_and_evaluates_every_rendered_rule(start_prometheus, e2e_rules):
    prom = start_prometheus({}, [e2e_rules], scrape_self=True)
    # Prometheus scrapes its own /metrics: proves the 1s scrape loop works.
    assert prom.wait_for('up{job="prometheus"} == 1', timeout=20), "Prometheus did not scrape itself"
    assert prom.wait_for('count_over_time(up{job="prometheus"}[10s]) >= 3', timeout=20), \
        "fewer than 3 scrapes in 10s: the 1s scrape interval is not in effect"

    shipped = {r.group for r in rf.load_rules()}
    deadline = time.monotonic() + 20
    while True:
        groups = prom.rule_groups()
        rules = [r for g in groups for r in g["rules"]]
        waiting = [r["name"] for r in rules
                   if not r.get("lastEvaluation", "").startswith("20") or r["health"] == "unknown"]
        if rules and not waiting:
            break
        assert time.monotonic() < deadline, f"rules never evaluated in 20 s: {waiting or 'none loaded'}"
        time.sleep(0.5)
    assert {g["name"] for g in groups} == shipped
    assert len(rules) == len(rf.load_rules())
    bad = [f"{r['name']}: {r['health']} {r.get('lastError', '')}" for r in rules if r["health"] != "ok"]
    assert not bad, "rules failing in Prometheus:\n" + "\n".join(bad)
    # With no podsight target, the absent() alert is evaluated against real
    # data: pending (its `for` is the shipped 10m).
    absent = [r for r in rules if r["name"] == "PodsightTargetAbsent"][0]
    assert absent["state"] == "pending", absent


def test_every_dashboard_target_is_accepted_by_prometheus(start_prometheus, e2e_rules):
    """Substitution + HTTP API path the agent e2e test uses, with no data."""
    prom = start_prometheus({}, [e2e_rules])
    now = time.time()
    results = dashboard_queries.evaluate_all(prom, now - 60, now)
    assert len(results) == len(dt.all_targets()) > 0


def test_alertmanager_routes_pushed_alerts_per_example_config(alertmanager, webhook):
    alertmanager.post_alerts([
        {"labels": {"alertname": "PodsightSecurityCriticalEvent", "category": "security", "severity": "critical",
                    "rule": "harness_check"}},
        {"labels": {"alertname": "PodsightTCPConnectErrorBudgetBurnFast", "category": "slo", "severity": "critical",
                    "namespace": "harness", "workload": "w"}},
        {"labels": {"alertname": "PodsightTCPRetransmitRatioHigh", "category": "tcp", "severity": "warning",
                    "namespace": "harness", "workload": "w"}},
    ])
    expected = {"PodsightSecurityCriticalEvent": "/security-oncall",
                "PodsightTCPConnectErrorBudgetBurnFast": "/slo-pager",
                "PodsightTCPRetransmitRatioHigh": "/platform-tickets"}
    for name, path in expected.items():
        got = webhook.wait_for_alert(name, timeout=20)
        assert got, f"{name} never reached the webhook; received:\n{webhook.summary()}"
        assert got[0] == path, f"{name} went to {got[0]}, expected {path}"


def test_prometheus_alert_reaches_webhook_through_alertmanager(tmp_path, start_prometheus, alertmanager, webhook):
    """A shipped alert, made instant by the same override mechanism the agent
    test uses, travels Prometheus -> Alertmanager -> receiver."""
    overrides = tmp_path / "harness-overrides.yaml"
    overrides.write_text("alerts:\n  PodsightTargetAbsent:\n    for: 0s\n")
    rules = render_rules(tmp_path / "harness-rules", overrides)
    start_prometheus({}, [rules], alertmanager)
    got = webhook.wait_for_alert("PodsightTargetAbsent", timeout=30)
    assert got, f"PodsightTargetAbsent never reached the webhook; received:\n{webhook.summary()}"
    path, alert = got
    assert path == "/platform-tickets"
    assert alert["labels"] == {"alertname": "PodsightTargetAbsent", "job": "podsight",
                               "severity": "critical", "category": "agent"}
    assert alert["annotations"]["runbook_url"].endswith("/PodsightTargetAbsent.md")
    assert alert["annotations"]["description"].startswith('No target of job "podsight"')
