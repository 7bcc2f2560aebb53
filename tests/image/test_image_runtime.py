"""The image built from the repository's Dockerfile (scripts/image.sh), run
with the chart's own rendered pod spec (tests/image/podspec.py) by podman
and runc: every probe up, /metrics served, a podman container under a
kubelet-style cgroup parent counted for its pod (its payload plus at most
the IP and TCP headers of each packet: not yet exact, see the byte check),
SIGTERM exits 0 and leaves no bpf link; under the runtime's default seccomp
profile the agent comes up degraded.

Networks: the agent pod's own (``--network none``: the chart sets no
hostNetwork) reached through its netns; never podman's bridge. Storage: the
dedicated root of scripts/podman-test-env.sh. Containers are removed, and
the workload's cgroups with them, even when a test fails."""
from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pytest

from podsight.kernel.mounts import cgroup2_root, tracefs_root
from tests.deploy.chart import one, render
from tests.image.podspec import metrics_port, podman_run_args
from tests.image.runtime import (Container, bpf_link_ids, build_image, cleanup_leftovers, existing_cgroups, podman,
                                remove_cgroups)
from tests.support.agent import Scrape

pytestmark = pytest.mark.root

PREFIX = "psi-"
NODE = "ps-image-node"
PROBES = {"network", "tcp", "tcp_rtt", "network_drops"}  # security is off by default
PAYLOAD = 1_000_003
ETH_HLEN = 14
MAX_HDR = 80  # IPv4 (20) + TCP with the largest options (60)

WORKLOAD = r"""
import socket, sys, threading, time
n = int(sys.argv[1])
srv = socket.socket(); srv.bind(("127.0.0.1", 5201)); srv.listen(1)
got = []
def receive():
    c, _ = srv.accept(); total = 0
    while True:
        b = c.recv(1 << 16)
        if not b:
            break
        total += len(b)
    got.append(total); c.close()
t = threading.Thread(target=receive); t.start()
cl = socket.create_connection(("127.0.0.1", 5201)); cl.sendall(b"x" * n); cl.close()
t.join(); srv.close()
print("received", got[0], flush=True)
time.sleep(3600)
"""


@pytest.fixture(scope="module")
def image():
    cleanup_leftovers(PREFIX)
    name, took = build_image()
    print(f"image {name} ready in {took:.1f}s")
    return name


@pytest.fixture
def rendered(tmp_path):
    objs = render()
    template = one(objs, "DaemonSet")["spec"]["template"]
    cm = one(objs, "ConfigMap", "podsight")
    d = tmp_path / "configmap-podsight"
    d.mkdir()
    for k, v in cm["data"].items():
        (d / k).write_text(v)
    return template, {"podsight": d}


# What podman/runc create: the workload's pod cgroups (cgroupfs driver)
# and podman's default parent of the agent's. Removed unless they were there.
CGROUP_DIRS = ["kubepods", "kubepods/besteffort", "libpod_parent"]


@pytest.fixture
def containers():
    made: list[Container] = []
    pods: list[str] = []
    keep = set().union(*(existing_cgroups(r) for r in CGROUP_DIRS))

    def run(name: str, args: list[str]) -> Container:
        c = Container(name, args)
        made.append(c)
        return c.start()

    try:
        yield run
    finally:
        for c in reversed(made):
            c.remove()
            parent = c.run_args[c.run_args.index("--cgroup-parent") + 1] if "--cgroup-parent" in c.run_args else ""
            if parent:
                pods.append(parent.strip("/"))
        remove_cgroups([*pods, *CGROUP_DIRS], keep)


def wait_scrape(agent: Container, port: int, predicate, what: str, timeout: float = 30, seen=None) -> Scrape:
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            status, body = agent.get(port, "/metrics")
            if status == 200:
                last = Scrape(body)
                if predicate(last):
                    return last
        except ConnectionError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}\nlast: {seen}\nlogs:\n{agent.logs()[-3000:]}")


def probes_up(s: Scrape) -> dict[str, float]:
    return {labels["probe"]: v for labels, v in s.series("podsight_probe_up")}


def start_agent(containers, image, rendered, **kw) -> tuple[Container, int]:
    template, cm_dirs = rendered
    tracefs_root()  # the chart mounts the node's tracefs: this namespace has none until mounted
    name = f"{PREFIX}agent-{os.getpid()}"
    args = podman_run_args(template, image=image, node_name=NODE, name=name, configmap_dirs=cm_dirs, **kw)
    return containers(name, args), metrics_port(template)


