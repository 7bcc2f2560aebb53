"""The flows' series budget on the real kernel, with simulated pods and the
test API server: a pod with 500 peers exports at most
``max_peers_per_workload`` + 1 rows per family and counts the rest; peers
outside every known address fall in their named CIDR set without a raw IP
label; and five rounds of 1,000 cluster pods created, talked to and deleted
leave no edge behind and no memory growth.

The peers: pod B's network namespace accepts every address of 10.250.0.0/16
(a ``local`` route, the AnyIP form of 65,536 aliases on B) and pod A routes
that /16 to B over the bridge, so each address A connects to is a distinct
peer, named by whatever the test API server says owns it.  B's server
listens on 0.0.0.0.
"""
from __future__ import annotations

import json
import random
import re
import subprocess
import time

import pytest

from tests.support.agent import AgentProcess, Scrape
from tests.support.apiserver import (PodApiServer, make_node, make_pod, make_service, start_container,
                                     write_kubeconfig)
from tests.support.pods import sh

pytestmark = pytest.mark.root

PY = "python3"
NODE = "node-a"
NS = "shop"
PEER_NET = "10.250.0.0/16"
PORT = 7000

# A server: per connection read to EOF, then close (no reply: A's edges carry what A sent).
SERVER = """
import socket, sys, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('0.0.0.0', int(sys.argv[1]))); s.listen(1024)
print('listening', flush=True)
def handle(c):
    with c:
        while c.recv(65536): pass
while True:
    c, _ = s.accept(); threading.Thread(target=handle, args=(c,), daemon=True).start()
"""
# A client: one connection per (address, bytes) pair, in order: connect, send, half-close, read to EOF.
CLIENT = """
import json, socket, sys
port = int(sys.argv[1])
for ip, n in json.loads(sys.stdin.read()):
    c = socket.create_connection((ip, port), timeout=20)
    c.sendall(b'a' * n); c.shutdown(socket.SHUT_WR)
    while c.recv(65536): pass
    c.close()
print('done', flush=True)
"""


# -- the setup ---------------------------------------------------------------

def peer_network(a, b) -> None:
    """B answers on every address of PEER_NET; A reaches them through B."""
    sh("ip", "route", "add", "local", PEER_NET, "dev", "lo", ns=b.ns)
    sh("ip", "route", "add", PEER_NET, "via", b.ip, ns=a.ns)


def serve(b):
    p = b.run(PY, "-c", SERVER, str(PORT), text=True)
    assert p.stdout.readline().strip() == "listening", p.stderr.read()
    return p


def talk(a, pairs: list[tuple[str, int]], timeout: float = 120) -> None:
    """A connects once to each address, sending its byte count."""
    p = a.run(PY, "-c", CLIENT, str(PORT), text=True, stdin=subprocess.PIPE)
    out, err = p.communicate(json.dumps(pairs), timeout=timeout)
    assert p.returncode == 0 and out.strip() == "done", err


def cluster(api, nodes=(("node-a", "zone-a", "192.0.2.1"), ("node-b", "zone-b", "192.0.2.2"),
                        ("node-c", "zone-c", "192.0.2.3"))) -> None:
    for name, zone, ip in nodes:
        api.add_node(make_node(name, [ip], zone=zone))


def register(api, sim, name: str, workload: str) -> None:
    pod = make_pod(name, namespace=NS, node=NODE, uid=sim.uid, owner=("StatefulSet", workload), ips=[sim.ip])
    start_container(pod, "app", sim.container_id)
    api.add_pod(pod)


def cluster_pod(name: str, namespace: str, workload: str, ip: str, node: str) -> dict:
    pod = make_pod(name, namespace=namespace, node=node, owner=("StatefulSet", workload), ips=[ip])
    start_container(pod, "app")
    return pod


def start_agent(api, tmp_path, flows: str, extra: str = "") -> AgentProcess:
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", api.url)
    config = (f"{extra}probes:\n  tcp:\n    srtt_sample_interval: 200ms\n"
              f"flows:\n  conntrack: false\n{flows}")
    # Not started here: ``with`` starts it (and stops it).
    return AgentProcess("--node-name", NODE, "--kubeconfig", str(kubeconfig), config=config)


