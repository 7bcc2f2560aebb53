"""What every list/watch thread of podsight shares: the reconnect loop, the
HTTP transport under lightkube, backoff and 410 Gone.

A thread lists, then watches from the list's resourceVersion with bookmarks,
tracking the version from every event and bookmark.  A ``410 Gone`` (HTTP
status or a watch ERROR event) means the version left the server's history:
it relists.  Any other failure keeps the last version and reconnects with
capped exponential backoff and jitter; the owner is marked down until a
request succeeds again.  ``PodWatcher`` (this node's pods) and the cluster
index's three watches (all pods, services, nodes) run this loop.
"""
from __future__ import annotations

import logging
import random
import socket
import threading
import time
from collections.abc import Callable

from ..heartbeat import Heartbeat

__all__ = ["Gone", "ListWatchLoop", "backoff_delay", "is_gone", "make_transport"]

BACKOFF_BASE = 0.5  # seconds before the first retry (before jitter)
# Each watch asks the server to end it after 5-10 min, as client-go's
# reflector does, so connections are recycled and load spreads over servers.
WATCH_TIMEOUT_RANGE = (300, 600)
# A watch stream silent for longer than its timeoutSeconds plus this margin is
# a dead connection (no FIN from a vanished server): give up and reconnect.
WATCH_READ_MARGIN = 30.0
# A server that ends watches at once must not make us loop hot.
MIN_WATCH_INTERVAL = 0.5


def backoff_delay(attempt: int, cap: float, base: float = BACKOFF_BASE,
                  rand: Callable[[], float] = random.random) -> float:
    """Capped exponential backoff with "equal jitter": in [d/2, d], d = min(cap, base·2^attempt).

    Half the delay is fixed so retries never bunch up near zero; the random
    half spreads the agents of a whole cluster after an API server restart.
    """
    d = min(cap, base * (2 ** min(attempt, 32)))
    return d / 2 + rand() * d / 2


class Gone(Exception):
    """The watched resourceVersion is no longer in the server's history."""


def is_gone(exc: BaseException) -> bool:
    status = getattr(exc, "status", None)  # lightkube ApiError from an ERROR event
    if getattr(status, "code", None) == 410:
        return True
    response = getattr(exc, "response", None)  # httpx HTTPStatusError
    try:
        return response is not None and response.status_code == 410
    except RuntimeError:  # an ApiError built without a response
        return False


def make_transport(ssl_context, stopping: threading.Event, on_watch_response: Callable[[int], None]):
    """An httpx transport under lightkube that adds what its watch() lacks.

    lightkube's ``watch()`` does not take ``allowWatchBookmarks`` and waits
    forever on a silent stream; this wrapper asks for bookmarks, bounds the
    read timeout of watches, spaces out watch requests, and remembers the live
    watch socket so ``stop()`` can shut it down (closing a socket does not
    wake a thread blocked reading it; ``shutdown()`` does).
    """
    import httpx2

    class WatchTransport(httpx2.BaseTransport):
        def __init__(self):
            self.inner = httpx2.HTTPTransport(verify=ssl_context, trust_env=False)
            self.live_socket: socket.socket | None = None
            self.live_response: httpx2.Response | None = None
            self.last_watch = 0.0

        def handle_request(self, request):
            params = request.url.params
            if params.get("watch") != "true":
                return self.inner.handle_request(request)
            wait = self.last_watch + MIN_WATCH_INTERVAL - time.monotonic()
            if wait > 0 and stopping.wait(wait):
                raise httpx2.ConnectError("watcher stopping", request=request)
            self.last_watch = time.monotonic()
            if "allowWatchBookmarks" not in params:
                request.url = request.url.copy_add_param("allowWatchBookmarks", "true")
            timeout = dict(request.extensions.get("timeout") or {})
            server_timeout = float(params.get("timeoutSeconds") or WATCH_TIMEOUT_RANGE[1])
            timeout["read"] = server_timeout + WATCH_READ_MARGIN
            request.extensions["timeout"] = timeout
            response = self.inner.handle_request(request)
            stream = response.extensions.get("network_stream")
            self.live_socket = stream.get_extra_info("socket") if stream is not None else None
            self.live_response = response
            if stopping.is_set():
                # stop() came while this request was on its way: its
                # abort_watch() found no socket, and the stream may stay
                # silent until the server's timeout. Stored first, checked
                # second (stop() sets, then aborts): one of the two shuts it.
                self.abort_watch()
            on_watch_response(response.status_code)
            return response

        def abort_watch(self) -> None:
            sock, self.live_socket = self.live_socket, None
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

        def close_watch(self) -> None:
            """Release a watch response lightkube abandoned after an error."""
            response, self.live_response = self.live_response, None
            self.live_socket = None
            if response is not None:
                try:
                    response.close()
                except Exception:  # already broken; we only free the connection
                    pass

        def close(self):
            self.inner.close()

    return WatchTransport()


