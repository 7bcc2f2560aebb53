"""The /metrics renderer as it was before the declared families and the
scrape cache (commit 9cc617f), kept as the oracle the new one is compared
with: same series, same values, on the same snapshot.  Unchanged but for
its imports and ``legacy_render`` at the end, which feeds it a new
Snapshot in the shapes it read then."""
from __future__ import annotations

import platform

from prometheus_client import generate_latest
from prometheus_client.core import CollectorRegistry
from prometheus_client.process_collector import ProcessCollector

from types import SimpleNamespace

from podsight import __version__
from podsight.exporters.histograms import Buckets
from podsight.exporters.textformat import LabelCache, Writer, escape
from podsight.kernel.layouts import HIST_CONNECT, HIST_SLOTS, HIST_SRTT, TcpCounters

__all__ = ["MetricsRenderer"]

_T = {name: i for i, (name, _) in enumerate(TcpCounters._fields_)}

# Microsecond base unit; buckets 16 us .. ~4.2 s, then +Inf.
_US_BUCKETS = Buckets(1e-6, 4, 22)
_HISTOGRAMS = {
    str(HIST_SRTT): ("podsight_tcp_srtt_seconds", "Kernel smoothed RTT of the workload's TCP connections: one sample per connection per interval while it receives, and one as it closes."),
    str(HIST_CONNECT): ("podsight_tcp_connect_duration_seconds", "Time from SYN sent to connection established, outbound."),
}


