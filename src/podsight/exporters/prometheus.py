"""The /metrics collector: metric families built at scrape time from one snapshot."""
from __future__ import annotations

import platform
from typing import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from .. import __version__
from ..kernel.layouts import HIST_CONNECT, HIST_SRTT, TcpCounters
from ..reader.histograms import Buckets

__all__ = ["PodsightCollector"]


class PodsightCollector(Collector):
    def __init__(self, agent, runtime=None):
        self.agent = agent
        self.runtime = runtime

    def describe(self) -> list[Metric]:
        # Registration must not read the kernel maps.
        return []

    def collect(self) -> Iterator[Metric]:
        agent = self.agent
        snap = agent.snapshot()
        node = agent.node
        names = list(snap.label_names)

        info = GaugeMetricFamily(
            "podsight_build_info", "podsight build information; value is always 1.",
            labels=["version", "python_version", "node"],
        )
        info.add_metric([__version__, platform.python_version(), node], 1)
        yield info

        up = GaugeMetricFamily(
            "podsight_probe_up", "1 if the probe family is attached on this kernel, 0 if unavailable.",
            labels=["probe", "node"],
        )
        for probe, ok in sorted(snap.probes.items()):
            up.add_metric([probe, node], 1 if ok else 0)
        yield up

        api = self.runtime.kubernetes_api_up() if self.runtime is not None else None
        if api is not None:
            g = GaugeMetricFamily(
                "podsight_kubernetes_api_up", "1 if the pod watch on the Kubernetes API is healthy.", labels=["node"]
            )
            g.add_metric([node], api)
            yield g

        entries = GaugeMetricFamily(
            "podsight_bpf_map_entries", "Entries in a BPF map, read at scrape time.", labels=["map", "node"]
        )
        for name, n in sorted(snap.map_entries.items()):
            entries.add_metric([name, node], n)
        yield entries

        if snap.programs:
            runs = CounterMetricFamily(
                "podsight_bpf_program_runs", "Times each podsight BPF program ran (kernel BPF stats).",
                labels=["program", "node"],
            )
            secs = CounterMetricFamily(
                "podsight_bpf_program_run_seconds", "Time spent in each podsight BPF program (kernel BPF stats).",
                labels=["program", "node"],
            )
            for prog, st in sorted(snap.programs.items()):
                runs.add_metric([prog, node], st.run_count)
                secs.add_metric([prog, node], st.run_time_ns / 1e9)
            yield runs
            yield secs

        sink = getattr(self.runtime, "sink", None)
        if sink is not None:
            sec = CounterMetricFamily(
                "podsight_security_events", "Security rule matches, by rule, severity and namespace.",
                labels=["rule", "severity", "namespace", "node"],
            )
            for (rule, severity, namespace), n in sorted(sink.counts().items()):
                sec.add_metric([rule, severity, namespace, node], n)
            yield sec
        if snap.event_drops:
            dropped = CounterMetricFamily(
                "podsight_events_dropped", "Security events not delivered, by reason and event kind (every drop is counted).",
                labels=["reason", "event", "node"],
            )
            for (reason, kind), n in sorted(snap.event_drops.items()):
                dropped.add_metric([reason, kind, node], n)
            yield dropped

        net = snap.series.get("network_traffic", {})
        yield from _directional(
            net, names,
            ("podsight_network_bytes", "Bytes at the IP layer through sockets of the workload, by direction.", 0, 2),
            ("podsight_network_packets", "Packets (GSO segments counted one by one) through sockets of the workload.", 1, 3),
        )
        yield from _tcp(snap.series.get("tcp_stats", {}), names)
        yield from _histograms(snap.series.get("tcp_histograms", {}), names)

        drops = CounterMetricFamily(
            "podsight_network_drops", "Packets the kernel dropped, by its drop reason (skb:kfree_skb).",
            labels=names + ["reason"],
        )
        for labels, vals in snap.series.get("network_drops", {}).items():
            drops.add_metric(list(labels), vals[0])
        yield drops


_T = {name: i for i, (name, _) in enumerate(TcpCounters._fields_)}


def _tcp(data, names) -> Iterator[Metric]:
    def fam(metric: str, help_text: str, extra: list[str] | None = None, cls=CounterMetricFamily):
        return cls(metric, help_text, labels=names + (extra or []))

    opened = fam("podsight_tcp_connections_opened", "TCP connections established, by who opened them.", ["direction"])
    failed = fam("podsight_tcp_connections_failed", "TCP handshakes that never completed (refused, reset, timed out).", ["direction"])
    closed = fam("podsight_tcp_connections_closed", "Established TCP connections that closed (opened while the agent ran).")
    active = fam("podsight_tcp_connections_active", "TCP connections established and not yet closed (since the agent started).", cls=GaugeMetricFamily)
    retrans = fam("podsight_tcp_retransmits", "TCP segments retransmitted (as the kernel counts TcpRetransSegs).")
    resets = fam("podsight_tcp_resets", "TCP resets sent or received on the workload's sockets.", ["direction"])
    for labels, v in data.items():
        lb = list(labels)
        opened.add_metric(lb + ["outbound"], v[_T["opened_outbound"]])
        opened.add_metric(lb + ["inbound"], v[_T["opened_inbound"]])
        failed.add_metric(lb + ["outbound"], v[_T["failed_outbound"]])
        failed.add_metric(lb + ["inbound"], v[_T["failed_inbound"]])
        closed.add_metric(lb, v[_T["closed"]])
        opens = v[_T["opened_outbound"]] + v[_T["opened_inbound"]]
        active.add_metric(lb, max(0, opens - v[_T["closed"]]))
        retrans.add_metric(lb, v[_T["retransmits"]])
        resets.add_metric(lb + ["sent"], v[_T["resets_sent"]])
        resets.add_metric(lb + ["received"], v[_T["resets_received"]])
    yield from (opened, failed, closed, active, retrans, resets)


# Microsecond base unit; buckets 16 us .. ~4.2 s, then +Inf.
_US_BUCKETS = Buckets(1e-6, 4, 22)
_HISTOGRAMS = {
    str(HIST_SRTT): ("podsight_tcp_srtt_seconds", "Smoothed RTT of the workload's TCP connections, sampled while they live."),
    str(HIST_CONNECT): ("podsight_tcp_connect_duration_seconds", "Time from SYN sent to connection established, outbound."),
}


def _histograms(data, names) -> Iterator[Metric]:
    fams = {kind: HistogramMetricFamily(metric, help_text, labels=names) for kind, (metric, help_text) in _HISTOGRAMS.items()}
    for labels, vals in data.items():
        fam = fams.get(labels[-1])
        if fam is None:
            continue
        slots, total_us = vals[:32], vals[32]
        fam.add_metric(list(labels[:-1]), _US_BUCKETS.cumulative(slots), total_us * 1e-6)
    yield from fams.values()


def _directional(data, names, *specs) -> Iterator[Metric]:
    """Counters whose values hold an ingress and an egress column."""
    for metric, help_text, ingress_col, egress_col in specs:
        fam = CounterMetricFamily(metric, help_text, labels=names + ["direction"])
        for labels, vals in data.items():
            fam.add_metric([*labels, "ingress"], vals[ingress_col])
            fam.add_metric([*labels, "egress"], vals[egress_col])
        yield fam
