"""The HTTP output against a real local receiver (http.server in a thread)
that answers, fails (500), refuses (400), stalls past the timeout, and
recovers: what it accepts arrives once, every event it does not is counted
once under its reason and kind, the caller never waits, and close() is
bounded."""
from __future__ import annotations

import base64
import json
import logging
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

from podsight.config import ConfigError, load_config
from podsight.exporters.event_output import EventOutput
from podsight.exporters.http_output import FAILED, QUEUE_FULL, HttpOutput


class Receiver:
    """mode: "ok" (200), "fail" (500), "refuse" (400), "stall" (answers 200 after ``stall`` seconds)."""

    def __init__(self, mode: str = "ok", stall: float = 1.0, protocol: str = "HTTP/1.0"):
        self.mode, self.stall = mode, stall
        self.requests: list[tuple[str, dict, bytes, int]] = []  # (path, headers, body, status answered)
        self.started = threading.Event()  # a request came in (set before any stall)
        self.lock = threading.Lock()
        rec = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = protocol

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                mode = rec.mode
                rec.started.set()
                if mode == "stall":
                    time.sleep(rec.stall)
                status = {"ok": 200, "fail": 500, "refuse": 400, "stall": 200}[mode]
                with rec.lock:  # a stalled request is not accepted: the client gave up before the answer
                    rec.requests.append((self.path, dict(self.headers), body, 0 if mode == "stall" else status))
                payload = b"{}"
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:
                    pass  # the client gave up waiting

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def accepted(self) -> list[bytes]:
        """Bodies of requests answered 2xx (stalls here always outlast the client's timeout: not accepted)."""
        with self.lock:
            return [body for _, _, body, status in self.requests if 200 <= status < 300]

    def events(self) -> list[dict]:
        out = []
        for body in self.accepted():
            out.extend(json.loads(line) for line in body.decode().splitlines())
        return out

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    recs = []

    def make(*args, **kwargs):
        r = Receiver(*args, **kwargs)
        recs.append(r)
        return r

    yield make
    for r in recs:
        r.close()


def line(i: int, kind: str = "open") -> str:
    return json.dumps({"n": i, "event": kind}, separators=(",", ":"))


