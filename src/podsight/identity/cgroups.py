"""Parse a cgroup v2 path into pod UID, container ID, QoS class and runtime.

Pure functions, no I/O.  Layouts understood (kubelet, both cgroup drivers):

systemd:  /kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid_with_underscores>.slice/<runtime>-<id>.scope
          /kubepods.slice/kubepods-pod<uid>.slice/...            (Guaranteed: no QoS level)
cgroupfs: /kubepods/<qos>/pod<uid>/<id>
          /kubepods/pod<uid>/<id>                                (Guaranteed)

runtimes: cri-containerd, crio, docker (systemd scope prefixes; CRI-O also
prefixes cgroupfs directories).  The kubelet tree may sit below another
cgroup (kind, nested systemd), so the pod segment is searched anywhere.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["CgroupIdentity", "parse_cgroup_path", "host_group"]

_UID = r"[0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12}"
_SYSTEMD_POD = re.compile(rf"^kubepods(?:-(besteffort|burstable))?-pod({_UID})\.slice$")
_CGROUPFS_POD = re.compile(rf"^pod({_UID})$")
_SYSTEMD_CONTAINER = re.compile(r"^(cri-containerd|crio|docker)-([0-9a-f]{64})\.scope$")
_CGROUPFS_CONTAINER = re.compile(r"^(?:(crio|docker|cri-containerd)-)?([0-9a-f]{64})$")
_QOS = {"besteffort", "burstable"}
_RUNTIMES = {"cri-containerd": "containerd", "crio": "cri-o", "docker": "docker"}


@dataclass(frozen=True, slots=True)
class CgroupIdentity:
    """What a cgroup path says about its owner.  ``pod_uid == ""`` means a host cgroup."""

    pod_uid: str = ""
    container_id: str = ""
    qos: str = ""
    runtime: str = ""
    host_group: str = ""

    @property
    def in_pod(self) -> bool:
        return bool(self.pod_uid)


def host_group(path: str) -> str:
    """First two levels of a host cgroup path: ``system.slice/ssh.service``; ``/`` for the root."""
    parts = [p for p in path.split("/") if p]
    return "/".join(parts[:2]) or "/"


def parse_cgroup_path(path: str) -> CgroupIdentity:
    parts = [p for p in path.split("/") if p]
    for i, seg in enumerate(parts):
        m = _SYSTEMD_POD.match(seg)
        if m and i > 0 and parts[i - 1].startswith("kubepods"):
            qos = m.group(1) or "guaranteed"
            uid = m.group(2).replace("_", "-")
            container, runtime = _container(parts[i + 1 :], _SYSTEMD_CONTAINER)
            return CgroupIdentity(uid, container, qos, runtime)
        m = _CGROUPFS_POD.match(seg)
        if m and "-" in m.group(1) and i > 0 and (parts[i - 1] == "kubepods" or parts[i - 1] in _QOS):
            if parts[i - 1] in _QOS and (i < 2 or parts[i - 2] != "kubepods"):
                break
            qos = parts[i - 1] if parts[i - 1] in _QOS else "guaranteed"
            container, runtime = _container(parts[i + 1 :], _CGROUPFS_CONTAINER)
            return CgroupIdentity(m.group(1), container, qos, runtime)
    return CgroupIdentity(host_group=host_group(path))


def _container(rest: list[str], pattern: re.Pattern[str]) -> tuple[str, str]:
    """The container is the first segment below the pod; deeper cgroups a container made belong to it."""
    if not rest:
        return "", ""
    m = pattern.match(rest[0])
    if not m:
        return "", ""  # e.g. crio-conmon-<id>.scope: the runtime's monitor, counted at pod level
    return m.group(2), _RUNTIMES.get(m.group(1) or "", "")