def wait_synced(agent: AgentProcess, timeout: float = 30.0) -> None:
    """Both watches (this node's pods, and the cluster's pods, services and
    nodes) listed: peers are named from the first connection on."""
    deadline = time.monotonic() + timeout
    while True:
        status, body = agent.get("/readyz")
        if status == 200 and "cluster watch" not in body and "kubernetes API" not in body:
            return
        assert time.monotonic() < deadline, f"the agent never synced: {body}"
        time.sleep(0.2)


# -- reading /metrics --------------------------------------------------------

FAMILY_SUFFIX = re.compile(r"(_total|_bucket|_count|_sum|_created)$")


def flow_rows(s: Scrape, workload: str = "client") -> dict[str, dict[tuple, dict]]:
    """A local workload's rows per podsight_flow_* family: family → {row's
    labels (without direction and le) → {sample name + direction/le: value}}."""
    out: dict[str, dict[tuple, dict]] = {}
    for smp in s.samples:
        if not smp.name.startswith("podsight_flow_") or smp.labels.get("workload") != workload \
                or smp.labels.get("namespace") != NS:
            continue
        fam = FAMILY_SUFFIX.sub("", smp.name)
        row = tuple(sorted((k, v) for k, v in smp.labels.items() if k not in ("direction", "le")))
        out.setdefault(fam, {}).setdefault(row, {})[
            (smp.name, smp.labels.get("direction", ""), smp.labels.get("le", ""))] = smp.value
    return out


def by_peer(s: Scrape, metric: str, workload: str = "client", **match) -> dict[str, float]:
    """peer_workload → value of one metric on a workload's rows (one row per peer here)."""
    out: dict[str, float] = {}
    for labels, v in s.series(metric, namespace=NS, workload=workload, **match):
        assert labels["peer_workload"] not in out, f"{metric}: two rows for {labels['peer_workload']}"
        out[labels["peer_workload"]] = v
    return out


def rss_kib(agent: AgentProcess) -> int:
    with open(f"/proc/{agent.proc.pid}/status") as f:
        return int(re.search(r"^VmRSS:\s+(\d+) kB", f.read(), re.M).group(1))


# -- 500 peers, budget 20 ------------------------------------------------------

BIG = 20


def peer_ip(i: int) -> str:
    return f"10.250.{i // 250}.{i % 250 + 1}"


class Scraped:
    """What Prometheus keeps of A's flow rows: each series' last scraped
    value (a row that stops, folded or gone, keeps its last value).  Fed by
    every scrape the test makes (``agent.wait_for(scraped.seeing(...))``)."""

    def __init__(self):
        self.last: dict[tuple, float] = {}

    def seeing(self, predicate):
        def see(s: Scrape) -> bool:
            for smp in s.samples:
                if smp.name.startswith("podsight_flow_") and smp.labels.get("namespace") == NS \
                        and smp.labels.get("workload") == "client":
                    k = (smp.name, tuple(sorted(smp.labels.items())))
                    assert smp.value >= self.last.get(k, 0), f"{smp.name} {smp.labels} went down to {smp.value}"
                    self.last[k] = smp.value
            return predicate(s)
        return see

    def by_peer(self, name: str, **match) -> dict[str, float]:
        """peer_workload → last scraped value (summed over the rows of one peer that match)."""
        out: dict[str, float] = {}
        for (n, labels), v in self.last.items():
            lb = dict(labels)
            if n == name and all(lb.get(k) == x for k, x in match.items()):
                out[lb["peer_workload"]] = out.get(lb["peer_workload"], 0) + v
        return out


def a_opened(s: Scrape) -> float:
    return s.value("podsight_tcp_connections_opened_total", direction="outbound", pod="client-0")