class ListWatchLoop:
    """The loop of one list/watch thread (``_run``), for a class that gives:

    - ``_client_or_new()``, ``_relist(client) -> rv``, ``_watch(client, rv) -> rv``
      (raising ``Gone`` on 410), ``_set_up(True)`` and ``_mark_down()``;
    - ``_stopping`` (an Event), ``_thread``, ``_client``, ``_transport``,
      ``_attempt``, ``heartbeat``, ``_log`` and, for its messages, ``_what``
      (``"pod"``), ``_keeps`` (what stays as known in an outage) and
      ``_server``;
    - ``backoff_max``, and may override ``_backoff(delay)`` and
      ``_attempt_begins()``.
    """

    # A list or a watch that has not returned or brought an event this long
    # after its server timeout is a hung connection, not a quiet cluster.
    PROGRESS_GRACE = 120.0

    _stopping: threading.Event
    _thread: threading.Thread | None
    _attempt: int
    heartbeat: Heartbeat
    _log: logging.Logger
    _what: str
    _keeps: str
    _server: str
    backoff_max: float

    def _backoff(self, delay: float) -> None:
        self._stopping.wait(delay)

    def _new_transport(self, config):
        """The transport for a new client of ``config`` (a lightkube
        kubeconfig), remembered for stop() and close_watch()."""
        from lightkube.config.client_adapter import verify_cluster

        ssl_context = verify_cluster(config.cluster, config.user, config.abs_file, trust_env=False)
        self._transport = make_transport(ssl_context, self._stopping, self._on_watch_response)
        return self._transport

    def _on_watch_response(self, status_code: int) -> None:
        # A 200 watch response means the API answers, even before any event.
        if status_code == 200 and not self._stopping.is_set():
            self._attempt = 0
            self._set_up(True)

    def _attempt_begins(self) -> None:
        pass

    def _run(self) -> None:
        stopping, log = self._stopping, self._log
        self._attempt = 0
        gone_in_a_row = 0
        rv: str | None = None
        while not stopping.is_set():
            self.heartbeat.beat(WATCH_TIMEOUT_RANGE[1] + self.PROGRESS_GRACE)
            self._attempt_begins()
            try:
                client = self._client_or_new()
                if rv is None:
                    rv = self._relist(client)
                rv = self._watch(client, rv)
                gone_in_a_row = 0
            except Gone:
                self._transport.close_watch()
                log.info("%s watch at resourceVersion %s expired (410 Gone); relisting", self._what, rv)
                rv = None
                gone_in_a_row += 1
                if gone_in_a_row > 1:  # a relist that expires at once: do not hammer
                    self._backoff(backoff_delay(gone_in_a_row - 2, self.backoff_max))
            except Exception as e:  # noqa: BLE001 - any failure means reconnect
                if self._transport is not None:
                    self._transport.close_watch()
                if stopping.is_set():
                    break
                self._mark_down()
                delay = backoff_delay(self._attempt, self.backoff_max)
                self._attempt += 1
                # Warn once per outage (also when the API was never reached);
                # the retries of the same outage go to debug.
                self.heartbeat.beat(delay + self.PROGRESS_GRACE)
                level = logging.WARNING if self._attempt == 1 else logging.DEBUG
                log.log(level, "Kubernetes API %s: %s list/watch failed (%s: %s); %s stay as known, "
                        "retry %d in %.2fs", self._server, self._what, type(e).__name__, e, self._keeps,
                        self._attempt, delay)
                self._backoff(delay)
        self.heartbeat.done()
        # A start() after stop() may already run a new thread on this client.
        if self._client is not None and self._thread is None:
            self._client.close()
            self._client = None
