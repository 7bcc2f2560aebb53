"""Figure 8: what peer flows (issue 16) cost, flows on against flows off, in one run.

With ``flows.enabled`` (the default) tcp.bpf.c keeps each tracked
connection's peer and counts per edge (cgroup, peer, server port, role) in
``tcp_flows`` instead of per cgroup; bytes and segments come from the
socket's own counters, read by the RTT sampler and at close, so no
per-packet program is added.  Four parts:

1. **iperf3** between two pods, four arms in an order that rotates every
   round (ab.rotate): no agent; the agent with flows on; the agent with
   flows off (``flows.enabled: false``: the per-cgroup design before issue
   16); empty programs on podsight's hooks (bench/bpf/empty.bpf.c).  The
   budget: flows on equals flows off within the run's noise, judged on
   the per-round pair flows on / flows off: it passes unless the median's
   confidence interval lies wholly below 1.
2. **Connection churn** (wrk, ``Connection: close``, bench/tools/httpd.c),
   the same four arms.  The budget: on/empty programs with flows on no
   worse than with flows off.  Both share each round's empty-programs run,
   so their quotient is flows on / flows off of that round: judged on its
   median (>= 1), with its interval saying whether the rounds can tell.
3. **tcp_state per run**, flows on and off, from the agent's own kernel
   BPF stats (``bpf_stats: true``: podsight_bpf_program_run_seconds_total
   over podsight_bpf_program_runs_total) under the churn load, in turns
   apart from part 2 (BPF stats read the clock twice per program run and
   would weigh on the agent arms only), next to the empty program on the
   same hook (fdinfo, as figure 3).  Also per connection, and the RTT
   sampler's run, which carries the bytes onto the edges.
4. **Scrape and RSS with a cluster**: ``pods`` local pod cgroups (as figure
   4 makes them: a cgroup each, no netns), each making ``peers`` real TCP
   connections to ``peers`` different peer addresses; the test API server
   (tests/support/apiserver.py, not a real API server) serves the cluster:
   ``cluster_pods`` pods in all (the local ones included; the peers are pods
   of other nodes), ``services`` Services with ClusterIPs and ``nodes``
   Nodes in three zones.  The peer addresses are 198.18.0.0/15 (RFC 2544's
   benchmarking range) on the loopback device of the bench's node namespace
   (psb-node), so one process reaches them all: it moves into each pod's
   cgroup in turn, as figure 4's visitor does, and connects.  Two shapes of
   the local pods, each its own agent: "replicas" (100 Deployments of 10
   pods; every pod's peers are 10 different workloads, so each workload has
   100 peers and the series budget folds all but 20) and "one workload per
   pod" (every edge exported: the most rows 1,000 pods with 10 peers each
   can make at the default ``max_peers_per_workload``), and a third agent
   with flows off on the replicas shape for comparison.  Scrapes as in
   figure 4 (gzip and plain blocks, p50/p99 from the client side, agent CPU
   per scrape); RSS after the cluster synced, after the edges arrived, after
   the scrapes and after an idle pause, and the peak (VmHWM).
"""
from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import re
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from . import churn, env, scale, throughput, visitor
from .ab import rotate
from .floor import floor_programs
from .kernel_cost import FLOOR, read_stats
from .machine import bpf_stats
from .stats import Budget, median_ci, ratio_pairs, summary

__all__ = ["run", "BUDGETS", "Sizes", "SIZES", "QUICK_SIZES", "within_noise", "flow_rows", "peer_address",
           "workload_of", "FLOWS_ON", "FLOWS_OFF"]

BUDGETS = {
    # flows on / flows off, paired per round: equal within the run's noise.
    "throughput": Budget(">=", 1.0),
    # (flows on / empty) / (flows off / empty) = flows on / flows off, paired per round.
    "churn": Budget(">=", 1.0),
    "scrape_p99_ms": Budget("<=", 100, " ms"),
    "rss_mb": Budget("<=", 100, " MB"),
}
# The churn figure's on/empty programs without flows on the AMD VM, 2026-11-30 (issue 16).
CHURN_BEFORE = 0.925

