"""Builders for RawEvents and identities used across the security tests."""
from __future__ import annotations

from podsight.security import RawEvent, host_identity

POD = {
    "node": "node-a", "namespace": "shop", "pod": "web-0", "container": "app",
    "image": "registry.example/shop/web:1.4", "workload": "web", "workload_kind": "StatefulSet",
    "pod_uid": "0b4d5c7e-1111-2222-3333-444455556666", "container_id": "3f2a9c",
    "host_cgroup": "", "in_pod": True,
}
HOST = host_identity(node="node-a", host_cgroup="system.slice/ssh.service")

# An ordinary, unremarkable process in the pod.
_BASE = dict(ts_ns=1_764_136_536_123_456_789, cgroup_id=9001, pid=4242, tid=4242, ppid=4200, uid=1000,
             gid=1000, comm="python3", exe="/usr/bin/python3.11", parent_comm="gunicorn", cwd="/srv")


def ev(kind: str, **fields) -> RawEvent:
    return RawEvent(kind, **{**_BASE, **fields})


def pod(**overrides) -> dict:
    return {**POD, **overrides}
