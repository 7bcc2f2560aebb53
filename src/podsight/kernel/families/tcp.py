"""bpf/tcp.bpf.c: TCP health per socket cgroup (connections, failures,
retransmits, resets), RTT and connect-time histograms, and the kernel's
packet drops by reason."""
from __future__ import annotations

import ctypes
import logging
import os
from typing import NamedTuple

from ...config import Config
from .. import mounts
from ..drop_reasons import drop_reasons
from ..family import CounterMap, Family, Metric
from ..layouts import (DROP_REASON_WORDS, FLOW_ROLES, HIST_CONNECT, HIST_KINDS, HIST_SLOTS, HIST_SRTT, DropCount,
                       DropKey, FlowCounters, FlowKey, FlowServices, Hist, HistKey, TcpConfig, TcpCounters)
from ..loader import BpfObject
from ..probes import Probe

__all__ = ["EDGE_METRICS", "EdgeValues", "FAMILY", "FlowMaps", "TcpProbe", "flow_connection_entries",
           "service_ranges", "tcp_config"]

log = logging.getLogger("podsight.probes")


class FlowMaps(NamedTuple):
    edges: object          # tcp_flows: one entry per edge
    connections: object    # tcp_flow_conns: one entry per connection to a Service address


def flow_connection_entries(max_flows: int) -> int:
    """tcp_flow_conns' size: a quarter of the edges' (at least 1,024).  It
    holds every connection to a Service address still open, and those closed
    since the sampler's last read (each ``srtt_sample_interval``)."""
    return max(1024, max_flows // 4)


class TcpProbe(Probe):
    """Tracepoints for TCP health.  Parts whose tracepoint this kernel lacks,
    or whose program it refuses, stay unattached and report up=0; the other
    parts run."""

    RTT_SAMPLER = "tcp_rtt_sample"
    PARTS = {
        "tcp": {
            "tcp_state": "sock/inet_sock_set_state",
            "tcp_retransmit": "tcp/tcp_retransmit_skb",
            "tcp_send_reset": "tcp/tcp_send_reset",
            "tcp_receive_reset": "tcp/tcp_receive_reset",
        },
        "tcp_rtt": {RTT_SAMPLER: None},  # run by the agent, attached nowhere
        "network_drops": {"skb_drop": "skb/kfree_skb"},
    }

    def __init__(self) -> None:
        super().__init__("tcp", "tcp")
        self.parts: dict[str, bool] = {part: False for part in self.PARTS}
        self.drop_reasons: dict[int, str] = {}  # this kernel's numbering
        self.tracked: int | None = None  # tcp_socks entries at the last sample

    def configure(self, obj: BpfObject, cfg: Config) -> None:
        self.sample_interval = float(cfg.probes.tcp.srtt_sample_interval)
        obj.set_max_entries("tcp_socks", cfg.probes.tcp.max_tracked_connections)
        obj.set_max_entries("tcp_flows", cfg.flows.max_flows)
        obj.set_max_entries("tcp_flow_conns", flow_connection_entries(cfg.flows.max_flows))
        tracefs = mounts.tracefs_root()
        self.drop_reasons = drop_reasons(tracefs)
        self.flows = cfg.flows.enabled
        obj.set_config(tcp_config(cfg.probes.tcp.ignored_drop_reasons, self.drop_reasons, flows=self.flows))
        events = os.path.join(tracefs, "events")
        self._present = {}
        for part, progs in self.PARTS.items():
            for prog, tp in progs.items():
                ok = tp is None or os.path.isdir(os.path.join(events, tp))
                self._present[prog] = ok
                if not ok:
                    log.warning("%s missing on this kernel: %s part disabled", tp, part)
                    obj.set_autoload(prog, False)
                    self.unsupported.add(part)

    def optional_programs(self) -> set[str]:
        return {self.RTT_SAMPLER}

    def refused(self, programs: set[str]) -> None:
        for prog in programs:
            self._present[prog] = False
            self.unsupported.update(part for part, progs in self.PARTS.items() if prog in progs)

    def attach(self, obj: BpfObject, cfg: Config, cgroup_root: str) -> None:
        for part, progs in self.PARTS.items():
            ok = True
            for prog, tp in progs.items():
                if not self._present[prog]:
                    ok = False
                elif tp is not None:
                    try:
                        obj.attach(prog)
                    except OSError as e:
                        log.warning("cannot attach %s: %s", prog, e)
                        ok = False
            self.parts[part] = ok
        if not self.parts["tcp"]:
            raise OSError(f"tcp lifecycle tracepoints unavailable: {self.parts}")

    def status(self) -> dict[str, bool]:
        return {part: self.up and ok for part, ok in self.parts.items()}

    def sample(self) -> None:
        if self.up and self.parts["tcp_rtt"]:
            self.tracked = self.obj.run(self.RTT_SAMPLER)  # it returns the entries it walked

    def map_fill(self) -> dict[str, tuple[int, int]]:
        if not self.up or self.tracked is None:
            return {}
        return {"tcp_socks": (self.tracked, self.obj.maps["tcp_socks"].max_entries)}

    def key_names(self, counter_map: str) -> dict[int, str]:
        return self.drop_reasons if counter_map == "network_drops" else {}

    def flow_maps(self) -> FlowMaps | None:
        """tcp_flows and tcp_flow_conns, when flows are counted (the caller
        holds the agent's lock)."""
        if not (self.up and self.flows and self.obj is not None):
            return None
        return FlowMaps(self.obj.maps["tcp_flows"], self.obj.maps["tcp_flow_conns"])

    def set_service_ranges(self, networks: list) -> None:
        """Where Service ClusterIPs live: connections to them are followed one
        by one until conntrack names their backend."""
        if self.up and self.obj is not None:
            self.obj.maps["flow_services"].update(bytes(4), bytes(service_ranges(networks)))


def service_ranges(networks: list) -> FlowServices:
    """flow_services[0] for at most one IPv4 and one IPv6 network (the first of each)."""
    out = FlowServices()
    for net in networks:
        if net.version == 4 and not out.v4_mask:
            out.v4_net = int.from_bytes(net.network_address.packed, "little")
            out.v4_mask = int.from_bytes(net.netmask.packed, "little")
        elif net.version == 6 and not any(out.v6_mask):
            for i in range(4):
                out.v6_net[i] = int.from_bytes(net.network_address.packed[4 * i:4 * i + 4], "little")
                out.v6_mask[i] = int.from_bytes(net.netmask.packed[4 * i:4 * i + 4], "little")
    return out


def tcp_config(ignored: list[str], reasons: dict[int, str], *, flows: bool = False) -> TcpConfig:
    """tcp.bpf.c's config: the ignored drop reasons as a bitmap of this
    kernel's numbers.  A name this kernel does not have cannot occur here
    (one config serves nodes on different kernels), so it is only logged."""
    tc = TcpConfig()
    tc.flows = int(flows)
    number = {name: n for n, name in reasons.items()}
    for name in ignored:
        n = number.get(name)
        if n is None:
            if reasons:
                log.warning("probes.tcp.ignored_drop_reasons: %s is not a drop reason of this kernel", name)
        elif n >= DROP_REASON_WORDS * 64:
            log.warning("probes.tcp.ignored_drop_reasons: %s (%d) is beyond the first %d reasons and stays counted",
                        name, n, DROP_REASON_WORDS * 64)
        else:
            tc.ignored_drop_reasons[n // 64] |= 1 << (n % 64)
    return tc



# log2 slots of microseconds; buckets 16 us .. ~4.2 s, then +Inf.
_US = dict(unit=1e-6, buckets=(4, 22))


def _active(opened_outbound: int, opened_inbound: int, closed: int) -> int:
    return max(0, opened_outbound + opened_inbound - closed)


class EdgeValues(ctypes.Structure):
    """One edge's values as the agent exports them: tcp_flows' counters and
    its RTT histogram, flattened (a prefix of struct flow_counters)."""
    _fields_ = [(name, ctype) for name, ctype in FlowCounters._fields_[:8]] + [
        ("slots", ctypes.c_uint64 * HIST_SLOTS), ("sum", ctypes.c_uint64)]


# The agent's per-edge series (podsight.agent.flows), rendered like a counter map's.
EDGES = CounterMap("tcp_flows", EdgeValues)
EDGE_METRICS = (
    Metric("podsight_flow_bytes", "counter",
           "TCP payload bytes on the edge: sent and acknowledged by the peer, and received (the socket's own "
           "bytes_acked and bytes_received, read every probes.tcp.srtt_sample_interval and at close).",
           "tcp_flows", ("bytes_sent", "bytes_received"), split="direction", split_values=("sent", "received")),
    Metric("podsight_flow_segments", "counter", "TCP segments on the edge (the socket's segs_out and segs_in).",
           "tcp_flows", ("segs_sent", "segs_received"), split="direction", split_values=("sent", "received")),
    Metric("podsight_flow_connections_opened", "counter", "TCP connections established on the edge.",
           "tcp_flows", ("opened",)),
    Metric("podsight_flow_connections_failed", "counter",
           "TCP handshakes on the edge that never completed (refused, reset, timed out).", "tcp_flows", ("failed",)),
    Metric("podsight_flow_connections_closed", "counter", "Established TCP connections on the edge that closed.",
           "tcp_flows", ("closed",)),
    Metric("podsight_flow_retransmits", "counter", "TCP segments retransmitted on the edge.",
           "tcp_flows", ("retransmits",)),
    Metric("podsight_flow_srtt_seconds", "histogram",
           "Kernel smoothed RTT of the edge's connections: one sample per connection per interval while it "
           "receives, and one as it closes.", "tcp_flows", unit=1e-6, buckets=(4, 22)),
)

FAMILY = Family(
    name="tcp",
    probe=TcpProbe,
    programs={prog: tp for part in TcpProbe.PARTS.values() for prog, tp in part.items()},
    maps=("tcp_stats", "tcp_histograms", "network_drops", "tcp_socks", "tcp_flows", "tcp_flow_conns",
          "flow_services"),
    counters=(
        CounterMap("tcp_stats", TcpCounters),
        CounterMap("tcp_histograms", Hist, HistKey),                              # (cgroup, enum hist_kind)
        CounterMap("network_drops", DropCount, DropKey, unnamed="reason_{}"),     # (cgroup, drop reason)
    ),
    metrics=(
        Metric("podsight_tcp_connections_opened", "counter", "TCP connections established, by who opened them.",
               "tcp_stats", ("opened_outbound", "opened_inbound"), split="direction",
               split_values=("outbound", "inbound")),
        Metric("podsight_tcp_connections_failed", "counter",
               "TCP handshakes that never completed (refused, reset, timed out).",
               "tcp_stats", ("failed_outbound", "failed_inbound"), split="direction",
               split_values=("outbound", "inbound")),
        Metric("podsight_tcp_connections_closed", "counter",
               "Established TCP connections that closed (opened while the agent ran).", "tcp_stats", ("closed",)),
        Metric("podsight_tcp_connections_active", "gauge",
               "TCP connections established and not yet closed (since the agent started).", "tcp_stats",
               ("opened_outbound", "opened_inbound", "closed"), derive=_active),
        Metric("podsight_tcp_retransmits", "counter",
               "TCP segments retransmitted (as the kernel counts TcpRetransSegs).", "tcp_stats", ("retransmits",)),
        Metric("podsight_tcp_resets", "counter", "TCP resets sent or received on the workload's sockets.",
               "tcp_stats", ("resets_sent", "resets_received"), split="direction", split_values=("sent", "received")),
        Metric("podsight_flow_untracked", "counter",
               "With flows on: connection events (opens, closes, failures, retransmits, samples) no edge could hold "
               "(tcp_flows full); podsight_tcp_* still count them.", "tcp_stats", ("flow_untracked",)),
        Metric("podsight_tcp_srtt_seconds", "histogram",
               "Kernel smoothed RTT of the workload's TCP connections: one sample per connection per interval while "
               "it receives, and one as it closes.", "tcp_histograms", select=HIST_SRTT, **_US),
        Metric("podsight_tcp_connect_duration_seconds", "histogram",
               "Time from SYN sent to connection established, outbound.", "tcp_histograms", select=HIST_CONNECT, **_US),
        Metric("podsight_network_drops", "counter",
               "Packets the kernel dropped, by its drop reason (skb:kfree_skb), less "
               "probes.tcp.ignored_drop_reasons.", "network_drops", ("count",), key_label="reason"),
    ),
    structs={"tcp_counters": TcpCounters, "hist_key": HistKey, "hist": Hist, "drop_key": DropKey,
             "tcp_config": TcpConfig, "flow_key": FlowKey, "flow_counters": FlowCounters,
             "flow_services": FlowServices},
    enums={"hist_kind": ("HIST_", HIST_KINDS), "flow_role": ("FLOW_", FLOW_ROLES)},
    edges=EDGES,
    edge_metrics=EDGE_METRICS,
)
