"""ServiceMonitor, PodMonitor, PrometheusRule and Grafana dashboard ConfigMaps."""
from __future__ import annotations

import json
import re

import pytest
import yaml

from tests.deploy.chart import CHART, REPO, find, one, render, render_fails, render_scenario, validate_crd

MONITORING_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
# One scrape object at a time (the chart refuses both).
ALL_ON = {"ServiceMonitor": ["serviceMonitor.enabled=true", "prometheusRule.enabled=true"],
          "PodMonitor": ["podMonitor.enabled=true", "prometheusRule.enabled=true"]}
SCENARIO = {"ServiceMonitor": "monitoring-values.yaml", "PodMonitor": "podmonitor-values.yaml"}
ENDPOINTS = {"ServiceMonitor": "endpoints", "PodMonitor": "podMetricsEndpoints"}
KEY = {"ServiceMonitor": "serviceMonitor", "PodMonitor": "podMonitor"}


@pytest.mark.parametrize("kind", sorted(ALL_ON))
def test_monitoring_objects_need_the_prometheus_operator_api(kind):
    without = render(sets=ALL_ON[kind], monitoring=False)
    assert not {o["kind"] for o in without} & MONITORING_KINDS
    with_api = render(sets=ALL_ON[kind], monitoring=True)
    assert {o["kind"] for o in with_api} & MONITORING_KINDS == {kind, "PrometheusRule"}


@pytest.mark.parametrize("monitoring", [True, False])
def test_service_monitor_and_pod_monitor_together_are_refused(monitoring):
    """Both would scrape every agent twice: every series stored twice, rates doubled
    in sum(). Refused whether or not the cluster has the Prometheus Operator."""
    err = render_fails(["serviceMonitor.enabled=true", "podMonitor.enabled=true"], monitoring=monitoring)
    assert "serviceMonitor.enabled and podMonitor.enabled are both true" in err
    assert "Enable one of them" in err


def test_monitoring_objects_are_off_by_default():
    assert not {o["kind"] for o in render(monitoring=True)} & MONITORING_KINDS


@pytest.mark.parametrize("kind", sorted(MONITORING_KINDS))
def test_additional_labels_for_kube_prometheus_stack(kind):
    obj = one(render_scenario(SCENARIO.get(kind, "monitoring-values.yaml")), kind)
    assert obj["metadata"]["labels"]["release"] == "kube-prometheus-stack"


@pytest.mark.parametrize("kind,endpoints", sorted(ENDPOINTS.items()))
def test_scrape_keeps_workload_labels_and_job_is_podsight(kind, endpoints):
    objs = render(sets=[f"{KEY[kind]}.enabled=true"], monitoring=True)
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


@pytest.mark.parametrize("kind", sorted(ENDPOINTS))
def test_scrape_limits_and_node_metadata(kind):
    mon = one(render_scenario(SCENARIO[kind]), kind)
    spec = mon["spec"]
    assert (spec["sampleLimit"], spec["labelLimit"], spec["targetLimit"]) == (200000, 30, 5000)
    assert spec["attachMetadata"] == {"node": True}
    validate_crd(mon)
    # 0 / {} (the defaults): left out, Prometheus's own behaviour.
    plain = one(render(sets=[f"{KEY[kind]}.enabled=true"], monitoring=True), kind)["spec"]
    assert not {"sampleLimit", "labelLimit", "targetLimit", "attachMetadata"} & set(plain)
    (ep,) = plain[ENDPOINTS[kind]]
    assert not {"scheme", "tlsConfig", "basicAuth", "authorization", "bearerTokenSecret"} & set(ep)


def test_large_limits_render_as_integers(tmp_path):
    """Helm reads the numbers of a values file as float64: 10000000 must not
    come out as 1e+07, which the CRD (an integer) refuses."""
    values = tmp_path / "values.yaml"
    values.write_text("serviceMonitor:\n  enabled: true\n  sampleLimit: 10000000\n")
    sm = one(render([values], monitoring=True), "ServiceMonitor")
    assert sm["spec"]["sampleLimit"] == 10000000
    validate_crd(sm)


@pytest.mark.parametrize("kind,auth", [("ServiceMonitor", "basicAuth"), ("PodMonitor", "authorization")])
def test_tls_and_auth_reach_the_endpoint(kind, auth):
    """As prometheus-node-exporter's chart: scheme, tlsConfig and one kind of
    auth per endpoint, for a TLS proxy or mesh in front of the agent."""
    mon = one(render_scenario(SCENARIO[kind]), kind)
    (ep,) = mon["spec"][ENDPOINTS[kind]]
    assert ep["scheme"] == "https"
    assert ep["tlsConfig"]["ca"]
    assert auth in ep and not {"basicAuth", "authorization", "bearerTokenSecret"} - {auth} & set(ep)
    validate_crd(mon)


@pytest.mark.parametrize("kind", sorted(ENDPOINTS))
def test_bearer_token_secret(kind):
    mon = one(render(sets=[f"{KEY[kind]}.enabled=true", f"{KEY[kind]}.bearerTokenSecret.name=podsight-scrape",
                           f"{KEY[kind]}.bearerTokenSecret.key=token"], monitoring=True), kind)
    (ep,) = mon["spec"][ENDPOINTS[kind]]
    assert ep["bearerTokenSecret"] == {"name": "podsight-scrape", "key": "token"}
    validate_crd(mon)


@pytest.mark.parametrize("kind", sorted(ENDPOINTS))
def test_two_kinds_of_auth_are_refused(kind):
    k = KEY[kind]
    err = render_fails([f"{k}.enabled=true", f"{k}.basicAuth.username.name=s", f"{k}.basicAuth.username.key=u",
                        f"{k}.authorization.credentials.name=s", f"{k}.authorization.credentials.key=t"])
    assert f"{k}: set one of basicAuth, authorization and bearerTokenSecret, not basicAuth and authorization" in err


def test_pod_monitor_tls_has_no_file_paths():
    """PodMonitor's tlsConfig is a SafeTLSConfig (no caFile): the schema says so
    at install time instead of the API server later."""
    err = render_fails(["podMonitor.enabled=true", "podMonitor.tlsConfig.caFile=/etc/ca.crt"])
    assert "caFile" in err
    sm = one(render(sets=["serviceMonitor.enabled=true", "serviceMonitor.tlsConfig.caFile=/etc/ca.crt"],
                    monitoring=True), "ServiceMonitor")
    validate_crd(sm)


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


@pytest.mark.parametrize("sets, job", [([], "podsight"), (["nameOverride=netsight"], "netsight")])
def test_the_rules_job_selector_is_the_job_the_monitors_give(sets, job):
    """The rules' one selector (podsight:scrape_job:info's job) follows the
    chart's name, which the ServiceMonitor's jobLabel makes the job."""
    objs = render(sets=["prometheusRule.enabled=true", "serviceMonitor.enabled=true", *sets], monitoring=True)
    rules = [r for g in one(objs, "PrometheusRule")["spec"]["groups"] for r in g["rules"]]
    info = next(r for r in rules if r.get("record") == "podsight:scrape_job:info")
    assert info["labels"]["job"] == job
    monitor = one(objs, "ServiceMonitor")
    service = one(objs, "Service")
    assert service["metadata"]["labels"][monitor["spec"]["jobLabel"]] == job
