"""A host cgroup that is deleted keeps its bytes in its group's series: the
agent moves its last map values into the ledger (Ledger.retire), so
podsight_network_bytes_total{host_cgroup=...} never goes backwards."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from podsight.kernel.mounts import cgroup2_root
from tests.support.agent import AgentProcess
from tests.support.pods import _rmdir

pytestmark = pytest.mark.root

# Only the network probe: this is about its map and the ledger. A sweep every
# 2.5 s (five times rescan_interval, at least 0.5 s each).
CONFIG = "rescan_interval: 200ms\nprobes:\n  tcp:\n    enabled: false\n"
METRIC = "podsight_network_bytes_total"

# Sends NBYTES over loopback to itself (both sockets in this cgroup), closes
# both, says "done" and waits to be killed.
_SEND = r"""
import socket, sys
n = int(sys.argv[1])
lst = socket.socket(); lst.bind(("127.0.0.1", 0)); lst.listen(1)
c = socket.create_connection(lst.getsockname()); s, _ = lst.accept()
c.sendall(b"x" * n); c.shutdown(socket.SHUT_WR)
got = 0
while chunk := s.recv(65536):
    got += len(chunk)
c.close(); s.close(); lst.close()
print("done" if got == n else f"short {got}", flush=True)
sys.stdin.read()
"""


def _send_from(cgroup: Path, nbytes: int) -> subprocess.Popen:
    """A process inside ``cgroup`` (joined before exec) that has sent ``nbytes``."""
    def enter() -> None:
        (cgroup / "cgroup.procs").write_text(str(os.getpid()))

    p = subprocess.Popen([sys.executable, "-c", _SEND, str(nbytes)], preexec_fn=enter, text=True,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout.readline().strip() == "done", p.stderr.read()
    return p


def _map_keys(pid: int, name: str) -> set[int]:
    """Keys (cgroup ids) of map ``name`` held by process ``pid``, read with bpftool, not by the agent."""
    for fd in Path(f"/proc/{pid}/fdinfo").iterdir():
        try:
            m = re.search(r"^map_id:\s+(\d+)$", fd.read_text(), re.M)
        except FileNotFoundError:
            continue
        if not m:
            continue
        info = json.loads(subprocess.run(["bpftool", "-j", "map", "show", "id", m.group(1)],
                                         capture_output=True, text=True, check=True).stdout)
        if info.get("name") == name:
            dump = json.loads(subprocess.run(["bpftool", "-j", "map", "dump", "id", m.group(1)],
                                             capture_output=True, text=True, check=True).stdout)
            return {int.from_bytes(bytes(int(x, 16) for x in e["key"][:8]), "little") for e in dump}
    raise AssertionError(f"process {pid} holds no map {name}")


@pytest.fixture
def host_group():
    """<root>/podsight-test-<id>.slice/retire.scope with two child cgroups; all removed afterwards,
    with the processes the test started in them (appended to ``group.procs``)."""
    top = Path(cgroup2_root()) / f"podsight-test-{uuid.uuid4().hex[:8]}.slice"
    group = top / "retire.scope"
    (group / "gone").mkdir(parents=True)
    (group / "stays").mkdir()
    procs: list[subprocess.Popen] = []
    try:
        yield group, procs
    finally:
        for p in procs:
            p.kill()
            p.wait()
        for d in (group / "gone", group / "stays", group, top):
            _rmdir(d)


def test_deleted_host_cgroup_bytes_stay_in_its_group(host_group):
    group, procs = host_group
    label = "/".join(group.parts[-2:])  # host_cgroup: the first two levels of the path
    gone, stays = group / "gone", group / "stays"
    gone_id = os.stat(gone).st_ino
    seen: list[tuple[float, float]] = []

    def group_bytes(s) -> tuple[float, float]:
        """(egress, ingress) of the group; each value read must not be below the one before."""
        v = (s.value(METRIC, host_cgroup=label, pod="", direction="egress"),
             s.value(METRIC, host_cgroup=label, pod="", direction="ingress"))
        if seen:
            assert v[0] >= seen[-1][0] and v[1] >= seen[-1][1], f"{label} went backwards: {seen[-1]} -> {v}"
        seen.append(v)
        return v

    with AgentProcess(config=CONFIG) as agent:
        procs.append(_send_from(stays, 100_000))
        sender = _send_from(gone, 1_000_000)
        procs.append(sender)
        # Both cgroups' traffic in the series (loopback: each byte leaves and enters the group).
        s = agent.wait_for(lambda s: min(group_bytes(s)) >= 1_100_000, what=f"{label} to count 1.1 MB both ways")
        assert gone_id in _map_keys(agent.proc.pid, "network_traffic")
        before = group_bytes(s)

        sender.kill()
        sender.wait()
        _rmdir(gone)
        # The sweep notices the cgroup is gone and deletes its map entry, moving
        # its counts into the ledger; every scrape meanwhile is checked too.
        deadline = time.monotonic() + 20
        while gone_id in _map_keys(agent.proc.pid, "network_traffic"):
            assert time.monotonic() < deadline, "the agent never freed the deleted cgroup's map entry"
            group_bytes(agent.scrape())
            time.sleep(0.2)
        after = group_bytes(agent.scrape())
        # The deleted cgroup's 1 MB is still in the total.
        assert after[0] >= before[0] and after[1] >= before[1], (before, after)

        # The group lives on: new traffic of its remaining cgroup adds on top.
        procs.append(_send_from(stays, 200_000))
        agent.wait_for(lambda s: min(group_bytes(s)) >= min(after) + 200_000, what=f"{label} to add 200 kB more")
