"""The chart's README (generated from values.yaml by scripts/chart-readme.py),
its icon and Artifact Hub annotations, and the docs of the chart's options."""
from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from urllib.parse import urlparse

import pytest
import yaml

from tests.deploy.chart import CHART, REPO, agent_container, render

SCRIPT = REPO / "scripts" / "chart-readme.py"
README = CHART / "README.md"


def generator():
    spec = importlib.util.spec_from_file_location("chart_readme", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60)


# ------------------------------------------------------------------ README

def test_committed_readme_is_what_the_generator_writes(tmp_path):
    """Regenerate from the chart's sources in a temporary copy and compare."""
    chart = tmp_path / "podsight"
    chart.mkdir()
    for name in ("Chart.yaml", "values.yaml", "README.md.gotmpl"):
        shutil.copy(CHART / name, chart / name)
    out = run(str(chart))
    assert out.returncode == 0, out.stderr
    assert (chart / "README.md").read_text() == README.read_text(), \
        "deploy/helm/podsight/README.md is out of date: run scripts/chart-readme.py"
    # --check says the same about the real chart, and writes nothing.
    assert run("--check").returncode == 0


def test_check_fails_on_a_stale_readme(tmp_path):
    chart = tmp_path / "podsight"
    chart.mkdir()
    for name in ("Chart.yaml", "values.yaml", "README.md.gotmpl", "README.md"):
        shutil.copy(CHART / name, chart / name)
    values = chart / "values.yaml"
    values.write_text(values.read_text() + "\n# -- A value added without regenerating the README.\nnewValue: 1\n")
    out = run(str(chart), "--check")
    assert out.returncode == 1 and "out of date" in out.stderr
    assert (chart / "README.md").read_text() == README.read_text()  # untouched


def test_every_value_has_a_description():
    """Each row of the values table says what the value does (a `# --` comment)."""
    gen = generator()
    text = (CHART / "values.yaml").read_text()
    rows = gen.value_rows(yaml.safe_load(text), gen.parse_docs(text))
    assert len(rows) > 50
    undocumented = [r.key for r in rows if not r.description]
    assert not undocumented, f"values without a `# --` description in values.yaml: {undocumented}"
    # Below a documented map, an undocumented key gets no row at all (helm-docs
    # shows it only in the map's default): where some keys of a top-level map
    # are documented, all must be.
    docs = gen.parse_docs(text)
    for top, value in yaml.safe_load(text).items():
        if isinstance(value, dict) and any((top, k) in docs for k in value):
            missing = [f"{top}.{k}" for k in value if (top, k) not in docs]
            assert not missing, f"values without a `# --` description in values.yaml: {missing}"


def test_values_table_has_the_new_options():
    text = README.read_text()
    for key in ("seccompProfile", "appArmorProfile", "hostMounts.bpffs", "hostMounts.recursiveReadOnly",
                *(f"{m}.{k}" for m in ("serviceMonitor", "podMonitor")
                  for k in ("sampleLimit", "labelLimit", "targetLimit", "attachMetadata", "scheme",
                            "tlsConfig", "basicAuth", "authorization", "bearerTokenSecret"))):
        assert f"\n| {key} |" in text, f"{key} is not in the chart README's values table"
    assert "| hostMounts.bpffs | bool | `false` |" in text


def test_generator_follows_the_helm_docs_conventions():
    gen = generator()
    values = textwrap.dedent("""\
        # Notes for values.yaml readers only.
        # -- The image.
        # Second line of the description.
        image:
          tag: ""
          # -- Pull policy | with a pipe.
          pullPolicy: IfNotPresent
        plain:
          leaf: 3
          empty: {}
          list: [a]
        # -- Documented map.
        # @default -- see values.yaml
        cfg:
          a: 1
        # -- A <placeholder>, `<kept>` in code.
        text: |
          key: not a value
        # @ignored
        hidden:
          x: 1
        # -- Tolerations.
        tolerations:
          - operator: Exists
            effect: NoSchedule
        after: true

        # -- Not this one: a blank line separates it.

        loose: 1
        """)
    rows = {r.key: r for r in gen.value_rows(yaml.safe_load(values), gen.parse_docs(values))}
    assert list(rows) == ["image", "image.pullPolicy", "plain.leaf", "plain.empty", "plain.list[0]", "cfg",
                          "text", "tolerations", "after", "loose"]
    assert rows["image"].description == "The image. Second line of the description."
    assert rows["image"].default == '`{"pullPolicy":"IfNotPresent","tag":""}`'
    assert rows["image.pullPolicy"].description == "Pull policy | with a pipe."
    assert (rows["plain.leaf"].type, rows["plain.leaf"].default, rows["plain.leaf"].description) == ("int", "`3`", "")
    assert rows["cfg"].default == "see values.yaml"
    assert rows["text"].type == "string"
    assert rows["tolerations"].type == "list" and rows["after"].description == ""
    assert rows["loose"].description == ""
    table = gen.values_table(values)
    assert "| image.pullPolicy | string | `\"IfNotPresent\"` | Pull policy \\| with a pipe. |" in table
    assert "A &lt;placeholder&gt;, `<kept>` in code." in table


