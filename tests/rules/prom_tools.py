"""Locate and run the Prometheus/Alertmanager binaries the tests depend on.

They come from Debian's `prometheus` and `prometheus-alertmanager` packages
(installed by scripts/setup.sh). A missing tool fails the test: these tests
are the project's proof that rules and dashboards work, so skipping would
hide the gap.
"""
from __future__ import annotations

import shutil
import subprocess

import pytest

PACKAGES = {
    "promtool": "prometheus",
    "prometheus": "prometheus",
    "prometheus-alertmanager": "prometheus-alertmanager",
    "amtool": "prometheus-alertmanager",
}


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} not found on PATH: install the Debian package "
                    f"'{PACKAGES.get(tool, tool)}' (apt-get install {PACKAGES.get(tool, tool)}; "
                    f"scripts/setup.sh does this)", pytrace=False)
    return path


def run(tool: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([require(tool), *args], capture_output=True, text=True, timeout=timeout)
