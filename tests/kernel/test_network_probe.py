"""Per-pod bytes and packets, from the real cgroup_skb programs, checked
against the kernel's own interface counters (/proc/net/dev) and the payload
we actually sent."""
from __future__ import annotations

import subprocess

import pytest

from tests.support.agent import AgentProcess
from tests.support.traffic import PYTHON, transfer

pytestmark = pytest.mark.root

PAYLOAD = 1_000_003
# IPv4 header (20) + TCP header with the largest options (60): the most a
# packet can add to the payload at the IP layer.
MAX_HDR = 80



ETH_HLEN = 14


def quiet_link(a, b) -> None:
    """Pinned ARP entries both ways (IPv6 is off in pods): each eth0 then
    sends only the pods' own IPv4 TCP, so its tx counters are comparable
    frame for frame."""
    a.pin_neighbor(b)
    b.pin_neighbor(a)


def delta(now: dict, then: dict) -> dict:
    return {k: now[k] - then[k] for k in now}


def sel(pod) -> dict:
    return dict(pod=pod.uid, container=pod.container_id, namespace="")


def settled(agent, pods, check, what):
    """Wait until ``check(scrape, netdev)`` holds, reading each pod's eth0
    counters afresh on every try: the last ACKs may still be in flight when
    the transfer returns.  Fails naming ``what`` when it never holds."""
    last = {}

    def ok(s):
        last["dev"] = {p.name: p.netdev() for p in pods}
        last["mib"] = {p.name: p.mib() for p in pods}
        return check(s, last["dev"], last["mib"])

    return agent.wait_for(ok, what=what), last


def test_bytes_match_payload_and_interface_counters(node):
    a, b = node.pod("a"), node.pod("b")
    quiet_link(a, b)
    with AgentProcess() as agent:
        dev0, mib0 = {"a": a.netdev()}, {"a": a.mib()}
        transfer(a, b, PAYLOAD, 5201)

        def exact(s, dev, mib):
            # veth counts a GSO skb as one frame of skb->len plus an Ethernet
            # header; the cgroup program sees that same skb without it.
            tx = delta(dev["a"], dev0["a"])
            return s.value("podsight_network_bytes_total", direction="egress", **sel(a)) == \
                tx["tx_bytes"] - ETH_HLEN * tx["tx_packets"]

        s, last = settled(agent, [a], exact, "A's egress bytes == its eth0 tx bytes less one header per frame")
        a_tx = s.value("podsight_network_bytes_total", direction="egress", **sel(a))
        a_tx_pk = s.value("podsight_network_packets_total", direction="egress", **sel(a))
        b_rx = s.value("podsight_network_bytes_total", direction="ingress", **sel(b))
        b_rx_pk = s.value("podsight_network_packets_total", direction="ingress", **sel(b))
        b_tx = s.value("podsight_network_bytes_total", direction="egress", **sel(b))

        # At least the payload, at most the payload plus headers of the packets counted.
        assert PAYLOAD <= a_tx <= PAYLOAD + a_tx_pk * MAX_HDR, (a_tx, a_tx_pk)
        assert PAYLOAD <= b_rx <= PAYLOAD + b_rx_pk * MAX_HDR, (b_rx, b_rx_pk)
        # Every frame A's eth0 sent reached B's socket whole (veth and the
        # bridge lose nothing and do not resegment).  B's own rx counters
        # are not used: the bridge may flood it a frame meant for no socket.
        wire = delta(last["dev"]["a"], dev0["a"])
        assert b_rx == wire["tx_bytes"] - ETH_HLEN * wire["tx_packets"], (b_rx, wire)
        # Packets are segments (TcpOutSegs), not skbs: the wire carried GSO skbs.
        segs = delta(last["mib"]["a"], mib0["a"])["TcpOutSegs"]
        assert a_tx_pk == b_rx_pk == segs, (a_tx_pk, b_rx_pk, segs)
        assert wire["tx_packets"] < segs, "no GSO skb crossed: the per-segment count went untested"

        # Never mixed: B only sent ACKs and its handshake, not A's payload.
        assert 0 < b_tx < 0.1 * PAYLOAD, b_tx


def test_packets_match_interface_counters_per_segment(node):
    """With TSO off on A's eth0 the kernel splits each GSO skb in software
    before the device, so eth0's tx_packets counts wire segments: podsight,
    which sees the unsplit skbs and counts their gso_segs, must match it."""
    a, b = node.pod("a"), node.pod("b")
    quiet_link(a, b)
    a.set_offload(tso=False)
    with AgentProcess() as agent:
        dev0, mib0 = {"a": a.netdev()}, {"a": a.mib()}
        transfer(a, b, PAYLOAD, 5202)

        def exact(s, dev, mib):
            frames = delta(dev["a"], dev0["a"])["tx_packets"]
            return s.value("podsight_network_packets_total", direction="egress", **sel(a)) == frames and \
                s.value("podsight_network_packets_total", direction="ingress", **sel(b)) == frames

        s, last = settled(agent, [a], exact, "A's egress and B's ingress packets == A's eth0 tx_packets")
        frames = delta(last["dev"]["a"], dev0["a"])["tx_packets"]
        skbs = delta(last["mib"]["a"], mib0["a"])["IpOutRequests"]
        assert frames > PAYLOAD // 1500, frames  # one frame per MSS at least
        # The skbs podsight saw were multi-segment, else this checked nothing about GSO.
        assert skbs < frames / 2, (skbs, frames)


def test_host_traffic_grouped_by_top_level_cgroup(node):
    with AgentProcess() as agent:
        # This process is a host process: its loopback traffic lands in its own cgroup group.
        subprocess.run([PYTHON, "-c", "import urllib.request as u; u.urlopen('%s/healthz').read()" % agent.url], check=True)
        s = agent.wait_for(lambda s: any(
            l["host_cgroup"] and l["pod"] == "" for l, _ in s.series("podsight_network_bytes_total")),
            what="bytes of a host cgroup group")
        hosts = [l for l, v in s.series("podsight_network_bytes_total") if l["pod"] == ""]
        assert hosts and all(l["namespace"] == "" and l["container"] == "" for l in hosts)
        assert all(l["host_cgroup"].count("/") <= 1 or l["host_cgroup"] == "/" for l in hosts)
