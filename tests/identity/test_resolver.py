"""CgroupResolver on a real directory tree: ids are inode numbers, as
cgroup v2 ids are, so a tmp directory behaves like the cgroup tree for the
walk and the sweep.  Opening ids by kernel handle only works on cgroupfs:
it is off here, and tested in test_cgroup_handles.py on the real mount."""
from __future__ import annotations

import os

import pytest

from podsight.identity.resolver import CgroupResolver
from tests.support.clock import Clock

UID = "5f0e6b3c-9d1a-4e2b-8c7d-1a2b3c4d5e6f"
POD = f"kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID.replace('-', '_')}.slice"
CONTAINER = POD + "/cri-containerd-" + "ab" * 32 + ".scope"


@pytest.fixture
def tree(tmp_path):
    (tmp_path / CONTAINER).mkdir(parents=True)
    (tmp_path / "system.slice" / "sshd.service").mkdir(parents=True)
    return tmp_path


def ino(path) -> int:
    return os.stat(path).st_ino


def test_scan_maps_every_directory_by_inode(tree):
    r = CgroupResolver(str(tree), handles=False)
    r.scan()
    info = r.resolve(ino(tree / CONTAINER))
    assert info.path == "/" + CONTAINER
    assert info.identity.pod_uid == UID and info.identity.container_id == "ab" * 32
    assert r.resolve(ino(tree)).path == "/"
    assert r.pod_roots() == [(ino(tree / "kubepods.slice"), 1)]


def test_pod_roots_follow_scans_and_forgets(tree):
    """A kubelet started after the agent: its directory is a pod root once
    a scan has seen it, and stops being one when it is forgotten."""
    (tree / "kubepods.slice").rename(tree / "later")
    r = CgroupResolver(str(tree), handles=False)
    r.scan()
    assert r.pod_roots() == []
    (tree / "later").rename(tree / "kubepods.slice")
    r.scan()
    root = ino(tree / "kubepods.slice")
    assert r.pod_roots() == [(root, 1)]
    r.forget(root)
    assert r.pod_roots() == []


def test_sweep_notices_removed_and_remade_directories(tree):
    clock = Clock()
    r = CgroupResolver(str(tree), clock=clock, handles=False)
    r.scan()
    container, sshd = ino(tree / CONTAINER), ino(tree / "system.slice" / "sshd.service")
    (tree / CONTAINER).rmdir()
    (tree / "system.slice" / "sshd.service").rmdir()
    (tree / "system.slice" / "sshd.service").mkdir()  # the same path, another cgroup
    clock.now = 130.0
    r.sweep()
    assert r.gone() == {container: 130.0, sshd: 130.0}
    clock.now = 160.0
    r.sweep()
    assert r.gone() == {container: 130.0, sshd: 130.0}  # first noticed, not last
    r.forget(container)
    assert container not in r.gone() and r.resolve(container) is None


def test_sweep_never_walks_the_tree(tree, monkeypatch):
    """Its point: no directory listing (cgroupfs lists every control file)."""
    r = CgroupResolver(str(tree), handles=False)
    r.scan()

    def no_walk(*a):
        raise AssertionError("sweep listed a directory")

    monkeypatch.setattr(os, "scandir", no_walk)
    monkeypatch.setattr(os, "listdir", no_walk)
    r.sweep()
    assert r.gone() == {}


def test_new_directories_are_found_on_demand_at_most_once_per_interval(tree):
    clock = Clock()
    r = CgroupResolver(str(tree), rescan_interval=2.0, clock=clock, handles=False)
    r.scan()
    (tree / "system.slice" / "cron.service").mkdir()
    cron = ino(tree / "system.slice" / "cron.service")
    r.sweep()
    assert r.resolve(cron) is None  # a sweep only looks for what is gone
    assert r.resolve_many([cron]) == {cron: None}  # scanned just now: not again yet
    clock.now += 2.0
    assert r.resolve_many([cron])[cron].path == "/system.slice/cron.service"
    assert r.scans == 2