FLOWS_ON = env.OFF_CONFIG + "flows:\n  enabled: true\n"
FLOWS_OFF = env.OFF_CONFIG + "flows:\n  enabled: false\n"
ARMS = ("off", "flows_on", "flows_off", "empty_programs")
STATS_SIDES = ("flows_on", "flows_off", "empty_programs")
SAMPLER = "tcp_rtt_sample"

NODE_NAME = scale.NODE_NAME
ZONES = ("zone-a", "zone-b", "zone-c")  # this node is in zone-a
PEER_NET = ipaddress.IPv4Network("198.18.0.0/15")  # RFC 2544 benchmarking, on psb-node's lo
PEER_SOURCE = PEER_NET[1]  # the address the lo route gives as source: no pod has it
PEER_FIRST = PEER_NET[2]
PEER_PORT = 8080
LOCAL_POD_NET = ipaddress.IPv4Address("10.1.0.1")
NODE_IP_FIRST = ipaddress.IPv4Address("172.16.0.1")
CLUSTER_IP_FIRST = ipaddress.IPv4Address("10.96.0.10")
REPLICAS = 10  # pods per Deployment, local and remote
NAMESPACES = 25


@dataclass(frozen=True)
class Sizes:
    peers: int = 10  # connections per local pod, each to another peer address
    cluster_pods: int = 10_000  # the local pods included
    services: int = 2_000
    nodes: int = 500  # this one included
    idle_seconds: float = 10.0
    per_pod_repeats: int = 1  # scrape repeats of the one-workload-per-pod agent (its scrapes are slow)


SIZES = Sizes()
QUICK_SIZES = Sizes(peers=3, cluster_pods=400, services=40, nodes=10, idle_seconds=1.0)


# -- verdicts -----------------------------------------------------------------

def within_noise(stats: dict, ci: dict | None, limit: float = 1.0) -> dict:
    """A ratio that must equal ``limit`` within the run's noise: PASS unless
    the median's confidence interval lies wholly below the line (without an
    interval, on the median).  "settled": the interval lies on one side."""
    b = BUDGETS["throughput"].judge(stats, ci)
    if ci is not None:
        b["verdict"] = "PASS" if ci["high"] >= limit else "MISS"
    b["rule"] = "equal within noise: PASS unless the median's interval lies wholly below the line"
    return b


def _pair(runs: dict, a: str, b: str) -> tuple[dict, dict | None]:
    r = ratio_pairs(runs[a], runs[b])
    return summary(r), median_ci(r)


def _ratios(runs: dict) -> dict:
    out = {}
    for name, a, b in (("flows_on_vs_off", "flows_on", "off"), ("flows_off_vs_off", "flows_off", "off"),
                       ("empty_programs_vs_off", "empty_programs", "off"),
                       ("flows_on_vs_empty", "flows_on", "empty_programs"),
                       ("flows_off_vs_empty", "flows_off", "empty_programs"),
                       ("flows_on_vs_flows_off", "flows_on", "flows_off")):
        out[name], out[f"{name}_ci"] = _pair(runs, a, b)
    return out


# -- nobody else on the hooks -------------------------------------------------

def tcp_state_programs() -> int:
    """Programs named tcp_state loaded on this machine, whoever loaded them:
    one per running podsight agent with the tcp probe."""
    r = env.sh("bpftool", "-j", "prog", "show")
    if r.returncode != 0:
        raise env.BenchError(f"bpftool prog show failed: {r.stderr}")
    return sum(1 for prog in json.loads(r.stdout or "[]") if prog.get("name") == "tcp_state")


def _agent_processes() -> list[str]:
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            argv = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        text = " ".join(a.decode(errors="replace") for a in argv if a)
        if "podsight" in text and " run" in text and "bench/run.py" not in text:
            out.append(f"{d.name}: {text[:160]}")
    return out


def expect_agents(n: int, when: str) -> None:
    """Exactly ``n`` podsight agents' TCP programs loaded (ours): another
    agent (a test's, or one a killed test left behind) runs its programs on
    every hook, so "off" would not be off, and handles our connections too."""
    loaded = tcp_state_programs()
    if loaded != n:
        raise env.BenchError(
            f"{loaded} tcp_state programs loaded {when}, expected {n}: another podsight agent runs here, and "
            f"the figure would measure it too. Agent processes: " + ("; ".join(_agent_processes()) or "none found"))


