"""HTTP endpoints: /metrics, /healthz, /readyz."""
from __future__ import annotations

import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable
from urllib.parse import urlsplit

from .textformat import CONTENT_TYPE

__all__ = ["MetricsServer"]

log = logging.getLogger("podsight.http")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class MetricsServer:
    """Serves ``render()`` at /metrics.  ``readiness()`` returns (ready, message).

    /readyz stays 200 while degraded (e.g. Kubernetes API unreachable): the
    metrics are still worth scraping, and failing readiness would take the
    pod out of the Service endpoints that Prometheus discovers it by.
    """

    def __init__(self, host: str, port: int, render: Callable[[], list[bytes]],
                 readiness: Callable[[], tuple[bool, str]]):
        render_ = render
        readiness_ = readiness

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server API)
                path = urlsplit(self.path).path
                if path == "/metrics":
                    try:
                        body = render_()
                    except Exception as e:  # a broken scrape must say why, not hang up
                        log.exception("scrape failed")
                        self._send(500, f"scrape failed: {e}\n".encode(), "text/plain")
                        return
                    self._send(200, body, CONTENT_TYPE)
                elif path == "/healthz":
                    self._send(200, b"ok\n", "text/plain")
                elif path == "/readyz":
                    ready, msg = readiness_()
                    self._send(200 if ready else 503, (msg + "\n").encode(), "text/plain")
                elif path == "/":
                    self._send(200, b"podsight: see /metrics, /healthz, /readyz\n", "text/plain")
                else:
                    self._send(404, b"not found\n", "text/plain")

            def _send(self, code: int, body: bytes | list[bytes], ctype: str) -> None:
                chunks = body if isinstance(body, list) else [body]
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(sum(map(len, chunks))))
                self.end_headers()
                for chunk in chunks:
                    self.wfile.write(chunk)

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

