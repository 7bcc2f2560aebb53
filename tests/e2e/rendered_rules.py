"""Build the e2e variants of rules/*.yaml with the project's own script."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RULE_OVERRIDES = Path(__file__).with_name("rule-overrides.yaml")
ALERTMANAGER_EXAMPLE = REPO / "docs" / "alertmanager.example.yml"


def render_rules(out: Path, overrides: Path | None) -> Path:
    """scripts/render-test-rules.py applied to every shipped rule file."""
    args = [sys.executable, str(REPO / "scripts" / "render-test-rules.py"), "--out", str(out)]
    if overrides:
        args += ["--overrides", str(overrides)]
    args += [str(f) for f in sorted((REPO / "rules").glob("*.yaml"))]
    result = subprocess.run(args, capture_output=True, text=True)
    if result.returncode != 0:
        pytest.fail(f"render-test-rules.py failed:\n{result.stderr}", pytrace=False)
    return out
