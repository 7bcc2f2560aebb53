"""cgroup ids opened by their kernel file handle, on the real cgroup2 mount."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from podsight.identity import cgroup_handles
from podsight.identity.resolver import CgroupResolver
from podsight.kernel.mounts import cgroup2_root

pytestmark = pytest.mark.root
SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture
def cgroups():
    """A throwaway subtree in the real cgroup2 hierarchy."""
    root = cgroup2_root()
    top = Path(root) / f"podsight-test-{uuid.uuid4().hex[:8]}"

    def make(rel: str) -> int:
        (top / rel).mkdir(parents=True)
        return (top / rel).stat().st_ino

    yield root, top, make
    if top.exists():
        for d, _, _ in sorted(os.walk(top), key=lambda w: -len(w[0])):  # children first
            os.rmdir(d)


def test_an_id_opens_its_directory(cgroups):
    root, top, make = cgroups
    cid = make("kubepods.slice/pod-a")
    fd = cgroup_handles.open_root(root)
    try:
        assert cgroup_handles.path_of(root, fd, cid) == f"/{top.name}/kubepods.slice/pod-a"
        assert cgroup_handles.path_of(root, fd, os.stat(root).st_ino) == "/"
        (top / "kubepods.slice" / "pod-a").rmdir()
        assert cgroup_handles.path_of(root, fd, cid) is None  # gone: an answer, not an error
    finally:
        os.close(fd)


def test_a_new_cgroup_resolves_without_a_walk(cgroups):
    root, top, make = cgroups
    r = CgroupResolver(root)
    r.scan()
    cid = make("kubepods.slice/kubepods-besteffort.slice/pod-b")
    info = r.resolve_many([cid])[cid]
    assert info.path == f"/{top.name}/kubepods.slice/kubepods-besteffort.slice/pod-b"
    assert r.scans == 1 and r.resolve(cid) is info


def test_a_root_given_through_a_symlink_still_resolves_by_handle(cgroups, tmp_path):
    root, top, make = cgroups
    link = tmp_path / "cgroup"
    link.symlink_to(root)
    cid = make("pod-s")
    r = CgroupResolver(str(link))
    assert r.resolve_many([cid])[cid].path == f"/{top.name}/pod-s" and r.scans == 0


def test_without_the_capability_the_resolver_walks(cgroups):
    """No CAP_DAC_READ_SEARCH: the handle says so once, and every lookup walks."""
    if not shutil.which("setpriv"):
        pytest.skip("needs setpriv (util-linux) to drop a capability")
    root, top, make = cgroups
    cid = make("pod-c")
    code = f"""
import sys; sys.path.insert(0, {str(SRC)!r})
from podsight.identity.resolver import CgroupResolver
r = CgroupResolver({root!r}, rescan_interval=0)
print(r.resolve_many([{cid}])[{cid}].path, r.scans, r._handles)
"""
    out = subprocess.run(["setpriv", "--bounding-set", "-dac_read_search", sys.executable, "-c", code],
                         capture_output=True, text=True, check=True)
    assert out.stdout.split() == [f"/{top.name}/pod-c", "1", "False"], out.stderr
