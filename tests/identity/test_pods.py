"""PodWatcher against the test API server (tests/support/apiserver.py): the
real lightkube client over real HTTP, list + watch + bookmarks + 410 + outages."""
from __future__ import annotations

import logging
import socket
import time
from functools import partial

import pytest

from podsight.identity.listwatch import backoff_delay
from podsight.identity.pods import PodWatcher
from tests.support.apiserver import PodApiServer, make_pod, start_container, write_kubeconfig
from tests.support.waiting import wait_for

NODE = "node-a"


@pytest.fixture
def watch(start_watching):
    """Start a watcher of NODE on `server`; by default waits for the first list and the watch."""
    return lambda sync=True, **kwargs: start_watching(partial(PodWatcher, NODE), 1, sync, **kwargs)


def uid(pod: dict) -> str:
    return pod["metadata"]["uid"]


def test_list_then_watch_populates_the_cache(server, watch):
    web = make_pod("web-7d4b9c8f6-x2k9p", "shop", NODE, labels={"app": "web", "pod-template-hash": "7d4b9c8f6"},
                   owner=("ReplicaSet", "web-7d4b9c8f6"),
                   containers=[("app", "shop/web:2.1"), ("proxy", "envoy:1.30")],
                   init_containers=[("migrate", "shop/migrate:2.1")])
    start_container(web, "app", "a" * 64)
    server.add_pod(web)
    w = watch()
    info = w.pod(uid(web))
    assert (info.namespace, info.name, info.node) == ("shop", "web-7d4b9c8f6-x2k9p", NODE)
    assert (info.workload, info.workload_kind) == ("web", "Deployment")
    assert dict(info.labels) == {"app": "web", "pod-template-hash": "7d4b9c8f6"}
    # only the started container has an ID yet
    assert list(info.containers) == ["a" * 64]
    pod, container = w.pod_by_container("a" * 64)
    assert pod is info and (container.name, container.image) == ("app", "shop/web:2.1")
    assert w.api_up and w.resource_version == str(server.resource_version)

    # a pod added after the list arrives through the watch
    job = server.add_pod(make_pod("report-29012345-q", "batch", NODE, owner=("Job", "report-29012345")))
    info = wait_for(lambda: w.pod(uid(job)), what="watched pod")
    assert (info.workload, info.workload_kind) == ("report", "CronJob")
    assert server.requests("list") == 1


def test_field_selector_keeps_other_nodes_out(server, watch):
    other = server.add_pod(make_pod("elsewhere", node="node-b"))
    w = watch()
    assert w.pod(uid(other)) is None
    late_other = server.add_pod(make_pod("elsewhere-2", node="node-b"))
    mine = server.add_pod(make_pod("mine", node=NODE))
    wait_for(lambda: w.pod(uid(mine)), what="pod on our node")  # events are in order
    assert w.pod(uid(late_other)) is None
    assert {p.name for p in w.pods()} == {"mine"}
    [watch_req] = server.watch_requests()
    assert watch_req["fieldSelector"] == f"spec.nodeName={NODE}"


def test_modified_adds_container_ids_of_all_container_kinds(server, watch):
    pod = server.add_pod(make_pod("p", node=NODE, containers=[("app", "app:1")],
                                  init_containers=[("init", "init:1")]))
    w = watch()
    assert dict(w.pod(uid(pod)).containers) == {}
    server.modify_pod(uid(pod), lambda p: start_container(p, "init", "1" * 64))

    def add_debug(p):
        p["spec"]["ephemeralContainers"] = [{"name": "debug", "image": "busybox:1.36"}]
        p["status"]["ephemeralContainerStatuses"] = [{"name": "debug", "image": "docker.io/library/busybox:1.36",
                                                      "ready": False, "restartCount": 0, "state": {}}]
        start_container(p, "app", "2" * 64, scheme="cri-o")
        start_container(p, "debug", "3" * 64)

    server.modify_pod(uid(pod), add_debug)
    wait_for(lambda: w.pod_by_container("3" * 64), what="ephemeral container id")
    got = {cid: (c.name, c.image) for cid, c in w.pod(uid(pod)).containers.items()}
    assert got == {"1" * 64: ("init", "init:1"), "2" * 64: ("app", "app:1"), "3" * 64: ("debug", "busybox:1.36")}


