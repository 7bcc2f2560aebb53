"""Selectors: the rules' one selector (the agents' scrape job) is set in one
place, the `podsight:scrape_job:info` rule, and changing it there moves
every alert that reads Prometheus' `up`."""
from __future__ import annotations

import re
from pathlib import Path

import yaml

import dashboard_targets as dt
import prom_tools
import rule_files as rf

JOB_RULE = "podsight:scrape_job:info"
RULES = rf.load_rules()
# A matcher on the job or the namespace, in any form (=, !=, =~, !~).
_SELECTOR = re.compile(r'\b(job|namespace)\s*(=~|!~|!=|=)\s*"')


def test_no_expression_hard_codes_a_job_or_namespace_selector():
    bad = [f"{r.file.name}: {r.name}: {m.group(0)}..." for r in RULES for m in _SELECTOR.finditer(r.body["expr"])]
    assert not bad, "select the job through podsight:scrape_job:info (docs/runbooks/README.md, Selectors):\n" + \
        "\n".join(bad)


def test_the_job_is_set_once_and_read_by_every_rule_on_up():
    job_rules = [r for r in RULES if r.name == JOB_RULE]
    assert len(job_rules) == 1, f"{JOB_RULE}: {len(job_rules)} rules"
    (rule,) = job_rules
    assert rule.body["expr"].strip() == "vector(1)" and rule.body["labels"] == {"job": "podsight"}
    on_up = [r for r in RULES if "up" in dt.metric_names(r.body["expr"])]
    assert {r.name for r in on_up} == {"PodsightTargetAbsent", "PodsightAgentDown"}
    for r in on_up:
        assert JOB_RULE in dt.metric_names(r.body["expr"]), f"{r.name} reads up without {JOB_RULE}"
        # Same group, after the job rule: evaluated in the same round, so an
        # alert never runs before the series it joins exists.
        group = [x.name for x in RULES if x.file == rule.file and x.group == rule.group]
        assert r.file == rule.file and r.group == rule.group and group.index(JOB_RULE) < group.index(r.name), \
            f"{r.name} must follow {JOB_RULE} in group {rule.group}"


def test_readme_documents_the_selector():
    readme = (rf.RUNBOOK_DIR / "README.md").read_text()
    section = readme.split("## Selectors", 1)[-1].split("\n## ", 1)[0]
    assert "## Selectors" in readme and JOB_RULE in section and "job: podsight" in section


CUSTOM_JOB_TEST = """
rule_files: [agent.yaml]
evaluation_interval: 1m
tests:
  - name: the job of podsight:scrape_job:info is the one the alerts read
    interval: 1m
    input_series:
      # Down in the configured job.
      - series: 'up{job="ebpf-agents", instance="n1:9963"}'
        values: '0x20'
      # The default job name means nothing any more.
      - series: 'up{job="podsight", instance="n2:9963"}'
        values: '0x20'
    alert_rule_test:
      - eval_time: 12m
        alertname: PodsightTargetAbsent
      - eval_time: 12m
        alertname: PodsightAgentDown
        exp_alerts:
          - exp_labels: {job: ebpf-agents, instance: "n1:9963", severity: warning, category: agent}
            exp_annotations:
              summary: A podsight agent cannot be scraped.
              description: 'Target n1:9963 of job "ebpf-agents" has been down for 5 minutes.'
              runbook_url: https://github.com/podsight/podsight/blob/main/docs/runbooks/PodsightAgentDown.md
  - name: without a target in the configured job, PodsightTargetAbsent names that job
    interval: 1m
    input_series:
      - series: 'up{job="podsight", instance="n2:9963"}'
        values: '1x20'
    alert_rule_test:
      - eval_time: 12m
        alertname: PodsightTargetAbsent
        exp_alerts:
          - exp_labels: {job: ebpf-agents, severity: critical, category: agent}
            exp_annotations:
              summary: Prometheus has no podsight target to scrape.
              description: 'No target of job "ebpf-agents" has been discovered for 10 minutes: no network, TCP or security data is being collected.'
              runbook_url: https://github.com/podsight/podsight/blob/main/docs/runbooks/PodsightTargetAbsent.md
"""


def with_job(job: str, out: Path) -> Path:
    """rules/agent.yaml with only the job rule's `job` label changed."""
    doc = yaml.safe_load((rf.RULES_DIR / "agent.yaml").read_text())
    hits = [r for g in doc["groups"] for r in g["rules"] if r.get("record") == JOB_RULE]
    assert len(hits) == 1
    hits[0]["labels"]["job"] = job
    out.write_text(yaml.safe_dump(doc, sort_keys=False))
    return out


def test_changing_the_job_in_one_place_moves_both_alerts(tmp_path):
    with_job("ebpf-agents", tmp_path / "agent.yaml")
    test = tmp_path / "custom_job_test.yaml"
    test.write_text(CUSTOM_JOB_TEST)
    result = prom_tools.run("promtool", "test", "rules", str(test))
    assert result.returncode == 0, result.stdout + result.stderr
