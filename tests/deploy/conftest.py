"""Fixtures the chart's privilege tests share."""
from __future__ import annotations

import subprocess

import pytest


@pytest.fixture(scope="module")
def other_user():
    """A process of another user (nobody), as most pods' processes are to the agent."""
    p = subprocess.Popen(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "sleep", "300"])
    try:
        yield p.pid
    finally:
        p.kill()
        p.wait()