# -- parts 1 and 2: four arms -------------------------------------------------

@contextlib.contextmanager
def _floor(empty_dir):
    with floor_programs(empty_dir):
        yield None


def _arms(empty_dir, on_config: str = FLOWS_ON, off_config: str = FLOWS_OFF) -> dict:
    return {"off": contextlib.nullcontext, "flows_on": lambda: env.agent(on_config),
            "flows_off": lambda: env.agent(off_config), "empty_programs": lambda: _floor(empty_dir)}


def _checker(client, metric: str, match: dict, seen: list):
    """After each agent arm: flows on must have counted the load on the client
    pod's edges, flows off must export no edge at all (otherwise the arms are
    not what they say)."""

    def check(arm: str, agent, _value: float) -> None:
        expect_agents(0 if agent is None else 1, f"during an {arm!r} run")
        if agent is None:
            return
        s = agent.scrape()
        rows = s.series(metric)
        if arm == "flows_off":
            if rows:
                raise env.BenchError(f"the flows-off agent exports {len(rows)} {metric} rows")
            return
        got = s.value(metric, workload=client.uid, **match)
        seen.append(got)
        if got <= 0:
            raise env.BenchError(f"the flows-on agent counted nothing on the client pod's edges ({metric} {match}):"
                                 f" {rows[:5]}")

    return check


def _four_arms(measure, repeats, empty_dir, check, log) -> dict:
    r = rotate(measure, repeats, _arms(empty_dir), log, after=check)
    runs = r["runs"]
    out = {arm: summary(runs[arm]) for arm in ARMS}
    return {**out, **_ratios(runs), "agent_cpu_percent": r["agent_cpu_percent"]}


def _throughput(node, empty_dir, repeats: int, seconds: float, log) -> dict:
    client, server = node.pod(env.pod_name("fipc")), throughput.serve(node, "fips")
    log(f"flows, throughput: iperf3 {seconds:g} s, arms {', '.join(ARMS)} x {repeats} rounds (Gbit/s)")
    seen: list[float] = []
    try:
        out = _four_arms(lambda: throughput.iperf3(client, server, seconds), repeats, empty_dir,
                         _checker(client, "podsight_flow_bytes_total", {"direction": "sent", "role": "client"}, seen),
                         log)
    finally:
        node.remove(client)
        node.remove(server)
    out["budget"] = within_noise(out["flows_on_vs_flows_off"], out["flows_on_vs_flows_off_ci"])
    return {"unit": "Gbit/s", "seconds_per_run": seconds,
            "edge_bytes_sent_per_flows_on_run": summary(seen), **out}


def _churn(node, httpd, empty_dir, repeats: int, seconds: float, log) -> dict:
    client, server = node.pod(env.pod_name("fhc")), churn.serve(node, httpd)
    log(f"flows, churn: wrk -c{churn.CONNECTIONS} 'Connection: close' {seconds:g} s, arms {', '.join(ARMS)} x "
        f"{repeats} rounds (connections/s)")
    seen: list[float] = []
    try:
        out = _four_arms(lambda: churn.wrk(client, server, seconds), repeats, empty_dir,
                         _checker(client, "podsight_flow_connections_opened_total", {"role": "client"}, seen), log)
    finally:
        node.remove(client)
        node.remove(server)
    out["budget"] = BUDGETS["churn"].judge(out["flows_on_vs_flows_off"], out["flows_on_vs_flows_off_ci"])
    out["budget"]["rule"] = ("flows on's on/empty programs no worse than flows off's: their quotient per round "
                             "(flows on / flows off) >= 1, on the median")
    return {"unit": "connections/s", "seconds_per_run": seconds, "tool": f"wrk -t1 -c{churn.CONNECTIONS}",
            "reference_on_vs_empty_without_flows": {"value": CHURN_BEFORE, "where": "AMD VM, 2026-11-30 (issue 16)"},
            "edge_connections_opened_per_flows_on_run": summary(seen), **out}


