"""The chart's capability list is what this kernel really asks for: run the
agent's kind of bpf()/perf_event_open() calls, and flows' conntrack netlink
requests, with exactly the chart's capabilities (setpriv), then with each one
removed; and show why conntrack needs the host network namespace."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from podsight.kernel.mounts import tracefs_root  # the agent's own code mounts it where missing
from tests.deploy.chart import agent_container, one, render, render_scenario

pytestmark = pytest.mark.root

PROBE = Path(__file__).with_name("bpf_caps_probe.py")
CORE_OPS = ["map_create_ringbuf", "prog_load_cgroup_skb", "link_cgroup_skb", "prog_load_tracepoint",
            "prog_load_tp_btf", "prog_load_raw_tp", "prog_test_run_raw_tp", "perf_event_open_tracepoint",
            "prog_load_uprobe_multi", "link_uprobe_multi", "read_other_users_maps", "open_other_users_root",
            # flows (config.flows.conntrack, on by default): a conntrack dump and its event groups.
            "conntrack_dump", "conntrack_events"]


CAP_NUMBERS = {"NET_ADMIN": 12, "SYS_PTRACE": 19, "SYS_ADMIN": 21, "SYS_RESOURCE": 24, "PERFMON": 38, "BPF": 39}
# Only relevant on kernels < 5.11, so the probe may run without it where the
# test machine's own bounding set lacks it (some CI sandboxes drop it).
OPTIONAL_HERE = {"SYS_RESOURCE"}


def _bounding_set() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapBnd:"):
            return int(line.split()[1], 16)
    raise AssertionError("no CapBnd in /proc/self/status")


def _setpriv(caps: list[str]) -> list[str]:
    """The command prefix: uid 0 with exactly ``caps`` (drop: [ALL] + add: caps)."""
    if not shutil.which("setpriv"):
        pytest.fail("setpriv (util-linux) is needed to run with a reduced capability set")
    bnd = _bounding_set()
    missing = {c for c in caps if not bnd >> CAP_NUMBERS[c] & 1}
    assert missing <= OPTIONAL_HERE, f"this test runs without {missing}: cannot check the chart's set"
    caps = [c for c in caps if c not in missing]
    capset = ",".join(["-all", *(f"+{c.lower()}" for c in caps)])
    return ["setpriv", f"--inh-caps={capset}", f"--ambient-caps={capset}", f"--bounding-set={capset}", "--"]


def probe(caps: list[str], cgroup_dir: Path, other_pid: int) -> dict[str, str]:
    cmd = [*_setpriv(caps), sys.executable, str(PROBE), str(cgroup_dir), tracefs_root(), str(other_pid)]
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
    # flows' conntrack: nfnetlink refuses dumps and event groups without it.
    ("NET_ADMIN", "conntrack_dump"),
    ("NET_ADMIN", "conntrack_events"),
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


# ---------------------------------------------------------------- conntrack

def test_conntrack_off_keeps_the_same_set(cgroup_dir, other_user):
    """config.flows.conntrack: false takes hostNetwork away, not NET_ADMIN:
    the base set has it for the cgroup_skb links, and with it the dump works
    (in whatever network namespace the agent is: see the netns test below)."""
    on = chart_caps(render_scenario(None))
    off = chart_caps(render(sets=["config.flows.conntrack=false"]))
    assert off == on and "NET_ADMIN" in off
    res = probe(off, cgroup_dir, other_user)
    assert (res["link_cgroup_skb"], res["conntrack_dump"], res["conntrack_events"]) == ("ok", "ok", "ok")


def test_chart_adds_net_admin_for_conntrack_to_a_list_without_it(cgroup_dir, other_user):
    """A capability list of the user's without NET_ADMIN (the network probe
    off, so no cgroup_skb link): the chart adds it when conntrack is on, and
    the conntrack requests need exactly that."""
    base = ["config.probes.network.enabled=false", "securityContext.capabilities.add={BPF,PERFMON,SYS_RESOURCE}"]
    on = chart_caps(render(sets=base))
    off = chart_caps(render(sets=[*base, "config.flows.conntrack=false"]))
    assert on == ["BPF", "PERFMON", "SYS_RESOURCE", "SYS_PTRACE", "NET_ADMIN"]
    assert off == ["BPF", "PERFMON", "SYS_RESOURCE", "SYS_PTRACE"]
    res_on, res_off = probe(on, cgroup_dir, other_user), probe(off, cgroup_dir, other_user)
    assert (res_on["conntrack_dump"], res_on["conntrack_events"]) == ("ok", "ok")
    assert (res_off["conntrack_dump"], res_off["conntrack_events"]) == ("EPERM", "EPERM")


CT_ENTRY = ["192.0.2.61", "192.0.2.62", 6, 40000 + os.getpid() % 20000, 4262]  # TEST-NET-1, tcp


@pytest.fixture
def conntrack_entry():
    """One entry in the host network namespace's conntrack table, as a
    kube-proxy DNAT'd connection leaves there (ctnetlink insert, conntrack(8))."""
    if not shutil.which("conntrack"):
        pytest.fail("conntrack (conntrack-tools) is needed: the project's setup installs it")
    src, dst, _, sport, dport = CT_ENTRY
    tup = ["-p", "tcp", "-s", src, "-d", dst, "--sport", str(sport), "--dport", str(dport)]
    subprocess.run(["conntrack", "-D", *tup], capture_output=True)  # a leftover of a killed run
    subprocess.run(["conntrack", "-I", *tup, "--state", "ESTABLISHED", "--timeout", "120", "-u", "ASSURED"],
                   check=True, capture_output=True, text=True)
    try:
        yield CT_ENTRY
    finally:
        subprocess.run(["conntrack", "-D", *tup], capture_output=True)


