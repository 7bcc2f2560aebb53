"""cgroup v2 discovery from mountinfo (pure: a fake mountinfo file)."""
from __future__ import annotations

import pytest

from podsight.kernel.mounts import MountError, cgroup2_root

HYBRID = """\
25 30 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw
27 25 0:24 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
"""
UNIFIED = "26 25 0:23 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n"
IN_POD = UNIFIED + "40 30 0:23 / /host/sys/fs/cgroup ro,nosuid - cgroup2 cgroup2 rw\n"
IN_POD_HYBRID = "40 30 0:24 / /host/sys/fs/cgroup ro - tmpfs tmpfs ro\n41 40 0:23 / /host/sys/fs/cgroup/unified ro - cgroup2 cgroup2 rw\n"


@pytest.mark.parametrize("text,configured,expected", [
    (HYBRID, "", "/sys/fs/cgroup/unified"),
    (UNIFIED, "", "/sys/fs/cgroup"),
    (IN_POD, "/host/sys/fs/cgroup", "/host/sys/fs/cgroup"),
    (IN_POD_HYBRID, "/host/sys/fs/cgroup/", "/host/sys/fs/cgroup/unified"),
    (HYBRID, "/sys/fs/cgroup", "/sys/fs/cgroup/unified"),
])
def test_detects_cgroup2(tmp_path, text, configured, expected):
    f = tmp_path / "mountinfo"
    f.write_text(text)
    assert cgroup2_root(configured, str(f)) == expected


def test_no_cgroup2_is_a_clear_error(tmp_path):
    f = tmp_path / "mountinfo"
    f.write_text("27 25 0:24 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n")
    with pytest.raises(MountError, match="no cgroup v2"):
        cgroup2_root("", str(f))
    with pytest.raises(MountError, match="is not a cgroup v2 mount"):
        cgroup2_root("/sys/fs/cgroup/memory", str(f))
