"""helm lint --strict and helm template for the defaults and every ci/ scenario;
every rendered object validates (core kinds: kubernetes-validate, strict, on
every Kubernetes release in KUBE_VERSIONS; Prometheus Operator kinds: the
upstream CRD schemas)."""
from __future__ import annotations

import pytest

from tests.deploy.chart import (
    CHART,
    KUBE_VERSIONS,
    SCENARIOS,
    find,
    helm,
    is_crd_kind,
    render_scenario,
    validate_object,
)

CASES = [None, *SCENARIOS]


def test_required_scenarios_exist():
    for name in ("minimal", "monitoring", "podmonitor", "security", "privileged", "hardened", "flows"):
        assert f"{name}-values.yaml" in SCENARIOS


@pytest.mark.parametrize("scenario", CASES, ids=lambda s: s or "defaults")
def test_lint_strict(scenario):
    args = ["lint", "--strict", str(CHART)]
    if scenario:
        args += ["-f", str(CHART / "ci" / scenario)]
    out = helm(*args)
    assert "0 chart(s) failed" in out.stdout


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("scenario", CASES, ids=lambda s: s or "defaults")
def test_rendered_objects_validate(scenario, kube_version):
    """Rendered for each release (helm --kube-version) and checked against that
    release's API: fields newer than a release are only rendered where it has them."""
    objs = render_scenario(scenario, kube_version=kube_version)
    kinds = {o["kind"] for o in objs}
    assert {"DaemonSet", "ConfigMap"} <= kinds
    for obj in objs:
        validate_object(obj, kube_version)


def test_strict_validation_knows_each_release_api():
    """The check above can fail: what the chart renders for 1.33 (appArmorProfile,
    recursiveReadOnly) is not 1.29's API, and 1.29's strict schema says so."""
    (ds,) = find(render_scenario(None, kube_version="1.33.0"), "DaemonSet")
    with pytest.raises(pytest.fail.Exception, match="appArmorProfile|recursiveReadOnly"):
        validate_object(ds, "1.29.0")
    validate_object(ds, "1.30.0")


def test_monitoring_scenarios_render_every_monitoring_object():
    def crd_kinds(scenario):
        return sorted(o["kind"] for o in render_scenario(scenario) if is_crd_kind(o))

    assert crd_kinds("monitoring-values.yaml") == ["PrometheusRule", "ServiceMonitor"]
    assert crd_kinds("podmonitor-values.yaml") == ["PodMonitor"]


def test_every_object_has_chart_labels_and_namespace():
    for scenario in CASES:
        for obj in render_scenario(scenario):
            labels = obj["metadata"]["labels"]
            assert labels["app.kubernetes.io/instance"] == "podsight", obj["kind"]
            assert labels["app.kubernetes.io/managed-by"] == "Helm", obj["kind"]
            assert labels["helm.sh/chart"].startswith("podsight-"), obj["kind"]
            if obj["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
                assert obj["metadata"]["namespace"] == "podsight", obj["kind"]


def test_schema_rejects_unknown_value():
    out = helm("template", "x", str(CHART), "--set", "serviceMontor.enabled=true", check=False)
    assert out.returncode != 0
    assert "serviceMontor" in out.stderr


def test_helm_test_pod_fetches_metrics_through_the_service():
    objs = render_scenario(None)
    (pod,) = find(objs, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    svc = find(objs, "Service")[0]
    cmd = pod["spec"]["containers"][0]["command"]
    assert cmd[-1] == f"http://{svc['metadata']['name']}.podsight.svc:9963/metrics"
    assert "podsight_build_info" in cmd[2]
    # The test pod must not become an endpoint of the agents' Service.
    selector = svc["spec"]["selector"]
    assert not all(pod["metadata"]["labels"].get(k) == v for k, v in selector.items())


def test_notes_render():
    out = helm("install", "podsight", str(CHART), "--dry-run=client", "--namespace", "podsight",
               "--set", "serviceMonitor.enabled=true")
    assert "rollout status daemonset/podsight" in out.stdout
    # No Prometheus Operator in a client-side dry run: the user is told.
    assert "were NOT created" in out.stdout