def conntrack_probe(caps: list[str], own_netns: bool, *mode: str) -> dict:
    cmd = [*_setpriv(caps), sys.executable, str(PROBE), *(mode or ["--conntrack"])]
    if own_netns:  # what the agent pod has without hostNetwork
        cmd = ["unshare", "--net", "--", *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_conntrack_table_is_the_host_network_namespaces(conntrack_entry):
    """Why the chart sets hostNetwork for conntrack: the table is per network
    namespace. With the chart's set, a dump in the node's namespace (where
    kube-proxy's NAT happens; hostNetwork) returns the entry; the same dump in
    a namespace of its own (the agent pod's without hostNetwork) succeeds,
    with the same capabilities, and returns nothing: no backend, no error."""
    objs = render_scenario(None)
    assert one(objs, "DaemonSet")["spec"]["template"]["spec"]["hostNetwork"] is True
    caps = chart_caps(objs)
    host = conntrack_probe(caps, own_netns=False)
    assert host["conntrack_dump"] == "ok" and conntrack_entry in host["tuples"], host
    pod = conntrack_probe(caps, own_netns=True)
    assert pod == {"conntrack_dump": "ok", "tuples": []}, pod


def test_entering_the_host_network_namespace_needs_sys_admin():
    """The alternative to hostNetwork, setns() from the pod's own network
    namespace into the node's (/proc/<pid>/ns/net of a host process, through
    the host's /proc), is refused to the chart's set (SYS_PTRACE lets it open
    the file, not join) and needs CAP_SYS_ADMIN, which the chart does not grant.
    The host process is this test's own (in the host network namespace)."""
    caps = chart_caps(render_scenario(None))
    assert "SYS_ADMIN" not in caps
    host = str(os.getpid())
    assert conntrack_probe(caps, True, "--setns-net", host) == {"setns_host_netns": "EPERM"}
    assert conntrack_probe([*caps, "SYS_ADMIN"], True, "--setns-net", host) == {"setns_host_netns": "ok"}
