"""Security event lines POSTed to a webhook (Falcosidekick, a SIEM's HTTP
input): a bounded in-memory queue and one sender thread.

``offer`` never blocks and never does I/O: it is called from the ring-buffer
reader thread.  When the queue is full the event is dropped and counted
(``http_queue_full``); the sender takes up to ``batch`` events per request
and tries each request up to ``max_attempts`` times, waiting ``backoff``,
then twice that, ... (at most 60 s) between attempts; a batch that still
fails, or that the receiver refuses outright (a 4xx other than 408 and 429),
is dropped and counted (``http_failed``).  Every event offered is, in the
end, delivered or counted once under one reason, by its kind:
``dropped()`` gives {(reason, event kind): n} like ``EventSink.dropped()``.

Bodies: with ``batch`` 1 one request carries one event, the JSON object
itself (``application/json``): what Falcosidekick (one Falco event per POST
at ``/``) and most webhooks take.  With ``batch`` > 1 a request carries up
to that many events as newline-delimited JSON (``application/x-ndjson``,
one object per line, a newline after each), for receivers that take NDJSON
(Vector, Fluent Bit, Logstash's ``json_lines``).

``close(timeout)`` stops taking events, sends what is queued until the
deadline (attempts are cut to it; a request already waiting on the receiver
is cut off at it), counts what is left as ``http_failed`` and returns within
``timeout`` plus at most half a second (only a connection attempt begun
before close, to a host that does not answer, can hold the sender longer,
up to the output's ``timeout``; close() does not wait for it).

Delivery is at least once: a request the receiver took but did not answer
in time is sent again.
"""
from __future__ import annotations

import base64
import collections
import http.client
import logging
import socket
import threading
import time
import urllib.parse
from typing import Callable, Iterable, Mapping

__all__ = ["HttpOutput", "QUEUE_FULL", "FAILED"]

log = logging.getLogger("podsight.security")

QUEUE_FULL, FAILED = "http_queue_full", "http_failed"
_MAX_BACKOFF = 60.0
_MAX_RESPONSE = 1 << 16  # bytes of an answer read; a longer one is not worth keeping the connection for
_LOG_EVERY = 60.0  # seconds between two warnings about failed requests


class _Refused(Exception):
    """The receiver answered with a status that no retry will change."""


class _Retry(Exception):
    """The receiver answered with a status worth another attempt."""


