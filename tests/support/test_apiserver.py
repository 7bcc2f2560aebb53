"""The test API server's wire protocol, checked with the standard library's
HTTP client so that its behaviour does not depend on the client under test."""
from __future__ import annotations

import http.client
import json
import socket
import time

import pytest

from tests.support.apiserver import DEFAULT_TOKEN, PodApiServer, make_pod, start_container

AUTH = {"Authorization": f"Bearer {DEFAULT_TOKEN}"}


@pytest.fixture
def server():
    with PodApiServer() as srv:
        yield srv


def get(srv, path, headers=AUTH):
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
    conn.request("GET", path, headers=headers)
    resp = conn.getresponse()
    return resp, conn


def read_events(resp, n):
    events = []
    for _ in range(n):
        line = resp.readline()
        assert line, f"stream ended after {events}"
        events.append(json.loads(line))
    return events


def test_list_filters_by_node_and_carries_resource_version(server):
    a = server.add_pod(make_pod("a", node="node-a"))
    server.add_pod(make_pod("b", node="node-b"))
    resp, conn = get(server, "/api/v1/pods?fieldSelector=spec.nodeName%3Dnode-a")
    body = json.loads(resp.read())
    conn.close()
    assert resp.status == 200
    assert resp.getheader("Content-Type") == "application/json"
    assert body["kind"] == "PodList"
    assert body["metadata"]["resourceVersion"] == str(server.resource_version) == "3"
    assert [p["metadata"]["uid"] for p in body["items"]] == [a["metadata"]["uid"]]


def test_watch_replays_history_then_streams_live_changes(server):
    a = make_pod("a", node="node-a")
    server.add_pod(a)
    rv = server.resource_version
    uid = a["metadata"]["uid"]
    server.modify_pod(uid, lambda p: start_container(p, "app", "c" * 64))
    resp, conn = get(server, f"/api/v1/pods?watch=true&resourceVersion={rv}"
                             "&fieldSelector=spec.nodeName%3Dnode-a&allowWatchBookmarks=true")
    assert resp.status == 200
    assert resp.getheader("Transfer-Encoding") == "chunked"
    [ev] = read_events(resp, 1)
    assert ev["type"] == "MODIFIED"
    assert ev["object"]["status"]["containerStatuses"][0]["containerID"] == "containerd://" + "c" * 64
    server.bookmark()
    server.delete_pod(uid)
    bm, deleted = read_events(resp, 2)
    assert bm == {"type": "BOOKMARK", "object": {"kind": "Pod", "apiVersion": "v1",
                                                 "metadata": {"resourceVersion": str(rv + 1)}}}
    assert deleted["type"] == "DELETED" and deleted["object"]["metadata"]["resourceVersion"] == str(rv + 2)
    server.end_watches()
    assert resp.readline() == b""  # clean end of the chunked stream
    conn.close()


def test_no_bookmarks_unless_asked_and_node_moves_become_added(server):
    resp, conn = get(server, "/api/v1/pods?watch=true&resourceVersion=1&fieldSelector=spec.nodeName%3Dnode-a")
    time.sleep(0.1)  # let the handler subscribe
    server.bookmark()
    pending = make_pod("p", node="")  # not scheduled yet: outside the selection
    server.add_pod(pending)
    server.modify_pod(pending["metadata"]["uid"], lambda p: p["spec"].update(nodeName="node-a"))
    [ev] = read_events(resp, 1)
    assert ev["type"] == "ADDED" and ev["object"]["metadata"]["name"] == "p"
    conn.close()


@pytest.mark.parametrize("mode", ["event", "status"])
def test_too_old_version_is_gone(mode):
    with PodApiServer(gone_mode=mode) as server:
        server.add_pod(make_pod("a"))
        server.compact()
        resp, conn = get(server, "/api/v1/pods?watch=true&resourceVersion=1")
        if mode == "status":
            assert resp.status == 410
            body = json.loads(resp.read())
        else:
            assert resp.status == 200
            [ev] = read_events(resp, 1)
            assert ev["type"] == "ERROR"
            body = ev["object"]
            assert resp.readline() == b""
        conn.close()
        assert body["kind"] == "Status" and body["code"] == 410 and body["reason"] == "Expired"
        # the current version is still fine
        resp, conn = get(server, f"/api/v1/pods?watch=true&resourceVersion={server.resource_version}")
        assert resp.status == 200
        conn.close()


def test_wrong_token_is_401(server):
    resp, conn = get(server, "/api/v1/pods", headers={"Authorization": "Bearer nope"})
    assert resp.status == 401 and json.loads(resp.read())["code"] == 401
    conn.close()


def raw_watch(srv) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
    sock.sendall(b"GET /api/v1/pods?watch=true&resourceVersion=1 HTTP/1.1\r\nHost: x\r\n"
                 b"Authorization: Bearer " + DEFAULT_TOKEN.encode() + b"\r\n\r\n")
    return sock


def read_to_eof(sock) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_end_watches_sends_the_chunked_terminator(server):
    sock = raw_watch(server)
    time.sleep(0.1)
    server.end_watches()
    data = read_to_eof_or_terminator(sock)
    sock.close()
    assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"\r\n0\r\n\r\n")


def read_to_eof_or_terminator(sock) -> bytes:
    data = b""
    while not data.endswith(b"\r\n0\r\n\r\n"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_stop_cuts_streams_refuses_connections_and_start_reuses_the_port(server):
    port = server.port
    sock = raw_watch(server)
    time.sleep(0.1)
    server.stop()
    data = read_to_eof(sock)  # returns: the server closed the connection
    sock.close()
    assert data.startswith(b"HTTP/1.1 200") and not data.endswith(b"0\r\n\r\n")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1)
    server.start()
    assert server.port == port
    resp, conn = get(server, "/version")
    assert resp.status == 200 and json.loads(resp.read())["major"] == "1"
    conn.close()


def test_counts_requests_and_injects_delay(server):
    server.set_delay(0.3, "list")
    t = time.monotonic()
    resp, conn = get(server, "/api/v1/pods")
    resp.read()
    conn.close()
    assert time.monotonic() - t >= 0.3
    resp, conn = get(server, "/api")
    resp.read()
    conn.close()
    assert server.requests("list") == 1 and server.requests("api") == 1
    assert server.requests("watch") == 0


def test_unsupported_field_selector_is_400(server):
    resp, conn = get(server, "/api/v1/pods?fieldSelector=metadata.name%3Dx")
    assert resp.status == 400 and "spec.nodeName" in json.loads(resp.read())["message"]
    conn.close()
