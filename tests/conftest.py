"""Shared fixtures.  Tests that need root and a BPF-capable kernel are marked
``root``: elsewhere they skip with the reason; as root (CI, dev machines) they
run, and a missing kernel feature that this kernel should have fails them."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.support importable


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