# -- part 3: tcp_state per run from the agent's BPF stats ---------------------

def agent_program_stats(agent) -> dict[str, tuple[int, float]]:
    """program → (runs, ns) from the agent's podsight_bpf_program_* counters."""
    s = agent.scrape()
    runs = {lb["program"]: v for lb, v in s.series("podsight_bpf_program_runs_total")}
    secs = {lb["program"]: v for lb, v in s.series("podsight_bpf_program_run_seconds_total")}
    if not runs:
        raise env.BenchError("the agent exports no podsight_bpf_program_runs_total: bpf_stats did not turn on")
    return {p: (int(n), secs.get(p, 0.0) * 1e9) for p, n in runs.items()}


def _delta(a: dict, b: dict) -> dict[str, tuple[int, float]]:
    return {k: (b[k][0] - a[k][0], b[k][1] - a[k][1]) for k in b if k in a}


def _kernel(node, httpd, empty_dir, repeats: int, seconds: float, log) -> dict:
    client, server = node.pod(env.pod_name("fkc")), churn.serve(node, httpd)
    stats_cfg = "bpf_stats: true\n"
    turns: dict[str, list[tuple[dict, float]]] = {s: [] for s in STATS_SIDES}

    def load() -> float:
        return churn.wrk(client, server, seconds) * seconds  # connections made (about)

    log(f"flows, tcp_state per run: BPF stats, wrk {seconds:g} s, turns {', '.join(STATS_SIDES)} x {repeats}")
    try:
        for i in range(repeats):
            k = i % len(STATS_SIDES)
            for side in STATS_SIDES[k:] + STATS_SIDES[:k]:
                if side == "empty_programs":
                    with bpf_stats(), floor_programs(empty_dir) as fds:
                        before = read_stats(fds)
                        made = load()
                        d = _delta(before, read_stats(fds))
                        expect_agents(0, "during an 'empty_programs' turn")
                else:
                    with env.agent(stats_cfg + (FLOWS_ON if side == "flows_on" else FLOWS_OFF)) as agent:
                        before = agent_program_stats(agent)
                        made = load()
                        d = _delta(before, agent_program_stats(agent))
                        expect_agents(1, f"during a {side!r} turn")
                turns[side].append((d, made))
            log(f"  turn {i + 1}/{repeats}: " + "  ".join(
                f"{s} {_ns(turns[s][-1][0], 'empty_state' if s == 'empty_programs' else 'tcp_state'):.0f} ns"
                for s in STATS_SIDES))
    finally:
        node.remove(client)
        node.remove(server)
    programs = {}
    for prog, floor in list(FLOOR.items()) + [(SAMPLER, None)]:
        entry = {}
        for side in STATS_SIDES:
            name = floor if side == "empty_programs" else prog
            if name is None:
                continue
            per = [(d.get(name, (0, 0.0)), made) for d, made in turns[side]]
            entry[side] = {"runs": summary([c for (c, _), _ in per]),
                           "ns_per_run": summary([t / c for (c, t), _ in per if c]),
                           "runs_per_connection": summary([c / made for (c, _), made in per if made]),
                           "ns_per_connection": summary([t / made for (_, t), made in per if made])}
        programs[prog] = entry
    return {"unit": "ns", "load": f"wrk -t1 -c{churn.CONNECTIONS} 'Connection: close', {seconds:g} s a turn",
            "method": "flows on and flows off: the agent's own podsight_bpf_program_run_seconds_total / "
                      "podsight_bpf_program_runs_total (bpf_stats: true) before and after each load; the empty "
                      "programs: fdinfo run_time_ns / run_cnt with BPF stats on; turns in rotating order; "
                      "connections = wrk's rate x seconds",
            "turns": {s: [{"connections": made, "programs": {p: list(v) for p, v in d.items()}} for d, made in t]
                      for s, t in turns.items()},
            "programs": programs}


def _ns(d: dict, prog: str) -> float:
    c, t = d.get(prog, (0, 0.0))
    return t / c if c else float("nan")


# -- part 4: scrape and RSS with a cluster ------------------------------------

