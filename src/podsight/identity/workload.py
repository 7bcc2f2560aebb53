"""Pod ownerReferences → (workload, workload_kind). Pure: no I/O, no API calls.

The top-level controller is derived from names alone, the way kube-state-metrics
users usually join it, because following the owner chain would cost a GET per
ReplicaSet/Job and extra RBAC (podsight only gets get/list/watch on pods).
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

__all__ = ["derive_workload", "POD_TEMPLATE_HASH_LABEL"]

# Set by the Deployment controller on its ReplicaSets and their pods; the
# ReplicaSet is named "<deployment>-<this hash>".
POD_TEMPLATE_HASH_LABEL = "pod-template-hash"

# The CronJob controller names each Job "<cronjob>-<scheduled time in minutes
# since the Unix epoch>" (8 digits since 1989, and until the year 2160).
# Requiring at least 8 trailing digits keeps hand-made Jobs such as
# "migrate-2" or "db-backup-v17" classified as Jobs; a hand-made Job that
# really ends in 8+ digits is mislabelled as a CronJob, which we accept
# because the pod carries no other hint without fetching the Job.
_CRONJOB_JOB_NAME = re.compile(r"^(?P<cronjob>.+)-\d{8,}$")


def _controller(owners: Iterable[Mapping[str, object]]) -> Mapping[str, object] | None:
    """The owner with ``controller: true``; else the first owner listed."""
    first = None
    for owner in owners:
        if first is None:
            first = owner
        if owner.get("controller") is True:
            return owner
    return first


def derive_workload(
    pod_name: str,
    owner_references: Iterable[Mapping[str, object]] | None,
    labels: Mapping[str, str] | None,
) -> tuple[str, str]:
    """Return ``(workload, workload_kind)`` for a pod.

    ``owner_references`` are the pod's ``metadata.ownerReferences`` as
    mappings with at least ``kind`` and ``name``.
    """
    owner = _controller(owner_references or ())
    if owner is None:
        return pod_name, "Pod"
    kind = str(owner.get("kind") or "")
    name = str(owner.get("name") or "")
    if not kind or not name:
        # A malformed reference tells us nothing better than the pod itself.
        return pod_name, "Pod"
    if kind == "ReplicaSet":
        template_hash = (labels or {}).get(POD_TEMPLATE_HASH_LABEL, "")
        suffix = "-" + template_hash
        if template_hash and name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)], "Deployment"
        return name, "ReplicaSet"
    if kind == "Job":
        m = _CRONJOB_JOB_NAME.match(name)
        if m:
            return m.group("cronjob"), "CronJob"
        return name, "Job"
    # StatefulSet, DaemonSet, ReplicationController, Node (static pods) and
    # custom controllers are already the top-level workload.
    return name, kind
