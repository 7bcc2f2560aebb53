"""bpf/network.bpf.c: bytes and packets per socket cgroup, from cgroup_skb
programs on the cgroup v2 root (one attachment sees every netns)."""
from __future__ import annotations

from ...config import Config
from ..family import CounterMap, Family, Metric
from ..layouts import NetCounters
from ..loader import BpfObject
from ..probes import Probe

__all__ = ["FAMILY", "NetworkProbe"]


class NetworkProbe(Probe):
    def __init__(self) -> None:
        super().__init__("network", "network")

    def attach(self, obj: BpfObject, cfg: Config, cgroup_root: str) -> None:
        for prog in FAMILY.programs:
            obj.attach_cgroup(prog, cgroup_root)


FAMILY = Family(
    name="network",
    probe=NetworkProbe,
    programs={"network_ingress": "cgroup_skb/ingress", "network_egress": "cgroup_skb/egress"},
    maps=("network_traffic",),
    counters=(CounterMap("network_traffic", NetCounters),),
    metrics=(
        Metric("podsight_network_bytes", "counter",
               "Bytes at the IP layer through sockets of the workload, by direction.",
               "network_traffic", ("rx_bytes", "tx_bytes"), split="direction", split_values=("ingress", "egress")),
        Metric("podsight_network_packets", "counter",
               "Packets (GSO segments counted one by one) through sockets of the workload.",
               "network_traffic", ("rx_packets", "tx_packets"), split="direction", split_values=("ingress", "egress")),
    ),
    structs={"net_counters": NetCounters},
)
