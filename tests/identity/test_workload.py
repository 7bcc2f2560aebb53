"""ownerReferences → (workload, workload_kind): a table of real-world shapes."""
from __future__ import annotations

import pytest

from podsight.identity.workload import derive_workload


def owner(kind: str, name: str, controller: bool | None = True) -> dict:
    ref = {"apiVersion": "v1", "kind": kind, "name": name, "uid": "u"}
    if controller is not None:
        ref["controller"] = controller
    return ref


CASES = [
    # (pod name, owners, labels, expected)
    ("web-7d4b9c8f6-x2k9p", [owner("ReplicaSet", "web-7d4b9c8f6")],
     {"pod-template-hash": "7d4b9c8f6"}, ("web", "Deployment")),
    # deployment names may contain dashes and digits themselves
    ("api-v2-5f6d-abcde", [owner("ReplicaSet", "api-v2-5f6d")],
     {"pod-template-hash": "5f6d"}, ("api-v2", "Deployment")),
    # a ReplicaSet created by hand: no pod-template-hash label
    ("rs-pod-abcde", [owner("ReplicaSet", "my-rs")], {}, ("my-rs", "ReplicaSet")),
    # label present but the name does not end with "-<hash>": do not strip
    ("x-abcde", [owner("ReplicaSet", "frontend")], {"pod-template-hash": "abc"},
     ("frontend", "ReplicaSet")),
    # a name equal to "-<hash>" would strip to nothing: keep the ReplicaSet
    ("x", [owner("ReplicaSet", "-abc")], {"pod-template-hash": "abc"}, ("-abc", "ReplicaSet")),
    ("report-29012345-qwert", [owner("Job", "report-29012345")], {}, ("report", "CronJob")),
    ("nightly-db-backup-28999999-a", [owner("Job", "nightly-db-backup-28999999")], {},
     ("nightly-db-backup", "CronJob")),
    # hand-made Jobs with short numeric suffixes stay Jobs
    ("migrate-2-abcde", [owner("Job", "migrate-2")], {}, ("migrate-2", "Job")),
    ("db-backup-v17-x", [owner("Job", "db-backup-v17")], {}, ("db-backup-v17", "Job")),
    ("one-off", [owner("Job", "one-off")], {}, ("one-off", "Job")),
    ("db-0", [owner("StatefulSet", "db")], {}, ("db", "StatefulSet")),
    ("node-exporter-abcde", [owner("DaemonSet", "node-exporter")], {}, ("node-exporter", "DaemonSet")),
    ("legacy-abcde", [owner("ReplicationController", "legacy")], {}, ("legacy", "ReplicationController")),
    # static pods are owned by their Node
    ("kube-apiserver-node-a", [owner("Node", "node-a")], {}, ("node-a", "Node")),
    ("my-cr-pod", [owner("Rollout", "canary")], {}, ("canary", "Rollout")),
    ("bare", [], {}, ("bare", "Pod")),
    ("bare2", None, None, ("bare2", "Pod")),
    # the controller reference wins over a non-controller one listed first
    ("multi", [owner("ConfigMap", "cm", controller=False), owner("StatefulSet", "ss")], {},
     ("ss", "StatefulSet")),
    # no controller flag at all: the first owner
    ("noflag", [owner("DaemonSet", "ds", controller=None)], {}, ("ds", "DaemonSet")),
    # malformed reference (no name): the pod is its own workload
    ("broken", [{"kind": "ReplicaSet"}], {}, ("broken", "Pod")),
]


@pytest.mark.parametrize("pod,owners,labels,expected", CASES, ids=[c[0] for c in CASES])
def test_derive_workload(pod, owners, labels, expected):
    assert derive_workload(pod, owners, labels) == expected
