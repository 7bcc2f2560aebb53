"""Kubernetes labels on real traffic: simulated pods in the kernel, pod objects
from the test API server (a local server speaking the real list/watch
protocol, tests/support/apiserver.py), through the agent's real client."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.agent import AgentProcess
from tests.support.apiserver import PodApiServer, make_pod, start_container, write_kubeconfig
from tests.support.traffic import transfer as send

pytestmark = pytest.mark.root

NODE = "node-a"
IMAGE = "registry.example/shop/web:1.4.2"


def served(pod, name: str, namespace: str = "shop", **kw) -> dict:
    obj = make_pod(name, namespace, NODE, uid=pod.uid, containers=[("app", IMAGE)], **kw)
    start_container(obj, "app", pod.container_id)
    return obj


@pytest.fixture
def api(tmp_path):
    server = PodApiServer().start()
    try:
        server.kubeconfig = str(write_kubeconfig(tmp_path / "kubeconfig", server.url))
        yield server
    finally:
        server.stop()


def agent_for(api, extra: str = "") -> AgentProcess:
    cfg = f"kubernetes:\n  enabled: \"true\"\n  kubeconfig: {api.kubeconfig}\n{extra}"
    return AgentProcess("--node-name", NODE, config=cfg)



def test_labels_match_the_served_objects(node, api):
    a, b = node.pod("a"), node.pod("b")
    api.add_pod(served(a, "web-5d8f7c9b4-x2x9q", owner=("ReplicaSet", "web-5d8f7c9b4"),
                       labels={"app": "web", "pod-template-hash": "5d8f7c9b4", "team": "payments"}))
    api.add_pod(served(b, "db-0", namespace="data", owner=("StatefulSet", "db")))
    extra = "labels:\n  image: true\n  workload: true\n  pod_labels: [team]\n"
    with agent_for(api, extra) as agent:
        send(a, b, 300_007, 7001)
        s = agent.wait_for(lambda s: s.value("podsight_network_bytes_total", pod="db-0", direction="ingress") >= 300_007,
                           what="db-0 to receive the 300,007 bytes")
        (labels, value), = s.series("podsight_network_bytes_total", pod="web-5d8f7c9b4-x2x9q", direction="egress")
        assert value >= 300_007
        assert labels == {
            "node": NODE, "namespace": "shop", "pod": "web-5d8f7c9b4-x2x9q", "container": "app",
            "host_cgroup": "", "image": IMAGE, "workload": "web", "workload_kind": "Deployment",
            "label_team": "payments", "direction": "egress",
        }
        (db, _), = s.series("podsight_network_bytes_total", pod="db-0", direction="ingress")
        assert (db["namespace"], db["workload"], db["workload_kind"], db["label_team"]) == ("data", "db", "StatefulSet", "")
        assert s.value("podsight_kubernetes_api_up") == 1
        # Nothing of these pods is left under the cgroup-derived fallback labels.
        assert not s.series("podsight_network_bytes_total", pod=a.uid)
        assert not s.series("podsight_network_bytes_total", pod=b.uid)


def test_metadata_arriving_late_loses_no_bytes(node, api):
    a, b = node.pod("a"), node.pod("b")
    api.add_pod(served(b, "sink-1"))
    with agent_for(api) as agent:
        send(a, b, 500_009, 7002)
        # The receiving pod has its metadata: once its side shows, the agent has
        # read the map holding A's side too. A's pod object is not served yet.
        early = agent.wait_for(lambda s: s.value("podsight_network_bytes_total", pod="sink-1", direction="ingress")
                               >= 500_009, what="sink-1 to receive the 500,009 bytes")
        assert a.cgroup_id in _map_keys(agent, "network_traffic")  # A's bytes are in the kernel ...
        # ... and held back while metadata may come: under no label at all.
        assert not early.series("podsight_network_bytes_total", pod=a.uid)
        assert early.value("podsight_network_bytes_total", direction="egress", host_cgroup="") \
            == early.value("podsight_network_bytes_total", pod="sink-1", direction="egress"), early.text
        api.add_pod(served(a, "late-1"))
        s = agent.wait_for(lambda s: s.value("podsight_network_bytes_total", pod="late-1", direction="egress") > 0,
                           what="late-1's egress once its object is served")
        sent = s.value("podsight_network_bytes_total", pod="late-1", direction="egress")
        received = s.value("podsight_network_bytes_total", pod="sink-1", direction="ingress")
        assert sent >= 500_009 and sent == received, (sent, received)


def _map_keys(agent: AgentProcess, name: str) -> set[int]:
    """Keys (cgroup ids) of the agent's own map ``name``, read with bpftool: independent of the agent."""
    ids = set()
    for fd in Path(f"/proc/{agent.proc.pid}/fdinfo").iterdir():
        try:
            text = fd.read_text()
        except FileNotFoundError:
            continue  # an fd (e.g. a scrape's socket) closed while we looked
        m = re.search(r"^map_id:\s+(\d+)$", text, re.M)
        if m:
            ids.add(m.group(1))
    for map_id in ids:
        info = json.loads(subprocess.run(["bpftool", "-j", "map", "show", "id", map_id],
                                         capture_output=True, text=True, check=True).stdout)
        if info.get("name") != name:
            continue
        dump = json.loads(subprocess.run(["bpftool", "-j", "map", "dump", "id", map_id],
                                         capture_output=True, text=True, check=True).stdout)
        return {int.from_bytes(bytes(int(x, 16) for x in e["key"][:8]), "little") for e in dump}
    raise AssertionError(f"agent has no map {name}")


