"""Pods on this node, from the Kubernetes API, kept in an in-memory cache.

One background thread lists pods with ``fieldSelector=spec.nodeName=<node>``,
then watches from the list's resourceVersion with bookmarks, tracking the
version from every event and bookmark.  A ``410 Gone`` (HTTP status or a watch
ERROR event) means the version left the server's history: we relist, and pods
missing from the new list count as deleted, so the cache is never stale.  Any
other failure keeps the last version and reconnects with capped exponential
backoff and jitter; ``api_up`` is False until a request succeeds again.

Deleted pods stay resolvable (``pod()``, ``pod_by_container()``) until the
caller ``forget()``s them, so series of a deleted pod keep their labels during
the grace period.
"""
from __future__ import annotations

import logging
import random
import socket
import threading
import time
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ..heartbeat import Heartbeat
from .kubeconfig import SERVICE_ACCOUNT_DIR, load_client_config
from .workload import derive_workload

__all__ = ["ContainerInfo", "PodInfo", "PodWatcher", "backoff_delay", "pod_info_from_object"]

log = logging.getLogger(__name__)

BACKOFF_BASE = 0.5  # seconds before the first retry (before jitter)
# Each watch asks the server to end it after 5-10 min, as client-go's
# reflector does, so connections are recycled and load spreads over servers.
WATCH_TIMEOUT_RANGE = (300, 600)
# A watch stream silent for longer than its timeoutSeconds plus this margin is
# a dead connection (no FIN from a vanished server): give up and reconnect.
WATCH_READ_MARGIN = 30.0
# A server that ends watches at once must not make us loop hot.
MIN_WATCH_INTERVAL = 0.5


@dataclass(frozen=True)
class ContainerInfo:
    name: str
    image: str
    container_id: str  # without the "containerd://" (or "cri-o://", "docker://") scheme


@dataclass(frozen=True)
class PodInfo:
    uid: str
    namespace: str
    name: str
    node: str
    workload: str
    workload_kind: str
    labels: Mapping[str, str]
    containers: Mapping[str, ContainerInfo]  # by container ID: regular, init and ephemeral


def backoff_delay(attempt: int, cap: float, base: float = BACKOFF_BASE,
                  rand: Callable[[], float] = random.random) -> float:
    """Capped exponential backoff with "equal jitter": in [d/2, d], d = min(cap, base·2^attempt).

    Half the delay is fixed so retries never bunch up near zero; the random
    half spreads the agents of a whole cluster after an API server restart.
    """
    d = min(cap, base * (2 ** min(attempt, 32)))
    return d / 2 + rand() * d / 2


def _bare_id(container_id: str | None) -> str:
    if not container_id:
        return ""
    return container_id.split("://", 1)[-1]


def pod_info_from_object(pod) -> PodInfo:
    """A lightkube ``Pod`` → PodInfo.  Containers without an ID (not started
    yet) are left out; the IDs of containers that restarted are kept from
    ``lastState`` so their last traffic still resolves."""
    meta = pod.metadata
    spec = pod.spec
    status = pod.status
    labels = dict(meta.labels or {})
    owners = [{"kind": o.kind, "name": o.name, "controller": o.controller}
              for o in (meta.ownerReferences or ())]
    workload, workload_kind = derive_workload(meta.name or "", owners, labels)

    # The image a user wrote in the manifest ("nginx:1.25"), not the
    # runtime's normalised one, is what people filter by; fall back to the
    # status image for containers the spec does not list.
    spec_images: dict[str, str] = {}
    if spec is not None:
        for group in (spec.containers, spec.initContainers, spec.ephemeralContainers):
            for c in group or ():
                spec_images[c.name] = c.image or ""

    containers: dict[str, ContainerInfo] = {}
    if status is not None:
        for group in (status.containerStatuses, status.initContainerStatuses,
                      status.ephemeralContainerStatuses):
            for cs in group or ():
                image = spec_images.get(cs.name) or cs.image or ""
                ids = [cs.containerID]
                last = cs.lastState.terminated if cs.lastState is not None else None
                if last is not None:
                    ids.append(last.containerID)
                for raw in ids:
                    cid = _bare_id(raw)
                    if cid and cid not in containers:
                        containers[cid] = ContainerInfo(cs.name, image, cid)
    return PodInfo(
        uid=meta.uid or "",
        namespace=meta.namespace or "",
        name=meta.name or "",
        node=(spec.nodeName if spec is not None else None) or "",
        workload=workload,
        workload_kind=workload_kind,
        labels=types.MappingProxyType(labels),
        containers=types.MappingProxyType(containers),
    )


class _Gone(Exception):
    """The watched resourceVersion is no longer in the server's history."""


