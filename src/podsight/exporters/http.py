"""HTTP endpoints: /metrics, /healthz, /readyz (and its strict form, /readyz?strict)."""
from __future__ import annotations

import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable
from urllib.parse import parse_qs, urlsplit

from .page import Body
from .textformat import CONTENT_TYPE

__all__ = ["MetricsServer", "accepts_gzip"]

log = logging.getLogger("podsight.http")


def accepts_gzip(header: str | None) -> bool:
    """Whether an Accept-Encoding value allows gzip (``gzip;q=0`` refuses it)."""
    for part in (header or "").split(","):
        coding, _, params = part.strip().partition(";")
        if coding.strip().lower() in ("gzip", "x-gzip"):
            q = params.strip().lower()
            return not (q.startswith("q=") and q[2:].strip().rstrip("0").rstrip(".") in ("", "0"))
    return False


def _strict(query: str) -> bool | None:
    """Whether /readyz was asked in its strict form; None for a value it does not know."""
    values = parse_qs(query, keep_blank_values=True).get("strict")
    if values is None:
        return False
    return {"": True, "1": True, "true": True, "0": False, "false": False}.get(values[-1].lower())


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class MetricsServer:
    """Serves ``render(gzip)`` at /metrics, gzip-encoded when the client
    accepts it (every Prometheus does).  ``readiness()`` and ``liveness()``
    return (ok, message).

    - /healthz: 503 when a background thread of the agent stopped making
      progress (not only when HTTP is down); the kubelet restarts the pod.
    - /readyz: 503 until the probes are attached, then 200.  While degraded
      (``readiness()`` says ok with a message starting ``degraded``: a probe
      unavailable, the Kubernetes API unreachable) it stays 200 with that
      message: the metrics are still worth scraping, degraded can last
      (a kernel without a tracepoint), and a pod failing readiness stalls the
      DaemonSet's rolling update and ``helm --wait`` and drops out of
      Services that do not publish not-ready addresses.  The chart's
      readinessProbe uses this form.
    - /readyz?strict (also ``strict=1`` / ``strict=true``): the same body, but
      503 when degraded too, so 200 means every part is up; for smoke tests
      (``curl -f``), never for the kubelet.  ``strict=0`` / ``false`` is the
      lenient form; any other value is a 400, so a typo cannot pass a check.
    """

    def __init__(self, host: str, port: int, render: Callable[[bool], Body],
                 readiness: Callable[[], tuple[bool, str]],
                 liveness: Callable[[], tuple[bool, str]] = lambda: (True, "ok")):
        render_ = render
        readiness_ = readiness
        liveness_ = liveness

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server API)
                url = urlsplit(self.path)
                path = url.path
                if path == "/metrics":
                    gzip = accepts_gzip(self.headers.get("Accept-Encoding"))
                    try:
                        body = render_(gzip)
                    except Exception as e:  # a broken scrape must say why, not hang up
                        log.exception("scrape failed")
                        self._send(500, f"scrape failed: {e}\n".encode(), "text/plain")
                        return
                    self._send(200, body, CONTENT_TYPE, {"Content-Encoding": "gzip"} if gzip else {})
                elif path == "/healthz":
                    alive, msg = liveness_()
                    self._send(200 if alive else 503, (msg + "\n").encode(), "text/plain")
                elif path == "/readyz":
                    strict = _strict(url.query)
                    if strict is None:
                        self._send(400, b"strict: one of 1, true, 0, false (or no value)\n", "text/plain")
                        return
                    ready, msg = readiness_()
                    if strict and msg.startswith("degraded"):
                        ready = False
                    self._send(200 if ready else 503, (msg + "\n").encode(), "text/plain")
                elif path == "/":
                    self._send(200, b"podsight: see /metrics, /healthz, /readyz, /readyz?strict\n", "text/plain")
                else:
                    self._send(404, b"not found\n", "text/plain")

            def _send(self, code: int, body: bytes | Body, ctype: str, headers: dict | None = None) -> None:
                chunks = Body(chunks=[body]) if isinstance(body, bytes) else body
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                if ctype == CONTENT_TYPE:
                    self.send_header("Vary", "Accept-Encoding")
                self.send_header("Content-Length", str(chunks.size))
                self.end_headers()
                # A page is hundreds of pieces: a few large writes, not a syscall each.
                batch, size = [], 0
                for chunk in chunks:
                    batch.append(chunk)
                    size += len(chunk)
                    if size >= 1 << 18:
                        self.wfile.write(b"".join(batch))
                        batch, size = [], 0
                if batch:
                    self.wfile.write(b"".join(batch))

            def log_message(self, fmt: str, *args) -> None:
                log.debug("%s " + fmt, self.client_address[0], *args)

        server_cls = _Server6 if ":" in host else _Server
        self.httpd = server_cls((host, port), Handler)
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="podsight-http", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

