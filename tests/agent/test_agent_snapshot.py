"""The agent in-process, without the kernel: probes whose maps are fakes
holding per-CPU values, a kubelet-layout cgroup tree made of plain
directories, the real identity service, counters, ledger and renderer.
What a scrape shows, and what it keeps showing as cgroups go."""
from __future__ import annotations

import struct
import time
from types import SimpleNamespace

import pytest
from prometheus_client.parser import text_string_to_metric_families

from podsight.agent import Agent
from podsight.config import Config
from podsight.exporters.prometheus import MetricsRenderer
from podsight.identity.labels import Labeler
from podsight.identity.node import NodeIdentity
from podsight.identity.resolver import CgroupResolver
from podsight.kernel.families import COUNTER_FAMILIES, family
from podsight.kernel.probes import Probe

UID = "8a2b4c6d-1111-2222-3333-444455556666"
CONTAINER = "c0ffee" * 10 + "abcd"
NCPU = 2


class FakeMap:
    """What podsight.reader.counters and the garbage collector use of a per-CPU hash."""

    def __init__(self, name: str, width: int, key: struct.Struct):
        self.name, self.width, self.key = name, width, key
        self.ncpu, self.value_size, self.max_entries = NCPU, width * 8, 1024
        self.entries: dict[bytes, list[bytes]] = {}

    def add(self, key: tuple, per_cpu: list[list[int]]) -> None:
        fmt = struct.Struct(f"<{self.width}Q")
        self.entries[self.key.pack(*key)] = [fmt.pack(*v) for v in per_cpu]

    def batches(self):
        if self.entries:
            yield b"".join(self.entries), b"".join(b"".join(v) for v in self.entries.values()), len(self.entries)

    def keys(self):
        return list(self.entries)

    def lookup(self, key: bytes):
        return self.entries.get(key)

    def delete(self, key: bytes) -> bool:
        return self.entries.pop(key, None) is not None


class FakeProbe(Probe):
    def __init__(self, name: str):
        super().__init__(name, name)
        fam = family(name)
        self.fake = {c.name: FakeMap(c.name, c.width, c.key) for c in fam.counters}

    def start(self, cfg, cgroup_root) -> bool:
        self.obj = SimpleNamespace(maps=self.fake, loaded_programs=dict)
        self.up = True
        return True

    def stop(self) -> None:
        self.obj, self.up = None, False


@pytest.fixture
def tree(tmp_path):
    pod = tmp_path / "kubepods.slice" / "kubepods-besteffort.slice" / f"kubepods-besteffort-pod{UID.replace('-', '_')}.slice"
    container = pod / f"cri-containerd-{CONTAINER}.scope"
    host = tmp_path / "system.slice" / "cron.service"
    container.mkdir(parents=True)
    host.mkdir(parents=True)
    return SimpleNamespace(root=tmp_path, container=container, host=host)


@pytest.fixture
def agent(tree):
    cfg = Config()
    resolver = CgroupResolver(str(tree.root), cfg.rescan_interval, handles=False)
    identity = NodeIdentity("node-a", resolver, Labeler("node-a", cfg.labels))
    probe = FakeProbe("network")
    a = Agent(identity, [probe], cgroup_root=str(tree.root), cfg=cfg)
    a.start()
    yield SimpleNamespace(agent=a, probe=probe, traffic=probe.fake["network_traffic"],
                          renderer=MetricsRenderer(identity.label_names, [f for f in COUNTER_FAMILIES
                                                                          if f.name == "network"]))
    a.stop()


def scrape(t) -> dict:
    text = b"".join(t.renderer.render(t.agent.snapshot())).decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "podsight_network_bytes_total":
                out[(s.labels["host_cgroup"] or s.labels["pod"], s.labels["direction"])] = s.value
    return out


def ino(path) -> int:
    return path.stat().st_ino


