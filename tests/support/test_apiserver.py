"""The test API server's wire protocol, checked with the standard library's
HTTP client so that its behaviour does not depend on the client under test."""
from __future__ import annotations

import http.client
import json
import socket
import time

import pytest

from tests.support.apiserver import (DEFAULT_TOKEN, PodApiServer, make_node, make_pod, make_service,
                                     start_container)

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


def test_services_and_nodes_list_and_watch_on_one_version_sequence(server):
    svc = server.add_service(make_service("web", "shop", ["10.96.0.10", "fd00::10"], [80, (53, "UDP")]))
    node = server.add_node(make_node("node-a", ["10.0.0.1", ("ExternalIP", "203.0.113.1")], zone="zone-a"))
    server.add_pod(make_pod("p"))
    assert server.resource_version == 4  # one sequence across resources, as in etcd
    resp, conn = get(server, "/api/v1/services")
    body = json.loads(resp.read())
    conn.close()
    assert body["kind"] == "ServiceList" and body["metadata"]["resourceVersion"] == "4"
    [item] = body["items"]
    assert item["spec"]["clusterIPs"] == ["10.96.0.10", "fd00::10"] and item["spec"]["clusterIP"] == "10.96.0.10"
    assert [(p["port"], p["protocol"]) for p in item["spec"]["ports"]] == [(80, "TCP"), (53, "UDP")]
    resp, conn = get(server, "/api/v1/nodes")
    [item] = json.loads(resp.read())["items"]
    conn.close()
    assert item["metadata"]["labels"]["topology.kubernetes.io/zone"] == "zone-a"
    assert item["status"]["addresses"] == [{"type": "InternalIP", "address": "10.0.0.1"},
                                           {"type": "ExternalIP", "address": "203.0.113.1"},
                                           {"type": "Hostname", "address": "node-a"}]

    # a node watch sees node changes only, and node bookmarks
    resp, conn = get(server, "/api/v1/nodes?watch=true&resourceVersion=1&allowWatchBookmarks=true")
    [added] = read_events(resp, 1)  # history after 1: the node (not the service or pod)
    assert added["type"] == "ADDED" and added["object"]["metadata"]["uid"] == node["metadata"]["uid"]
    server.modify_service(svc["metadata"]["uid"], lambda s: s["spec"].update(clusterIPs=["10.96.0.11"]))
    server.modify_node(node["metadata"]["uid"],
                       lambda n: n["metadata"]["labels"].update({"topology.kubernetes.io/zone": "zone-b"}))
    server.bookmark()
    server.delete_node(node["metadata"]["uid"])
    modified, bm, deleted = read_events(resp, 3)
    assert modified["type"] == "MODIFIED" and modified["object"]["metadata"]["resourceVersion"] == "6"
    assert modified["object"]["metadata"]["labels"]["topology.kubernetes.io/zone"] == "zone-b"
    assert bm == {"type": "BOOKMARK", "object": {"kind": "Node", "apiVersion": "v1",
                                                 "metadata": {"resourceVersion": "6"}}}
    assert deleted["type"] == "DELETED" and deleted["object"]["metadata"]["resourceVersion"] == "7"
    conn.close()
    assert server.requests("service-list") == 1 and server.requests("node-list") == 1
    assert server.requests("node-watch") == 1 and server.requests("watch") == 0
    assert server.watch_requests("nodes")[0]["resourceVersion"] == "1" and server.watch_requests() == []
    assert server.services()[0]["spec"]["clusterIPs"] == ["10.96.0.11"] and server.nodes() == []


def test_made_objects_carry_ips_host_network_and_service_kinds():
    pod = make_pod("p", ips=["10.244.0.5", "fd00::5"], host_network=True, phase="Running")
    assert pod["status"]["podIP"] == "10.244.0.5"
    assert pod["status"]["podIPs"] == [{"ip": "10.244.0.5"}, {"ip": "fd00::5"}]
    assert pod["spec"]["hostNetwork"] is True and pod["status"]["phase"] == "Running"
    plain = make_pod("q")
    assert "podIPs" not in plain["status"] and "hostNetwork" not in plain["spec"]
    assert plain["status"]["phase"] == "Pending"
    headless = make_service("h", cluster_ips=["None"])
    assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["ipFamilies"] == []
    ext = make_service("e", external_name="db.example.com")
    assert ext["spec"]["type"] == "ExternalName" and "clusterIP" not in ext["spec"]
    assert make_node("n", ["fd00::1"])["metadata"]["labels"].get("topology.kubernetes.io/zone") is None


