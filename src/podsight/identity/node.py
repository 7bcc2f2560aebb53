"""Who a cgroup is, answered once for the metrics snapshot and the security
events alike: cgroup id → kubelet path → pod metadata → label values.
"""
from __future__ import annotations

import os
import socket
import time
from typing import Callable, Iterable

from ..config import Config
from .cgroups import CgroupIdentity
from .labels import Labeler
from .resolver import CgroupInfo, CgroupResolver

__all__ = ["NodeIdentity", "node_name", "UNKNOWN", "UNATTRIBUTED"]

Labels = tuple[str, ...]

# Counts of cgroups removed before we ever saw their directory.
UNKNOWN = CgroupIdentity(host_group="unknown")
# cgroup id 0: no socket to charge (e.g. a packet dropped before socket lookup).
UNATTRIBUTED = CgroupIdentity(host_group="unattributed")


def node_name(cfg: Config) -> str:
    return cfg.node_name or os.environ.get("NODE_NAME") or socket.gethostname()


class NodeIdentity:
    # A pod's traffic seen before its metadata is held back this long (while
    # the API is healthy) so it appears once, with its real labels.
    METADATA_HOLD = 30.0

    def __init__(self, node: str, resolver: CgroupResolver, labeler: Labeler, pods=None,
                 clock: Callable[[], float] = time.monotonic):
        self.node = node
        self.resolver = resolver
        self.labeler = labeler
        self.pods = pods
        self._clock = clock
        self._first_seen: dict[int, float] = {}
        self._released: set[int] = set()  # pod cgroups no longer held back (it does not start again)

    @property
    def label_names(self) -> tuple[str, ...]:
        return self.labeler.names

    @property
    def kubernetes_api_up(self) -> bool | None:
        """None when no Kubernetes API is watched at all."""
        return None if self.pods is None else bool(self.pods.api_up)

    # -- metrics -------------------------------------------------------------
    def labels_for(self, ids: Iterable[int]) -> tuple[dict[int, Labels | None], set[int]]:
        """Label values of each cgroup id, None for ids to hold back this time
        (not resolved yet, or a pod waiting for its metadata); and the ids that
        can never be resolved (gone before we saw them), for garbage collection."""
        now = self._clock()
        ids = set(ids)
        infos = self.resolver.resolve_many(ids - {0})
        out: dict[int, Labels | None] = {}
        never: set[int] = set()
        for cid in ids:
            if cid == 0:
                out[cid] = self.labeler.labels(UNATTRIBUTED)
                continue
            info = infos.get(cid)
            if info is None:
                if self.resolver.unresolvable(cid):
                    out[cid] = self.labeler.labels(UNKNOWN)
                    never.add(cid)
                else:
                    out[cid] = None  # not scanned yet: hold, counts stay in the map
                continue
            ident = info.identity
            out[cid] = None if ident.in_pod and self._waiting_for_metadata(cid, ident, now) else self.labeler.labels(ident)
        return out, never

    def workloads_for(self, ids: Iterable[int]) -> dict[int, tuple[str, str, str, str] | None]:
        """(namespace, workload, workload_kind, pod) of each cgroup id, the
        local end of its flows; None to hold back, as ``labels_for`` does.
        Host cgroups are their host group, of kind "host"."""
        now = self._clock()
        ids = set(ids)
        infos = self.resolver.resolve_many(ids - {0})
        out: dict[int, tuple[str, str, str, str] | None] = {}
        for cid in ids:
            info = infos.get(cid)
            if info is None:
                ident = UNATTRIBUTED if cid == 0 else (UNKNOWN if self.resolver.unresolvable(cid) else None)
                out[cid] = None if ident is None else ("", ident.host_group, "host", "")
                continue
            ident = info.identity
            if not ident.in_pod:
                out[cid] = ("", ident.host_group, "host", "")
            elif self._waiting_for_metadata(cid, ident, now):
                out[cid] = None
            else:
                pod = self.pods.pod(ident.pod_uid) if self.pods is not None else None
                out[cid] = ((pod.namespace, pod.workload, pod.workload_kind, pod.name) if pod is not None
                            else ("", ident.pod_uid, "", ident.pod_uid))
        return out

    def retired_labels(self, info: CgroupInfo | None) -> Labels:
        """Label values a gone cgroup's last counts are kept under."""
        return self.labeler.labels(info.identity if info is not None else UNKNOWN)

    def _waiting_for_metadata(self, cid: int, ident: CgroupIdentity, now: float) -> bool:
        if cid in self._released:
            return False
        pods = self.pods
        if pods is None or not pods.api_up or self.labeler.has_metadata(ident):
            if pods is not None and pods.api_up:
                self._released.add(cid)  # metadata came: no reason to hold it again
            return False
        first = self._first_seen.setdefault(cid, now)
        if now - first < self.METADATA_HOLD:
            return True
        self._released.add(cid)
        return False

    def forget(self, cgroup_id: int) -> None:
        self.resolver.forget(cgroup_id)
        self._first_seen.pop(cgroup_id, None)
        self._released.discard(cgroup_id)

    # -- security events ---------------------------------------------------
    def describe(self, cgroup_id: int) -> dict[str, object]:
        """Everything known about a cgroup, for security events (not limited by the label policy)."""
        info = self.resolver.resolve_many([cgroup_id]).get(cgroup_id) if cgroup_id else None
        ident = info.identity if info is not None else UNKNOWN
        out: dict[str, object] = {
            "node": self.node, "namespace": "", "pod": "", "container": "", "image": "",
            "workload": "", "workload_kind": "", "pod_uid": ident.pod_uid,
            "container_id": ident.container_id, "host_cgroup": ident.host_group, "in_pod": ident.in_pod,
        }
        pod = self.pods.pod(ident.pod_uid) if self.pods is not None and ident.in_pod else None
        if pod is not None:
            c = pod.containers.get(ident.container_id)
            out.update(namespace=pod.namespace, pod=pod.name, workload=pod.workload, workload_kind=pod.workload_kind)
            if c is not None:
                out.update(container=c.name, image=c.image)
        return out

    def pod_roots(self) -> list[tuple[int, int]]:
        """(cgroup id, depth) of the kubelet's top directories (kubepods.slice / kubepods)."""
        return self.resolver.pod_roots()