def test_deleted_pod_retires_after_grace_and_frees_map_entries(node, api):
    a, b = node.pod("a"), node.pod("b")
    api.add_pod(served(a, "gone-1"))
    api.add_pod(served(b, "stays-1"))
    cfg_extra = "  grace_period: 4s\nrescan_interval: 500ms\n"
    with AgentProcess("--node-name", NODE, config=(
            f"kubernetes:\n  enabled: \"true\"\n  kubeconfig: {api.kubeconfig}\n{cfg_extra}")) as agent:
        send(a, b, 100_003, 7003)
        agent.wait_for(lambda s: s.value("podsight_network_bytes_total", pod="gone-1") > 0, what="gone-1's series")
        a_id = a.cgroup_id
        assert a_id in _map_keys(agent, "network_traffic")
        api.delete_pod(a.uid)
        node.remove(a)  # the kubelet removes the cgroup
        t0 = time.monotonic()
        s = agent.scrape()
        assert s.value("podsight_network_bytes_total", pod="gone-1") > 0, "final values stay during the grace period"
        s = agent.wait_for(lambda s: not s.series("podsight_network_bytes_total", pod="gone-1"), timeout=15,
                           what="gone-1's series to leave after the grace period")
        assert time.monotonic() - t0 >= 3.0
        # Late packets of A's sockets may recreate an entry; the next collection frees it again.
        deadline = time.monotonic() + 15
        while a_id in _map_keys(agent, "network_traffic") or a_id in _map_keys(agent, "tcp_stats"):
            assert time.monotonic() < deadline, f"map entries of deleted cgroup {a_id} remain"
            agent.scrape()  # scrapes count the misses that mark an id unresolvable
            time.sleep(0.5)
        assert s.series("podsight_network_bytes_total", pod="stays-1")


def test_api_outage_keeps_metrics_and_recovers(node, api):
    a, b = node.pod("a"), node.pod("b")
    api.add_pod(served(a, "src-1"))
    api.add_pod(served(b, "dst-1"))
    with agent_for(api) as agent:
        send(a, b, 100_000, 7004)
        agent.wait_for(lambda s: s.value("podsight_network_bytes_total", pod="src-1") > 0, what="src-1's series")
        api.stop()
        down_at = time.monotonic()
        s = agent.wait_for(lambda s: s.value("podsight_kubernetes_api_up") == 0, timeout=15,
                           what="podsight_kubernetes_api_up to drop to 0")
        status, body = agent.get("/readyz")
        assert status == 200 and "degraded" in body
        before = s.value("podsight_network_bytes_total", pod="src-1", direction="egress")
        send(a, b, 200_000, 7005)  # traffic during the outage is still counted, with known labels
        c = node.pod("c")
        api.add_pod(served(c, "created-during-outage"))
        agent.wait_for(lambda s: s.value("podsight_network_bytes_total", pod="src-1", direction="egress")
                       >= before + 200_000, what="src-1's 200,000 bytes sent during the outage")
        # The outage lasts 10 s; all along the agent says so and keeps serving.
        while time.monotonic() - down_at < 10:
            assert agent.scrape().value("podsight_kubernetes_api_up") == 0
            assert agent.get("/readyz")[0] == 200
            time.sleep(0.5)
        api.start()
        send(c, b, 50_000, 7006)
        s = agent.wait_for(lambda s: s.value("podsight_kubernetes_api_up") == 1 and
                           s.value("podsight_network_bytes_total", pod="created-during-outage") > 0, timeout=40,
                           what="the API back up and the pod created during the outage labelled")
        assert s.value("podsight_network_bytes_total", pod="created-during-outage", direction="egress") >= 50_000
        # Ready again once every watch is back: the pod watch, and the
        # cluster-wide one naming flow peers (its own backoff may end later).
        deadline = time.monotonic() + 30
        while agent.get("/readyz") != (200, "ready\n"):
            assert time.monotonic() < deadline, f"/readyz never ready again: {agent.get('/readyz')}"
            time.sleep(0.2)