def test_field_selector_only_on_pods(server):
    resp, conn = get(server, "/api/v1/services?fieldSelector=spec.nodeName%3Dnode-a")
    assert resp.status == 400 and "on services" in json.loads(resp.read())["message"]
    conn.close()


def test_paged_list_serves_one_snapshot_then_expires(server):
    uids = [server.add_pod(make_pod(f"p{i}", namespace="ns"))["metadata"]["uid"] for i in range(5)]
    rv = server.resource_version
    resp, conn = get(server, "/api/v1/pods?limit=2")
    first = json.loads(resp.read())
    assert [p["metadata"]["name"] for p in first["items"]] == ["p0", "p1"]
    assert first["metadata"]["resourceVersion"] == str(rv) and first["metadata"]["remainingItemCount"] == 3
    server.add_pod(make_pod("p2a", namespace="ns"))  # after the snapshot: not in its pages
    server.delete_pod(uids[4])
    conn.request("GET", f"/api/v1/pods?limit=2&continue={first['metadata']['continue']}", headers=AUTH)
    second = json.loads(conn.getresponse().read())
    conn.request("GET", f"/api/v1/pods?limit=2&continue={second['metadata']['continue']}", headers=AUTH)
    third = json.loads(conn.getresponse().read())
    assert [p["metadata"]["name"] for p in second["items"] + third["items"]] == ["p2", "p3", "p4"]
    assert "continue" not in third["metadata"] and third["metadata"]["resourceVersion"] == str(rv)
    # a token from before a compaction is gone
    conn.request("GET", "/api/v1/pods?limit=2", headers=AUTH)
    token = json.loads(conn.getresponse().read())["metadata"]["continue"]
    server.advance()  # etcd moved on and compacted past the snapshot
    server.compact()
    conn.request("GET", f"/api/v1/pods?limit=2&continue={token}", headers=AUTH)
    resp = conn.getresponse()
    body = json.loads(resp.read())
    assert resp.status == 410 and body["reason"] == "Expired"
    # and with continues_expire every token is
    server.continues_expire = True
    conn.request("GET", "/api/v1/pods?limit=2", headers=AUTH)
    token = json.loads(conn.getresponse().read())["metadata"]["continue"]
    conn.request("GET", f"/api/v1/pods?limit=2&continue={token}", headers=AUTH)
    resp = conn.getresponse()
    resp.read()
    assert resp.status == 410
    conn.close()


def test_deny_answers_403_for_that_kind_only(server):
    server.deny("node-watch")
    resp, conn = get(server, "/api/v1/nodes?watch=true&resourceVersion=1")
    body = json.loads(resp.read())
    conn.close()
    assert resp.status == 403 and body["reason"] == "Forbidden" and '"nodes"' in body["message"]
    resp, conn = get(server, "/api/v1/nodes")
    assert resp.status == 200
    resp.read()
    conn.close()
    server.allow("node-watch")
    resp, conn = get(server, "/api/v1/nodes?watch=true&resourceVersion=1")
    assert resp.status == 200
    conn.close()


def test_ten_thousand_pods_in_one_list_quickly(server):
    pod = make_pod("template", owner=("ReplicaSet", "web-abc"), labels={"app": "web"},
                   containers=[("app", "registry.example/app:1"), ("sidecar", "envoy:1.30")])
    pods = []
    for i in range(10_000):
        p = json.loads(json.dumps(pod))
        p["metadata"].update(name=f"web-abc-{i:05d}", uid=f"uid-{i}")
        pods.append(p)
    server.add_pods(pods)
    t = time.monotonic()
    resp, conn = get(server, "/api/v1/pods")
    body = json.loads(resp.read())
    conn.close()
    elapsed = time.monotonic() - t
    assert len(body["items"]) == 10_000 and body["items"][9_999]["metadata"]["name"] == "web-abc-09999"
    assert elapsed < 2.0, elapsed  # objects are serialised once, when stored
