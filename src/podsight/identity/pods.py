"""Pods on this node, from the Kubernetes API, kept in an in-memory cache.

One background thread lists pods with ``fieldSelector=spec.nodeName=<node>``
and watches them, in listwatch.py's loop: on ``410 Gone`` it relists, and pods
missing from the new list count as deleted, so the cache is never stale; any
other failure reconnects with backoff, and ``api_up`` is False until a request
succeeds again.

Deleted pods stay resolvable (``pod()``, ``pod_by_container()``) until the
caller ``forget()``s them, so series of a deleted pod keep their labels during
the grace period.
"""
from __future__ import annotations

import logging
import random
import threading
import time
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ..heartbeat import Heartbeat
from .kubeconfig import SERVICE_ACCOUNT_DIR, load_client_config
from .listwatch import WATCH_TIMEOUT_RANGE, Gone, ListWatchLoop, is_gone
from .workload import derive_workload

__all__ = ["ContainerInfo", "PodInfo", "PodWatcher", "pod_info_from_object"]

log = logging.getLogger(__name__)


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


class PodWatcher(ListWatchLoop):
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
        self._log, self._what, self._keeps = log, "pod", "labels"
        self._server = self._config.cluster.server

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

            config = self._config
            transport = self._new_transport(config)
            # trust_env=False: talk to the API server directly, ignoring
            # HTTP(S)_PROXY, which is meant for the workloads on the node.
            self._client = Client(config, timeout=httpx2.Timeout(10.0), trust_env=False,
                                  transport=transport)
        return self._client

    def _set_up(self, up: bool) -> None:
        if up != self._api_up:
            if up:
                log.info("Kubernetes API %s reachable", self._config.cluster.server)
            self._api_up = up

    def _mark_down(self) -> None:
        self._api_up = False

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
            if is_gone(e):
                raise Gone() from e
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