@pytest.mark.parametrize("order", ["top-talkers-first", "top-talkers-last", "mixed-sampler-reads"])
def test_500_peers_fold_into_21_rows_and_lose_nothing(node, tmp_path, order):
    """A connects once to each of 500 peer pods (500 workloads), 20 of them
    with >= 200 kB, the rest with 1 to 6 kB (every count different).  With
    max_peers_per_workload: 20, every podsight_flow_* family has at most 21
    rows of A: 20 peers and one peer_workload="~other";
    podsight_flow_peers_folded counts the other 480 edges; the 20 rows are
    the 20 top talkers; and nothing is lost: the last scraped values of A's
    rows (what rate()/increase() over them add up to) hold all 500
    connections (A's podsight_tcp_connections_opened_total) and every byte.

    How the window works (agent/flows.py): a new edge is its own row from
    its first gain while its workload has fewer than 20 rows; the others'
    gains go to ~other.  Each half peer_window (and after an expiry) the
    edges are ranked by their bytes over the window (this half and the
    last; a row counts double, so a folded edge takes a row only with more
    than twice its bytes), right after a scrape: a row that folds has had
    all its gains scraped and just stops, as a gone pod's series do.

    - top-talkers-first (peer_window 5m: no ranking during the test): the
      20 big peers first (rows from their first gain), then the 480 small
      ones, which fold from their first gain: no row ever stops, so the
      scrape itself adds up: ~other = 500 - the rows = 480.
    - top-talkers-last (peer_window 30s: ranked every 15 s): the 480 small
      ones first (the first 20 the agent reads become rows), then the 20
      big ones, which take those rows at the next ranking; the 20 small
      rows stop at their last values.
    - mixed-sampler-reads (peer_window 30s): all 500 in one shuffled run
      while the agent's sampler also runs its flow reads (a Service exists,
      so every 200 ms it reads tcp_flow_conns to follow Service connections;
      A's edges to its peers are read at scrapes only), scraped only after."""
    a, b = node.pod("fa"), node.pod("fb")
    peer_network(a, b)
    sizes = {i: (200_000 + 1_000 * i if i < BIG else 1_000 + 10 * i) for i in range(500)}
    big = {f"peer-{i:03d}" for i in range(BIG)}
    with PodApiServer() as api:
        cluster(api)
        register(api, a, "client-0", "client")
        register(api, b, "server-0", "server")
        api.add_pods(cluster_pod(f"peer-{i:03d}-0", "peers", f"peer-{i:03d}", peer_ip(i), NODE) for i in range(500))
        if order == "mixed-sampler-reads":
            api.add_service(make_service("kubernetes", "default", cluster_ips=["10.96.0.1"], ports=[443]))
        window = "5m" if order == "top-talkers-first" else "30s"
        flows = f"  max_peers_per_workload: 20\n  peer_window: {window}\n  idle_timeout: 10m\n"
        scraped = Scraped()
        with start_agent(api, tmp_path, flows) as agent:
            serve(b)
            wait_synced(agent)
            smalls = [(peer_ip(i), sizes[i]) for i in range(BIG, 500)]
            bigs = [(peer_ip(i), sizes[i]) for i in range(BIG)]
            if order == "mixed-sampler-reads":
                agent.wait_for(scraped.seeing(lambda s: any("10.96.0.1/32 are followed" in ln for ln in agent.log)),
                               what="the agent to follow the Service range (its sampler then reads tcp_flow_conns)")
                mixed = bigs + smalls
                random.Random(16).shuffle(mixed)
                talk(a, mixed)
            else:
                first, second = (bigs, smalls) if order == "top-talkers-first" else (smalls, bigs)
                talk(a, first)
                agent.wait_for(scraped.seeing(lambda s: a_opened(s) == len(first)), timeout=30,
                               what=f"the agent to count A's first {len(first)} connections")
                talk(a, second)
            s = agent.wait_for(
                scraped.seeing(lambda s: a_opened(s) == 500 and
                               s.value("podsight_tcp_connections_closed_total", pod="client-0") == 500 and
                               set(by_peer(s, "podsight_flow_connections_opened_total")) - {"~other"} == big),
                timeout=45, interval=1.0, what="A's 500 connections closed, the 20 top talkers on rows")

            # At most 21 rows per family, one of them ~other.
            fams = flow_rows(s)
            for fam in ("podsight_flow_bytes", "podsight_flow_segments", "podsight_flow_connections_opened",
                        "podsight_flow_connections_failed", "podsight_flow_connections_closed",
                        "podsight_flow_retransmits", "podsight_flow_srtt_seconds"):
                assert fam in fams, f"{fam}: no row of A"
            for fam, rows in fams.items():
                peers = [dict(r)["peer_workload"] for r in rows]
                assert len(rows) <= BIG + 1, f"{fam}: {len(rows)} rows of A"
                assert peers.count("~other") == 1, f"{fam}: ~other rows: {peers.count('~other')}"
            assert s.value("podsight_flow_peers_folded") >= 500 - BIG
            # README's series budget: at most 30 series an exported edge, max_peers_per_workload + 1 edges.
            a_series = [smp for smp in s.samples if smp.name.startswith("podsight_flow_")
                        and smp.labels.get("workload") == "client" and smp.labels.get("namespace") == NS]
            assert len(a_series) <= (BIG + 1) * 30, f"{len(a_series)} flow series of A"

            # Nothing lost: every connection and every byte reached a scrape.
            opened = scraped.by_peer("podsight_flow_connections_opened_total")
            assert sum(opened.values()) == 500 == a_opened(s), \
                f"A's rows were scraped with {sum(opened.values())} connections, A opened {a_opened(s)}"
            assert sum(scraped.by_peer("podsight_flow_connections_closed_total").values()) == 500
            sent = scraped.by_peer("podsight_flow_bytes_total", direction="sent")
            total = sum(sizes.values())
            assert total <= sum(sent.values()) <= total + 2 * 500, \
                f"bytes on A's rows {sum(sent.values())}, sent {total}"

            now = by_peer(s, "podsight_flow_connections_opened_total")
            if order == "top-talkers-first":
                # No row ever stopped: the scrape itself adds up, and each row holds exactly what A sent its peer.
                assert now["~other"] == 500 - sum(v for p, v in now.items() if p != "~other") == 480
                sent_now = by_peer(s, "podsight_flow_bytes_total", direction="sent")
                for i in range(BIG):
                    assert sizes[i] <= sent_now[f"peer-{i:03d}"] <= sizes[i] + 2, f"peer-{i:03d}"