def test_template_may_only_use_known_templates(tmp_path):
    chart = tmp_path / "c"
    chart.mkdir()
    shutil.copy(CHART / "Chart.yaml", chart)
    shutil.copy(CHART / "values.yaml", chart)
    (chart / "README.md.gotmpl").write_text('# {{ template "chart.name" . }}\n{{ template "chart.badges" . }}\n')
    out = run(str(chart))
    assert out.returncode != 0 and "chart.badges" in out.stderr


def test_template_is_not_packaged():
    assert "README.md.gotmpl" in (CHART / ".helmignore").read_text().splitlines()


# ------------------------------------------------------- icon, Artifact Hub

def chart_yaml() -> dict:
    return yaml.safe_load((CHART / "Chart.yaml").read_text())


def test_icon_is_the_chart_s_own_svg():
    """Helm takes a URL only (helm lint refuses a path), so icon is the raw URL
    of icon.svg in this chart directory, on the repository Chart.yaml calls home."""
    chart = chart_yaml()
    url = urlparse(chart["icon"])
    home = urlparse(chart["home"])
    assert url.scheme == "https" and url.netloc == "raw.githubusercontent.com"
    owner, repo, branch, path = url.path.lstrip("/").split("/", 3)
    assert f"{owner}/{repo}" == home.path.strip("/"), (url.path, home.path)
    assert branch == "main"
    icon = REPO / path
    assert icon.parent == CHART and icon.suffix == ".svg" and icon.is_file(), path
    root = ET.fromstring(icon.read_text())
    assert root.tag == "{http://www.w3.org/2000/svg}svg" and root.get("viewBox")
    assert icon.stat().st_size < 4096


def annotations() -> dict:
    return chart_yaml()["annotations"]


def test_artifact_hub_annotations():
    ann = annotations()
    assert all(isinstance(v, str) for v in ann.values()), "annotation values must be strings"
    assert ann["artifacthub.io/category"] in {
        "ai-machine-learning", "database", "integration-delivery", "monitoring-logging", "networking",
        "security", "storage", "streaming-messaging"}
    assert ann["artifacthub.io/containsSecurityUpdates"] == "false"
    assert ann["artifacthub.io/operator"] == "false"
    # The project's license (pyproject.toml), as an SPDX id.
    import tomllib
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert ann["artifacthub.io/license"] == project["license"]["text"] == "Apache-2.0"
    links = yaml.safe_load(ann["artifacthub.io/links"])
    assert links and all(set(link) == {"name", "url"} and link["url"].startswith("https://") for link in links)
    changes = yaml.safe_load(ann["artifacthub.io/changes"])
    assert changes and all(c["kind"] in {"added", "changed", "deprecated", "removed", "fixed", "security"}
                           and c["description"] for c in changes)


def test_artifact_hub_images_are_what_the_chart_runs():
    images = yaml.safe_load(annotations()["artifacthub.io/images"])
    rendered = {agent_container(render())["image"]}
    rendered |= {c["image"] for o in render() if o["kind"] == "Pod" for c in o["spec"]["containers"]}
    assert {i["image"] for i in images} == rendered
    assert all(set(i) <= {"name", "image", "platforms", "whitelisted"} for i in images)


# -------------------------------------------------------------------- docs

@pytest.mark.parametrize("needle", [
    "seccompProfile", "appArmorProfile", "files/seccomp/podsight.json", "RuntimeDefault", "Localhost",
    "hostMounts.bpffs", "hostMounts.recursiveReadOnly", "IfPossible",
    "sampleLimit", "labelLimit", "targetLimit", "attachMetadata", "tlsConfig", "basicAuth", "authorization",
    "bearerTokenSecret", "enforcedNamespaceLabel", "excludedFromEnforcement", "kernel.perf_event_paranoid",
    "scripts/chart-readme.py",
])
def test_deploy_readme_describes_the_options(needle):
    assert needle in (REPO / "deploy" / "README.md").read_text(), f"deploy/README.md does not mention {needle}"


def test_chart_readme_explains_honor_labels_and_enforced_namespace_label():
    text = README.read_text()
    section = text[text.index("### `honorLabels` and `enforcedNamespaceLabel`"):text.index("## Kernel settings")]
    for needle in ("honorLabels: true", "excludedFromEnforcement", "servicemonitors", "podmonitors",
                   "prometheusrules", "overrideHonorLabels", "exported_namespace"):
        assert needle in section, needle
    # The example names what the chart renders for a release called podsight.
    objs = render(sets=["serviceMonitor.enabled=true", "prometheusRule.enabled=true"], monitoring=True)
    names = {o["metadata"]["name"] for o in objs if o["kind"] in ("ServiceMonitor", "PrometheusRule")}
    assert names == {"podsight"} and "name: podsight" in section
