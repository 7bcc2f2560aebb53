"""scripts/fetch-helm.sh is idempotent and gives a helm v4."""
from __future__ import annotations

import os
import subprocess

from tests.deploy.chart import REPO, helm_bin


def test_second_run_reuses_the_binaries_and_reports_helm_v4():
    helm_bin()  # fails with the fix if setup never ran
    env = dict(os.environ, CI="true")
    out = subprocess.run([str(REPO / "scripts" / "fetch-helm.sh")], capture_output=True, text=True,
                         env=env, stdin=subprocess.DEVNULL, timeout=60, check=True)
    assert "already present" in out.stdout
    assert out.stdout.strip().splitlines()[-1].startswith("v4."), out.stdout
    assert os.access(REPO / ".tools" / "bin" / "kubectl", os.X_OK)