# -- external peers: CIDR sets, no raw IP by default -------------------------------

# The two top talkers send more than twice what any other does (a named address counts double when ranked).
EXTERNAL = [("10.250.7.7", 30_000), ("10.250.8.8", 200_000), ("10.250.9.9", 300_000), ("10.250.10.10", 10_000),
            ("10.250.11.11", 11_000)]


def no_peer_ip_label(s: Scrape) -> bool:
    return not [smp for smp in s.samples if "peer_ip" in smp.labels]


@pytest.mark.parametrize("case", ["default", "corp", "raw_ips"])
def test_external_peers_fall_in_their_cidr_set(node, tmp_path, case):
    """Addresses no pod, Service or node of the API server owns:
    - default config: peer_kind="external", peer_workload="private" (RFC 1918),
      and no series anywhere has a peer_ip label;
    - cidr_sets {corp: [10.250.0.0/16], lab: [10.250.7.0/24]}: the longest
      prefix names the set (lab for 10.250.7.7, corp for the others);
    - raw_ips: true, top_ips: 2 (peer_window 10s: ranked every 5 s): at
      most 2 distinct peer_ip values on A's rows at every scrape, the two
      top talkers once ranked, the others on the CIDR set's row without an
      address, and every byte on A's rows."""
    a, b = node.pod("fa"), node.pod("fb")
    peer_network(a, b)
    flows = {
        "default": "",
        "corp": "  external:\n    cidr_sets:\n      corp: [10.250.0.0/16]\n      lab: [10.250.7.0/24]\n",
        "raw_ips": "  peer_window: 10s\n  external:\n    raw_ips: true\n    top_ips: 2\n",
    }[case]
    with PodApiServer() as api:
        cluster(api)
        register(api, a, "client-0", "client")
        register(api, b, "server-0", "server")
        with start_agent(api, tmp_path, "  idle_timeout: 10m\n" + flows) as agent:
            serve(b)
            wait_synced(agent)
            talk(a, EXTERNAL)
            scraped = Scraped()

            def raw_ips(s: Scrape) -> set[str]:
                found = {lb.get("peer_ip", "") for lb, _ in s.series("podsight_flow_bytes_total", namespace=NS,
                                                                     workload="client")} - {""}
                assert len(found) <= 2 or case != "raw_ips", \
                    f"{len(found)} distinct peer_ip values with top_ips: 2: {sorted(found)}"
                return found

            s = agent.wait_for(scraped.seeing(lambda s: s.value("podsight_tcp_connections_closed_total",
                                                                pod="client-0") == len(EXTERNAL) and
                                              (raw_ips(s) == {"10.250.9.9", "10.250.8.8"} or case != "raw_ips")),
                               timeout=30, what="A's 5 connections closed (raw_ips: the 2 top talkers named)")
            rows = s.series("podsight_flow_bytes_total", namespace=NS, workload="client", direction="sent")
            assert {r["peer_kind"] for r, _ in rows} == {"external"}
            assert {r["peer_namespace"] for r, _ in rows} == {""}
            total = sum(n for _, n in EXTERNAL)
            assert total <= sum(scraped.by_peer("podsight_flow_bytes_total", direction="sent").values()) \
                <= total + 2 * len(EXTERNAL)
            if case == "default":
                assert total <= sum(v for _, v in rows) <= total + 2 * len(EXTERNAL)
                assert [(r["peer_workload"], r["port"], r["role"]) for r, _ in rows] == \
                    [("private", str(PORT), "client")]
                assert no_peer_ip_label(s), "a peer_ip label without flows.external.raw_ips"
            elif case == "corp":
                sets = {r["peer_workload"]: v for r, v in rows}
                assert set(sets) == {"corp", "lab"}, sets
                assert 30_000 <= sets["lab"] <= 30_002
                assert total - 30_000 <= sets["corp"] <= total - 30_000 + 8
                assert no_peer_ip_label(s)
            else:
                # The others: the CIDR set's row, without an address.
                assert {(r["peer_workload"], r.get("peer_ip", "")) for r, _ in rows} == \
                    {("private", ""), ("private", "10.250.9.9"), ("private", "10.250.8.8")}