def peer_address(i: int, k: int, peers: int, remote: int) -> ipaddress.IPv4Address:
    """The k-th peer of local pod i: remote pod (i * peers + k) mod remote.

    Remote pod r belongs to remote workload r mod (remote // REPLICAS), so
    a local pod's peers are ``peers`` different workloads, and the pods of
    one local Deployment of REPLICAS replicas reach REPLICAS x peers
    different workloads between them."""
    return PEER_FIRST + (i * peers + k) % remote


def workload_of(i: int, shape: str) -> tuple[str, str]:
    """(namespace, ReplicaSet) of local pod i: "replicas" puts REPLICAS pods in one
    Deployment; "per_pod" gives every pod a Deployment of its own."""
    w = i // REPLICAS if shape == "replicas" else i
    return f"psb-ns{w % NAMESPACES}", f"web-{w}-6d5f8b"


def _cluster(pods, shape: str, sz: Sizes):
    """The test API server with the cluster: Nodes, Services, the local
    pods (their real uids and container ids) and the remote ones."""
    from tests.support.apiserver import PodApiServer, make_node, make_pod, make_service, start_container

    srv = PodApiServer().start()
    names = [NODE_NAME] + [f"psb-node-{j}" for j in range(1, max(2, sz.nodes))]
    for j, name in enumerate(names):
        srv.add_node(make_node(name, [str(NODE_IP_FIRST + j)], zone=ZONES[j % len(ZONES)]))
    for j in range(sz.services):
        srv.add_service(make_service(f"svc-{j}", namespace=f"psb-remote{j % 20}",
                                     cluster_ips=[str(CLUSTER_IP_FIRST + j)], ports=(80,)))
    objs = []
    for i, p in enumerate(pods):
        ns, rs = workload_of(i, shape)
        obj = make_pod(f"{rs}-{i}", namespace=ns, node=NODE_NAME, uid=p.uid, owner=("ReplicaSet", rs),
                       ips=[str(LOCAL_POD_NET + i)])
        start_container(obj, "app", p.container_id)
        objs.append(obj)
    remote = _remote(len(pods), sz)
    workloads = max(1, remote // REPLICAS)
    for r in range(remote):
        w = r % workloads
        rs = f"api-{w}-7c9d8f"
        objs.append(make_pod(f"{rs}-{r}", namespace=f"psb-remote{w % 20}", node=names[1 + r % (len(names) - 1)],
                             owner=("ReplicaSet", rs), ips=[str(PEER_FIRST + r)], phase="Running"))
    srv.add_pods(objs)
    return srv


def _remote(local: int, sz: Sizes) -> int:
    return max(sz.peers, sz.cluster_pods - local)


def _peer_lo() -> None:
    """The peers' addresses, local on psb-node's loopback (a lo address's prefix is all local)."""
    ns = env._pods.NODE_NS
    env.sh("ip", "-n", ns, "link", "set", "lo", "up")
    r = env.sh("ip", "-n", ns, "addr", "replace", f"{PEER_SOURCE}/{PEER_NET.prefixlen}", "dev", "lo")
    if r.returncode != 0:
        raise env.BenchError(f"ip addr replace {PEER_SOURCE} on {ns}'s lo: {r.stderr}")


def _traffic(pods, sz: Sizes, log) -> float:
    t0 = time.monotonic()
    remote = _remote(len(pods), sz)
    # All peers are local on psb-node's lo, served by the visitor's listener.
    visitor.visit([(p.cgroup, [str(peer_address(i, k, sz.peers, remote)) for k in range(sz.peers)])
                   for i, p in enumerate(pods)],
                  port=PEER_PORT, netns=f"/run/netns/{env._pods.NODE_NS}", timeout=900, what="flows visitor")
    want = len(pods) * sz.peers
    dt = time.monotonic() - t0
    log(f"  traffic: {want:,} connections ({sz.peers} peers x {len(pods)} pods) in {dt:.1f} s")
    return dt


_ROW = re.compile(r'^podsight_flow_connections_opened_total\{(.*)\} (\S+)$', re.M)
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def flow_rows(text: str, local_prefix: str = "psb-ns") -> dict:
    """The client edges of the local pods' workloads on a page: rows, the
    connections they opened, and the rows by peer kind (``~other`` rows
    have none)."""
    rows, opened, kinds = 0, 0.0, Counter()
    for m in _ROW.finditer(text):
        labels = dict(_LABEL.findall(m.group(1)))
        if not labels.get("namespace", "").startswith(local_prefix):
            continue
        rows += 1
        opened += float(m.group(2))
        kinds[labels.get("peer_kind") or labels.get("peer_workload", "")] += 1
    return {"rows": rows, "opened": opened, "by_peer_kind": dict(kinds)}


_OPENED = re.compile(r'^podsight_tcp_connections_opened_total\{(.*)\} (\S+)$', re.M)


def local_opened(text: str, local_prefix: str = "psb-ns") -> float:
    """Outbound connections the local pods opened, from the per-pod TCP
    family (with flows on, the sums of the pods' kernel edges, whether
    their rows are exported or folded)."""
    total = 0.0
    for m in _OPENED.finditer(text):
        labels = dict(_LABEL.findall(m.group(1)))
        if labels.get("namespace", "").startswith(local_prefix) and labels.get("direction") == "outbound":
            total += float(m.group(2))
    return total


def _gauge(text: str, name: str) -> float | None:
    m = re.search(rf"^{name}(?:\{{[^}}]*\}})? (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


def _map_entries(text: str, name: str) -> float | None:
    m = re.search(rf'^podsight_bpf_map_entries\{{map="{name}"[^}}]*\}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else None


def _wait(what: str, timeout: float, cond):
    t0 = time.monotonic()
    while True:
        got = cond()
        if got:
            return got, time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise env.BenchError(f"waited {timeout:g} s for {what}")
        time.sleep(1)


@contextlib.contextmanager
def cluster_agent(node, pods, shape: str, flows: bool, sz: Sizes, log):
    """The agent over the test API server's cluster, the local pods' traffic
    made and every pod (and with flows every connection, on edges) on its
    page.  Yields ``(agent, info)``; the API server is gone afterwards.

    RSS is read at each stage: the watches synced, before any traffic; the
    edges read by the agent's sampler (it folds the kernel's edges in every
    ``srtt_sample_interval``) but no page rendered yet; after the first
    pages.  So the cluster watch, the flows' own state and the page can be
    told apart."""
    from tests.support.apiserver import write_kubeconfig

    srv = _cluster(pods, shape, sz)
    tmp = tempfile.TemporaryDirectory(prefix="psb-flows-")
    kubeconfig = write_kubeconfig(Path(tmp.name) / "kubeconfig", srv.url)
    config = 'log_level: warning\nkubernetes:\n  enabled: "true"\n' + f"flows:\n  enabled: {str(flows).lower()}\n"
    n, want = len(pods), len(pods) * sz.peers
    info: dict = {"shape": shape, "flows": flows, "pods": n, "peers_per_pod": sz.peers, "connections": want}
    rss: dict[str, float] = {}
    info["rss_stages_mb"] = rss
    try:
        expect_agents(0, "before the agent started")
        with env.agent(config, "--node-name", NODE_NAME, "--kubeconfig", str(kubeconfig)) as agent:
            pid = agent.proc.pid

            def ready():
                code, body = agent.get("/readyz")
                return code == 200 and "cluster watch" not in body and "kubernetes API" not in body

            _, dt = _wait("the agent's pod watch and cluster watch synced (/readyz)", 180, ready)
            log(f"  {shape}, flows {'on' if flows else 'off'}: agent synced with the API server in {dt:.1f} s")
            rss["synced"] = env.rss_bytes(pid) / 2**20
            info["traffic_seconds"] = _traffic(pods, sz, log)
            time.sleep(EDGES_READ_SECONDS)
            rss["edges_read"] = env.rss_bytes(pid) / 2**20

            last: dict = {}

            def arrived():
                text = scale._scrape(agent.url, False).body.decode()
                last.update(pods_labelled=scale._pods_labelled(text.encode()), opened=local_opened(text))
                if flows:
                    last["edges"] = {**flow_rows(text), "exported": _gauge(text, "podsight_flow_edges"),
                                     "folded": _gauge(text, "podsight_flow_peers_folded"),
                                     "kernel_entries": _map_entries(text, "tcp_flows")}
                return last["pods_labelled"] >= n and last["opened"] >= want and (not flows or last["edges"]["rows"])

            try:
                _, dt = _wait(f"all {n} pods labelled and their {want} connections counted", 180, arrived)
            except env.BenchError as e:
                raise env.BenchError(f"{e}; the last page had {last}") from None
            log(f"  agent shows all {n} pods and {int(last['opened']):,} connections"
                + (f", {last['edges']['rows']:,} edge rows" if flows else "") + f" after {dt:.1f} s")
            rss["first_pages"] = env.rss_bytes(pid) / 2**20
            info["connections_counted"] = last["opened"]
            if flows:
                # Every connection on an edge named as a pod; "opened" sums the rows on the page, folded
                # ones in their ~other row (an edge that left the top rows after a first page has none).
                info["edges"] = e = last["edges"]
                if e["by_peer_kind"].get("external") or not e["by_peer_kind"].get("pod"):
                    raise env.BenchError(f"edges: {e}: the peers were not named as pods")
            yield agent, info
    finally:
        srv.stop()
        tmp.cleanup()


# Seconds after the traffic for the agent's sampler to have read the edges (every srtt_sample_interval, 1 s).
EDGES_READ_SECONDS = 3.0


def _scraped(node, pods, shape: str, flows: bool, sz: Sizes, scrapes: int, repeats: int, log) -> dict:
    """One agent over the cluster: sync, traffic, edges in, scrapes, RSS."""
    with cluster_agent(node, pods, shape, flows, sz, log) as (agent, out):
        pid, rss = agent.proc.pid, out["rss_stages_mb"]
        figs: dict[str, list[float]] = {k: [] for k in ("scrape_p50_ms", "scrape_p99_ms", "cpu_ms_per_scrape",
                                                         "plain_scrape_p50_ms", "plain_scrape_p99_ms",
                                                         "plain_cpu_ms_per_scrape", "gzip_bytes")}
        for i in range(repeats):
            for gzip_ok in ((True, False) if i % 2 == 0 else (False, True)):
                b = scale._block(agent.url, pid, scrapes, gzip_ok)
                pre = "" if gzip_ok else "plain_"
                figs[pre + "scrape_p50_ms"].append(b["p50"])
                figs[pre + "scrape_p99_ms"].append(b["p99"])
                figs[pre + "cpu_ms_per_scrape"].append(b["cpu_ms"])
                if gzip_ok:
                    figs["gzip_bytes"].append(b["bytes"])
        rss["scraped"] = env.rss_bytes(pid) / 2**20
        body = scale._scrape(agent.url, False).body
        out.update({k: summary(v) for k, v in figs.items()})
        out["series"] = scale._series(body)
        out["body_bytes"] = len(body)
        # Edge series and the budget's own (podsight_flow_untracked_total is a per-pod TCP family).
        out["flow_series"] = sum(1 for line in body.splitlines()
                                 if line.startswith(b"podsight_flow_") and not line.startswith(b"podsight_flow_untracked"))
        # Nobody scrapes: what the sampler's reads of the edges cost (every srtt_sample_interval).
        c0, t0 = env.cpu_seconds(pid), time.monotonic()
        time.sleep(sz.idle_seconds)
        out["idle_cpu_percent"] = (env.cpu_seconds(pid) - c0) / (time.monotonic() - t0) * 100
        rss["idle"] = env.rss_bytes(pid) / 2**20
        # After the first pages, as figure 4 reads it: what a scraped agent holds.
        out["rss_mb"] = summary([rss["first_pages"], rss["scraped"], rss["idle"]])
        out["peak_rss_mb"] = env.peak_rss_bytes(pid) / 2**20
    out["scrape_p99_ms"]["budget"] = BUDGETS["scrape_p99_ms"].judge(out["scrape_p99_ms"])
    out["rss_mb"]["budget"] = BUDGETS["rss_mb"].judge(out["rss_mb"])
    # The cluster watch alone: synced with the API server, the local pods known, no traffic yet, no page.
    out["cluster_watch_rss_mb"] = {"value": rss["synced"],
                                   "budget": BUDGETS["rss_mb"].as_dict(rss["synced"])}
    if not flows:  # the comparison: no budget of issue 16 applies to it
        for key in ("scrape_p99_ms", "rss_mb", "cluster_watch_rss_mb"):
            out[key]["reference_only"] = out[key].pop("budget")
    log(f"  scrape p99 {out['scrape_p99_ms']['median']:.1f} ms, {out['series']:,} series, "
        f"RSS {out['rss_mb']['median']:.1f} MB (peak {out['peak_rss_mb']:.1f})")
    return out


def local_pods(node, n: int, log) -> list:
    """``n`` pod cgroups (no netns), and the peers' addresses on psb-node's lo."""
    t0 = time.monotonic()
    pods = [node.pod(env.pod_name(f"f{i}"), netns=False) for i in range(n)]
    log(f"  {n} pod cgroups in {time.monotonic() - t0:.1f} s")
    _peer_lo()
    return pods


def _scrape_part(node, n_pods: int, sz: Sizes, scrapes: int, repeats: int, log) -> dict:
    log(f"flows, scrape and RSS: {n_pods} local pods x {sz.peers} peers; cluster {sz.cluster_pods:,} pods, "
        f"{sz.services:,} services, {sz.nodes} nodes (test API server)")
    pods = local_pods(node, n_pods, log)
    try:
        out = {"replicas": _scraped(node, pods, "replicas", True, sz, scrapes, repeats, log),
               "per_pod": _scraped(node, pods, "per_pod", True, sz, scrapes, min(repeats, sz.per_pod_repeats), log),
               "flows_off": _scraped(node, pods, "replicas", False, sz, scrapes, repeats, log)}
    finally:
        t0 = time.monotonic()
        for p in pods:
            node.remove(p)
        log(f"  removed {n_pods} pods in {time.monotonic() - t0:.1f} s")
    return {"cluster": {"pods": sz.cluster_pods, "services": sz.services, "nodes": sz.nodes, "zones": len(ZONES),
                        "peer_addresses": f"{PEER_NET} on {env._pods.NODE_NS}'s lo",
                        "server": "tests/support/apiserver.py, not a real API server"},
            **out}


def code_identity() -> dict:
    """What was measured: the commit, whether the tree differs from it, and
    hashes of the TCP program (source and object) and of the agent's Python
    (the tree may be mid-change)."""
    out = {}
    for path in (env.REPO / "bpf" / "tcp.bpf.c", env.REPO / "build" / "bpf" / "tcp.bpf.o"):
        try:
            out[str(path.relative_to(env.REPO))] = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        except OSError:
            out[str(path.relative_to(env.REPO))] = None
    h = hashlib.sha256()
    for path in sorted((env.REPO / "src" / "podsight").rglob("*.py")):
        h.update(str(path.relative_to(env.REPO)).encode() + b"\0" + path.read_bytes())
    out["src/podsight/**.py"] = h.hexdigest()[:16]
    r = env.sh("git", "-C", str(env.REPO), "rev-parse", "--short", "HEAD")
    out["head"] = r.stdout.strip() or None
    r = env.sh("git", "-C", str(env.REPO), "status", "--porcelain", "--", "src", "bpf")
    out["uncommitted_src_bpf_files"] = len(r.stdout.splitlines())
    return out


def run(node, tools: dict, repeats: int, rounds: int, seconds: float, n_pods: int, scrapes: int, sz: Sizes,
        log) -> dict:
    empty_dir, httpd = tools["empty_dir"], tools["httpd"]
    expect_agents(0, "before the figure")
    out = {"code": code_identity(), "sizes": {"pods": n_pods, **sz.__dict__}, "rounds": rounds}
    out["throughput"] = _throughput(node, empty_dir, rounds, seconds, log)
    out["churn"] = _churn(node, httpd, empty_dir, rounds, seconds, log)
    out["kernel"] = _kernel(node, httpd, empty_dir, max(1, min(repeats, 3)), seconds, log)
    out["scrape"] = _scrape_part(node, n_pods, sz, scrapes, max(1, min(repeats, 3)), log)
    return out