def test_restarted_container_keeps_its_old_id_resolvable(server, watch):
    pod = make_pod("p", node=NODE)
    start_container(pod, "app", "old1")
    server.add_pod(pod)
    w = watch()

    def restart(p):
        cs = p["status"]["containerStatuses"][0]
        cs["lastState"] = {"terminated": {"exitCode": 1, "containerID": cs["containerID"]}}
        start_container(p, "app", "new2")

    server.modify_pod(uid(pod), restart)
    wait_for(lambda: w.pod_by_container("new2"), what="new container id")
    assert w.pod_by_container("old1")[1].name == "app"


def test_deleted_pods_are_reported_and_resolvable_until_forgotten(server, watch):
    changes = []
    pod = make_pod("gone", node=NODE)
    start_container(pod, "app", "c1")
    server.add_pod(pod)
    w = watch(on_change=lambda: changes.append(1))
    n_changes = len(changes)
    before = time.monotonic()
    server.delete_pod(uid(pod))
    wait_for(lambda: uid(pod) in w.deleted(), what="DELETED event")
    assert before <= w.deleted()[uid(pod)] <= time.monotonic()
    assert len(changes) > n_changes
    # still resolvable during the caller's grace period
    assert w.pod(uid(pod)).name == "gone"
    assert [x.name for x in w.pod_by_container("c1")] == ["gone", "app"]
    w.forget(uid(pod))
    assert w.pod(uid(pod)) is None and w.pod_by_container("c1") is None and w.deleted() == {}


def test_forget_leaves_live_pods_alone(server, watch):
    pod = server.add_pod(make_pod("alive", node=NODE))
    w = watch()
    w.forget(uid(pod))
    assert w.pod(uid(pod)).name == "alive"


def test_bookmark_advances_the_version_used_by_the_next_watch(server, watch):
    w = watch()
    first = server.watch_requests()[0]
    assert first["allowWatchBookmarks"] == "true" and first["resourceVersion"] == w.resource_version
    server.advance(5)  # other objects changed in etcd: no pod event for us
    bookmark_rv = server.bookmark()
    wait_for(lambda: w.resource_version == str(bookmark_rv), what="bookmark applied")
    server.end_watches()  # server-side timeout: the client must resume from the bookmark
    wait_for(lambda: len(server.watch_requests()) == 2, what="second watch request")
    assert server.watch_requests()[1]["resourceVersion"] == str(bookmark_rv)
    assert server.requests("list") == 1  # resumed, not relisted


@pytest.mark.parametrize("gone_mode", ["event", "status"])
def test_gone_after_outage_relists_and_drops_pods_deleted_meanwhile(tmp_path, stopped, gone_mode):
    with PodApiServer(gone_mode=gone_mode) as server:
        a = server.add_pod(make_pod("a", node=NODE))
        b = server.add_pod(make_pod("b", node=NODE))
        kc = write_kubeconfig(tmp_path / "kc", server.url)
        w = PodWatcher(NODE, str(kc), backoff_max=0.2)
        stopped.append(w)
        w.start()
        wait_for(lambda: w.synced and server.open_watches() == 1, what="first sync")
        old_rv = w.resource_version
        server.stop()
        server.delete_pod(uid(b))
        c = server.add_pod(make_pod("c", node=NODE))
        server.compact()
        server.start()
        wait_for(lambda: w.pod(uid(c)) is not None, what="pod created during outage")
        assert server.requests("list") == 2
        resumed = [r["resourceVersion"] for r in server.watch_requests()]
        assert old_rv in resumed[1:]  # it tried to resume first and got 410
        assert uid(b) in w.deleted() and uid(a) not in w.deleted()
        assert {p.name for p in w.pods() if p.uid not in w.deleted()} == {"a", "c"}
        assert w.api_up


