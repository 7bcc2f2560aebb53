"""The Dockerfile cannot be built here (no Docker engine): check that it stays
consistent with the repository and the agent instead."""
from __future__ import annotations

import fnmatch
import re
import shlex


from podsight.config import load_config
from tests.deploy.chart import REPO, chart_defaults

DOCKERFILE = REPO / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for ins in instructions():
        if ins[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(ins)
    return result


def image_env() -> dict[str, str]:
    env = {}
    for word, rest in stages()[-1]:
        if word == "ENV":
            for item in shlex.split(rest):
                k, _, v = item.partition("=")
                env[k] = v
    return env


def dockerignored(path: str) -> bool:
    patterns = [p.strip() for p in (REPO / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    return any(fnmatch.fnmatch(path, p) or path.startswith(p.rstrip("/") + "/") for p in patterns)


def test_build_stage_runs_the_makefile_script():
    build = stages()[0]
    assert build[0][1].startswith("debian:")
    runs = " ".join(rest for word, rest in build if word == "RUN")
    assert "scripts/build-bpf.sh" in runs
    for pkg in ("clang", "llvm", "libbpf-dev", "bpftool"):
        assert re.search(rf"\b{pkg}\b", runs), pkg


def test_runtime_is_slim_with_python_and_system_libbpf():
    runtime = stages()[-1]
    assert runtime[0][1] == "debian:${DEBIAN_RELEASE}-slim"
    assert 'ARG DEBIAN_RELEASE=bookworm' in DOCKERFILE.read_text()
    runs = " ".join(rest for word, rest in runtime if word == "RUN")
    for pkg in ("python3", "libbpf1", "iproute2"):
        assert re.search(rf"\b{pkg}\b", runs), pkg
    assert not re.search(r"\b(clang|llvm|libbpf-dev)\b", runs)


def test_entrypoint_is_podsight_run():
    runtime = dict((w, r) for w, r in stages()[-1] if w in ("ENTRYPOINT", "CMD"))
    import json

    assert json.loads(runtime["ENTRYPOINT"]) + json.loads(runtime["CMD"]) == ["podsight", "run"]


def test_objects_are_copied_where_the_loader_looks(monkeypatch):
    env = image_env()
    copies = [rest for word, rest in stages()[-1] if word == "COPY"]
    (obj_copy,) = [c for c in copies if ".bpf.o" in c]
    assert obj_copy.split()[-1].rstrip("/") == env["PODSIGHT_BPF_DIR"]
    from podsight.kernel import loader

    # With the image's environment the loader really looks there.
    monkeypatch.setenv("PODSIGHT_BPF_DIR", env["PODSIGHT_BPF_DIR"])
    assert str(loader.bpf_dir()) == env["PODSIGHT_BPF_DIR"]


def test_copied_sources_exist_and_are_not_dockerignored():
    for stage in stages():
        for word, rest in stage:
            if word != "COPY" or rest.startswith("--from"):
                continue
            for src in shlex.split(rest)[:-1]:
                if "*" in src:
                    continue  # optional globs (README.md*)
                assert (REPO / src).exists(), f"Dockerfile copies {src}, which does not exist"
                assert not dockerignored(src.rstrip("/")), f".dockerignore excludes {src}"


def test_image_env_is_accepted_by_the_config_loader():
    """Every PODSIGHT_* variable is read by load_config as a config key: the
    image's own ENV must not make the agent refuse to start."""
    env = {k: v for k, v in image_env().items() if k.startswith("PODSIGHT_")}
    assert env, "expected PODSIGHT_BPF_DIR in the image"
    load_config(None, env=env)


def test_chart_default_tag_is_the_package_version():
    import tomllib

    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    chart = (REPO / "deploy/helm/podsight/Chart.yaml").read_text()
    assert f'appVersion: "{version}"' in chart
    assert chart_defaults()["image"]["tag"] == ""  # follows appVersion