class HttpOutput:
    def __init__(
        self,
        url: str,
        headers: Mapping[str, str] | None = None,
        batch: int = 1,
        timeout: float = 5.0,
        max_queue: int = 10000,
        max_attempts: int = 3,
        backoff: float = 1.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        start: bool = True,
    ):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("expected an http:// or https:// URL")
        self._https = parts.scheme == "https"
        self._host, self._port = parts.hostname, parts.port
        self._path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._headers = {"User-Agent": "podsight", **dict(headers or {})}
        if parts.username is not None:  # user:pass@host: basic auth, unless a header says otherwise
            creds = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
            self._headers.setdefault("Authorization", "Basic " + base64.b64encode(creds.encode()).decode())
        self.batch = max(1, int(batch))
        self.timeout = float(timeout)
        self.max_queue = max(1, int(max_queue))
        self.max_attempts = max(1, int(max_attempts))
        self.backoff = max(0.0, float(backoff))
        self._clock = clock
        self._cond = threading.Condition()
        self._queue: collections.deque[tuple[str, str]] = collections.deque()  # (kind, line)
        self._drops: dict[tuple[str, str], int] = {}
        self._delivered = 0
        self._closing = False
        self._deadline = float("inf")
        self._wake = threading.Event()  # cuts a backoff short at close
        self._conn: http.client.HTTPConnection | None = None
        self._last_log = float("-inf")
        self._thread = threading.Thread(target=self._run, name="podsight-http-output", daemon=True)
        if start:
            self._thread.start()

    @classmethod
    def from_config(cls, cfg) -> "HttpOutput":
        """From ``config.HttpOutput`` (``security.output.http``)."""
        return cls(cfg.url, cfg.headers, cfg.batch, cfg.timeout, cfg.max_queue, cfg.retry.max_attempts,
                   cfg.retry.backoff)

    # -- the caller's side: never blocks on the network ------------------------------------------

    def offer(self, kind: str, line: str) -> bool:
        """Queue one event line (no newline); False when it was dropped (counted)."""
        with self._cond:
            if self._closing or len(self._queue) >= self.max_queue:
                self._count(QUEUE_FULL, kind, 1)
                return False
            self._queue.append((kind, line))
            if len(self._queue) == 1 or len(self._queue) >= self.batch:
                self._cond.notify()
            return True

    def offer_many(self, events: Iterable[tuple[str, str]]) -> None:
        """Queue (kind, line) pairs under one lock; those that do not fit are counted."""
        with self._cond:
            queue = self._queue
            for kind, line in events:
                if self._closing or len(queue) >= self.max_queue:
                    self._count(QUEUE_FULL, kind, 1)
                else:
                    queue.append((kind, line))
            if queue:
                self._cond.notify()

    def dropped(self) -> dict[tuple[str, str], int]:
        with self._cond:
            return dict(self._drops)

    def delivered(self) -> int:
        """Events the receiver accepted (a 2xx answer to their request)."""
        with self._cond:
            return self._delivered

    def queued(self) -> int:
        with self._cond:
            return len(self._queue)

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued for at most ``timeout`` seconds; the rest counts as http_failed."""
        with self._cond:
            if not self._closing:
                self._closing = True
                self._deadline = self._clock() + max(0.0, timeout)
            self._cond.notify()
        self._wake.set()
        if not self._thread.is_alive():  # never started (tests): nothing will send the rest
            with self._cond:
                self._fail_queue()
            return
        self._thread.join(max(0.0, timeout))
        if self._thread.is_alive():
            # A request sent before close() waits on the receiver: end its wait now.
            conn = self._conn
            sock = conn.sock if conn is not None else None
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self._thread.join(0.5)

    # -- the sender thread ------------------------------------------------------------------------

    def _count(self, reason: str, kind: str, n: int) -> None:
        """Under the lock."""
        key = (reason, kind)
        self._drops[key] = self._drops.get(key, 0) + n

    def _fail(self, batch: list[tuple[str, str]]) -> None:
        with self._cond:
            for kind, _ in batch:
                self._count(FAILED, kind, 1)

    def _fail_queue(self) -> None:
        """Under the lock: what is still queued at the deadline."""
        while self._queue:
            self._count(FAILED, self._queue.popleft()[0], 1)

    def _take(self) -> list[tuple[str, str]] | None:
        """The next batch; None when closing and nothing is left (or the deadline passed)."""
        with self._cond:
            while not self._queue and not self._closing:
                self._cond.wait()
            if self._closing and (not self._queue or self._clock() >= self._deadline):
                self._fail_queue()
                return None
            n = min(self.batch, len(self._queue))
            return [self._queue.popleft() for _ in range(n)]

    def _run(self) -> None:
        batch: list[tuple[str, str]] = []
        try:
            while True:
                batch = self._take() or []
                if not batch:
                    return
                self._send(batch)
                batch = []
        except Exception:  # a bug: this batch is lost, and from now on every event counts as http_queue_full
            log.exception("the security events HTTP output stopped")
            self._fail(batch)
            with self._cond:
                self._closing = True
                self._fail_queue()
        finally:
            self._disconnect()

    def _send(self, batch: list[tuple[str, str]]) -> None:
        if self.batch == 1:
            body, ctype = batch[0][1].encode(), "application/json"
        else:
            body, ctype = ("\n".join(line for _, line in batch) + "\n").encode(), "application/x-ndjson"
        for attempt in range(1, self.max_attempts + 1):
            timeout = self.timeout
            if self._closing:
                timeout = min(timeout, self._deadline - self._clock())
                if timeout <= 0:
                    break
            try:
                self._post(body, ctype, timeout)
            except _Refused as e:
                self._warn(f"security events refused by {self._host}: {e}; {len(batch)} dropped")
                break
            except (OSError, http.client.HTTPException, _Retry) as e:
                self._disconnect()
                if attempt == self.max_attempts:
                    self._warn(f"cannot POST security events to {self._host} ({e}) after {attempt} attempts; "
                               f"{len(batch)} dropped")
                    break
                delay = min(self.backoff * 2 ** (attempt - 1), _MAX_BACKOFF)
                if self._closing and self._clock() + delay >= self._deadline:
                    break
                self._wake.wait(delay)
                continue
            with self._cond:
                self._delivered += len(batch)
            return
        self._fail(batch)

    def _connection(self, timeout: float) -> tuple[http.client.HTTPConnection, bool]:
        """(the connection, whether it was open already)."""
        conn = self._conn
        if conn is None:
            cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            self._conn = cls(self._host, self._port, timeout=timeout)
            return self._conn, False
        conn.timeout = timeout
        if conn.sock is not None:
            conn.sock.settimeout(timeout)
        return conn, True

    def _post(self, body: bytes, ctype: str, timeout: float) -> None:
        headers = {"Content-Type": ctype, **self._headers, "Content-Length": str(len(body))}
        conn, reused = self._connection(timeout)
        try:
            conn.request("POST", self._path, body=body, headers=headers)
            resp = conn.getresponse()
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            if not reused:
                raise
            # The receiver closed the idle keep-alive connection: once more on a new one, not an attempt.
            self._disconnect()
            conn, _ = self._connection(timeout)
            conn.request("POST", self._path, body=body, headers=headers)
            resp = conn.getresponse()
        data = resp.read(_MAX_RESPONSE)
        if len(data) == _MAX_RESPONSE or resp.will_close:
            self._disconnect()
        status = resp.status
        if 200 <= status < 300:
            return
        if status in (408, 429) or status >= 500:
            raise _Retry(f"HTTP {status}")
        raise _Refused(f"HTTP {status}")

    def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except OSError:
                pass

    def _warn(self, message: str) -> None:
        now = self._clock()
        if now - self._last_log >= _LOG_EVERY:
            self._last_log = now
            log.warning("%s (counted in podsight_events_dropped_total)", message)
