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



def test_bytes_match_payload_and_interface_counters(node):
    a, b = node.pod("a"), node.pod("b")
    with AgentProcess() as agent:
        dev_a0, dev_b0 = a.netdev(), b.netdev()
        transfer(a, b, PAYLOAD, 5201)
        dev_a, dev_b = a.netdev(), b.netdev()

        def seen(s):
            return s.value("podsight_network_bytes_total", pod=b.uid, direction="ingress") >= PAYLOAD

        s = agent.wait_for(seen)
        sel_a = dict(pod=a.uid, container=a.container_id, namespace="")
        sel_b = dict(pod=b.uid, container=b.container_id, namespace="")
        a_tx = s.value("podsight_network_bytes_total", direction="egress", **sel_a)
        a_tx_pk = s.value("podsight_network_packets_total", direction="egress", **sel_a)
        b_rx = s.value("podsight_network_bytes_total", direction="ingress", **sel_b)
        b_rx_pk = s.value("podsight_network_packets_total", direction="ingress", **sel_b)
        b_tx = s.value("podsight_network_bytes_total", direction="egress", **sel_b)

        # At least the payload, at most the payload plus headers of the packets counted.
        assert PAYLOAD <= a_tx <= PAYLOAD + a_tx_pk * MAX_HDR, (a_tx, a_tx_pk)
        assert PAYLOAD <= b_rx <= PAYLOAD + b_rx_pk * MAX_HDR, (b_rx, b_rx_pk)

        # The veth counters (an independent source) agree within 2%: they add
        # an Ethernet header per frame and see ARP, which sockets do not.
        veth_a_tx = dev_a["tx_bytes"] - dev_a0["tx_bytes"]
        veth_b_rx = dev_b["rx_bytes"] - dev_b0["rx_bytes"]
        assert abs(a_tx - veth_a_tx) <= 0.02 * veth_a_tx, (a_tx, veth_a_tx)
        assert abs(b_rx - veth_b_rx) <= 0.02 * veth_b_rx, (b_rx, veth_b_rx)

        # Never mixed: B only sent ACKs and its handshake, not A's payload.
        assert 0 < b_tx < 0.1 * PAYLOAD, b_tx


def test_host_traffic_grouped_by_top_level_cgroup(node):
    with AgentProcess() as agent:
        # This process is a host process: its loopback traffic lands in its own cgroup group.
        subprocess.run([PYTHON, "-c", "import urllib.request as u; u.urlopen('%s/healthz').read()" % agent.url], check=True)
        s = agent.wait_for(lambda s: any(
            l["host_cgroup"] and l["pod"] == "" for l, _ in s.series("podsight_network_bytes_total")))
        hosts = [l for l, v in s.series("podsight_network_bytes_total") if l["pod"] == ""]
        assert hosts and all(l["namespace"] == "" and l["container"] == "" for l in hosts)
        assert all(l["host_cgroup"].count("/") <= 1 or l["host_cgroup"] == "/" for l in hosts)
