"""Shared fixtures.  Tests that need root and a BPF-capable kernel are marked
``root``: elsewhere they skip with the reason; as root (CI, dev machines) they
run, and a missing kernel feature that this kernel should have fails them."""
from __future__ import annotations

import fcntl
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.support importable


def pytest_sessionstart(session):
    """Root tests share fixed names (ps-node, psbr0, the kubelet cgroup tree):
    a second suite on the same machine waits for the first instead of
    tearing its namespaces down under it."""
    if os.geteuid() == 0:
        lock_dir = "/run/lock" if os.path.isdir("/run/lock") else "/tmp"
        fd = os.open(f"{lock_dir}/podsight-tests.lock", os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        session.config._podsight_lock = fd  # held until the process exits


def pytest_collection_modifyitems(config, items):
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root: loads BPF programs and creates network namespaces/cgroups")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def node():
    from tests.support.pods import Node

    n = Node()
    try:
        yield n
    finally:
        n.close()
