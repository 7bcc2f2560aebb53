"""ServiceMonitor, PodMonitor, PrometheusRule and Grafana dashboard ConfigMaps."""
from __future__ import annotations

import json
import re

import pytest
import yaml

from tests.deploy.chart import CHART, REPO, find, one, render, render_scenario

MONITORING_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
ALL_ON = ["serviceMonitor.enabled=true", "podMonitor.enabled=true", "prometheusRule.enabled=true"]


def test_monitoring_objects_need_the_prometheus_operator_api():
    without = render(sets=ALL_ON, monitoring=False)
    assert not {o["kind"] for o in without} & MONITORING_KINDS
    with_api = render(sets=ALL_ON, monitoring=True)
    assert MONITORING_KINDS <= {o["kind"] for o in with_api}


def test_monitoring_objects_are_off_by_default():
    assert not {o["kind"] for o in render(monitoring=True)} & MONITORING_KINDS


@pytest.mark.parametrize("kind", sorted(MONITORING_KINDS))
def test_additional_labels_for_kube_prometheus_stack(kind):
    obj = one(render_scenario("monitoring-values.yaml"), kind)
    assert obj["metadata"]["labels"]["release"] == "kube-prometheus-stack"


@pytest.mark.parametrize("kind,endpoints", [("ServiceMonitor", "endpoints"), ("PodMonitor", "podMetricsEndpoints")])
def test_scrape_keeps_workload_labels_and_job_is_podsight(kind, endpoints):
    objs = render_scenario("monitoring-values.yaml")
    mon = one(objs, kind)
    ds = one(objs, "DaemonSet")
    (ep,) = mon["spec"][endpoints]
    assert ep["port"] == "metrics"
    assert ep["honorLabels"] is True
    # The agent pod's own namespace/pod/container must not label host-cgroup series.
    assert {"regex": "namespace|pod|container", "action": "labeldrop"} in ep["relabelings"]
    assert {"sourceLabels": ["__meta_kubernetes_pod_node_name"], "targetLabel": "node",
            "action": "replace"} in ep["relabelings"]
    # rules/*.yaml select job="podsight": the job label comes from app.kubernetes.io/name.
    assert mon["spec"]["jobLabel"] == "app.kubernetes.io/name"
    labelled = one(objs, "Service") if kind == "ServiceMonitor" else ds["spec"]["template"]
    assert labelled["metadata"]["labels"]["app.kubernetes.io/name"] == "podsight"
    assert mon["spec"]["selector"]["matchLabels"] == ds["spec"]["selector"]["matchLabels"]
    assert mon["spec"]["namespaceSelector"] == {"matchNames": ["podsight"]}


def test_service_monitor_metric_relabelings_pass_through():
    sm = one(render_scenario("monitoring-values.yaml"), "ServiceMonitor")
    assert sm["spec"]["endpoints"][0]["metricRelabelings"][0]["action"] == "drop"


# ------------------------------------------------------------ chart assets

def _pairs(src_dir, dst_dir, pattern):
    src = REPO / src_dir
    if not src.is_dir():
        pytest.skip(f"{src} does not exist yet: nothing to compare the chart copies with")
    names = sorted(p.name for p in src.glob(pattern))
    copies = sorted(p.name for p in (CHART / "files" / dst_dir).glob(pattern))
    assert copies == names, f"chart files/{dst_dir} differs from {src_dir}/: run scripts/sync-chart-assets.sh"
    return [(src / n, CHART / "files" / dst_dir / n) for n in names]


@pytest.mark.parametrize("src_dir,dst_dir,pattern", [("rules", "rules", "*.yaml"),
                                                     ("dashboards", "dashboards", "*.json")])
def test_chart_copies_are_identical_to_the_sources(src_dir, dst_dir, pattern):
    for src, copy in _pairs(src_dir, dst_dir, pattern):
        assert src.read_bytes() == copy.read_bytes(), \
            f"{copy.relative_to(REPO)} differs from {src.relative_to(REPO)}: run scripts/sync-chart-assets.sh"


def _source_groups():
    groups = []
    for path in sorted((CHART / "files" / "rules").glob("*.yaml")):
        groups += yaml.safe_load(path.read_text())["groups"]
    return groups


def test_prometheus_rule_carries_every_group_of_the_rule_files():
    rule = one(render(sets=["prometheusRule.enabled=true"], monitoring=True), "PrometheusRule")
    source = _source_groups()
    assert source, "no rule groups in files/rules"
    assert rule["spec"]["groups"] == source


def test_prometheus_rule_disabled_alerts_and_extra_labels():
    source = _source_groups()
    alerts = [r["alert"] for g in source for r in g["rules"] if "alert" in r]
    assert alerts
    victim = alerts[0]
    rule = one(render(sets=["prometheusRule.enabled=true", f"prometheusRule.disabled={{{victim}}}",
                            "prometheusRule.additionalRuleLabels.team=net"], monitoring=True),
               "PrometheusRule")
    rendered = [r for g in rule["spec"]["groups"] for r in g["rules"]]
    assert victim not in [r.get("alert") for r in rendered]
    assert len(rendered) == sum(len(g["rules"]) for g in source) - 1
    for r in rendered:
        if "alert" in r:
            assert r["labels"]["team"] == "net"
        else:  # recording rules keep their labels as written
            assert "team" not in (r.get("labels") or {})


def test_dashboards_one_config_map_each_for_the_grafana_sidecar():
    files = sorted((CHART / "files" / "dashboards").glob("*.json"))
    assert files, "no dashboards in files/dashboards"
    objs = render_scenario("monitoring-values.yaml")
    cms = [o for o in find(objs, "ConfigMap") if "grafana_dashboard" in o["metadata"]["labels"]]
    assert len(cms) == len(files)
    names = [cm["metadata"]["name"] for cm in cms]
    assert len(set(names)) == len(names), names
    for name in names:
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= 63, name
    by_key = {}
    for cm in cms:
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert cm["metadata"]["annotations"]["grafana_folder"] == "podsight"
        (key,) = cm["data"]
        by_key[key] = cm["data"][key]
    for f in files:
        assert json.loads(by_key[f.name]) == json.loads(f.read_text())


def test_dashboards_are_off_by_default():
    assert not [o for o in find(render(), "ConfigMap") if "grafana_dashboard" in o["metadata"]["labels"]]
