"""Helpers for the deployment tests: run the real helm, validate what it renders.

helm comes from ``scripts/fetch-helm.sh`` (``.tools/bin/helm``); CRD schemas
from the upstream definitions vendored in ``tests/deploy/crds``.
"""
from __future__ import annotations

import atexit
import copy
import functools
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "podsight"
FLUX = REPO / "deploy" / "flux"
HELM = REPO / ".tools" / "bin" / "helm"
CRDS = Path(__file__).resolve().parent / "crds"

# A current Kubernetes release: helm renders for it and kubernetes-validate
# checks core kinds against its OpenAPI schemas.
KUBE_VERSION = "1.33.0"
# Every release the chart is validated for: its floor (Chart.yaml kubeVersion),
# the last release before securityContext.appArmorProfile and
# volumeMounts[].recursiveReadOnly (1.30), and 1.30, 1.33, 1.37.
KUBE_VERSIONS = ("1.25.0", "1.29.0", "1.30.0", "1.33.0", "1.37.0")
MONITORING_API = "monitoring.coreos.com/v1"
RELEASE = "podsight"
NAMESPACE = "podsight"

SCENARIOS = sorted(p.name for p in (CHART / "ci").glob("*-values.yaml"))

# Isolate helm from the user's ~/.config, ~/.cache (repositories, plugins).
_HELM_HOME = tempfile.mkdtemp(prefix="psh-helm-home-")
atexit.register(shutil.rmtree, _HELM_HOME, True)


def helm_bin() -> Path:
    if not (HELM.is_file() and os.access(HELM, os.X_OK)):
        pytest.fail(f"{HELM} is missing: run scripts/fetch-helm.sh (the project's setup does)")
    return HELM


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    for var in ("HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME"):
        env[var] = os.path.join(_HELM_HOME, var.lower())
    proc = subprocess.run(
        [str(helm_bin()), *args], capture_output=True, text=True, env=env, timeout=120
    )
    if check and proc.returncode != 0:
        pytest.fail(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}{proc.stdout}")
    return proc


def template_args(values_files=(), sets=(), monitoring=False, chart=CHART, kube_version=KUBE_VERSION) -> list[str]:
    args = ["template", RELEASE, str(chart), "--namespace", NAMESPACE, "--kube-version", kube_version]
    if monitoring:
        args += ["--api-versions", MONITORING_API]
    for f in values_files:
        args += ["-f", str(f)]
    for s in sets:
        args += ["--set", s]
    return args


@functools.lru_cache(maxsize=None)
def _render_cached(values_files: tuple, sets: tuple, monitoring: bool, chart: str, kube_version: str) -> str:
    return helm(*template_args(values_files, sets, monitoring, Path(chart), kube_version)).stdout


def render(values_files=(), sets=(), monitoring=False, chart=CHART, kube_version=KUBE_VERSION) -> list[dict]:
    """`helm template` → list of objects (a fresh copy the caller may change)."""
    out = _render_cached(tuple(str(f) for f in values_files), tuple(sets), monitoring, str(chart), kube_version)
    return [d for d in yaml.safe_load_all(out) if d]


def render_fails(sets=(), values_files=(), monitoring=True) -> str:
    """`helm template` that must fail: its error output."""
    proc = helm(*template_args(values_files, sets, monitoring), check=False)
    assert proc.returncode != 0, f"helm template {sets} rendered; expected a failure"
    return proc.stderr


def render_scenario(name: str | None, sets=(), monitoring=None, kube_version=KUBE_VERSION) -> list[dict]:
    files = [CHART / "ci" / name] if name else []
    if monitoring is None:
        monitoring = True  # render every object the scenario turns on
    return render(files, sets, monitoring, kube_version=kube_version)


def find(objs: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def one(objs: list[dict], kind: str, name: str | None = None) -> dict:
    found = find(objs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {[o['metadata']['name'] for o in found]}"
    return found[0]


def agent_container(objs: list[dict]) -> dict:
    ds = one(objs, "DaemonSet")
    (c,) = [c for c in ds["spec"]["template"]["spec"]["containers"] if c["name"] == "podsight"]
    return c


def chart_defaults() -> dict:
    return yaml.safe_load((CHART / "values.yaml").read_text())


def values_schema() -> dict:
    import json

    return json.loads((CHART / "values.schema.json").read_text())


def deep_merge(base: dict, override: dict) -> dict:
    """Helm's values merge: maps merge key by key, everything else replaces."""
    out = copy.deepcopy(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


# ---------------------------------------------------------------- validation

def validate_core(obj: dict, kube_version: str = KUBE_VERSION) -> None:
    """Strict OpenAPI validation of a built-in kind (unknown fields fail)."""
    try:
        kubernetes_validate.validate(obj, kube_version, strict=True)
    except kubernetes_validate.ValidationError as e:
        pytest.fail(f"{obj['kind']}/{obj['metadata'].get('name')} (Kubernetes {kube_version}): "
                    f"{e.message} at {list(e.path)}")


def _strict(schema):
    """Close every object schema that lists its properties, as the API server's
    pruning effectively does, so a misspelt field fails instead of vanishing."""
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if (
            schema.get("type") == "object"
            and "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    return schema


@functools.lru_cache(maxsize=None)
def crd_schemas() -> dict:
    """(apiVersion, kind) → openAPIV3Schema of the CRDs in tests/deploy/crds."""
    out = {}
    for path in sorted(CRDS.glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for v in crd["spec"]["versions"]:
                out[(f"{group}/{v['name']}", kind)] = _strict(v["schema"]["openAPIV3Schema"])
    return out


def is_crd_kind(obj: dict) -> bool:
    return "." in obj["apiVersion"].split("/")[0] and not obj["apiVersion"].startswith(
        ("apps/", "rbac.authorization.k8s.io/", "policy/", "batch/", "networking.k8s.io/")
    )


def validate_crd(obj: dict) -> None:
    key = (obj["apiVersion"], obj["kind"])
    schemas = crd_schemas()
    if key not in schemas:
        pytest.fail(f"no CRD schema for {key} in {CRDS}")
    validator = jsonschema.Draft7Validator(schemas[key])
    errors = sorted(validator.iter_errors(obj), key=lambda e: list(e.path))
    if errors:
        msgs = "\n".join(f"  {'/'.join(map(str, e.path))}: {e.message}" for e in errors[:10])
        pytest.fail(f"{obj['kind']}/{obj['metadata'].get('name')} does not match its CRD:\n{msgs}")


def validate_object(obj: dict, kube_version: str = KUBE_VERSION) -> None:
    if is_crd_kind(obj):
        validate_crd(obj)
    else:
        validate_core(obj, kube_version)
