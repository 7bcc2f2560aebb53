"""Fixtures the chart's privilege tests share."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from podsight.kernel.mounts import cgroup2_root


@pytest.fixture(scope="module")
def other_user():
    """A process of another user (nobody), as most pods' processes are to the agent."""
    p = subprocess.Popen(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "sleep", "300"])
    try:
        yield p.pid
    finally:
        p.kill()
        p.wait()


@pytest.fixture
def cgroup_dir():
    """An empty cgroup v2 directory for the capability probes' cgroup_skb link."""
    path = Path(cgroup2_root()) / f"psh-helm-{os.getpid()}"
    path.mkdir()
    try:
        yield path
    finally:
        path.rmdir()  # the probe's links die with its process
