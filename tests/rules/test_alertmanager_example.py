"""docs/alertmanager.example.yml: valid for amtool and routes as documented."""
from __future__ import annotations

import pytest

import prom_tools
import rule_files as rf

CONFIG = rf.REPO / "docs" / "alertmanager.example.yml"


def test_amtool_accepts_the_example():
    result = prom_tools.run("amtool", "check-config", str(CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("labels, receiver", [
    ({"alertname": "PodsightSecurityCriticalEvent", "category": "security", "severity": "critical"}, "security-oncall"),
    ({"alertname": "PodsightSecurityWarningBurst", "category": "security", "severity": "warning"}, "security-oncall"),
    ({"alertname": "PodsightTCPConnectErrorBudgetBurnFast", "category": "slo", "severity": "critical"}, "slo-pager"),
    ({"alertname": "PodsightTCPConnectErrorBudgetBurnSlow", "category": "slo", "severity": "warning"}, "platform-tickets"),
    ({"alertname": "PodsightTCPRetransmitRatioHigh", "category": "tcp", "severity": "warning"}, "platform-tickets"),
    ({"alertname": "PodsightFlowConnectFailureRatioHigh", "category": "tcp", "severity": "warning"}, "platform-tickets"),
    ({"alertname": "PodsightCrossZonePacketLoss", "category": "network", "severity": "warning"}, "platform-tickets"),
    ({"alertname": "PodsightTLSHandshakeFailureRatioHigh", "category": "tls", "severity": "warning"}, "platform-tickets"),
    ({"alertname": "PodsightTLSHandshakeLatencyRegression", "category": "tls", "severity": "warning"}, "platform-tickets"),
    ({"alertname": "PodsightTargetAbsent", "category": "agent", "severity": "critical"}, "platform-tickets"),
])
def test_routing(labels, receiver):
    result = prom_tools.run("amtool", "config", "routes", "test", f"--config.file={CONFIG}",
                            *(f"{k}={v}" for k, v in labels.items()))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == receiver, f"{labels} routed to {result.stdout.strip()!r}, expected {receiver}"


def test_every_alert_category_is_routed_somewhere_known():
    cats = {r.body["labels"]["category"] for r in rf.load_rules() if r.is_alert}
    assert cats == {"slo", "tcp", "tls", "network", "security", "agent"}
    # The example's header lists exactly these: "#   category: slo | tcp | ...".
    (line,) = [l for l in CONFIG.read_text().split("global:", 1)[0].splitlines() if "category:" in l]
    assert set(line.split("category:", 1)[1].replace("|", " ").split()) == cats, line
