"""Who talks to whom: per-edge flows from the real kernel, both ends named
from the test API server (pods, Services, Nodes served with the real
list/watch protocol), checked against what was sent and the kernel's own
counters (ss -ti, nstat)."""
from __future__ import annotations

import re
import subprocess

import pytest

from tests.support.agent import AgentProcess
from tests.support.apiserver import PodApiServer, make_service, write_kubeconfig
from tests.support.flows import HOLD, NODE, NS, PY, cluster, lossy, register, send, serve, three_pods
from tests.support.pods import sh

pytestmark = pytest.mark.root


def agent_for(api, tmp_path, extra="") -> AgentProcess:
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", api.url)
    config = ("probes:\n  tcp:\n    srtt_sample_interval: 200ms\n"
              f"flows:\n  conntrack: false\n  idle_timeout: 10m\n{extra}")
    return AgentProcess("--node-name", NODE, "--kubeconfig", str(kubeconfig), config=config)


def edges(s, **match) -> list[tuple[dict, float]]:
    return s.series("podsight_flow_bytes_total", **match)


def edge(s, metric="podsight_flow_bytes_total", **match) -> float:
    rows = s.series(metric, **match)
    assert len(rows) <= 1, f"{metric} {match}: {len(rows)} rows: {rows}"
    return rows[0][1] if rows else 0.0


def test_edges_carry_the_bytes_sent_on_both_ends_with_zones(node, tmp_path):
    """A (zone-a) sends known bytes to B (this node, zone-a) and to C (a
    pod of node-b, zone-b): each edge holds its bytes on both ends' rows,
    within the SYN/FIN sequence numbers the socket counts, and nothing
    lands on another edge."""
    a, b, c = node.pod("fa"), node.pod("fb"), node.pod("fc")
    with PodApiServer() as api:
        three_pods(api, a, b, c)
        with agent_for(api, tmp_path) as agent:
            serve(b, 5432, back=70_000)
            serve(c, 6379, back=20_000)
            agent.wait_for(lambda s: s.value("podsight_kubernetes_api_up") == 1, what="the API watch up")
            assert send(a, b.ip, 5432, 1_000_000, count=2) == 70_000
            assert send(a, c.ip, 6379, 300_000, count=3) == 20_000
            ab = dict(namespace=NS, workload="client", role="client", port="5432", peer_kind="pod",
                      peer_namespace=NS, peer_workload="db")
            ba = dict(namespace=NS, workload="db", role="server", port="5432", peer_kind="pod",
                      peer_namespace=NS, peer_workload="client")
            ac = dict(namespace=NS, workload="client", role="client", port="6379", peer_kind="pod",
                      peer_workload="cache")
            s = agent.wait_for(lambda s: edge(s, "podsight_flow_connections_closed_total", **ab) == 2 and
                               edge(s, "podsight_flow_connections_closed_total", **ba) == 2 and
                               edge(s, "podsight_flow_connections_closed_total", **ac) == 3,
                               what="2 closed connections on A->B (both ends) and 3 on A->C")
            # bytes_acked counts the SYN and the FIN, bytes_received the FIN: + 2 and + 1 per connection.
            assert 2 * 1_000_000 <= edge(s, direction="sent", **ab) <= 2 * 1_000_002
            assert 2 * 70_000 <= edge(s, direction="received", **ab) <= 2 * 70_001
            assert 2 * 1_000_000 <= edge(s, direction="received", **ba) <= 2 * 1_000_001
            assert 2 * 70_000 <= edge(s, direction="sent", **ba) <= 2 * 70_002
            assert 3 * 300_000 <= edge(s, direction="sent", **ac) <= 3 * 300_002
            assert 3 * 20_000 <= edge(s, direction="received", **ac) <= 3 * 20_001
            # Zones: both ends of A->B in zone-a; C's in zone-b.
            assert edges(s, zone="zone-a", peer_zone="zone-a", **ab)
            assert edges(s, zone="zone-a", peer_zone="zone-b", **ac)
            assert edge(s, "podsight_flow_connections_opened_total", **ab) == 2
            assert edge(s, "podsight_flow_connections_failed_total", **ab) == 0
            # Nothing else in these workloads' rows: no other peer, no ~other.
            for w, expected in (("client", {("5432", "db"), ("6379", "cache")}), ("db", {("5432", "client")})):
                rows = {(r["port"], r["peer_workload"]) for r, v in edges(s, namespace=NS, workload=w) if v > 0}
                assert rows == expected, f"{w}'s edges: {rows}"
            # The per-workload TCP families are the sums of their edges.
            assert s.value("podsight_tcp_connections_opened_total", direction="outbound", pod="client-0") == 5
            assert s.value("podsight_tcp_connections_closed_total", pod="db-0") == 2


