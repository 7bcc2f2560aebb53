"""Cross-zone loss on a real Prometheus: the shipped flow recording rules
over a real agent's scrapes, with loss injected only between two zones."""
from __future__ import annotations

import pytest

from tests.support.agent import AgentProcess
from tests.support.apiserver import PodApiServer, write_kubeconfig
from tests.support.flows import lossy, send, serve, three_pods

pytestmark = pytest.mark.root

RATIO = "zone_peer_zone:podsight_flow_retransmit_ratio:rate5m"


def test_zone_pair_rule_shows_loss_only_between_the_lossy_zones(tmp_path, node, start_prometheus, e2e_rules):
    a, b, c = node.pod("za"), node.pod("zb"), node.pod("zc")
    with PodApiServer() as api:
        three_pods(api, a, b, c)
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", api.url)
        config = "probes:\n  tcp:\n    srtt_sample_interval: 200ms\n"
        with AgentProcess("--node-name", "node-a", "--kubeconfig", str(kubeconfig), config=config) as agent:
            prom = start_prometheus({"podsight": [agent.url.removeprefix("http://")]}, [e2e_rules])
            serve(b, 5432)
            serve(c, 6379)
            # Both edges exist in Prometheus before the loss, so rate() sees it begin.
            send(a, b.ip, 5432, 100_000)
            send(a, c.ip, 6379, 100_000)
            for pair in ('zone="zone-a", peer_zone="zone-a"', 'zone="zone-a", peer_zone="zone-b"'):
                assert prom.wait_for(f"{RATIO}{{{pair}}}", 60), f"no {RATIO}{{{pair}}}: {prom.query(RATIO)}"
            with lossy(c, 6379):
                send(a, c.ip, 6379, 5_000_000, count=2)
            send(a, b.ip, 5432, 1_000_000, count=2)
            assert prom.wait_for(f'{RATIO}{{zone="zone-a", peer_zone="zone-b"}} > 0.001', 60), prom.query(RATIO)
            # The same zone pair has traffic and no loss (unless this VM's own
            # queues dropped a segment: then its ratio is what the agent counted).
            same = prom.query(f'{RATIO}{{zone="zone-a", peer_zone="zone-a"}}')
            assert same, prom.query(RATIO)
            if agent.scrape().value("podsight_flow_retransmits_total", zone="zone-a", peer_zone="zone-a") == 0:
                assert float(same[0]["value"][1]) == 0.0, same
            cross = prom.query("zone_peer_zone:podsight_flow_cross_zone_retransmit_ratio:rate5m")
            assert {(s["metric"]["zone"], s["metric"]["peer_zone"]) for s in cross} <= {("zone-a", "zone-b"),
                                                                                      ("zone-b", "zone-a")}, cross
            assert any(float(s["value"][1]) > 0 for s in cross), cross