def test_gone_error_event_mid_stream_relists(server, watch):
    w = watch()
    pod = server.add_pod(make_pod("x", node=NODE))
    wait_for(lambda: w.pod(uid(pod)), what="pod")
    server.compact()
    server.expire_watches()
    wait_for(lambda: server.requests("list") == 2, what="relist after ERROR 410")
    wait_for(lambda: server.open_watches() == 1, what="watch again")
    later = server.add_pod(make_pod("later", node=NODE))
    wait_for(lambda: w.pod(uid(later)), what="pod after relist")
    assert w.api_up and w.deleted() == {}


def test_server_down_ten_seconds(server, watch):
    a = server.add_pod(make_pod("a", node=NODE))
    w = watch()
    down_at = time.monotonic()
    server.stop()
    wait_for(lambda: not w.api_up, timeout=2, what="api_up to drop")
    assert w.pod(uid(a)).name == "a"  # what is known stays known
    created = server.add_pod(make_pod("born-while-down", node=NODE))
    # Ten seconds down, checked all along: still down, nothing invented, nothing lost.
    while time.monotonic() - down_at < 10:
        assert not w.api_up and w.pod(uid(created)) is None and w.pod(uid(a)).name == "a"
        time.sleep(0.2)
    server.start()
    wait_for(lambda: w.api_up, timeout=3, what="api_up to recover")
    wait_for(lambda: w.pod(uid(created)), timeout=3, what="pod created while down")
    assert server.requests("list") == 1  # history was kept: resumed without relisting


def _failures(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "pod list/watch failed" in r.getMessage()]


def test_start_with_unreachable_api_does_not_raise_and_recovers(tmp_path, stopped, caplog):
    caplog.set_level(logging.DEBUG, logger="podsight.identity.pods")  # the retries log at debug
    server = PodApiServer()
    server.start()
    server.stop()  # the port is now closed (connection refused); start() reuses it
    pod = server.add_pod(make_pod("a", node=NODE))
    kc = write_kubeconfig(tmp_path / "kc", server.url)
    w = PodWatcher(NODE, str(kc), backoff_max=0.2)
    stopped.append(w)
    t = time.monotonic()
    w.start()
    assert time.monotonic() - t < 0.2
    wait_for(lambda: len(_failures(caplog)) >= 3, what="three failed attempts")
    assert not w.api_up and not w.synced and w.pod(uid(pod)) is None
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and server.url in warnings[0]  # once per outage, naming the server
    try:
        server.start()
        wait_for(lambda: w.synced and w.api_up, what="sync after the API appears")
        assert w.pod(uid(pod)).name == "a"
    finally:
        server.stop()


def test_unroutable_api_does_not_block_start(tmp_path, stopped):
    # A listening socket that never accepts: connects hang until the timeout.
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(0)
    try:
        kc = write_kubeconfig(tmp_path / "kc", f"http://127.0.0.1:{sock.getsockname()[1]}")
        w = PodWatcher(NODE, str(kc), backoff_max=0.2)
        stopped.append(w)
        t = time.monotonic()
        w.start()
        assert time.monotonic() - t < 0.2
        assert not w.api_up
    finally:
        sock.close()


def test_wrong_token_keeps_api_down_without_crashing(server, tmp_path, stopped):
    kc = write_kubeconfig(tmp_path / "kc", server.url, token="wrong")
    w = PodWatcher(NODE, str(kc), backoff_max=0.1)
    stopped.append(w)
    w.start()
    wait_for(lambda: server.requests("list") >= 3, what="retries")
    assert not w.api_up and not w.synced


def test_stop_is_prompt_with_an_open_watch(server, watch):
    w = watch()
    t = time.monotonic()
    w.stop()
    assert time.monotonic() - t < 1.0
    assert not w.api_up
    wait_for(lambda: server.open_watches() == 0, what="watch connection closed")