def ss_counters(pod, dport: int) -> dict[str, int]:
    out = sh("ss", "-tinH", "state", "established", f"dport = :{dport}", ns=pod.ns)
    if not out.strip():
        return {}
    found = {k: int(v) for k, v in re.findall(r"\b(bytes_acked|bytes_received|segs_out|segs_in):(\d+)", out)}
    return {k: found.get(k, 0) for k in ("bytes_acked", "bytes_received", "segs_out", "segs_in")}  # ss omits zeros


def test_open_connection_bytes_equal_ss(node, tmp_path):
    """While a connection lives, its edge holds exactly the socket's own
    counters as ss -ti shows them (read by the sampler, no per-packet work)."""
    a, b = node.pod("fa"), node.pod("fb")
    with PodApiServer() as api:
        cluster(api)
        register(api, a, "client-0", "client")
        register(api, b, "db-0", "db")
        with agent_for(api, tmp_path) as agent:
            serve(b, 5433)
            p = a.run(PY, "-c", HOLD, b.ip, "5433", "123457", text=True, stdin=subprocess.PIPE)
            try:
                assert p.stdout.readline().strip() == "sent"
                match = dict(namespace=NS, workload="client", port="5433", peer_workload="db")

                def same(s):
                    ss = ss_counters(a, 5433)
                    return ss and edge(s, direction="sent", **match) == ss["bytes_acked"] and \
                        edge(s, direction="received", **match) == ss["bytes_received"] and \
                        edge(s, "podsight_flow_segments_total", direction="sent", **match) == ss["segs_out"] and \
                        edge(s, "podsight_flow_segments_total", direction="received", **match) == ss["segs_in"]
                s = agent.wait_for(same, what="the open connection's edge == ss -ti's counters")
                assert edge(s, direction="sent", **match) >= 123_457
                assert edge(s, "podsight_flow_connections_closed_total", **match) == 0
            finally:
                p.communicate("", timeout=10)


def retrans_segs(pod) -> int:
    return pod.mib()["TcpRetransSegs"]


def test_loss_between_zones_shows_only_on_that_edge(node, tmp_path):
    """3 % of A's segments to C are lost (iptables statistic in C's
    namespace): A's edge to C retransmits exactly what A's TcpRetransSegs
    counts, and A's edge to B (same zone, no loss) none."""
    a, b, c = node.pod("fa"), node.pod("fb"), node.pod("fc")
    with PodApiServer() as api:
        three_pods(api, a, b, c)
        with agent_for(api, tmp_path) as agent:
            serve(b, 5432)
            serve(c, 6379)
            agent.wait_for(lambda s: s.value("podsight_kubernetes_api_up") == 1, what="the API watch up")
            before = retrans_segs(a)
            with lossy(c, 6379):
                send(a, c.ip, 6379, 5_000_000, count=2)
            to_c = retrans_segs(a) - before
            assert to_c >= 1, "the drop rule caused no retransmission"
            # The lossless edge, after: its retransmits are A's from here on
            # (0, unless this VM's own queues drop a segment of the burst).
            send(a, b.ip, 5432, 1_000_000, count=2)
            to_b = retrans_segs(a) - before - to_c
            ac = dict(namespace=NS, workload="client", role="client", port="6379", peer_workload="cache",
                      zone="zone-a", peer_zone="zone-b")
            ab = dict(namespace=NS, workload="client", role="client", port="5432", peer_workload="db",
                      zone="zone-a", peer_zone="zone-a")
            s = agent.wait_for(lambda s: edge(s, "podsight_flow_retransmits_total", **ac) == to_c and
                               edge(s, "podsight_flow_connections_closed_total", **ab) == 2,
                               what=f"A->C's retransmits == A's TcpRetransSegs delta while sending to C ({to_c})")
            assert edge(s, "podsight_flow_retransmits_total", **ab) == to_b
            assert to_b <= to_c // 10, f"the lossless edge lost as much as the lossy one: {to_b} vs {to_c}"
            assert s.value("podsight_flow_retransmits_total", namespace=NS, workload="db") == 0
            assert s.value("podsight_tcp_retransmits_total", pod="client-0") == to_c + to_b


