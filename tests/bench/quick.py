"""`bench/run.py --quick` from a test: the run, the sanity of a summary, and
what a run must not leave behind."""
from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path

from podsight.kernel.mounts import cgroup2_root
from tests.bench.conftest import REPO
from benchlib.env import LOCK


def quick_run(out: Path, *args: str, timeout: float = 600) -> tuple[dict, str]:
    """Run the quick bench into ``out``; its JSON and what it printed."""
    r = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "--quick", *args, "--output", str(out)],
                       capture_output=True, text=True, timeout=timeout, cwd=REPO)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return json.loads(out.read_text()), r.stdout


def sane(s: dict, lo: float, hi: float) -> None:
    """A summary of at least one sample, ordered, inside [lo, hi]."""
    assert s["n"] >= 1
    assert lo <= s["min"] <= s["median"] <= s["max"] <= hi, s


def assert_nothing_left(processes: tuple[str, ...] = ()) -> None:
    """No bench netns, cgroup or (live) process named in ``processes``.
    Looked at under the bench's own lock: another benchmark may have started since."""
    fd = os.open(LOCK, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert "psb-" not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert not (Path(cgroup2_root()) / "psbench").exists()
        if processes:
            ps = subprocess.run(["ps", "-eo", "stat=,comm="], capture_output=True, text=True).stdout.splitlines()
            assert not [p for p in ps if p.split()[-1] in processes and not p.startswith("Z")], ps
    finally:
        os.close(fd)
