"""FlowPipeline (podsight.agent.flows) without the kernel: a fake tcp_flows
map (what podsight.reader.flows calls of it: ``batches()``, ``lookup()``,
``delete()``, ``value_size``, ``name``), a fake node identity
(``workloads_for``, ``node``), a fake peer namer and a clock the test moves.

What is checked: the series budget (top peers by bytes over the window, the
rest folded into peer_workload="~other") keeps every exported counter
monotonic and loses no gain; idle edges and their kernel entries expire;
Service connections wait ``BACKEND_WAIT`` for conntrack to name a backend;
an entry deleted from the map gives its last gain; the per-cgroup sums the
podsight_tcp_* families are derived from.  And podsight.identity.peers:
CIDR sets by longest prefix, covering_network, loopback as the node.
"""
from __future__ import annotations

import ipaddress
import re
import socket
import struct

from podsight.agent.flows import OTHER, FlowPipeline
from podsight.config import Duration, Flows, FlowsExternal
from podsight.identity.cluster import Peer
from podsight.identity.peers import PEER_FIELDS, CidrSets, PeerNamer, covering_network
from podsight.kernel.layouts import HIST_CONNECT, HIST_SLOTS, HIST_SRTT
from podsight.reader.flows import KEY, pack_key
from tests.support.clock import Clock

AF4, AF6 = socket.AF_INET, socket.AF_INET6
CLIENT, SERVER = 1, 2                       # enum flow_role
NODE = "node-a"

# struct flow_counters, as u64 indexes.
WIDTH = 8 + 2 * (HIST_SLOTS + 1)
FIELDS = ("opened", "failed", "closed", "bytes_sent", "bytes_received", "segs_sent", "segs_received", "retransmits")
SRTT0, CONNECT0 = 8, 8 + HIST_SLOTS + 1      # first slot of each histogram
EDGE_WIDTH = 8 + HIST_SLOTS + 1              # what an exported row holds: counters + the RTT histogram
VALUE = struct.Struct(f"<{WIDTH}Q")


# -- fakes -------------------------------------------------------------------

def addr(text: str) -> bytes:
    a = ipaddress.ip_address(text)
    return a.packed.ljust(16, b"\0")


def key(cid: int, peer: str, port: int, role: int = CLIENT, client_port: int = 0) -> tuple:
    """A tcp_flows key as reader.flows unpacks it."""
    fam = AF6 if ":" in peer else AF4
    return (cid, addr(peer), port, client_port, fam, role)