def test_ipv6_edges_on_both_ends(node, tmp_path):
    """A and B over IPv6: the same edges, named from the pods' IPv6 addresses."""
    a, b = node.pod("fa"), node.pod("fb")
    v6 = {}
    for ns in ("ps-node", a.ns, b.ns):
        sh("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=0", ns=ns)
    for pod, addr in ((a, "fd00:10::a"), (b, "fd00:10::b")):
        sh("ip", "-6", "addr", "add", f"{addr}/64", "dev", "eth0", "nodad", ns=pod.ns)
        v6[pod.name] = addr
    with PodApiServer() as api:
        cluster(api)
        register(api, a, "client-0", "client", ips=[a.ip, v6["fa"]])
        register(api, b, "db-0", "db", ips=[b.ip, v6["fb"]])
        with agent_for(api, tmp_path) as agent:
            serve(b, 5432, back=30_000, host="::")
            agent.wait_for(lambda s: s.value("podsight_kubernetes_api_up") == 1, what="the API watch up")
            assert send(a, v6["fb"], 5432, 400_000, count=2) == 30_000
            ab = dict(namespace=NS, workload="client", role="client", port="5432", peer_kind="pod", peer_workload="db")
            ba = dict(namespace=NS, workload="db", role="server", port="5432", peer_kind="pod",
                      peer_workload="client")
            s = agent.wait_for(lambda s: edge(s, "podsight_flow_connections_closed_total", **ab) == 2 and
                               edge(s, "podsight_flow_connections_closed_total", **ba) == 2,
                               what="2 closed IPv6 connections on both ends")
            assert 2 * 400_000 <= edge(s, direction="sent", **ab) <= 2 * 400_002
            assert 2 * 400_000 <= edge(s, direction="received", **ba) <= 2 * 400_001
            assert 2 * 30_000 <= edge(s, direction="received", **ab) <= 2 * 30_001
            assert not edges(s, peer_kind="external", namespace=NS), "an IPv6 pod address was not named"


class NodeNetnsAgent(AgentProcess):
    """The agent in the node's network namespace (the chart runs it with
    hostNetwork): its conntrack is the one kube-proxy's NAT writes.  Scraped
    from inside that namespace."""

    def __init__(self, *args, **kw):
        # nsenter, not ip netns exec: that remounts /sys, hiding the cgroup2 mount.
        super().__init__(*args, prefix=["nsenter", "--net=/run/netns/ps-node"], **kw)

    def get(self, path: str) -> tuple[int, str]:
        code = ("import sys, urllib.request, urllib.error\n"
                "try:\n    r = urllib.request.urlopen(sys.argv[1], timeout=10); print(r.status); "
                "sys.stdout.write(r.read().decode())\n"
                "except urllib.error.HTTPError as e:\n    print(e.code); sys.stdout.write(e.read().decode())\n")
        out = subprocess.run(["ip", "netns", "exec", "ps-node", PY, "-c", code, self.url + path],
                             capture_output=True, text=True, timeout=30).stdout
        status, _, body = out.partition("\n")
        return int(status), body


VIP = "10.96.0.10"


def in_netns(path: str, fn):
    """fn() on a thread moved into another network namespace: sockets it
    makes live there (the test API server, reachable by the agent there)."""
    import ctypes
    import threading

    out, errors = [], []

    def run():
        try:
            with open(path) as f:
                if ctypes.CDLL(None, use_errno=True).setns(f.fileno(), 0x40000000) != 0:  # CLONE_NEWNET
                    raise OSError(ctypes.get_errno(), "setns")
            out.append(fn())
        except Exception as e:  # reported on the caller's thread
            errors.append(e)
    t = threading.Thread(target=run)
    t.start()
    t.join()
    if errors:
        raise errors[0]
    return out[0]