def wait_for(cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


def total(drops: dict) -> int:
    return sum(drops.values())


def test_one_event_per_post_as_a_json_object_with_the_configured_headers(receiver):
    rec = receiver()
    out = HttpOutput(rec.url + "falco", {"Authorization": "Bearer s3cr3t", "X-Tenant": "a"}, batch=1, timeout=2)
    for i in range(5):
        assert out.offer("exec" if i % 2 else "open", line(i))
    assert wait_for(lambda: out.delivered() == 5)
    out.close(2)
    assert len(rec.requests) == 5
    for path, headers, body, _ in rec.requests:
        assert path == "/falco"
        assert headers["Content-Type"] == "application/json"
        assert headers["Authorization"] == "Bearer s3cr3t" and headers["X-Tenant"] == "a"
        assert isinstance(json.loads(body), dict)  # one object, not an array: what Falcosidekick decodes
    assert sorted(e["n"] for e in rec.events()) == list(range(5))
    assert out.dropped() == {}


def test_batches_are_newline_delimited_json(receiver):
    rec = receiver()
    out = HttpOutput(rec.url, batch=10, timeout=2, start=False)  # all queued before the sender starts
    out.offer_many((("connect", line(i)) for i in range(25)))
    out._thread.start()
    assert wait_for(lambda: out.delivered() == 25)
    out.close(2)
    assert [len(body.decode().splitlines()) for body in rec.accepted()] == [10, 10, 5]
    for _, headers, body, _ in rec.requests:
        assert headers["Content-Type"] == "application/x-ndjson" and body.endswith(b"\n")
    assert [e["n"] for e in rec.events()] == list(range(25))  # in order, each once


def test_a_failing_receiver_costs_counted_events_and_later_ones_arrive(receiver):
    rec = receiver("fail")
    out = HttpOutput(rec.url, batch=1, timeout=2, max_attempts=3, backoff=0.01)
    out.offer("open", line(0))
    out.offer("exec", line(1))
    assert wait_for(lambda: total(out.dropped()) == 2)
    assert out.dropped() == {(FAILED, "open"): 1, (FAILED, "exec"): 1}
    assert len(rec.requests) == 6  # three attempts each, then given up
    rec.mode = "ok"  # the receiver recovers
    for i in range(2, 6):
        out.offer("open", line(i))
    assert wait_for(lambda: out.delivered() == 4)
    out.close(2)
    assert sorted(e["n"] for e in rec.events()) == [2, 3, 4, 5]
    assert out.dropped() == {(FAILED, "open"): 1, (FAILED, "exec"): 1}  # nothing more


def test_a_receiver_that_recovers_between_attempts_loses_nothing(receiver):
    rec = receiver("fail")
    out = HttpOutput(rec.url, batch=1, timeout=2, max_attempts=5, backoff=0.2)
    out.offer("open", line(0))
    assert wait_for(lambda: len(rec.requests) >= 1)
    rec.mode = "ok"
    assert wait_for(lambda: out.delivered() == 1)
    out.close(2)
    assert out.dropped() == {} and [e["n"] for e in rec.events()] == [0]


def test_a_refusal_is_not_retried(receiver):
    rec = receiver("refuse")
    out = HttpOutput(rec.url, batch=1, timeout=2, max_attempts=5, backoff=0.01)
    out.offer("chmod", line(0))
    assert wait_for(lambda: out.dropped() == {(FAILED, "chmod"): 1})
    out.close(1)
    assert len(rec.requests) == 1


def test_a_stalled_receiver_never_blocks_the_caller_and_drops_are_exact(receiver):
    rec = receiver("stall", stall=1.5)
    out = HttpOutput(rec.url, batch=1, timeout=0.3, max_queue=100, max_attempts=2, backoff=0.05)
    out.offer("open", line(0))
    assert rec.started.wait(5)  # the sender holds event 0 and waits on the receiver
    t0 = time.monotonic()
    kept = sum(out.offer("exec" if i % 2 else "open", line(i)) for i in range(1, 1001))
    elapsed = time.monotonic() - t0
    assert elapsed < 0.5, f"1000 offers took {elapsed:.2f}s while the receiver stalled"
    # The queue holds 100 (event 0 is in flight): the other 900 are counted at once, by kind.
    assert kept == 100
    assert out.dropped() == {(QUEUE_FULL, "exec"): 450, (QUEUE_FULL, "open"): 450}
    # Event 0 times out twice (0.3 s each, 0.05 s between) and is counted; then the receiver recovers.
    assert wait_for(lambda: (FAILED, "open") in out.dropped(), timeout=5)
    rec.mode = "ok"  # what is queued arrives
    assert wait_for(lambda: out.delivered() == 100, timeout=20)
    out.close(2)
    assert out.dropped() == {(QUEUE_FULL, "exec"): 450, (QUEUE_FULL, "open"): 450, (FAILED, "open"): 1}
    got = sorted(e["n"] for e in rec.events())
    assert got == list(range(1, 101))
    assert out.delivered() + total(out.dropped()) == 1001  # every event: delivered or counted, once


def test_close_flushes_what_it_can_within_its_bound(receiver):
    rec = receiver()
    out = HttpOutput(rec.url, batch=50, timeout=2, start=False)
    out.offer_many(("open", line(i)) for i in range(500))
    out._thread.start()
    out.close(5)
    assert out.delivered() == 500 and out.dropped() == {}
    assert out.offer("open", line(999)) is False  # closed: counted, never queued
    assert out.dropped() == {(QUEUE_FULL, "open"): 1}


def test_close_against_a_stalled_receiver_returns_in_time_and_counts_the_rest(receiver):
    rec = receiver("stall", stall=5)
    out = HttpOutput(rec.url, batch=1, timeout=3, max_attempts=3, backoff=0.1)
    out.offer_many(("exec", line(i)) for i in range(20))
    assert rec.started.wait(5)
    t0 = time.monotonic()
    out.close(0.5)  # the request in flight waits up to 3 s for its answer: cut off at the deadline
    took = time.monotonic() - t0
    assert 0.5 <= took < 0.95, f"close took {took:.2f}s"  # the bound: timeout + 0.5 s
    assert not out._thread.is_alive()
    assert out.delivered() == 0 and out.dropped() == {(FAILED, "exec"): 20}


def test_close_cuts_a_retry_backoff_short(receiver):
    rec = receiver("fail")
    out = HttpOutput(rec.url, batch=1, timeout=2, max_attempts=3, backoff=5)
    out.offer("ptrace", line(0))
    assert wait_for(lambda: len(rec.requests) == 1)  # failed once; the sender now waits 5 s to retry
    t0 = time.monotonic()
    out.close(0.5)
    assert time.monotonic() - t0 < 0.95 and not out._thread.is_alive()
    assert out.dropped() == {(FAILED, "ptrace"): 1} and out.delivered() == 0


def test_url_credentials_become_basic_auth_and_secrets_are_not_logged(receiver, caplog):
    rec = receiver("refuse")
    out = HttpOutput(rec.url.replace("http://", "http://bob:pa%20ss@"), {"X-Api-Key": "k3y-s3cr3t"}, timeout=2)
    with caplog.at_level(logging.WARNING, logger="podsight.security"):
        out.offer("open", line(0))
        assert wait_for(lambda: total(out.dropped()) == 1)
        out.close(1)
    headers = rec.requests[0][1]
    assert headers["Authorization"] == "Basic " + base64.b64encode(b"bob:pa ss").decode()
    assert "refused" in caplog.text and "HTTP 400" in caplog.text
    assert "k3y-s3cr3t" not in caplog.text and "pa ss" not in caplog.text and "bob" not in caplog.text


def test_keep_alive_connections_are_reused(receiver):
    rec = receiver(protocol="HTTP/1.1")
    out = HttpOutput(rec.url, batch=1, timeout=2)
    for i in range(3):
        out.offer("open", line(i))
        assert wait_for(lambda: out.delivered() == i + 1)
    out.close(2)
    assert out.dropped() == {} and len(rec.requests) == 3


def test_event_output_writes_streams_and_offers_each_line_with_its_kind(receiver, tmp_path):
    import io
    rec = receiver("refuse")
    stream = io.StringIO()
    http = HttpOutput(rec.url, timeout=2)
    out = EventOutput([stream], str(tmp_path / "events.jsonl"), http)
    out.write_lines([line(0, "exec"), line(1, "ptrace")], ["exec", "ptrace"])
    out.write_lines([], [])
    assert stream.getvalue() == line(0, "exec") + "\n" + line(1, "ptrace") + "\n"
    assert wait_for(lambda: total(out.dropped()) == 2)
    out.close(1)
    assert out.dropped() == {(FAILED, "exec"): 1, (FAILED, "ptrace"): 1}
    assert (tmp_path / "events.jsonl").read_text() == stream.getvalue()
    assert EventOutput([io.StringIO()]).dropped() == {}


def test_event_output_from_config(tmp_path):
    cfg = load_config(None, env={})
    assert EventOutput.from_config(False, "", cfg.security.output.http).http is None  # no url: no HTTP output
    cfg = load_config(None, env={"PODSIGHT_SECURITY__OUTPUT__HTTP__URL": "http://127.0.0.1:9/x?y=1",
                                 "PODSIGHT_SECURITY__OUTPUT__HTTP__BATCH": "20",
                                 "PODSIGHT_SECURITY__OUTPUT__HTTP__RETRY": "{max_attempts: 4, backoff: 250ms}",
                                 "PODSIGHT_SECURITY__OUTPUT__HTTP__HEADERS": "{Authorization: Bearer x}"})
    out = EventOutput.from_config(False, "", cfg.security.output.http)
    h = out.http
    assert (h.batch, h.max_attempts, h.backoff, h.timeout, h.max_queue, h._path) == (20, 4, 0.25, 5.0, 10000, "/x?y=1")
    assert h._headers["Authorization"] == "Bearer x"
    out.close(0)


# -- security.output.http in the config: errors name the key ---------------------------------------

@pytest.mark.parametrize("http, needle", [
    ({"url": "ftp://x/"}, "security.output.http.url: expected an http:// or https:// URL, got 'ftp://x/'"),
    ({"url": "http://bob:hunter2@/x"}, "security.output.http.url: expected an http:// or https:// URL, got 'http://***@/x'"),
    ({"url": "http://a b/"}, "security.output.http.url: expected an http:// or https:// URL"),
    ({"url": "http://a:99999/"}, "security.output.http.url: expected an http:// or https:// URL"),
    ({"batch": 0}, "security.output.http.batch: expected an integer from 1 to 10000, got 0"),
    ({"timeout": "0s"}, "security.output.http.timeout: expected a duration above 0"),
    ({"timeout": "soon"}, "security.output.http.timeout: expected a duration like 30s"),
    ({"batch": 50, "max_queue": 10}, "security.output.http.max_queue: expected at least batch (50) events, got 10"),
    ({"retry": {"max_attempts": 0}}, "security.output.http.retry.max_attempts: expected an integer from 1 to 100, got 0"),
    ({"retry": {"backoff": -1}}, "security.output.http.retry.backoff: expected a duration of 0 or more"),
    ({"retry": {"tries": 3}}, "security.output.http.retry.tries: unknown key"),
    ({"headers": ["a", "b"]}, "security.output.http.headers: expected a mapping of names to strings"),
    ({"headers": {"bad name": "x"}}, "security.output.http.headers.bad name: expected an HTTP header name"),
    ({"headers": {"X-A": "a\nhunter2"}}, "security.output.http.headers.X-A: expected a header value without line breaks"),
    ({"headers": {"X-A": {"b": "c"}}}, "security.output.http.headers.X-A: expected a string"),
])
def test_http_config_errors_name_the_key(tmp_path, http, needle):
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump({"security": {"output": {"http": http}}}))
    with pytest.raises(ConfigError, match=re.escape(needle)) as err:
        load_config(f, env={})
    assert "hunter2" not in str(err.value)  # a password or a header value is never repeated
    assert re.match(re.escape(str(f)) + r":\d+: ", str(err.value))  # and where


def test_http_config_defaults_and_a_full_section(tmp_path):
    http = load_config(None, env={}).security.output.http
    assert (http.url, http.headers, http.batch, http.timeout, http.max_queue, http.retry.max_attempts,
            http.retry.backoff) == ("", {}, 1, 5.0, 10000, 3, 1.0)
    f = tmp_path / "c.yaml"
    f.write_text("security:\n  output:\n    format: falco\n    http:\n      url: https://sidekick.falco:2801/\n"
                 "      headers: {Authorization: Bearer abc, X-Count: 3}\n      batch: 1\n      timeout: 2s\n"
                 "      max_queue: 500\n      retry: {max_attempts: 5, backoff: 100ms}\n")
    out = load_config(f, env={}).security.output
    assert out.format == "falco" and out.http.headers == {"Authorization": "Bearer abc", "X-Count": "3"}
    assert (out.http.timeout, out.http.max_queue, out.http.retry.max_attempts, out.http.retry.backoff) == (
        2.0, 500, 5, pytest.approx(0.1))