class FakeFlowMap:
    """tcp_flows: cumulative struct flow_counters per key, as the kernel keeps them."""

    name = "tcp_flows"
    value_size = VALUE.size
    max_entries = 16384

    def __init__(self):
        self.entries: dict[bytes, list[int]] = {}
        self.deleted: list[tuple] = []

    def add(self, k: tuple, srtt: dict[int, int] | None = None, connect: dict[int, int] | None = None,
            **gains: int) -> None:
        """What the kernel adds to an entry (created at zero when missing)."""
        v = self.entries.setdefault(pack_key(k), [0] * WIDTH)
        for name, n in gains.items():
            v[FIELDS.index(name)] += n
        for base, hist in ((SRTT0, srtt or {}), (CONNECT0, connect or {})):
            for slot, n in hist.items():
                v[base + slot] += n

    def value(self, k: tuple) -> list[int] | None:
        v = self.entries.get(pack_key(k))
        return None if v is None else list(v)

    # What reader.flows.FlowTable calls.
    def batches(self):
        # Two batches, as the real map yields them in chunks: the reader must join them.
        items = list(self.entries.items())
        for part in (items[: len(items) // 2], items[len(items) // 2:]):
            if part:
                yield (b"".join(k for k, _ in part), b"".join(VALUE.pack(*v) for _, v in part), len(part))

    def lookup(self, kb: bytes):
        v = self.entries.get(kb)
        return None if v is None else [VALUE.pack(*v)]

    def delete(self, kb: bytes) -> bool:
        self.deleted.append(KEY.unpack(kb))
        return self.entries.pop(kb, None) is not None


class FakeFlowMaps:
    """tcp_flows and tcp_flow_conns, as the kernel fills them: a key with a
    client port (a connection to a Service address) goes to the second."""

    def __init__(self):
        self.edges, self.connections = FakeFlowMap(), FakeFlowMap()
        self.connections.name = "tcp_flow_conns"

    def _map(self, k: tuple) -> FakeFlowMap:
        return self.connections if k[3] else self.edges

    def add(self, k: tuple, **kw) -> None:
        self._map(k).add(k, **kw)

    def value(self, k: tuple) -> list[int] | None:
        return self._map(k).value(k)

    @property
    def entries(self) -> dict:
        return {**self.edges.entries, **self.connections.entries}

    @property
    def deleted(self) -> list[tuple]:
        return self.edges.deleted + self.connections.deleted


class FakeIdentity:
    """NodeIdentity's part the pipeline uses: cgroup id → (namespace, workload, kind, pod), None to wait."""

    def __init__(self, workloads: dict[int, tuple] | None = None):
        self.node = NODE
        self.workloads = dict(workloads or {})

    def workloads_for(self, ids):
        return {cid: self.workloads.get(cid) for cid in set(ids)}


def pod_peer(workload: str, namespace: str = "shop", zone: str = "zone-a", pod: str = "") -> tuple:
    return ("pod", namespace, workload, "Deployment", zone, "", pod or f"{workload}-0", "")


def external(cidr_set: str = "private", ip: str = "") -> tuple:
    return ("external", "", cidr_set, "", "", "", "", ip)


class FakeNamer:
    """PeerNamer's part the pipeline uses: peers by address, conntrack backends by client port."""

    def __init__(self, peers: dict[str, tuple] | None = None):
        self.peers = {addr(a): p for a, p in (peers or {}).items()}
        self.backends: dict[int, tuple | None] = {}   # client port → the backend's labels (PEER_FIELDS)
        self.asked_backend: list[int] = []

    def peer(self, family: int, a: bytes) -> tuple:
        return self.peers.get(a, external())

    def backend(self, family, a, port, client_port, service, client_ips=()):
        self.asked_backend.append(client_port)
        b = self.backends.get(client_port)
        if b is None:
            return None
        return ("service", service[1], b[2], b[3], b[4], service[5], b[6], b[7])

    def client_ips(self, namespace, pod):
        return []

    def service_networks(self):
        return []


A_CID, B_CID = 1001, 1002
A = ("shop", "client", "Deployment", "client-7d9-abc")
B = ("shop", "db", "StatefulSet", "db-0")


def flows_cfg(**kw) -> Flows:
    ext = kw.pop("external", None)
    cfg = Flows(conntrack=False, **{k: (Duration.parse(v) if k in ("peer_window", "idle_timeout") else v)
                                    for k, v in kw.items()})
    if ext is not None:
        cfg.external = ext
    return cfg


def pipeline(cfg: Flows | None = None, namer=None, identity=None, clock=None):
    clock = clock or Clock(1000.0)
    p = FlowPipeline(cfg or flows_cfg(), identity or FakeIdentity({A_CID: A, B_CID: B}), namer or FakeNamer(),
                     zone=lambda node: "zone-a", clock=clock)
    return p, clock


def rows(p: FlowPipeline) -> dict[tuple, dict[str, int]]:
    """The exported series: label tuple → {counter name: value} (+ "srtt" as the histogram's sample count)."""
    out = {}
    for labels, values in p.series().items():
        assert len(values) == EDGE_WIDTH
        d = dict(zip(FIELDS, values[:8]))
        d["srtt"] = sum(values[8:8 + HIST_SLOTS])
        out[labels] = d
    return out


def labelled(p: FlowPipeline) -> list[tuple[dict[str, str], dict[str, int]]]:
    return [(dict(zip(p.label_names, labels)), v) for labels, v in rows(p).items()]


def peer_rows(p: FlowPipeline, workload: str = "client") -> dict[str, dict[str, int]]:
    """peer_workload → values, for one local workload's rows (one row per peer in these tests)."""
    out = {}
    for lb, v in labelled(p):
        if lb["workload"] == workload:
            assert lb["peer_workload"] not in out, f"two rows for peer {lb['peer_workload']}"
            out[lb["peer_workload"]] = v
    return out


def total(p: FlowPipeline, field: str, workload: str = "client") -> int:
    return sum(v[field] for v in peer_rows(p, workload).values())


# -- the budget ----------------------------------------------------------------

def test_edges_beyond_the_budget_fold_into_other():
    """max_peers_per_workload: 2, four peers: two rows of their own, one
    ~other row holding the other two's gains; the counters say so."""
    names = {f"10.1.0.{i}": pod_peer(f"peer-{i}") for i in range(1, 5)}
    m = FakeFlowMaps()
    p, clock = pipeline(flows_cfg(max_peers_per_workload=2), FakeNamer(names))
    for i in (4, 3, 2, 1):   # the map yields the big ones first: they are rows from their first gain
        m.add(key(A_CID, f"10.1.0.{i}", 80), opened=1, closed=1, bytes_sent=1000 * i)
    p.update(m)
    r = peer_rows(p)
    assert set(r) == {"peer-3", "peer-4", OTHER}, r
    assert (r["peer-4"]["bytes_sent"], r["peer-3"]["bytes_sent"], r[OTHER]["bytes_sent"]) == (4000, 3000, 3000)
    assert r[OTHER]["opened"] == 2 and total(p, "opened") == 4
    st = p.flow_stats()
    assert st.edges == 3 and st.peers_folded == 2
    other = [lb for lb, _ in labelled(p) if lb["peer_workload"] == OTHER][0]
    # The ~other row carries only the local labels: no role, port or other peer label.
    assert other["role"] == "" and other["port"] == "" and other["peer_kind"] == ""
    assert other["workload"] == "client" and other["node"] == NODE and other["zone"] == "zone-a"


class Scrapes:
    """What Prometheus keeps of the rows: each label set's last scraped
    value.  A row that stops (folded, or a gone peer) keeps its last value,
    so the sum over every label set ever scraped is what rate()/increase()
    over the rows and ~other add up to."""

    def __init__(self, p: FlowPipeline):
        self.p = p
        self.last: dict[tuple, dict[str, int]] = {}
        self.exported: list[set[str]] = []   # peer_workloads on each scrape (the local workload "client")

    def scrape(self) -> dict[tuple, dict[str, int]]:
        now = rows(self.p)
        for labels, v in now.items():
            for f, x in v.items():
                before = self.last.get(labels, {}).get(f, 0)
                assert x >= before, f"{labels}: {f} went from {before} to {x}"
        self.last.update(now)
        self.exported.append({dict(zip(self.p.label_names, lb))["peer_workload"] for lb in now})
        return now

    def total(self, field: str) -> int:
        return sum(v[field] for v in self.last.values())


def test_every_gain_reaches_a_scrape():
    """Budget 2, three peers talking at every read, the small ones seen
    first: they get the rows, the big one folds, and takes a row once the
    window ranks it (peer_window 2 s: ranked anew each second).  Scraped
    after every read, the last scraped values of the rows and ~other hold
    every connection and byte the kernel counted."""
    names = {"10.1.0.1": pod_peer("small-1"), "10.1.0.2": pod_peer("small-2"), "10.1.0.3": pod_peer("big")}
    m = FakeFlowMaps()
    p, clock = pipeline(flows_cfg(max_peers_per_workload=2, peer_window="2s"), FakeNamer(names))
    scrapes = Scrapes(p)
    opened = sent = 0
    for _ in range(5):
        for ip, n in (("10.1.0.1", 10), ("10.1.0.2", 20), ("10.1.0.3", 1000)):
            m.add(key(A_CID, ip, 80), opened=1, closed=1, bytes_sent=n)
            opened, sent = opened + 1, sent + n
        p.update(m)
        scrapes.scrape()
        clock.now += 1
        assert scrapes.total("opened") == opened and scrapes.total("bytes_sent") == sent, scrapes.last
    assert scrapes.exported[0] == {"small-1", "small-2", OTHER}
    assert "big" in scrapes.exported[-1] and "small-1" not in scrapes.exported[-1], scrapes.exported


def test_reads_between_scrapes_lose_no_gain():
    """The agent also reads between scrapes (agent.py: the sampler, every
    srtt_sample_interval, once Service ranges are followed: in any cluster,
    which has the kubernetes Service).  Budget 1: a small edge gets the row
    with its first gain at such a read, a big one folds, and several reads
    and half windows pass before the next scrape: every gain still reaches
    /metrics (the small row's, or ~other's)."""
    names = {"10.1.0.1": pod_peer("small"), "10.1.0.2": pod_peer("big")}
    m = FakeFlowMaps()
    p, clock = pipeline(flows_cfg(max_peers_per_workload=1, peer_window="2s"), FakeNamer(names))
    scrapes = Scrapes(p)
    m.add(key(A_CID, "10.1.0.1", 80), opened=1, closed=1, bytes_sent=10)
    m.add(key(A_CID, "10.1.0.2", 80), opened=1, closed=1, bytes_sent=1000)
    for _ in range(4):     # the sampler's reads, 0.5 s apart
        p.update(m)
        clock.now += 0.5
        m.add(key(A_CID, "10.1.0.2", 80), bytes_sent=1000)
    p.update(m)            # the scrape's own read, then the scrape
    scrapes.scrape()
    seen = [(dict(zip(p.label_names, lb))["peer_workload"], v["opened"], v["bytes_sent"])
            for lb, v in scrapes.last.items()]
    assert scrapes.total("opened") == 2 and scrapes.total("bytes_sent") == 5010, f"scraped: {seen}"


def test_exported_counters_only_grow_across_folding_and_unfolding():
    """Budget 1, peers P and Q taking turns at the top for three reads each
    (each time with well over twice the other's bytes over the window, past
    the hysteresis; peer_window 2 s, so ranked anew each second): P is a
    row, then folded, then a row again, and Q the other way round.  Every
    row on two scrapes has not shrunk between them (P's row comes back where
    it stopped), ~other only grows, and the last scraped values add up to
    every gain."""
    names = {"10.1.0.1": pod_peer("p"), "10.1.0.2": pod_peer("q")}
    kp, kq = key(A_CID, "10.1.0.1", 80), key(A_CID, "10.1.0.2", 80)
    m = FakeFlowMaps()
    p, clock = pipeline(flows_cfg(max_peers_per_workload=1, peer_window="2s"), FakeNamer(names))
    scrapes = Scrapes(p)
    sent = {"opened": 0, "bytes_sent": 0, "segs_sent": 0, "srtt": 0}
    for k, n in [(kp, 100)] * 3 + [(kq, 1_000)] * 3 + [(kp, 5_000)] * 3 + [(kq, 20_000)] * 3:
        m.add(k, opened=1, closed=1, bytes_sent=n, segs_sent=n // 100, srtt={5: 1})
        sent = {"opened": sent["opened"] + 1, "bytes_sent": sent["bytes_sent"] + n,
                "segs_sent": sent["segs_sent"] + n // 100, "srtt": sent["srtt"] + 1}
        clock.now += 1
        p.update(m)
        scrapes.scrape()
        assert {f: scrapes.total(f) for f in sent} == sent, scrapes.last
        assert len(scrapes.exported[-1] - {OTHER}) <= 1
    p_rows = "".join("FT"["p" in e] for e in scrapes.exported)
    q_rows = "".join("FT"["q" in e] for e in scrapes.exported)
    assert re.search("TF+T", p_rows), f"P never went row → folded → row: {scrapes.exported}"
    assert re.search("TF+T", q_rows), f"Q never went row → folded → row: {scrapes.exported}"


def test_rows_stay_put_while_the_window_empties():
    """Budget 1: P talks first (its row), Q talks far more (it takes the
    row once ranked), then both go quiet and scrapes go on through several
    windows.  With no traffic there is nothing to rank by: the rows stay as
    they are (a change would stop one series and start another, at zero,
    for nothing)."""
    names = {"10.1.0.1": pod_peer("p"), "10.1.0.2": pod_peer("q")}
    m = FakeFlowMaps()
    p, clock = pipeline(flows_cfg(max_peers_per_workload=1, peer_window="2s", idle_timeout="10m"),
                        FakeNamer(names))
    scrapes = Scrapes(p)
    m.add(key(A_CID, "10.1.0.1", 80), opened=1, closed=1, bytes_sent=100)
    m.add(key(A_CID, "10.1.0.2", 80), opened=1, closed=1, bytes_sent=100_000)
    for _ in range(10):
        p.update(m)
        p.expire(m)
        scrapes.scrape()
        clock.now += 1
    assert scrapes.exported[0] == {"p", OTHER}
    first_q = next(i for i, e in enumerate(scrapes.exported) if "q" in e)
    assert all(e == {"q", OTHER} for e in scrapes.exported[first_q:]), \
        f"rows changed with no traffic at all: {scrapes.exported}"


def test_top_peers_follow_the_window():
    """peer_window 20 s (ranked anew every 10 s, right after a scrape):
    a peer that was the top talker but has gone quiet for longer than the
    window loses its row to one that is talking now, while its bytes stay
    counted (on its own row before, in ~other after)."""
    names = {"10.1.0.1": pod_peer("old"), "10.1.0.2": pod_peer("new")}
    ko, kn = key(A_CID, "10.1.0.1", 80), key(A_CID, "10.1.0.2", 80)
    m = FakeFlowMaps()
    p, clock = pipeline(flows_cfg(max_peers_per_workload=1, peer_window="20s", idle_timeout="10m"),
                        FakeNamer(names))
    scrapes = Scrapes(p)
    m.add(ko, opened=1, bytes_sent=1_000_000)
    p.update(m)
    scrapes.scrape()
    m.add(kn, opened=1)
    for t in range(1, 9):                 # a read and a scrape every 5 s: 'new' sends a little each time
        clock.now += 5
        m.add(kn, bytes_sent=1000)
        p.update(m)
        scrapes.scrape()
        if t <= 3:
            assert "old" in scrapes.exported[-1], f"t={5 * t}s: the window still holds old's bytes"
    assert "new" in scrapes.exported[-1] and "old" not in scrapes.exported[-1], \
        f"after 40 s, 'old' (quiet for 40 s) still outranks 'new': {scrapes.exported}"
    assert scrapes.total("bytes_sent") == 1_008_000


def test_idle_edges_expire_and_their_kernel_entries_go():
    """idle_timeout 30 s: an edge without gain for 30 s leaves (rows and
    ~other), edges_expired counts it, and its kernel entry is deleted once
    no connection of it is open; an edge with an open connection keeps its
    kernel entry (its row goes all the same)."""
    names = {"10.1.0.1": pod_peer("done"), "10.1.0.2": pod_peer("open"), "10.1.0.3": pod_peer("folded")}
    kd, ko, kf = key(A_CID, "10.1.0.1", 80), key(A_CID, "10.1.0.2", 81), key(A_CID, "10.1.0.3", 82)
    m = FakeFlowMaps()
    p, clock = pipeline(flows_cfg(max_peers_per_workload=2, idle_timeout="30s"), FakeNamer(names))
    m.add(kd, opened=1, closed=1, bytes_sent=500)
    m.add(ko, opened=1, bytes_sent=400)         # still open
    m.add(kf, opened=1, closed=1, bytes_sent=10)
    p.update(m)
    assert set(peer_rows(p)) == {"done", "open", OTHER}
    clock.now += 29.9
    p.expire(m)
    assert set(peer_rows(p)) == {"done", "open", OTHER}, "expired before idle_timeout"
    assert p.flow_stats().edges_expired == 0
    clock.now += 0.1
    p.expire(m)
    assert peer_rows(p) == {}, "idle edges still on /metrics after idle_timeout"
    st = p.flow_stats()
    assert st.edges_expired == 3 and st.edges == 0 and st.peers_folded == 0
    # Kernel entries: the closed edges' go, the open connection's stays.
    assert m.value(kd) is None and m.value(kf) is None
    assert m.value(ko) is not None
    assert p.table.entries == 1
    # The open connection closes later: its entry goes after its own idle time.
    m.add(ko, closed=1, bytes_sent=1)
    clock.now += 1
    p.update(m)
    assert "open" in peer_rows(p) and total(p, "bytes_sent") == 1 and total(p, "closed") == 1
    clock.now += 30
    p.expire(m)
    assert m.entries == {} and p.table.entries == 0 and peer_rows(p) == {}
    assert p.flow_stats().edges_expired == 4


def test_after_expiry_a_new_edge_within_the_budget_is_its_own_row_from_its_first_gain():
    """Budget 2, three edges (one folded), all expire (the garbage
    collector, between scrapes): the workload has no edge left, so the next
    new edge, read at the next scrape, is within the budget and its first
    gain is on its own row, not on a ~other row next to an empty row."""
    names = {f"10.1.0.{i}": pod_peer(f"peer-{i}") for i in range(1, 5)}
    m = FakeFlowMaps()
    p, clock = pipeline(flows_cfg(max_peers_per_workload=2, idle_timeout="30s"), FakeNamer(names))
    for i in (3, 2, 1):
        m.add(key(A_CID, f"10.1.0.{i}", 80), opened=1, closed=1, bytes_sent=100 * i)
    p.update(m)
    assert set(peer_rows(p)) == {"peer-3", "peer-2", OTHER}
    clock.now += 30
    p.expire(m)            # the garbage collector, between two scrapes
    assert p.flow_stats().edges == 0 and p.flow_stats().edges_expired == 3
    m.add(key(A_CID, "10.1.0.4", 80), opened=1, closed=1, bytes_sent=7)
    clock.now += 1
    p.update(m)
    r = peer_rows(p)
    assert r == {"peer-4": r.get("peer-4")} and r["peer-4"]["bytes_sent"] == 7, \
        f"a lone new edge after expiry: {r}"


def test_an_edge_that_keeps_talking_does_not_expire():
    m = FakeFlowMaps()
    p, clock = pipeline(flows_cfg(idle_timeout="10s"), FakeNamer({"10.1.0.1": pod_peer("db")}))
    k = key(A_CID, "10.1.0.1", 5432)
    m.add(k, opened=1)
    for _ in range(10):
        m.add(k, bytes_sent=100)
        clock.now += 5
        p.update(m)
        p.expire(m)
    assert peer_rows(p)["db"]["bytes_sent"] == 1000
    assert p.flow_stats().edges_expired == 0 and m.value(k) is not None


def test_a_deleted_entry_gives_its_last_gain():
    """What an entry gained after the last read and before the agent deleted
    it (idle, nothing open at the last read) still counts: on the edge, in
    the per-cgroup sums."""
    m = FakeFlowMaps()
    p, clock = pipeline(flows_cfg(idle_timeout="30s"), FakeNamer({"10.1.0.1": pod_peer("db")}))
    k = key(A_CID, "10.1.0.1", 5432)
    m.add(k, opened=1, closed=1, bytes_sent=100, retransmits=1)
    p.update(m)
    clock.now += 30
    # A short connection between the last read and the delete.
    m.add(k, opened=1, closed=1, bytes_sent=50, retransmits=2)
    p.expire(m)
    assert m.value(k) is None and k in m.deleted
    assert total(p, "opened", "client") == 1 and total(p, "bytes_sent") == 50   # the edge left, then came back
    assert p.derived("tcp_stats")[A_CID][0] == 2      # opened_outbound: both connections
    assert p.derived("tcp_stats")[A_CID][4] == 2      # closed
    assert p.derived("tcp_stats")[A_CID][5] == 3      # retransmits


def test_a_deleted_service_entry_gives_its_last_gain_to_its_backend():
    """A Service connection's kernel entry (its own, keyed by our port) goes
    as soon as it closed and was named; a gain that arrives with the close
    lands on the backend's edge, and nothing is left in the map."""
    vip = "10.96.0.10"
    namer = FakeNamer({vip: ("service", "shop", "", "", "", "web", "", "")})
    namer.backends[40000] = pod_peer("web-blue")
    m = FakeFlowMaps()
    p, clock = pipeline(namer=namer)
    k = key(A_CID, vip, 80, client_port=40000)
    m.add(k, opened=1, bytes_sent=300)
    p.update(m)
    r = peer_rows(p)
    assert r["web-blue"]["bytes_sent"] == 300 and m.value(k) is not None   # open: the entry stays
    m.add(k, closed=1, bytes_sent=200)
    clock.now += 1
    p.update(m)
    assert m.value(k) is None, "a closed, named Service connection's entry is left in the map"
    r = peer_rows(p)
    assert r["web-blue"]["bytes_sent"] == 500 and r["web-blue"]["closed"] == 1
    assert p._service_edges == {} and p._kernel_changed == {}


def test_the_sampler_reads_only_service_connections():
    """Between scrapes the sampler follows Service connections (named,
    then deleted as they close) without reading every edge: an edge's gain
    waits for the scrape's full read, and nothing is lost or doubled."""
    vip = "10.96.0.10"
    namer = FakeNamer({vip: ("service", "shop", "", "", "", "web", "", ""), "10.1.0.1": pod_peer("db")})
    namer.backends[40003] = pod_peer("web-blue")
    m = FakeFlowMaps()
    p, clock = pipeline(namer=namer)
    kc, ke = key(A_CID, vip, 80, client_port=40003), key(A_CID, "10.1.0.1", 5432)
    m.add(kc, opened=1, closed=1, bytes_sent=300)
    m.add(ke, opened=1, bytes_sent=1000)
    p.update(m, connections_only=True)
    assert m.value(kc) is None, "the sampler did not delete a closed, named Service connection"
    r = peer_rows(p)
    assert r == {"web-blue": r["web-blue"]} and r["web-blue"]["bytes_sent"] == 300
    assert p.table.entries == 0 and p.conn_table.entries == 0   # tcp_flows not read
    m.add(ke, bytes_sent=500)
    clock.now += 1
    p.update(m)                                                  # the scrape's read
    assert peer_rows(p)["db"]["bytes_sent"] == 1500 and peer_rows(p)["web-blue"]["bytes_sent"] == 300
    p.update(m, connections_only=True)
    assert peer_rows(p)["db"]["bytes_sent"] == 1500
    assert p.derived("tcp_stats")[A_CID][0] == 2                 # opened_outbound: both, once each


# -- Service connections ------------------------------------------------------

def test_a_service_connection_waits_for_its_backend():
    """Conntrack names the backend 3 s after the connection is seen: the
    gains wait (no row yet, no unresolved count), then land on the Service
    edge with the backend's workload."""
    vip = "10.96.0.10"
    namer = FakeNamer({vip: ("service", "shop", "", "", "", "web", "", "")})
    m = FakeFlowMaps()
    p, clock = pipeline(namer=namer)
    k = key(A_CID, vip, 80, client_port=40001)
    m.add(k, opened=1, bytes_sent=100)
    p.update(m)
    clock.now += 3
    m.add(k, bytes_sent=100)
    p.update(m)
    assert peer_rows(p) == {}, "a Service connection was exported before its backend was known"
    namer.backends[40001] = pod_peer("web-green")
    clock.now += 1
    p.update(m)
    r = peer_rows(p)
    assert r == {"web-green": r["web-green"]} and r["web-green"]["bytes_sent"] == 200
    (lb, _), = labelled(p)
    assert lb["peer_kind"] == "service" and lb["peer_service"] == "web" and lb["peer_namespace"] == "shop"
    assert p.flow_stats().backends_unresolved == 0
    # Later gains of the same connection: no second conntrack question.
    asked = len(namer.asked_backend)
    m.add(k, bytes_sent=1)
    clock.now += 1
    p.update(m)
    assert len(namer.asked_backend) == asked and peer_rows(p)["web-green"]["bytes_sent"] == 201


def test_a_service_connection_without_backend_counts_as_unresolved_after_backend_wait():
    vip = "10.96.0.10"
    namer = FakeNamer({vip: ("service", "shop", "", "", "", "web", "", "")})
    m = FakeFlowMaps()
    p, clock = pipeline(namer=namer)
    k = key(A_CID, vip, 80, client_port=40002)
    m.add(k, opened=1, closed=1, bytes_sent=100)
    t0 = clock.now
    p.update(m)
    clock.now = t0 + FlowPipeline.BACKEND_WAIT - 0.01
    p.update(m)
    assert peer_rows(p) == {} and p.flow_stats().backends_unresolved == 0
    assert m.value(k) is not None, "the entry went before its gains were attributed"
    clock.now = t0 + FlowPipeline.BACKEND_WAIT
    p.update(m)
    (lb, v), = labelled(p)
    assert lb["peer_kind"] == "service" and lb["peer_service"] == "web" and lb["peer_workload"] == ""
    assert v["bytes_sent"] == 100 and v["closed"] == 1
    assert p.flow_stats().backends_unresolved == 1
    assert m.value(k) is None            # closed and attributed: its entry is gone
    clock.now += 1
    p.update(m)
    assert p.flow_stats().backends_unresolved == 1   # counted once per connection


def test_a_plain_connection_to_a_service_address_is_not_held_back():
    """client_port 0 (the kernel did not see a Service range): named at once."""
    vip = "10.96.0.10"
    namer = FakeNamer({vip: ("service", "shop", "", "", "", "web", "", "")})
    m = FakeFlowMaps()
    p, _ = pipeline(namer=namer)
    m.add(key(A_CID, vip, 80), opened=1)
    p.update(m)
    (lb, v), = labelled(p)
    assert lb["peer_service"] == "web" and v["opened"] == 1 and namer.asked_backend == []


# -- local identity and per-cgroup sums ---------------------------------------

def test_gains_wait_for_their_local_cgroup_to_be_named():
    ident = FakeIdentity({})
    m = FakeFlowMaps()
    p, clock = pipeline(namer=FakeNamer({"10.1.0.1": pod_peer("db")}), identity=ident)
    k = key(A_CID, "10.1.0.1", 5432)
    m.add(k, opened=1, bytes_sent=10)
    p.update(m)
    m.add(k, bytes_sent=5)
    clock.now += 1
    p.update(m)
    assert rows(p) == {}
    assert p.derived("tcp_stats")[A_CID][0] == 1     # the per-cgroup sums do not wait
    ident.workloads[A_CID] = A
    clock.now += 1
    p.update(m)
    assert peer_rows(p)["db"]["bytes_sent"] == 15 and peer_rows(p)["db"]["opened"] == 1


def test_per_cgroup_sums_are_what_tcp_stats_and_tcp_histograms_would_hold():
    """Summed over a cgroup's edges: opens and failures by direction (client
    edges outbound, server edges inbound), closes, retransmits, and the
    srtt and connect histograms; they only grow, also as edges expire."""
    m = FakeFlowMaps()
    p, clock = pipeline(flows_cfg(idle_timeout="10s"), FakeNamer({"10.1.0.1": pod_peer("db")}))
    m.add(key(A_CID, "10.1.0.1", 5432), opened=3, failed=1, closed=3, retransmits=4, srtt={3: 2, 7: 1},
          connect={2: 3})
    m.add(key(A_CID, "10.1.0.2", 443), opened=1, closed=1, srtt={3: 1})
    m.add(key(A_CID, "10.244.0.9", 8080, role=SERVER), opened=2, failed=1, closed=2, retransmits=1)
    m.add(key(B_CID, "10.1.0.1", 8080, role=SERVER), opened=5, closed=5)
    p.update(m)
    stats = p.derived("tcp_stats")
    #                opened_out, opened_in, failed_out, failed_in, closed, retrans, rst_sent, rst_recv, untracked
    assert stats[A_CID] == [4, 2, 1, 1, 6, 5, 0, 0, 0]
    assert stats[B_CID] == [0, 5, 0, 0, 5, 0, 0, 0, 0]
    hists = p.derived("tcp_histograms")
    srtt = hists[(A_CID, HIST_SRTT)]
    assert len(srtt) == HIST_SLOTS + 1 and srtt[3] == 3 and srtt[7] == 1 and sum(srtt[:HIST_SLOTS]) == 4
    assert hists[(A_CID, HIST_CONNECT)][2] == 3
    assert (B_CID, HIST_SRTT) not in hists
    assert p.derived("network_drops") == {}
    # They keep growing, through an expiry that deletes the entries.
    clock.now += 10
    p.expire(m)
    assert m.entries == {}
    m.add(key(A_CID, "10.1.0.1", 5432), opened=1, closed=1, srtt={3: 1})
    clock.now += 1
    p.update(m)
    assert p.derived("tcp_stats")[A_CID][:5] == [5, 2, 1, 1, 7]
    assert p.derived("tcp_histograms")[(A_CID, HIST_SRTT)][3] == 4
    # A cgroup that is gone: its sums and its kernel entries go.
    p.forget_cgroups(m, {A_CID})
    assert A_CID not in p.derived("tcp_stats") and (A_CID, HIST_SRTT) not in p.derived("tcp_histograms")
    assert m.entries == {}


def test_pod_level_labels_and_no_peer_ip_by_default():
    m = FakeFlowMaps()
    p, _ = pipeline(flows_cfg(level="pod"), FakeNamer({"10.1.0.1": pod_peer("db", pod="db-3")}))
    assert "pod" in p.label_names and "peer_pod" in p.label_names and "peer_ip" not in p.label_names
    m.add(key(A_CID, "10.1.0.1", 5432), opened=1)
    p.update(m)
    (lb, _), = labelled(p)
    assert lb["pod"] == "client-7d9-abc" and lb["peer_pod"] == "db-3"
    w, _ = pipeline()
    assert "pod" not in w.label_names and "peer_pod" not in w.label_names and "peer_ip" not in w.label_names


# -- external peers: raw addresses only for the top ones ------------------------

def test_raw_ips_label_at_most_top_ips_external_addresses_per_workload():
    """flows.external.raw_ips with top_ips: 2 (config.py: "the raw address
    (peer_ip) of the top_ips external peers by bytes per workload"): five
    external addresses talking at every read, at most two distinct peer_ip
    values on the client's rows at every scrape, the two top talkers once
    the window has ranked them (peer_window 2 s), the others on their CIDR
    set's row without an address, and every byte counted."""
    cfg = flows_cfg(max_peers_per_workload=20, peer_window="2s", external=FlowsExternal(raw_ips=True, top_ips=2))
    namer = PeerNamer(cfg, cluster=None, nat=None, node=NODE)
    m = FakeFlowMaps()
    p, clock = pipeline(cfg, namer)
    scrapes = Scrapes(p)
    assert "peer_ip" in p.label_names
    sizes = {"203.0.113.1": 1000, "203.0.113.2": 2000, "203.0.113.3": 3000, "203.0.113.4": 100_000,
             "203.0.113.5": 200_000}
    for n in range(4):
        for ip, size in sizes.items():
            m.add(key(A_CID, ip, 443), opened=1, closed=1, bytes_sent=size)
        p.update(m)
        scrapes.scrape()
        clock.now += 1
        ips = {lb["peer_ip"] for lb, _ in labelled(p) if lb["workload"] == "client"} - {""}
        assert len(ips) <= 2, f"{len(ips)} raw addresses exported with top_ips: 2: {sorted(ips)}"
        assert scrapes.total("bytes_sent") == (n + 1) * sum(sizes.values())
    assert ips == {"203.0.113.5", "203.0.113.4"}
    assert [lb["peer_workload"] for lb, _ in labelled(p) if lb["peer_ip"] == ""] == ["internet"]


# -- podsight.identity.peers ----------------------------------------------------

def test_cidr_sets_longest_prefix_wins_whatever_the_order():
    for sets in ({"corp": ["10.0.0.0/8"], "lab": ["10.250.0.0/16"], "dmz": ["10.250.7.0/24", "fd00:7::/32"]},
                 {"dmz": ["fd00:7::/32", "10.250.7.0/24"], "lab": ["10.250.0.0/16"], "corp": ["10.0.0.0/8"]}):
        c = CidrSets(sets, "internet")
        ip = ipaddress.ip_address
        assert c.name(ip("10.250.7.7")) == "dmz"
        assert c.name(ip("10.250.8.8")) == "lab"
        assert c.name(ip("10.1.2.3")) == "corp"
        assert c.name(ip("11.0.0.1")) == "internet"
        assert c.name(ip("fd00:7::1")) == "dmz"
        assert c.name(ip("fd00:8::1")) == "internet"
        # An IPv6 address is not in an IPv4 set even when its low bits would match.
        assert c.name(ip("::a00:1")) == "internet"


def test_default_cidr_sets_private_and_internet():
    c = CidrSets(FlowsExternal().cidr_sets, FlowsExternal().default_set)
    ip = ipaddress.ip_address
    for a in ("10.250.0.1", "172.16.0.1", "172.31.255.255", "192.168.1.1", "fd12::1", "fc00::1"):
        assert c.name(ip(a)) == "private", a
    for a in ("8.8.8.8", "172.32.0.1", "192.169.0.1", "11.0.0.1", "2001:db8::1", "fe00::1"):
        assert c.name(ip(a)) == "internet", a


def test_covering_network():
    n = ipaddress.ip_network
    assert covering_network(["10.96.0.10", "10.96.3.1", "10.96.1.200"], 4) == n("10.96.0.0/22")
    assert covering_network(["10.96.0.10"], 4) == n("10.96.0.10/32")
    assert covering_network(["10.96.0.10", "10.96.0.11"], 4) == n("10.96.0.10/31")
    assert covering_network(["10.96.0.10", "10.96.0.12"], 4) == n("10.96.0.8/29")
    assert covering_network(["0.0.0.0", "255.255.255.255"], 4) == n("0.0.0.0/0")
    assert covering_network(["10.96.0.10", "fd00:96::a", "fd00:96::1:1"], 6) == n("fd00:96::/111")
    assert covering_network(["fd00:96::a"], 6) == n("fd00:96::a/128")
    assert covering_network(["10.96.0.10"], 6) is None
    assert covering_network([], 4) is None
    # Every address given is inside, and the network is the smallest such.
    ips = ["10.96.17.3", "10.96.200.9", "10.96.128.0"]
    net = covering_network(ips, 4)
    assert all(ipaddress.ip_address(a) in net for a in ips)
    assert not any(all(ipaddress.ip_address(a) in s for a in ips) for s in net.subnets())


class FakeCluster:
    def __init__(self, peers: dict[str, Peer], zones: dict[str, str], services: list[str] = ()):
        self.generation = 1
        self.peers = {ipaddress.ip_address(a): p for a, p in peers.items()}
        self.zones = zones
        self.services = list(services)
        self.asked = 0

    def peer(self, a):
        self.asked += 1
        return self.peers.get(a)

    def zone(self, node):
        return self.zones.get(node, "")

    def service_port_ips(self):
        return self.services

    def pod_ips(self, namespace, name):
        return []


def named(namer: PeerNamer, text: str) -> dict[str, str]:
    a = ipaddress.ip_address(text)
    return dict(zip(PEER_FIELDS, namer.peer(AF4 if a.version == 4 else AF6, a.packed.ljust(16, b"\0"))))


def test_loopback_is_the_node_itself():
    cluster = FakeCluster({}, {NODE: "zone-a"})
    namer = PeerNamer(Flows(), cluster, node=NODE)
    for a in ("127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"):
        p = named(namer, a)
        assert (p["peer_kind"], p["peer_workload"], p["peer_workload_kind"], p["peer_zone"]) == \
            ("node", NODE, "Node", "zone-a"), a
        assert p["peer_ip"] == ""
    assert cluster.asked == 0, "loopback was looked up in the cluster"
    assert named(PeerNamer(Flows(), None, node=NODE), "127.0.0.1")["peer_workload"] == NODE


def test_peer_kinds_external_sets_and_no_raw_ip_by_default():
    cluster = FakeCluster({
        "10.244.1.5": Peer("pod", "shop", "db-0", "db", "StatefulSet", "node-b", "zone-b"),
        "10.96.0.10": Peer("service", "shop", "web", "web", "Service", "", ""),
        "192.0.2.2": Peer("node", "", "node-b", "node-b", "Node", "node-b", "zone-b"),
    }, {NODE: "zone-a"})
    namer = PeerNamer(Flows(), cluster, node=NODE)
    assert named(namer, "10.244.1.5") == dict(zip(PEER_FIELDS, ("pod", "shop", "db", "StatefulSet", "zone-b", "",
                                                                "db-0", "")))
    assert named(namer, "10.96.0.10")["peer_kind"] == "service" and named(namer, "10.96.0.10")["peer_service"] == "web"
    assert named(namer, "192.0.2.2")["peer_kind"] == "node" and named(namer, "192.0.2.2")["peer_zone"] == "zone-b"
    assert named(namer, "10.250.0.1") == dict(zip(PEER_FIELDS, ("external", "", "private", "", "", "", "", "")))
    assert named(namer, "8.8.8.8")["peer_workload"] == "internet" and named(namer, "8.8.8.8")["peer_ip"] == ""
    corp = PeerNamer(Flows(external=FlowsExternal(cidr_sets={"corp": ["10.250.0.0/16"]})), cluster, node=NODE)
    assert named(corp, "10.250.0.1")["peer_workload"] == "corp"
    assert named(corp, "10.1.0.1")["peer_workload"] == "internet"     # the default private set was replaced
    raw = PeerNamer(Flows(external=FlowsExternal(raw_ips=True)), cluster, node=NODE)
    assert named(raw, "8.8.8.8")["peer_ip"] == "8.8.8.8"
    assert named(raw, "10.244.1.5")["peer_ip"] == ""                  # never for a pod


def test_peer_answers_are_cached_until_the_cluster_changes():
    cluster = FakeCluster({}, {})
    namer = PeerNamer(Flows(), cluster, node=NODE)
    assert named(namer, "10.244.1.5")["peer_kind"] == "external"
    cluster.peers[ipaddress.ip_address("10.244.1.5")] = Peer("pod", "shop", "db-0", "db", "StatefulSet", "", "")
    assert named(namer, "10.244.1.5")["peer_kind"] == "external"      # cached
    cluster.generation += 1
    assert named(namer, "10.244.1.5")["peer_workload"] == "db"


def test_service_networks_configured_or_learned():
    cluster = FakeCluster({}, {}, services=["10.96.0.10", "10.96.5.1", "fd00:96::a"])
    learned = PeerNamer(Flows(), cluster, node=NODE)
    assert learned.service_networks() == [ipaddress.ip_network("10.96.0.0/21"), ipaddress.ip_network("fd00:96::a/128")]
    configured = PeerNamer(Flows(service_cidrs=["10.96.0.0/12"]), cluster, node=NODE)
    assert configured.service_networks() == [ipaddress.ip_network("10.96.0.0/12")]
    assert PeerNamer(Flows(), None, node=NODE).service_networks() == []


def test_backend_names_the_service_and_where_the_connection_went():
    class Nat:
        def backend(self, family, service_addr, service_port, client_port, client_addrs=()):
            assert service_addr == socket.inet_aton("10.96.0.10") and client_port == 40000
            return (socket.inet_aton("10.244.1.5"), 8080)

    cluster = FakeCluster({"10.244.1.5": Peer("pod", "shop", "web-blue-0", "web-blue", "StatefulSet", "node-b",
                                              "zone-b")}, {})
    namer = PeerNamer(Flows(), cluster, nat=Nat(), node=NODE)
    service = ("service", "shop", "", "", "", "web", "", "")
    b = namer.backend(AF4, addr("10.96.0.10"), 80, 40000, service)
    assert dict(zip(PEER_FIELDS, b)) == dict(zip(PEER_FIELDS, ("service", "shop", "web-blue", "StatefulSet",
                                                               "zone-b", "web", "web-blue-0", "")))
    assert PeerNamer(Flows(), cluster, nat=None, node=NODE).backend(AF4, addr("10.96.0.10"), 80, 40000,
                                                                     service) is None