@pytest.mark.parametrize("attempt", range(12))
def test_backoff_is_capped_exponential_with_jitter(attempt):
    lo = backoff_delay(attempt, cap=30.0, rand=lambda: 0.0)
    hi = backoff_delay(attempt, cap=30.0, rand=lambda: 1.0)
    expected = min(30.0, 0.5 * 2 ** attempt)
    assert (lo, hi) == (expected / 2, expected)


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    from tests.support.apiserver import make_tls_files

    d = tmp_path_factory.mktemp("tls")
    return make_tls_files(d, "apiserver"), make_tls_files(d, "impostor")


def test_https_with_the_kubeconfig_ca(tls_files, tmp_path, stopped):
    (cert, key), _ = tls_files
    with PodApiServer(tls=(cert, key)) as server:
        pod = server.add_pod(make_pod("tls-pod", node=NODE))
        kc = write_kubeconfig(tmp_path / "kc", server.url, ca_file=cert)
        w = PodWatcher(NODE, str(kc), backoff_max=0.2)
        stopped.append(w)
        w.start()
        wait_for(lambda: w.pod(uid(pod)), what="pod over HTTPS")
        wait_for(lambda: server.open_watches() == 1, what="watch over HTTPS")
        later = server.add_pod(make_pod("tls-later", node=NODE))
        wait_for(lambda: w.pod(uid(later)), what="watched pod over HTTPS")
        w.stop()
        wait_for(lambda: server.open_watches() == 0, what="TLS watch closed")


def test_https_rejects_a_server_the_ca_did_not_sign(tls_files, tmp_path, stopped, caplog):
    caplog.set_level(logging.DEBUG, logger="podsight.identity.pods")
    (cert, key), (impostor_cert, impostor_key) = tls_files
    with PodApiServer(tls=(impostor_cert, impostor_key)) as server:
        kc = write_kubeconfig(tmp_path / "kc", server.url, ca_file=cert)
        w = PodWatcher(NODE, str(kc), backoff_max=0.1)
        stopped.append(w)
        w.start()
        wait_for(lambda: len(_failures(caplog)) >= 3, what="three failed attempts")
        assert all("CERTIFICATE_VERIFY_FAILED" in m for m in _failures(caplog)), _failures(caplog)
        assert not w.api_up and not w.synced
        assert server.requests() == {}  # no request got past the handshake


def test_in_cluster_service_account(tls_files, tmp_path, stopped, monkeypatch):
    (cert, key), _ = tls_files
    sa = tmp_path / "serviceaccount"
    sa.mkdir()
    (sa / "token").write_text("in-cluster-token")
    (sa / "namespace").write_text("podsight")
    (sa / "ca.crt").write_bytes(cert.read_bytes())
    with PodApiServer(tls=(cert, key), token="in-cluster-token") as server:
        pod = server.add_pod(make_pod("in-cluster", node=NODE))
        monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
        monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(server.port))
        w = PodWatcher(NODE, service_account_dir=str(sa), backoff_max=0.2)  # detected, not forced
        stopped.append(w)
        w.start()
        wait_for(lambda: w.pod(uid(pod)), what="pod via in-cluster config")


def test_a_hung_api_connection_shows_as_a_stuck_watch(tmp_path, stopped, monkeypatch):
    """An API server that accepts and never answers: the watch thread is
    stuck in a request, and its heartbeat says so (/healthz fails) once the
    longest watch plus the grace has passed (shrunk here from 600 + 120 s)."""
    from podsight.heartbeat import late
    from podsight.identity import listwatch

    monkeypatch.setattr(listwatch, "WATCH_TIMEOUT_RANGE", (1, 1))
    monkeypatch.setattr(PodWatcher, "PROGRESS_GRACE", 0.5)
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(8)  # accepted by the kernel, never read or answered
    try:
        kc = write_kubeconfig(tmp_path / "kc", f"http://127.0.0.1:{hole.getsockname()[1]}")
        w = PodWatcher(NODE, str(kc), backoff_max=0.2)
        stopped.append(w)
        w.start()
        # Due 1.5 s after the request began: well before the client gives up on it (10 s).
        wait_for(lambda: late([w.heartbeat]), what="the hung watch to be overdue", timeout=5)
        assert late([w.heartbeat])[0].startswith("kubernetes pod watch")
    finally:
        hole.close()
