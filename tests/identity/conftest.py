"""The test API server, shared by the pod watch and cluster index tests."""
from __future__ import annotations

import pytest

from tests.support.apiserver import PodApiServer


@pytest.fixture
def server():
    srv = PodApiServer().start()
    try:
        yield srv
    finally:
        srv.stop()
