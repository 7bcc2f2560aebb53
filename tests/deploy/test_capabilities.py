"""The chart's capability list is what this kernel really asks for: run the
agent's kind of bpf()/perf_event_open() calls with exactly the chart's
capabilities (setpriv), then with each one removed."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from podsight.kernel.mounts import tracefs_root  # the agent's own code mounts it where missing
from tests.deploy.chart import agent_container, render, render_scenario

pytestmark = pytest.mark.root

PROBE = Path(__file__).with_name("bpf_caps_probe.py")
CORE_OPS = ["map_create_ringbuf", "prog_load_cgroup_skb", "link_cgroup_skb", "prog_load_tracepoint",
            "prog_load_tp_btf", "prog_load_raw_tp", "prog_test_run_raw_tp", "perf_event_open_tracepoint",
            "prog_load_uprobe_multi", "link_uprobe_multi", "read_other_users_maps", "open_other_users_root"]


CAP_NUMBERS = {"NET_ADMIN": 12, "SYS_PTRACE": 19, "SYS_ADMIN": 21, "SYS_RESOURCE": 24, "PERFMON": 38, "BPF": 39}
# Only relevant on kernels < 5.11, so the probe may run without it where the
# test machine's own bounding set lacks it (some CI sandboxes drop it).
OPTIONAL_HERE = {"SYS_RESOURCE"}


def _bounding_set() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapBnd:"):
            return int(line.split()[1], 16)
    raise AssertionError("no CapBnd in /proc/self/status")


def probe(caps: list[str], cgroup_dir: Path, other_pid: int) -> dict[str, str]:
    if not shutil.which("setpriv"):
        pytest.fail("setpriv (util-linux) is needed to run with a reduced capability set")
    bnd = _bounding_set()
    missing = {c for c in caps if not bnd >> CAP_NUMBERS[c] & 1}
    assert missing <= OPTIONAL_HERE, f"this test runs without {missing}: cannot check the chart's set"
    caps = [c for c in caps if c not in missing]
    capset = ",".join(["-all", *(f"+{c.lower()}" for c in caps)])
    cmd = ["setpriv", f"--inh-caps={capset}", f"--ambient-caps={capset}", f"--bounding-set={capset}",
           "--", sys.executable, str(PROBE), str(cgroup_dir), tracefs_root(), str(other_pid)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def chart_caps(objs) -> list[str]:
    return agent_container(objs)["securityContext"]["capabilities"]["add"]


def test_chart_capabilities_are_enough(cgroup_dir, other_user):
    res = probe(chart_caps(render_scenario(None)), cgroup_dir, other_user)
    assert {op: res[op] for op in CORE_OPS} == {op: "ok" for op in CORE_OPS}


@pytest.mark.parametrize("dropped,breaks", [
    ("BPF", "map_create_ringbuf"),
    ("PERFMON", "prog_load_tracepoint"),
    ("PERFMON", "prog_load_tp_btf"),
    ("PERFMON", "prog_load_raw_tp"),
    ("NET_ADMIN", "link_cgroup_skb"),
    ("PERFMON", "prog_load_uprobe_multi"),
    # The tls probe (on by default) opens libssl through /proc/<pid>/root of
    # other users' processes.  Their maps this kernel already shows to CAP_PERFMON.
    ("SYS_PTRACE", "open_other_users_root"),
])
def test_each_chart_capability_is_needed(dropped, breaks, cgroup_dir, other_user):
    # SYS_RESOURCE is not probed: it only matters on kernels < 5.11 (memlock).
    caps = [c for c in chart_caps(render_scenario(None)) if c != dropped]
    res = probe(caps, cgroup_dir, other_user)
    assert res[breaks] in ("EPERM", "EACCES"), res


def test_bpf_run_time_stats_need_sys_admin(cgroup_dir, other_user):
    """Why extraCapabilities documents SYS_ADMIN: BPF_ENABLE_STATS."""
    assert probe(chart_caps(render_scenario(None)), cgroup_dir, other_user)["enable_stats"] == "EPERM"
    with_admin = chart_caps(render(sets=["extraCapabilities={SYS_ADMIN}"]))
    assert probe(with_admin, cgroup_dir, other_user)["enable_stats"] == "ok"