def lo_counters(c: Container) -> dict[str, int]:
    """lo's tx/rx bytes and packets in the container's netns (its only device)."""
    text = c.in_netns("cat", "/proc/net/dev").stdout
    (line,) = [l for l in text.splitlines() if l.strip().startswith("lo:")]
    f = [int(x) for x in line.split(":", 1)[1].split()]
    return {"rx_bytes": f[0], "rx_packets": f[1], "tx_bytes": f[8], "tx_packets": f[9]}


def test_chart_pod_spec_runs_the_built_image(image, rendered, containers):
    links_before = bpf_link_ids()
    agent, port = start_agent(containers, image, rendered)
    s = wait_scrape(agent, port, lambda s: PROBES <= set(probes_up(s)), "podsight_probe_up for every probe")
    assert probes_up(s) == {p: 1.0 for p in PROBES}, agent.logs()[-3000:]
    assert s.value("podsight_build_info") if s.series("podsight_build_info") else True
    status, body = agent.get(port, "/readyz")
    assert status == 200 and "degraded" not in body, body
    assert agent.get(port, "/healthz")[0] == 200

    # A workload pod: a podman container in the kubelet's cgroupfs layout
    # (kubepods/besteffort/pod<uid>/...), with only lo in its netns.
    uid = str(uuid.uuid4())
    wname = f"{PREFIX}work-{os.getpid()}"
    work = containers(wname, ["--name", wname, "--network", "none",
                              "--cgroup-parent", f"/kubepods/besteffort/pod{uid}",
                              "--entrypoint", "python3", image, "-c", WORKLOAD, str(PAYLOAD)])
    deadline = time.monotonic() + 30
    while "received" not in work.logs():
        assert time.monotonic() < deadline, work.logs()
        time.sleep(0.2)
    assert f"received {PAYLOAD}" in work.logs()
    cgroup = Path(f"/proc/{work.pid}/cgroup").read_text()
    assert f"/kubepods/besteffort/pod{uid}/" in cgroup, cgroup
    assert Path(cgroup2_root(), f"kubepods/besteffort/pod{uid}").is_dir(), "runc made no cgroup v2 directory"

    seen: dict = {}

    def settled(s: Scrape) -> bool:
        # Both directions counted and no longer moving (the last ACKs landed).
        lo = seen["lo"] = lo_counters(work)
        now = {l["direction"]: v for l, v in s.series("podsight_network_bytes_total") if l["pod"] == uid}
        prev, seen["bytes"] = seen.get("bytes"), now
        return prev == now and set(now) == {"egress", "ingress"} and \
            all(PAYLOAD <= v <= PAYLOAD + lo["tx_packets"] * MAX_HDR for v in now.values())

    s = wait_scrape(agent, port, settled, f"pod {uid}'s bytes: the payload plus at most a header per packet",
                    seen=seen)
    series = [l for l, _ in s.series("podsight_network_bytes_total") if l["pod"] == uid]
    assert {l["namespace"] for l in series} == {""}, series  # no API server: no namespace
    # Known gap (see deploy/README.md): on lo, the agent's counts are not yet
    # equal to lo's tx_bytes less 14 per frame (egress was 12 bytes over,
    # ingress 480 over in one run): not asserted until explained.
    print("pod bytes", seen)
    work.remove()

    # SIGTERM (podman stop): exit 0, every link the agent made gone.
    assert bpf_link_ids() - links_before, "the running agent holds no bpf link"
    podman("stop", "-t", "30", agent.name)
    state = agent.inspect()["State"]
    assert state["ExitCode"] == 0, (state, agent.logs()[-3000:])
    assert bpf_link_ids() - links_before == set(), "bpf links left after SIGTERM"


def test_runtime_default_seccomp_leaves_the_agent_degraded(image, rendered, containers):
    """Without the chart's seccompProfile (what SeccompDefault does), podman's
    default profile (containers/common) refuses bpf() without CAP_SYS_ADMIN."""
    template, cm_dirs = rendered
    for c in template["spec"]["containers"]:
        c["securityContext"].pop("seccompProfile", None)
    agent, port = start_agent(containers, image, (template, cm_dirs))
    s = wait_scrape(agent, port, lambda s: "network" in probes_up(s), "podsight_probe_up")
    assert probes_up(s)["network"] == 0, probes_up(s)
    status, body = agent.get(port, "/readyz")
    assert status == 200 and "degraded" in body, (status, body)