# -- churn: 5 rounds of 1,000 cluster pods ------------------------------------------

ROUNDS = 5
CHURN_PODS = 1000
TALK = 5          # pods of each round A talks to (the last ones added)
# Measured on the 2-CPU dev VM (kernel 6.18, Python 3.11): about 52 MiB; the first round's deletions,
# expiries and re-ranking add up to 0.6 MiB once (hence a warm-up round), then 0.1 to 0.4 MiB from
# round 1 to round 5; an index that kept its deleted pods grew 0.55 MiB a round of 1,000 pods.
RSS_TOLERANCE_KIB = 1024


def churn_ip(r: int, i: int) -> str:
    return f"10.250.{10 + 4 * r + i // 250}.{i % 250 + 1}"


def test_churn_of_cluster_pods_retires_edges_and_keeps_rss_flat(node, tmp_path):
    """A warm-up round, then five: 1,000 pods (100 workloads) on other nodes
    appear in the API server, A talks to 5 of them (5 workloads), they are
    all deleted.
    With idle_timeout 10 s each round's edges leave /metrics,
    podsight_flow_edges_expired_total grows by at least 5, the kernel
    entries go, an address of a deleted pod is external again, and the
    agent's RSS (VmRSS) after round 5 is within 1 MiB of after round 1."""
    a, b = node.pod("fa"), node.pod("fb")
    peer_network(a, b)
    with PodApiServer() as api:
        cluster(api)
        register(api, a, "client-0", "client")
        register(api, b, "server-0", "server")
        flows = "  idle_timeout: 10s\n"
        # rescan_interval 500ms: the garbage collector (which expires edges) runs every 2.5 s.
        with start_agent(api, tmp_path, flows, extra="rescan_interval: 500ms\n") as agent:
            serve(b)
            wait_synced(agent)
            rss: list[int] = []
            expired = 0.0
            for r in range(ROUNDS + 1):          # round 0: the warm-up
                ns = f"churn-{r}"
                pods = [cluster_pod(f"c{r}-{i:04d}", ns, f"w{r}-{i // 10:02d}", churn_ip(r, i),
                                    "node-b" if i % 2 else "node-c") for i in range(CHURN_PODS)]
                api.add_pods(pods)
                talked = list(range(CHURN_PODS - 1, CHURN_PODS - 1 - 10 * TALK, -10))   # 5 workloads
                workloads = {f"w{r}-{i // 10:02d}" for i in talked}
                # The last pod added first, until the agent names it: then every pod before it is known.
                canary = talked[0]
                for attempt in range(20):
                    before = agent.scrape()
                    talk(a, [(churn_ip(r, canary), 1000)])
                    s = agent.wait_for(
                        lambda s: s.value("podsight_flow_connections_opened_total", namespace=NS, workload="client")
                        == before.value("podsight_flow_connections_opened_total", namespace=NS, workload="client") + 1
                        or s.value("podsight_flow_connections_opened_total", namespace=NS, workload="client",
                                   peer_namespace=ns) >= 1, what="the canary connection on an edge")
                    if s.value("podsight_flow_connections_opened_total", namespace=NS, workload="client",
                               peer_namespace=ns) >= 1:
                        break
                else:
                    pytest.fail(f"round {r}: the agent never named a pod of the round")
                talk(a, [(churn_ip(r, i), 2000 + i) for i in talked[1:]])
                s = agent.wait_for(
                    lambda s: set(by_peer(s, "podsight_flow_connections_closed_total", peer_namespace=ns)) == workloads
                    and sum(by_peer(s, "podsight_flow_connections_closed_total", peer_namespace=ns).values()) == TALK,
                    timeout=30, what=f"round {r}: A's edges to the 5 workloads it talked to")
                rows = s.series("podsight_flow_connections_closed_total", namespace=NS, workload="client",
                                peer_namespace=ns)
                assert {(lb["peer_kind"], lb["peer_zone"]) for lb, _ in rows} <= {("pod", "zone-b"), ("pod", "zone-c")}
                api.delete_pods(p["metadata"]["uid"] for p in pods)
                # A deleted pod's address names no pod any more (once the watch brought the deletions).
                for attempt in range(20):
                    before = agent.scrape()
                    talk(a, [(churn_ip(r, canary), 1000)])
                    s = agent.wait_for(
                        lambda s: s.value("podsight_flow_connections_opened_total", namespace=NS, workload="client")
                        == before.value("podsight_flow_connections_opened_total", namespace=NS, workload="client") + 1,
                        what="the connection to a deleted pod's address on an edge")
                    if s.value("podsight_flow_connections_opened_total", namespace=NS, workload="client",
                               peer_kind="external", peer_workload="private") > \
                            before.value("podsight_flow_connections_opened_total", namespace=NS, workload="client",
                                         peer_kind="external", peer_workload="private"):
                        break
                else:
                    pytest.fail(f"round {r}: a deleted pod's address still names the pod")
                # The edges retire after idle_timeout (10 s) and the next collection (2.5 s).
                s = agent.wait_for(
                    lambda s: not [smp for smp in s.samples if smp.labels.get("peer_namespace") == ns]
                    and s.value("podsight_flow_edges_expired_total") >= expired + TALK,
                    timeout=40, interval=0.5, what=f"round {r}: its edges gone from /metrics")
                expired = s.value("podsight_flow_edges_expired_total")
                # Kernel entries too (what is left: connections of host processes, e.g. this test's scrapes).
                s = agent.wait_for(lambda s: s.value("podsight_bpf_map_entries", map="tcp_flows") <= 20,
                                   timeout=30, interval=0.5, what=f"round {r}: tcp_flows entries retired")
                rss.append(rss_kib(agent))
            print(f"agent RSS after the warm-up and each round (KiB): {rss}")
            growth = rss[ROUNDS] - rss[1]
            assert growth <= RSS_TOLERANCE_KIB, f"RSS grew {growth} KiB from round 1 to round 5 (KiB: {rss})"
