"""scripts/render-test-rules.py builds the e2e rule variants from rules/*.yaml."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

import prom_tools
import rule_files as rf

SCRIPT = rf.REPO / "scripts" / "render-test-rules.py"
E2E_OVERRIDES = rf.REPO / "tests" / "e2e" / "rule-overrides.yaml"


def render(tmp_path: Path, overrides: Path | None, *extra: str) -> subprocess.CompletedProcess:
    args = [sys.executable, str(SCRIPT), "--out", str(tmp_path / "out"), *extra]
    if overrides:
        args += ["--overrides", str(overrides)]
    return subprocess.run(args + [str(f) for f in rf.rule_files()], capture_output=True, text=True)


def rules_by_name(files) -> dict[str, dict]:
    return {r.name: r.body for r in rf.load_rules(sorted(files))}


def test_e2e_variant_changes_only_what_the_mapping_says(tmp_path):
    result = render(tmp_path, E2E_OVERRIDES)
    assert result.returncode == 0, result.stderr
    out = sorted((tmp_path / "out").glob("*.yaml"))
    assert [p.name for p in out] == [p.name for p in rf.rule_files()]
    check = prom_tools.run("promtool", "check", "rules", *map(str, out))
    assert check.returncode == 0, check.stdout + check.stderr

    shipped, rendered = rules_by_name(rf.rule_files()), rules_by_name(out)
    assert shipped.keys() == rendered.keys()
    mapping = yaml.safe_load(E2E_OVERRIDES.read_text())["alerts"]
    for name, body in shipped.items():
        if name not in mapping:
            assert rendered[name] == body, f"{name} changed although the mapping does not name it"
    retrans = rendered["PodsightTCPRetransmitRatioHigh"]
    assert retrans["for"] == "0s"
    assert "ratio_rate5m > 0\n" in retrans["expr"] and "> 0.05" not in retrans["expr"]
    assert rendered["PodsightTCPRetransmitRatioHigh"]["labels"] == shipped["PodsightTCPRetransmitRatioHigh"]["labels"]


def test_stale_replacement_is_an_error_naming_the_mapping(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("alerts:\n  PodsightTCPRetransmitRatioHigh:\n    replace:\n"
                   "      - old: '> 0.07'\n        new: '> 0'\n")
    result = render(tmp_path, bad)
    assert result.returncode == 1
    assert f"{bad}:2: alert PodsightTCPRetransmitRatioHigh: '> 0.07' occurs 0 times" in result.stderr
    assert "rules/tcp.yaml:" in result.stderr
    assert not (tmp_path / "out").exists(), "nothing may be written on error"


def test_unknown_alert_in_mapping_is_an_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("alerts:\n  PodsightNoSuchAlert:\n    for: 1s\n")
    result = render(tmp_path, bad)
    assert result.returncode == 1
    assert "PodsightNoSuchAlert" in result.stderr and f"{bad}:2" in result.stderr


def test_runbook_base_url_is_rewritten(tmp_path):
    result = render(tmp_path, None, "--runbook-base-url", "https://git.example.com/rb/")
    assert result.returncode == 0, result.stderr
    rendered = rules_by_name((tmp_path / "out").glob("*.yaml"))
    urls = {n: b["annotations"]["runbook_url"] for n, b in rendered.items() if "alert" in b}
    assert urls and all(u == f"https://git.example.com/rb/{n}.md" for n, u in urls.items()), urls
