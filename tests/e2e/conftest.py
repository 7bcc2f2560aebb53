import sys
from pathlib import Path

# The dashboard, rule and e2e tests share small helper modules that live next
# to them (tests/dashboards, tests/rules, tests/e2e); make them importable by name.
_TESTS = Path(__file__).resolve().parents[1]
for _d in ("dashboards", "rules", "e2e"):
    if str(_TESTS / _d) not in sys.path:
        sys.path.insert(0, str(_TESTS / _d))

import pytest  # noqa: E402

import prom_stack  # noqa: E402
from rendered_rules import ALERTMANAGER_EXAMPLE, RULE_OVERRIDES, render_rules  # noqa: E402
from webhook_receiver import WebhookReceiver  # noqa: E402


@pytest.fixture
def e2e_rules(tmp_path) -> Path:
    """rules/*.yaml with the documented e2e overrides (tests/e2e/rule-overrides.yaml)."""
    return render_rules(tmp_path / "rules", RULE_OVERRIDES)


@pytest.fixture
def webhook():
    with WebhookReceiver() as receiver:
        yield receiver


@pytest.fixture
def alertmanager(tmp_path, webhook):
    am = prom_stack.Alertmanager(tmp_path / "alertmanager",
                                 prom_stack.alertmanager_test_config(ALERTMANAGER_EXAMPLE, webhook.base_url))
    try:
        yield am
    finally:
        am.stop()


@pytest.fixture
def start_prometheus(tmp_path):
    """Factory: start_prometheus(scrape_jobs, rule_dirs, alertmanager, scrape_self) -> Prometheus.
    Every instance started is stopped at teardown, even if the test failed."""
    started = []

    def start(scrape_jobs, rule_dirs=(), alertmanager=None, scrape_self=False):
        prom = prom_stack.Prometheus(tmp_path / f"prometheus{len(started)}", scrape_jobs, list(rule_dirs),
                                     alertmanager.address if alertmanager else None, scrape_self)
        started.append(prom)
        return prom
    yield start
    for prom in started:
        prom.stop()