def _is_gone(exc: BaseException) -> bool:
    status = getattr(exc, "status", None)  # lightkube ApiError from an ERROR event
    if getattr(status, "code", None) == 410:
        return True
    response = getattr(exc, "response", None)  # httpx HTTPStatusError
    try:
        return response is not None and response.status_code == 410
    except RuntimeError:  # an ApiError built without a response
        return False


def _make_transport(ssl_context, stopping: threading.Event, on_watch_response: Callable[[int], None]):
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


class PodWatcher:
    """Watches the pods of one node; see the module docstring."""

    def __init__(self, node_name: str, kubeconfig: str | None = None, *, in_cluster: bool | None = None,
                 backoff_max: float = 30.0, on_change: Callable[[], None] | None = None,
                 service_account_dir: str = SERVICE_ACCOUNT_DIR):
        if not node_name:
            raise ValueError("node_name: expected a node name, got an empty string")
        self.node_name = node_name
        self.backoff_max = backoff_max
        self._listeners: list[Callable[[], None]] = [on_change] if on_change is not None else []
        # Raises KubeConfigError for a missing or broken kubeconfig: a
        # configuration mistake should stop the agent; an unreachable API not.
        self._config = load_client_config(kubeconfig, in_cluster, service_account_dir)
        self._lock = threading.Lock()
        self._pods: dict[str, PodInfo] = {}
        self._by_container: dict[str, str] = {}
        self._deleted: dict[str, float] = {}
        self._api_up = False
        self._synced = False
        self._rv: str | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._client = None
        self._transport = None
        self._attempt = 0  # consecutive failures, for the backoff
        self.heartbeat = Heartbeat("kubernetes pod watch")

    # -- public surface --------------------------------------------------

    @property
    def api_up(self) -> bool:
        return self._api_up

    @property
    def synced(self) -> bool:
        return self._synced

    @property
    def resource_version(self) -> str | None:
        """The last resourceVersion seen (list, event or bookmark)."""
        return self._rv

    def pod(self, uid: str) -> PodInfo | None:
        with self._lock:
            return self._pods.get(uid)

    def pod_by_container(self, container_id: str) -> tuple[PodInfo, ContainerInfo] | None:
        with self._lock:
            uid = self._by_container.get(container_id)
            info = self._pods.get(uid) if uid else None
        if info is None:
            return None
        container = info.containers.get(container_id)
        return (info, container) if container is not None else None

    def pods(self) -> list[PodInfo]:
        """Every known pod, deleted ones not yet forgotten included."""
        with self._lock:
            return list(self._pods.values())

    def deleted(self) -> dict[str, float]:
        """uid → time.monotonic() when the pod was seen deleted (DELETED event or absent from a relist)."""
        with self._lock:
            return dict(self._deleted)

    def forget(self, uid: str) -> None:
        """Drop a deleted pod for good.  A live pod is left alone."""
        with self._lock:
            if self._deleted.pop(uid, None) is None:
                return
            info = self._pods.pop(uid, None)
            if info is not None:
                for cid in info.containers:
                    if self._by_container.get(cid) == uid:
                        del self._by_container[cid]

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="podsight-pod-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._transport is not None:
            self._transport.abort_watch()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=0.9)
            if thread.is_alive():
                # Inside a list request or a connect (bounded by the 10 s client
                # timeout): a daemon thread that exits as soon as it returns.
                log.debug("pod watch thread still finishing a request after stop()")
        self._api_up = False

    # -- the loop ----------------------------------------------------------

    def _client_or_new(self):
        if self._client is None:
            import httpx2
            from lightkube import Client
            from lightkube.config.client_adapter import verify_cluster

            config = self._config
            ssl_context = verify_cluster(config.cluster, config.user, config.abs_file, trust_env=False)
            self._transport = _make_transport(ssl_context, self._stopping, self._on_watch_response)
            # trust_env=False: talk to the API server directly, ignoring
            # HTTP(S)_PROXY, which is meant for the workloads on the node.
            self._client = Client(config, timeout=httpx2.Timeout(10.0), trust_env=False,
                                  transport=self._transport)
        return self._client

    def _on_watch_response(self, status_code: int) -> None:
        # A 200 watch response means the API answers, even before any event.
        if status_code == 200 and not self._stopping.is_set():
            self._attempt = 0
            self._set_up(True)

    def _set_up(self, up: bool) -> None:
        if up != self._api_up:
            if up:
                log.info("Kubernetes API %s reachable", self._config.cluster.server)
            self._api_up = up

    # A list or a watch that has not returned or brought an event this long
    # after its server timeout is a hung connection, not a quiet cluster.
    PROGRESS_GRACE = 120.0

    def _run(self) -> None:
        self._attempt = 0
        gone_in_a_row = 0
        rv: str | None = None
        while not self._stopping.is_set():
            self.heartbeat.beat(WATCH_TIMEOUT_RANGE[1] + self.PROGRESS_GRACE)
            try:
                client = self._client_or_new()
                if rv is None:
                    rv = self._relist(client)
                rv = self._watch(client, rv)
            except _Gone:
                self._transport.close_watch()
                log.info("pod watch at resourceVersion %s expired (410 Gone); relisting", rv)
                rv = None
                gone_in_a_row += 1
                if gone_in_a_row > 1:  # a relist that expires at once: do not hammer
                    self._stopping.wait(backoff_delay(gone_in_a_row - 2, self.backoff_max))
            except Exception as e:  # noqa: BLE001 - any failure means reconnect
                if self._transport is not None:
                    self._transport.close_watch()
                if self._stopping.is_set():
                    break
                self._api_up = False
                delay = backoff_delay(self._attempt, self.backoff_max)
                self._attempt += 1
                # Warn once per outage (also when the API was never reached);
                # the retries of the same outage go to debug.
                self.heartbeat.beat(delay + self.PROGRESS_GRACE)
                level = logging.WARNING if self._attempt == 1 else logging.DEBUG
                log.log(level, "Kubernetes API %s: pod list/watch failed (%s: %s); "
                        "labels stay as known, retry %d in %.2fs", self._config.cluster.server,
                        type(e).__name__, e, self._attempt, delay)
                self._stopping.wait(delay)
            else:
                gone_in_a_row = 0
        self.heartbeat.done()
        if self._client is not None and self._thread is None:
            self._client.close()
            self._client = None

    def _relist(self, client) -> str:
        from lightkube.resources.core_v1 import Pod

        pods = client.list(Pod, namespace="*", fields={"spec.nodeName": self.node_name})
        infos = [pod_info_from_object(p) for p in pods]
        rv = pods.resourceVersion
        now = time.monotonic()
        with self._lock:
            seen = {i.uid for i in infos}
            for uid in self._pods:
                if uid not in seen and uid not in self._deleted:
                    self._deleted[uid] = now  # deleted while we were not watching
            for info in infos:
                self._store(info)
                self._deleted.pop(info.uid, None)
        self._rv = rv
        self._synced = True
        self._attempt = 0
        self._set_up(True)
        log.debug("listed %d pods on node %s at resourceVersion %s", len(infos), self.node_name, rv)
        self._changed()
        return rv

    def _watch(self, client, rv: str) -> str:
        """Apply watch events until stop(); returns the last version seen."""
        from lightkube.resources.core_v1 import Pod

        events = client.watch(Pod, namespace="*", fields={"spec.nodeName": self.node_name},
                              server_timeout=random.randint(*WATCH_TIMEOUT_RANGE),
                              resource_version=rv)
        try:
            for ev_type, obj in events:
                self.heartbeat.beat(WATCH_TIMEOUT_RANGE[1] + self.PROGRESS_GRACE)
                if self._stopping.is_set():
                    break
                new_rv = obj.metadata.resourceVersion if obj.metadata is not None else None
                if ev_type != "BOOKMARK":
                    self._apply(ev_type, obj)
                if new_rv:
                    rv = self._rv = new_rv
        except Exception as e:
            if _is_gone(e):
                raise _Gone() from e
            raise
        finally:
            events.close()
        return rv

    # -- cache updates -------------------------------------------------------

    def _store(self, info: PodInfo) -> None:
        """Under the lock: insert or replace a pod and its container index."""
        old = self._pods.get(info.uid)
        if old is not None:
            for cid in old.containers:
                if cid not in info.containers and self._by_container.get(cid) == info.uid:
                    del self._by_container[cid]
        self._pods[info.uid] = info
        for cid in info.containers:
            self._by_container[cid] = info.uid

    def _apply(self, ev_type: str, obj) -> None:
        info = pod_info_from_object(obj)
        if not info.uid:
            return
        with self._lock:
            if ev_type in ("ADDED", "MODIFIED"):
                self._store(info)
                self._deleted.pop(info.uid, None)
            elif ev_type == "DELETED":
                # Keep the final object so the pod's last series keep their
                # labels until the caller forgets it.
                self._store(info)
                self._deleted.setdefault(info.uid, time.monotonic())
            else:
                return
        self._changed()

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` (from the watch thread) whenever pod metadata changes."""
        self._listeners.append(listener)

    def _changed(self) -> None:
        for listener in self._listeners:
            try:
                listener()
            except Exception:  # noqa: BLE001 - a listener bug must not stop the watch
                log.exception("pod change listener failed")