def test_service_connections_split_by_backend(node, tmp_path):
    """A connects to a Service ClusterIP that kube-proxy-style DNAT in the
    node's namespace sends to two backends: A's edges name the Service and
    the backend each connection reached, as the backends saw them."""
    a, b1, b2 = node.pod("fa"), node.pod("fb"), node.pod("fc")
    gw = "10.244.0.1"
    sh("ip", "link", "set", "lo", "up", ns="ps-node")
    sh("ip", "addr", "add", f"{gw}/24", "dev", "psbr0", ns="ps-node")
    sh("sysctl", "-qw", "net.ipv4.ip_forward=1", ns="ps-node")
    sh("sysctl", "-qw", "net.ipv4.conf.all.send_redirects=0", ns="ps-node")
    sh("ip", "route", "add", "10.96.0.0/16", "via", gw, ns=a.ns)
    for b in (b1, b2):  # replies through the node, so its conntrack undoes the DNAT
        sh("ip", "route", "add", f"{a.ip}/32", "via", gw, ns=b.ns)
    # kube-proxy's iptables mode in miniature: every other new connection to each backend.
    dnat = [["PREROUTING", "-d", f"{VIP}/32", "-p", "tcp", "--dport", "80", "-m", "statistic", "--mode", "nth",
             "--every", "2", "--packet", "0", "-j", "DNAT", "--to-destination", f"{b1.ip}:8080"],
            ["PREROUTING", "-d", f"{VIP}/32", "-p", "tcp", "--dport", "80", "-j", "DNAT",
             "--to-destination", f"{b2.ip}:8080"]]
    for rule in dnat:
        sh("iptables", "-t", "nat", "-A", *rule, ns="ps-node")
    with in_netns("/run/netns/ps-node", PodApiServer().start) as api:
        cluster(api)
        register(api, a, "client-0", "client")
        register(api, b1, "web-blue-0", "web-blue")
        register(api, b2, "web-green-0", "web-green")
        api.add_service(make_service("web", namespace=NS, cluster_ips=[VIP], ports=[80]))
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", api.url)
        config = "probes:\n  tcp:\n    srtt_sample_interval: 200ms\nflows:\n  conntrack: true\n"
        with NodeNetnsAgent("--node-name", NODE, "--kubeconfig", str(kubeconfig), config=config) as agent:
            accepted = {b1.name: serve(b1, 8080, back=1000), b2.name: serve(b2, 8080, back=1000)}
            agent.wait_for(lambda s: any(f"{VIP}/32 are followed" in line for line in agent.log),
                           what="the agent to learn the Service range")
            sizes = [10_000 * (i + 1) for i in range(10)]
            reached = {b1.name: 0, b2.name: 0}
            before = {b.name: sh("conntrack", "-L", "-p", "tcp", "--dst-nat", "--reply-src", b.ip, ns="ps-node",
                                 check=False).count("\n") for b in (b1, b2)}
            for n in sizes:
                assert send(a, VIP, 80, n) == 1000
            for b in (b1, b2):
                reached[b.name] = sh("conntrack", "-L", "-p", "tcp", "--dst-nat", "--reply-src", b.ip,
                                     ns="ps-node", check=False).count("\n") - before[b.name]
            assert reached[b1.name] == 5 and reached[b2.name] == 5, f"conntrack shows {reached}"
            svc = dict(namespace=NS, workload="client", role="client", port="80", peer_kind="service",
                       peer_service="web", peer_namespace=NS)
            s = agent.wait_for(
                lambda s: edge(s, "podsight_flow_connections_closed_total", peer_workload="web-blue", **svc) == 5 and
                edge(s, "podsight_flow_connections_closed_total", peer_workload="web-green", **svc) == 5,
                timeout=30, what="5 connections to each backend behind the Service")
            # nth: the 1st, 3rd, ... connection went to web-blue.
            blue, green = sum(sizes[0::2]), sum(sizes[1::2])
            assert blue <= edge(s, direction="sent", peer_workload="web-blue", **svc) <= blue + 10
            assert green <= edge(s, direction="sent", peer_workload="web-green", **svc) <= green + 10
            assert s.value("podsight_flow_backends_unresolved_total") == 0
            assert not edges(s, peer_kind="service", peer_workload="", namespace=NS)
            # The backends see the client's own address: a pod edge, not the Service.
            assert edge(s, "podsight_flow_connections_closed_total", namespace=NS, workload="web-blue",
                        role="server", peer_kind="pod", peer_workload="client") == 5
            # Each connection was its own kernel entry until named; none is left.
            assert service_connection_entries(VIP) == {"tcp_flows": [], "tcp_flow_conns": []}, \
                "closed Service connections left in the kernel maps"
            # One held open is an entry of tcp_flow_conns (the sampler's map), never of tcp_flows.
            p = a.run(PY, "-c", HOLD, VIP, "80", "1000", text=True, stdin=subprocess.PIPE)
            try:
                assert p.stdout.readline().strip() == "sent"
                held = service_connection_entries(VIP)
                assert len(held["tcp_flow_conns"]) == 1 and held["tcp_flows"] == [], held
            finally:
                p.communicate("", timeout=10)
            agent.wait_for(lambda s: service_connection_entries(VIP)["tcp_flow_conns"] == [], timeout=10,
                           what="the closed connection's entry deleted by the sampler")
            del accepted


def service_connection_entries(vip: str) -> dict[str, list]:
    """Per flow map (bpftool), the keys that are one connection to ``vip``."""
    import ipaddress
    import json

    from podsight.reader.flows import KEY

    packed = ipaddress.ip_address(vip).packed
    found = {}
    for name in ("tcp_flows", "tcp_flow_conns"):
        out = subprocess.run(["bpftool", "-j", "map", "dump", "name", name], capture_output=True, text=True,
                             check=True).stdout
        maps = json.loads(out)
        maps = maps if maps and isinstance(maps[0], dict) and "elements" in maps[0] else [{"elements": maps}]
        keys = [KEY.unpack(bytes(int(b, 16) for b in e["key"])) for m in maps for e in m["elements"]]
        found[name] = [k for k in keys if k[1][:4] == packed and k[3] != 0]
    return found
