"""deploy/flux: every object validates against the upstream Flux CRDs, and the
HelmRelease values (merged with the chart defaults, as helm-controller does)
pass values.schema.json and render valid objects."""
from __future__ import annotations

import jsonschema
import pytest
import yaml

from tests.deploy.chart import (
    CHART,
    FLUX,
    chart_defaults,
    deep_merge,
    render,
    validate_crd,
    validate_object,
    values_schema,
)


def load_all() -> dict[str, list[dict]]:
    out = {}
    for path in sorted(FLUX.rglob("*.yaml")):
        out[str(path.relative_to(FLUX))] = [d for d in yaml.safe_load_all(path.read_text()) if d]
    return out


def objects(kind: str) -> list[dict]:
    """Objects of a kind, without kustomize's own kustomization.yaml."""
    return [o for docs in load_all().values() for o in docs
            if o.get("kind") == kind and o["apiVersion"] != "kustomize.config.k8s.io/v1beta1"]


def helmrelease() -> dict:
    (hr,) = objects("HelmRelease")
    return hr


def test_flux_objects_validate_against_the_crds():
    seen = set()
    for name, docs in load_all().items():
        for obj in docs:
            if obj["apiVersion"] == "kustomize.config.k8s.io/v1beta1":
                continue  # kustomize's own file, checked below
            validate_object(obj)
            seen.add((obj["apiVersion"], obj["kind"]))
    assert {("helm.toolkit.fluxcd.io/v2", "HelmRelease"),
            ("kustomize.toolkit.fluxcd.io/v1", "Kustomization")} <= seen
    assert seen & {("source.toolkit.fluxcd.io/v1", "OCIRepository"),
                   ("source.toolkit.fluxcd.io/v1", "HelmRepository")}


def test_crd_validation_is_strict():
    """A misspelt field must fail, or the test above proves nothing."""
    hr = helmrelease()
    hr["spec"]["driftDetecton"] = {"mode": "enabled"}
    with pytest.raises(pytest.fail.Exception, match="driftDetecton"):
        validate_crd(hr)


def test_helmrelease_remediation_drift_detection_and_tests():
    spec = helmrelease()["spec"]
    assert spec["install"]["remediation"]["retries"] > 0
    assert spec["upgrade"]["remediation"]["retries"] > 0
    assert spec["driftDetection"]["mode"] == "enabled"
    assert spec["test"]["enable"] is True


def test_helmrelease_chart_source_exists_in_the_same_namespace():
    hr = helmrelease()
    ref = hr["spec"]["chartRef"]
    (src,) = [o for o in objects(ref["kind"]) if o["metadata"]["name"] == ref["name"]]
    assert src["metadata"]["namespace"] == hr["metadata"]["namespace"]
    assert src["spec"]["url"].endswith("/podsight")


def test_namespace_allows_the_agent_pod_security_level():
    (ns,) = objects("Namespace")
    assert ns["metadata"]["name"] == helmrelease()["metadata"]["namespace"]
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"


def test_kustomize_file_lists_existing_resources():
    kfile = FLUX / "podsight" / "kustomization.yaml"
    k = yaml.safe_load(kfile.read_text())
    assert k["kind"] == "Kustomization"
    for res in k["resources"]:
        assert (kfile.parent / res).is_file(), res
    assert sorted(k["resources"]) == sorted(p.name for p in kfile.parent.glob("*.yaml") if p != kfile)


def test_flux_kustomization_points_at_the_release_directory():
    (ks,) = objects("Kustomization")
    path = ks["spec"]["path"]
    repo_root = FLUX.parents[1]
    assert (repo_root / path / "helmrelease.yaml").is_file()


def _values_variants():
    hr = helmrelease()
    values = hr["spec"]["values"]
    yield "helmrelease", values
    # The per-cluster patch in the Flux Kustomization, applied like kustomize would.
    (ks,) = objects("Kustomization")
    for p in ks["spec"].get("patches", []):
        patch = yaml.safe_load(p["patch"])
        yield "patched", deep_merge(values, patch["spec"]["values"])


@pytest.mark.parametrize("variant", ["helmrelease", "patched"])
def test_helmrelease_values_merged_with_defaults_pass_the_schema(variant, tmp_path):
    values = dict(_values_variants())[variant]
    merged = deep_merge(chart_defaults(), values)
    jsonschema.Draft7Validator(values_schema()).validate(merged)
    # And the chart renders them into valid objects (monitoring API present, as
    # in a cluster with kube-prometheus-stack).
    vf = tmp_path / "values.yaml"
    vf.write_text(yaml.safe_dump(values))
    objs = render([vf], monitoring=True)
    assert {"ServiceMonitor", "PrometheusRule"} <= {o["kind"] for o in objs}
    for obj in objs:
        validate_object(obj)


def test_schema_check_on_merged_values_can_fail():
    merged = deep_merge(chart_defaults(), {"serviceMonitor": {"enabled": "yes"}})
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(values_schema()).validate(merged)


def test_chart_defaults_pass_the_schema():
    jsonschema.Draft7Validator.check_schema(values_schema())
    jsonschema.Draft7Validator(values_schema()).validate(chart_defaults())
    assert (CHART / "values.schema.json").is_file()
