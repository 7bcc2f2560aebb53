"""Table tests for kubelet cgroup layouts (pure parsing, no root needed)."""
from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from podsight.identity.cgroups import CgroupIdentity, host_group, parse_cgroup_path

UID = "2f1c6a3e-9b7d-4c1e-8f00-0123456789ab"
UID_ = UID.replace("-", "_")
CID = "a" * 48 + "0123456789abcdef"

CASES = [
    # systemd driver
    (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{CID}.scope",
     CgroupIdentity(UID, CID, "burstable", "containerd")),
    (f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/crio-{CID}.scope",
     CgroupIdentity(UID, CID, "besteffort", "cri-o")),
    (f"/kubepods.slice/kubepods-pod{UID_}.slice/docker-{CID}.scope",
     CgroupIdentity(UID, CID, "guaranteed", "docker")),
    # pod-level cgroup and the runtime's conmon scope count at pod level
    (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice",
     CgroupIdentity(UID, "", "burstable", "")),
    (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/crio-conmon-{CID}.scope",
     CgroupIdentity(UID, "", "burstable", "")),
    # a cgroup the container made below its own still belongs to it
    (f"/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{CID}.scope/init.scope",
     CgroupIdentity(UID, CID, "guaranteed", "containerd")),
    # kubelet tree nested below another cgroup (kind, nested systemd)
    (f"/system.slice/docker-x.scope/kubelet.slice/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{CID}.scope",
     CgroupIdentity(UID, CID, "guaranteed", "containerd")),
    # cgroupfs driver
    (f"/kubepods/burstable/pod{UID}/{CID}", CgroupIdentity(UID, CID, "burstable", "")),
    (f"/kubepods/besteffort/pod{UID}/{CID}", CgroupIdentity(UID, CID, "besteffort", "")),
    (f"/kubepods/pod{UID}/{CID}", CgroupIdentity(UID, CID, "guaranteed", "")),
    (f"/kubepods/burstable/pod{UID}/crio-{CID}", CgroupIdentity(UID, CID, "burstable", "cri-o")),
    (f"/kubepods/pod{UID}", CgroupIdentity(UID, "", "guaranteed", "")),
    # host cgroups: grouped by their first two levels
    ("/", CgroupIdentity(host_group="/")),
    ("/system.slice", CgroupIdentity(host_group="system.slice")),
    ("/system.slice/ssh.service", CgroupIdentity(host_group="system.slice/ssh.service")),
    ("/user.slice/user-0.slice/session-3.scope", CgroupIdentity(host_group="user.slice/user-0.slice")),
    ("/kubepods.slice", CgroupIdentity(host_group="kubepods.slice")),
]

JUNK = [
    "", "//", "kubepods", f"/kubepods.slice/kubepods-burstable-pod{UID_}",  # no .slice suffix
    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podNOTAUID.slice",
    f"/kubepods/burstable/pod{UID_}/{CID}",  # underscores are systemd-only
    f"/elsewhere/pod{UID}/{CID}",  # a pod-like name outside kubepods
    f"/kubepods/weird/pod{UID}/{CID}",  # unknown QoS level
    f"/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{CID[:-1]}.scope",  # short id
    "/system.slice/../../etc",
]


@pytest.mark.parametrize("path,expected", CASES)
def test_layouts(path, expected):
    assert parse_cgroup_path(path) == expected


@pytest.mark.parametrize("path", JUNK)
def test_junk_never_yields_a_container(path):
    assert parse_cgroup_path(path).container_id == ""


def test_short_container_id_is_pod_level():
    path = f"/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{CID[:-1]}.scope"
    assert parse_cgroup_path(path) == CgroupIdentity(UID, "", "guaranteed", "")


@given(st.text(alphabet="abcdef0123456789-_./kubepods", max_size=200))
def test_never_raises_and_host_groups_are_short(path):
    ident = parse_cgroup_path(path)
    if not ident.in_pod:
        assert ident.host_group == host_group(path)
        assert ident.host_group.count("/") <= 1 or ident.host_group == "/"