_CHURN = r"""
import os, socket, sys
lst = socket.socket(); lst.bind(("127.0.0.1", 0)); lst.listen(512)
port = lst.getsockname()[1]
for path in sys.argv[1:]:
    with open(os.path.join(path, "cgroup.procs"), "w") as f:
        f.write(str(os.getpid()))
    c = socket.create_connection(("127.0.0.1", port)); s, _ = lst.accept()
    c.sendall(b"x" * 1000); s.recv(2000); c.close(); s.close()
print("done", flush=True)
"""


def test_pod_churn_returns_memory_and_maps_to_baseline(node, api):
    """200 simulated pods (cgroups + served objects) created and deleted, three times."""
    cfg_extra = "  grace_period: 1s\nrescan_interval: 500ms\n"

    churned: set[int] = set()

    def cycle(agent, n: int = 200) -> None:
        pods = [node.pod(f"churn{i}", netns=False) for i in range(n)]
        churned.update(p.cgroup_id for p in pods)
        for i, p in enumerate(pods):
            api.add_pod(served(p, f"churn-{i}"))
        # One process visits every pod cgroup and makes a connection from each.
        out = subprocess.run([sys.executable, "-c", _CHURN, *map(str, (p.cgroup for p in pods))],
                             capture_output=True, text=True, timeout=120)
        assert out.stdout.strip() == "done", out.stderr
        agent.wait_for(lambda s: len({l["pod"] for l, _ in s.series("podsight_network_bytes_total")
                                      if l["pod"].startswith("churn-")}) == n, timeout=30,
                       what=f"all {n} churn pods labelled")
        for p in pods:
            api.delete_pod(p.uid)
            node.remove(p)
        agent.wait_for(lambda s: not any(l["pod"].startswith("churn-")
                                         for l, _ in s.series("podsight_network_bytes_total")), timeout=30,
                       what="every churn pod's series gone")

    def footprint(agent) -> tuple[int, float, float]:
        s = agent.scrape()
        rss = int(re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{agent.proc.pid}/status").read_text()).group(1))
        return rss, s.value("podsight_bpf_map_entries", map="network_traffic"), s.value("podsight_bpf_map_entries", map="tcp_stats")

    def wait_maps_freed(agent) -> None:
        deadline = time.monotonic() + 20
        while left := churned & (_map_keys(agent, "network_traffic") | _map_keys(agent, "tcp_stats")):
            assert time.monotonic() < deadline, f"{len(left)} map entries of deleted pods remain"
            agent.scrape()  # scrapes count the misses that mark an id unresolvable
            time.sleep(0.5)

    with AgentProcess("--node-name", NODE, config=(
            f"kubernetes:\n  enabled: \"true\"\n  kubeconfig: {api.kubeconfig}\n{cfg_extra}")) as agent:
        cycle(agent)  # warm-up: caches, allocator arenas
        wait_maps_freed(agent)  # the baseline is taken with the warm-up's pods all gone
        base = footprint(agent)
        for _ in range(2):
            cycle(agent)
        wait_maps_freed(agent)
        after = footprint(agent)
    # Map entries: back to what host cgroups use (a few new host cgroups may appear meanwhile).
    assert after[1] <= base[1] + 20 and after[2] <= base[2] + 20, (base, after)
    # RSS: no growth with churn beyond allocator noise.
    assert after[0] <= base[0] + 4096, f"RSS grew from {base[0]} kB to {after[0]} kB"
