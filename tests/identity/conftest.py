"""The test API server, and watchers started on it, shared by the pod watch
and cluster index tests."""
from __future__ import annotations

import pytest

from tests.support.apiserver import PodApiServer, write_kubeconfig
from tests.support.waiting import wait_for


@pytest.fixture
def server():
    srv = PodApiServer().start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def stopped():
    """Watchers a test started (PodWatcher, ClusterIndex): stopped at teardown."""
    made: list = []
    yield made
    for w in made:
        w.stop()


@pytest.fixture
def start_watching(server, tmp_path, stopped):
    """start_watching(make, watches, sync=True, **kwargs): ``make(kubeconfig,
    **kwargs)`` on ``server``, started; with ``sync``, once it listed and its
    ``watches`` watch connections are open."""

    def start(make, watches: int, sync: bool = True, **kwargs):
        kc = write_kubeconfig(tmp_path / "kubeconfig", server.url)
        kwargs.setdefault("backoff_max", 0.2)
        w = make(str(kc), **kwargs)
        stopped.append(w)
        w.start()
        if sync:
            wait_for(lambda: w.synced, what="first list")
            wait_for(lambda: server.open_watches() == watches, what=f"{watches} watch connection(s) open")
        return w

    return start
