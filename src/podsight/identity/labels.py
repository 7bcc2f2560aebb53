"""Label values for a cgroup: the join of cgroup identity and pod metadata.

The label names are fixed for the life of the agent (they come from the
config's label policy); values are cached per cgroup id and the cache is
dropped whenever pod metadata changes, so a scrape builds no strings.
"""
from __future__ import annotations

import re
import threading
from typing import Protocol

from ..config import Labels
from .cgroups import CgroupIdentity

__all__ = ["Labeler", "PodSource", "sanitize_label"]


class PodSource(Protocol):
    """What the labeler needs of the Kubernetes metadata (podsight.identity.pods)."""

    def pod(self, uid: str): ...

    def pod_by_container(self, container_id: str): ...

    def subscribe(self, listener) -> None: ...


def sanitize_label(key: str) -> str:
    """A Kubernetes label key as a Prometheus label name, the kube-state-metrics way."""
    return "label_" + re.sub(r"[^a-zA-Z0-9_]", "_", key)


class Labeler:
    def __init__(self, node: str, policy: Labels | None = None, pods: PodSource | None = None):
        self.node = node
        self.policy = policy or Labels()
        self.pods = pods
        names = ["node", "namespace", "pod", "container", "host_cgroup"]
        if self.policy.image:
            names.append("image")
        if self.policy.workload:
            names += ["workload", "workload_kind"]
        self._pod_label_keys = list(self.policy.pod_labels)
        names += [sanitize_label(k) for k in self._pod_label_keys]
        self.names: tuple[str, ...] = tuple(names)
        self._extra = len(names) - 5
        self._cache: dict[CgroupIdentity, tuple[str, ...]] = {}
        self._lock = threading.Lock()
        if pods is not None:
            pods.subscribe(self.invalidate)

    def invalidate(self) -> None:
        """Pod metadata changed: recompute label values on next use."""
        with self._lock:
            self._cache = {}

    def labels(self, ident: CgroupIdentity) -> tuple[str, ...]:
        cached = self._cache.get(ident)
        if cached is None:
            cached = self._compute(ident)
            with self._lock:
                self._cache[ident] = cached
        return cached

    def has_metadata(self, ident: CgroupIdentity) -> bool:
        return self.pods is not None and self.pods.pod(ident.pod_uid) is not None

    def _compute(self, ident: CgroupIdentity) -> tuple[str, ...]:
        if not ident.in_pod:
            return (self.node, "", "", "", ident.host_group) + ("",) * self._extra
        pod_level = self.policy.level == "pod"
        info = self.pods.pod(ident.pod_uid) if self.pods is not None else None
        if info is None:
            # No metadata (yet): the UID and container ID still identify the series.
            container = "" if pod_level else ident.container_id
            return (self.node, "", ident.pod_uid, container, "") + ("",) * self._extra
        c = None if pod_level else info.containers.get(ident.container_id)
        container = "" if pod_level else (c.name if c else ident.container_id)
        values = [self.node, info.namespace, info.name, container, ""]
        if self.policy.image:
            values.append(c.image if c else "")
        if self.policy.workload:
            values += [info.workload, info.workload_kind]
        values += [info.labels.get(k, "") for k in self._pod_label_keys]
        return tuple(values)
