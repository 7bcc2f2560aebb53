"""Makes ``bench/benchlib`` importable from the bench tests (pytest loads this first).

benchlib.env renames the test pods' namespace and bridge (psb-node, psbbr0)
for the bench's own process; in a test process the root tests still need
theirs, so it is imported here once with the names put back.
"""
from __future__ import annotations

import sys
from pathlib import Path

from tests.support import pods as _pods

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

_saved = _pods.NODE_NS, _pods.BRIDGE
try:
    import benchlib.env
finally:
    _pods.NODE_NS, _pods.BRIDGE = _saved

ENV = benchlib.env  # the renaming happened on that import, once