def test_a_scrape_sums_cpus_and_names_each_cgroup(agent, tree):
    agent.traffic.add((ino(tree.container),), [[100, 1, 50, 1], [20, 1, 5, 1]])
    agent.traffic.add((ino(tree.host),), [[7, 1, 3, 1], [0, 0, 0, 0]])
    agent.traffic.add((0,), [[9, 1, 0, 0], [1, 1, 0, 0]])
    got = scrape(agent)
    assert got[(UID, "ingress")] == 120 and got[(UID, "egress")] == 55  # no metadata: the pod's UID names it
    assert got[("system.slice/cron.service", "ingress")] == 7
    assert got[("unattributed", "ingress")] == 10
    snap = agent.agent.snapshot()
    assert snap.map_entries == {"network_traffic": 3} and snap.map_max_entries == {"network_traffic": 1024}
    assert snap.probes == {"network": True} and snap.probe_states == {"network": "up"}
    assert snap.kubernetes_api_up is None and snap.security is None


def test_a_gone_host_cgroup_keeps_its_total_and_a_new_one_adds_to_it(agent, tree):
    agent.traffic.add((ino(tree.host),), [[1000, 1, 0, 0], [0, 0, 0, 0]])
    assert scrape(agent)[("system.slice/cron.service", "ingress")] == 1000
    tree.host.rmdir()
    agent.agent.identity.resolver.sweep()
    agent.agent.collect_garbage()
    assert agent.traffic.entries == {}  # the map entry is freed ...
    assert scrape(agent)[("system.slice/cron.service", "ingress")] == 1000  # ... its count lives on
    tree.host.mkdir()  # a new cgroup at the same path: the same label set
    agent.agent.identity.resolver.scan()
    agent.traffic.add((ino(tree.host),), [[5, 1, 0, 0], [0, 0, 0, 0]])
    assert scrape(agent)[("system.slice/cron.service", "ingress")] == 1005  # never backwards


def test_a_gone_pod_stays_for_the_grace_period_then_leaves(agent, tree):
    agent.traffic.add((ino(tree.container),), [[10, 1, 0, 0], [0, 0, 0, 0]])
    assert scrape(agent)[(UID, "ingress")] == 10
    tree.container.rmdir()
    agent.agent.identity.resolver.sweep()
    agent.agent.collect_garbage()
    assert scrape(agent)[(UID, "ingress")] == 10  # final value still scraped
    agent.agent.collect_garbage(now=time.monotonic() + agent.agent.cfg.kubernetes.grace_period + 1)
    assert agent.traffic.entries == {}
    assert (UID, "ingress") not in scrape(agent)


def test_an_unchanged_scrape_after_a_change_shows_the_new_value(agent, tree):
    """The renderer keeps unchanged pieces: a changed value must still show at once."""
    agent.traffic.add((ino(tree.container),), [[10, 1, 0, 0], [0, 0, 0, 0]])
    assert scrape(agent)[(UID, "ingress")] == 10
    assert scrape(agent)[(UID, "ingress")] == 10
    agent.traffic.add((ino(tree.container),), [[10, 1, 0, 0], [4, 1, 0, 0]])
    assert scrape(agent)[(UID, "ingress")] == 14


def test_a_blocked_sampler_is_reported_stuck(tree):
    """A probe whose periodic work never returns (a sample stuck in the
    kernel, a lock never released): the sampler misses its heartbeat."""
    import threading

    from podsight.heartbeat import late

    release = threading.Event()

    class StuckProbe(FakeProbe):
        def start(self, cfg, cgroup_root) -> bool:
            self.sample_interval = 0.05
            return super().start(cfg, cgroup_root)

        def sample(self) -> None:
            release.wait(30)

    cfg = Config()
    identity = NodeIdentity("node-a", CgroupResolver(str(tree.root), cfg.rescan_interval, handles=False),
                            Labeler("node-a", cfg.labels))
    a = Agent(identity, [StuckProbe("tcp")], cgroup_root=str(tree.root), cfg=cfg)
    a.SAMPLE_SLACK = 0.3
    a.start()
    try:
        deadline = time.monotonic() + 10
        while not late(a.heartbeats()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [s.split(" (")[0] for s in late(a.heartbeats())] == ["sampler"]
    finally:
        release.set()
        a.stop()
    assert late(a.heartbeats()) == []