class MetricsRenderer:
    def __init__(self, agent, runtime=None):
        self.agent = agent
        self.runtime = runtime
        names = agent.labeler.names
        self.labels = LabelCache(names)
        self.drop_labels = LabelCache(names + ("reason",))
        self.process = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=self.process)

    def render(self) -> list[bytes]:
        """The page as chunks: at a thousand pods it is megabytes, not worth copying again to join."""
        agent = self.agent
        snap = agent.snapshot()
        node = escape(agent.node)
        w = Writer()

        w.family("podsight_build_info", "gauge", "podsight build information; value is always 1.")
        w.sample("podsight_build_info",
                 f'version="{__version__}",python_version="{platform.python_version()}",node="{node}"', 1)
        w.family("podsight_probe_up", "gauge", "1 if the probe (or probe part) is attached on this kernel, 0 if unavailable.")
        for probe, ok in sorted(snap.probes.items()):
            w.sample("podsight_probe_up", f'probe="{probe}",node="{node}"', int(ok))
        api = self.runtime.kubernetes_api_up() if self.runtime is not None else None
        if api is not None:
            w.family("podsight_kubernetes_api_up", "gauge", "1 if the pod watch on the Kubernetes API is healthy.")
            w.sample("podsight_kubernetes_api_up", f'node="{node}"', api)
        w.family("podsight_bpf_map_entries", "gauge", "Entries in a BPF map, read at scrape time.")
        for name, n in sorted(snap.map_entries.items()):
            w.sample("podsight_bpf_map_entries", f'map="{name}",node="{node}"', n)
        if snap.programs:
            w.family("podsight_bpf_program_runs", "counter", "Times each podsight BPF program ran (kernel BPF stats).")
            w.samples("podsight_bpf_program_runs_total",
                      ((f'program="{p}",node="{node}"', st.run_count) for p, st in sorted(snap.programs.items())))
            w.family("podsight_bpf_program_run_seconds", "counter", "Time spent in each podsight BPF program (kernel BPF stats).")
            w.samples("podsight_bpf_program_run_seconds_total",
                      ((f'program="{p}",node="{node}"', st.run_time_ns / 1e9) for p, st in sorted(snap.programs.items())))
        self._security(w, snap, node)

        net = snap.series.get("network_traffic", {})
        self._directional(w, net, "podsight_network_bytes",
                          "Bytes at the IP layer through sockets of the workload, by direction.", 0, 2)
        self._directional(w, net, "podsight_network_packets",
                          "Packets (GSO segments counted one by one) through sockets of the workload.", 1, 3)
        self._tcp(w, snap.series.get("tcp_stats", {}))
        self._histograms(w, snap.series.get("tcp_histograms", {}))
        w.family("podsight_network_drops", "counter", "Packets the kernel dropped, by its drop reason (skb:kfree_skb), "
                 "less probes.tcp.ignored_drop_reasons.")
        w.samples("podsight_network_drops_total",
                  ((self.drop_labels(labels), v[0]) for labels, v in snap.series.get("network_drops", {}).items()))
        return [w.text().encode(), generate_latest(self.process)]

    def _security(self, w: Writer, snap, node: str) -> None:
        sink = getattr(self.runtime, "sink", None)
        if sink is not None:
            w.family("podsight_security_events", "counter", "Security rule matches, by rule, severity and namespace.")
            for (rule, severity, namespace), n in sorted(sink.counts().items()):
                w.sample("podsight_security_events_total",
                         f'rule="{escape(rule)}",severity="{severity}",namespace="{escape(namespace)}",node="{node}"', n)
        drops = {**snap.event_drops, **(sink.dropped() if sink is not None else {})}
        if drops:
            w.family("podsight_events_dropped", "counter",
                     "Security events not delivered, by reason and event kind (every drop is counted).")
            for (reason, kind), n in sorted(drops.items()):
                w.sample("podsight_events_dropped_total", f'reason="{reason}",event="{kind}",node="{node}"', n)

    def _directional(self, w: Writer, data, metric: str, help_text: str, ingress: int, egress: int) -> None:
        w.family(metric, "counter", help_text)
        name = metric + "_total"
        parts = w.parts
        for labels, vals in data.items():
            ls = self.labels(labels)
            parts.append(f'{name}{{{ls},direction="ingress"}} {vals[ingress]}\n'
                         f'{name}{{{ls},direction="egress"}} {vals[egress]}\n')

    def _tcp(self, w: Writer, data) -> None:
        rows = [(self.labels(labels), v) for labels, v in data.items()]
        oo, oi, fo, fi, cl = (_T[k] for k in ("opened_outbound", "opened_inbound", "failed_outbound", "failed_inbound", "closed"))
        rt, rs, rr = _T["retransmits"], _T["resets_sent"], _T["resets_received"]
        parts = w.parts

        def directional(metric, help_text, a, b, da, db):
            w.family(metric, "counter", help_text)
            parts.extend(f'{metric}_total{{{ls},direction="{da}"}} {v[a]}\n'
                         f'{metric}_total{{{ls},direction="{db}"}} {v[b]}\n' for ls, v in rows)

        directional("podsight_tcp_connections_opened", "TCP connections established, by who opened them.",
                    oo, oi, "outbound", "inbound")
        directional("podsight_tcp_connections_failed",
                    "TCP handshakes that never completed (refused, reset, timed out).", fo, fi, "outbound", "inbound")
        w.family("podsight_tcp_connections_closed", "counter",
                 "Established TCP connections that closed (opened while the agent ran).")
        w.samples("podsight_tcp_connections_closed_total", ((ls, v[cl]) for ls, v in rows))
        w.family("podsight_tcp_connections_active", "gauge",
                 "TCP connections established and not yet closed (since the agent started).")
        w.samples("podsight_tcp_connections_active", ((ls, max(0, v[oo] + v[oi] - v[cl])) for ls, v in rows))
        w.family("podsight_tcp_retransmits", "counter", "TCP segments retransmitted (as the kernel counts TcpRetransSegs).")
        w.samples("podsight_tcp_retransmits_total", ((ls, v[rt]) for ls, v in rows))
        directional("podsight_tcp_resets", "TCP resets sent or received on the workload's sockets.",
                    rs, rr, "sent", "received")
        w.family("podsight_flow_untracked", "counter",
                 "With flows on: connection events (opens, closes, failures, retransmits, samples) no edge could hold "
                 "(tcp_flows full); podsight_tcp_* still count them.")
        w.samples("podsight_flow_untracked_total", ((ls, v[_T["flow_untracked"]]) for ls, v in rows))

    def _histograms(self, w: Writer, data) -> None:
        by_kind: dict[str, list] = {kind: [] for kind in _HISTOGRAMS}
        for labels, vals in data.items():
            rows = by_kind.get(labels[-1])
            if rows is not None:
                rows.append((self.labels(labels[:-1]), vals))
        les = [f',le="{le}"}} ' for le in _US_BUCKETS.les]
        parts = w.parts
        for kind, (metric, help_text) in _HISTOGRAMS.items():
            w.family(metric, "histogram", help_text)
            for ls, vals in by_kind[kind]:
                counts = _US_BUCKETS.cumulative_counts(vals[:HIST_SLOTS])  # vals[HIST_SLOTS] is the sum
                head = f"{metric}_bucket{{{ls}"
                parts.append("".join([f"{head}{le}{n}\n" for le, n in zip(les, counts)]))
                parts.append(f"{metric}_sum{{{ls}}} {vals[HIST_SLOTS] * 1e-6!r}\n"
                             f"{metric}_count{{{ls}}} {counts[-1]}\n")


def legacy_render(snap) -> bytes:
    """``snap`` (a podsight.exporters.snapshot.Snapshot) through the old renderer."""
    def old_key(m, k):
        if m == "network_drops":
            return k[:-1] + (snap.key_names.get(m, {}).get(k[-1]) or f"reason_{k[-1]}",)
        if m == "tcp_histograms":
            return k[:-1] + (str(k[-1]),)
        return k

    series = {m: {old_key(m, k): v for k, v in rows.items()} for m, rows in snap.series.items()}
    sec = snap.security
    old = SimpleNamespace(series=series, map_entries=snap.map_entries, probes=snap.probes, programs=snap.programs,
                          event_drops=dict(sec.drops) if sec else {})
    agent = SimpleNamespace(node=snap.node, labeler=SimpleNamespace(names=snap.label_names), snapshot=lambda: old)
    sink = SimpleNamespace(counts=lambda: dict(sec.matches), dropped=lambda: {}) if sec else None
    api = None if snap.kubernetes_api_up is None else int(snap.kubernetes_api_up)
    runtime = SimpleNamespace(sink=sink, kubernetes_api_up=lambda: api)
    return b"".join(MetricsRenderer(agent, runtime).render())
