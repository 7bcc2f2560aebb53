"""The HTTP endpoints in-process: gzip when asked (as every Prometheus asks),
plain otherwise, and a failing scrape that says why."""
from __future__ import annotations

import gzip
import http.client

import pytest

from podsight.exporters.http import MetricsServer, accepts_gzip
from podsight.exporters.page import Body, Piece

PAGE = [b"# HELP a_total x\n# TYPE a_total counter\n", b'a_total{pod="p"} 1\n' * 500]


@pytest.mark.parametrize("header, want", [
    ("gzip", True), ("gzip, deflate, br", True), ("br;q=1.0, gzip;q=0.8, *;q=0.1", True), ("x-gzip", True),
    ("GZIP", True), ("identity", False), ("", False), (None, False), ("gzip;q=0", False), ("gzip;q=0.0", False),
    ("gzip;q=0.001", True), ("deflate", False),
])
def test_accepts_gzip(header, want):
    assert accepts_gzip(header) is want


@pytest.fixture
def server():
    calls = []

    def render(gz: bool) -> list[bytes]:
        calls.append(gz)
        return Body.gzip([Piece(p) for p in PAGE]) if gz else Body([Piece(p) for p in PAGE])

    srv = MetricsServer("127.0.0.1", 0, render, lambda: (True, "ready"))
    srv.start()
    yield srv, calls
    srv.stop()


def get(srv, path, headers=None):
    c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    c.request("GET", path, headers=headers or {})
    r = c.getresponse()
    body = r.read()
    c.close()
    return r, body


def test_metrics_gzip_when_asked(server):
    srv, calls = server
    r, body = get(srv, "/metrics", {"Accept-Encoding": "gzip"})
    assert r.status == 200 and r.getheader("Content-Encoding") == "gzip"
    assert r.getheader("Vary") == "Accept-Encoding"
    assert int(r.getheader("Content-Length")) == len(body)
    assert gzip.decompress(body) == b"".join(PAGE)
    assert calls == [True]


def test_metrics_plain_otherwise(server):
    srv, calls = server
    r, body = get(srv, "/metrics", {"Accept-Encoding": "gzip;q=0"})
    assert r.status == 200 and r.getheader("Content-Encoding") is None
    assert r.getheader("Content-Type").startswith("text/plain; version=0.0.4")
    assert body == b"".join(PAGE)
    assert calls == [False]


def test_a_failing_scrape_says_why():
    def render(gz):
        raise RuntimeError("map vanished")

    srv = MetricsServer("127.0.0.1", 0, render, lambda: (False, "starting"))
    srv.start()
    try:
        r, body = get(srv, "/metrics", {"Accept-Encoding": "gzip"})
        assert r.status == 500 and b"map vanished" in body and r.getheader("Content-Encoding") is None
        r, body = get(srv, "/readyz")
        assert r.status == 503 and body == b"starting\n"
        r, body = get(srv, "/healthz")
        assert r.status == 200
    finally:
        srv.stop()


def test_healthz_fails_when_the_agent_is_stuck():
    state = {"alive": (True, "ok")}
    srv = MetricsServer("127.0.0.1", 0, lambda gz: Body([]), lambda: (True, "ready"), lambda: state["alive"])
    srv.start()
    try:
        assert get(srv, "/healthz")[0].status == 200
        state["alive"] = (False, "stuck: sampler (12 s overdue)")
        r, body = get(srv, "/healthz")
        assert r.status == 503 and body == b"stuck: sampler (12 s overdue)\n"
        assert get(srv, "/metrics")[0].status == 200  # still scrapeable: liveness is the kubelet's call
    finally:
        srv.stop()


# (readiness() result, status of /readyz, status of /readyz?strict): the
# messages are the agent's own (podsight.runtime.AgentRuntime.readiness).
READINESS = [
    ((False, "starting: probes not attached yet"), 503, 503),
    ((True, "degraded: probes unavailable: network"), 200, 503),
    ((True, "degraded: kubernetes API unreachable, exporting with cgroup-derived labels"), 200, 503),
    ((True, "ready"), 200, 200),
]


@pytest.mark.parametrize("result, lenient, strict", READINESS)
def test_readyz_lenient_for_the_kubelet_strict_for_smoke_tests(result, lenient, strict):
    srv = MetricsServer("127.0.0.1", 0, lambda gz: Body([]), lambda: result)
    srv.start()
    try:
        body = (result[1] + "\n").encode()
        for path in ("/readyz?strict", "/readyz?strict=1", "/readyz?strict=true", "/readyz?strict=TRUE"):
            r, b = get(srv, path)
            assert (r.status, b) == (strict, body), path
        for path in ("/readyz", "/readyz?strict=0", "/readyz?strict=false", "/readyz?other=1"):
            r, b = get(srv, path)
            assert (r.status, b) == (lenient, body), path
    finally:
        srv.stop()


def test_readyz_refuses_an_unknown_strict_value(server):
    # A typo must not turn a smoke test's strict check into the lenient one.
    r, body = get(server[0], "/readyz?strict=yes")
    assert r.status == 400 and b"strict" in body
