"""A local Alertmanager webhook receiver for the end-to-end tests.

A real HTTP server (stdlib, 127.0.0.1, ephemeral port) that accepts the
JSON documents Alertmanager's `webhook_configs` POST (version 4 payload) and
records them by URL path, so a test can ask "did alert X reach receiver Y".
"""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class WebhookReceiver:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._posts: list[tuple[str, dict]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server API)
                length = int(self.headers.get("Content-Length", "0"))
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw)
                except ValueError:
                    self.send_response(400)
                    self.end_headers()
                    return
                with receiver._lock:
                    receiver._posts.append((self.path, body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass  # keep test output clean; posts are kept in memory

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> "WebhookReceiver":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def posts(self) -> list[tuple[str, dict]]:
        with self._lock:
            return list(self._posts)

    def alerts(self, path: str | None = None) -> list[tuple[str, dict]]:
        """(receiver path, alert) for every alert of every notification."""
        return [(p, a) for p, body in self.posts() if path in (None, p) for a in body.get("alerts", [])]

    def wait_for_alert(self, alertname: str, timeout: float, status: str = "firing",
                       labels: dict | None = None) -> tuple[str, dict] | None:
        """First (path, alert) with this alertname and status (and these
        label values, when given), or None on timeout."""
        want = {"alertname": alertname, **(labels or {})}
        deadline = time.monotonic() + timeout
        while True:
            for path, alert in self.alerts():
                got = alert.get("labels", {})
                if alert.get("status") == status and all(got.get(k) == v for k, v in want.items()):
                    return path, alert
            if time.monotonic() > deadline:
                return None
            time.sleep(0.2)

    def summary(self) -> str:
        lines = [f"{p}: {a.get('status')} {a.get('labels')}" for p, a in self.alerts()]
        return "\n".join(lines) or "(nothing received)"
