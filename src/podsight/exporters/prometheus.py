"""/metrics: every podsight metric family rendered from one snapshot.

The shape of client_python's collectors: each part of the page renders from
the snapshot alone.  The per-workload families (most of a page: at a
thousand pods, 57,000 series) are declared with their probe family
(podsight.kernel.families) and rendered generically.  A scrape costs what
changed: each counter map's label sets are spread over buckets, and a
bucket's deflate stream is kept until a value in it changes, a label set
joins it or one leaves it; label sets that keep changing gather in a bucket
of their own.  Comparing a label set's values with the last scrape's is one
tuple comparison, often an identity check.
"""
from __future__ import annotations

import platform
from typing import Callable, Iterable, Sequence

from prometheus_client import generate_latest
from prometheus_client.core import CollectorRegistry
from prometheus_client.process_collector import ProcessCollector

from .. import __version__
from ..kernel.family import CounterMap, Family, Metric
from .histograms import Buckets
from .page import Body, Piece
from .snapshot import Snapshot
from .textformat import LabelCache, Writer, escape

__all__ = ["MetricsRenderer"]

Labels = tuple
RowRenderer = Callable[[Iterable[tuple[Labels, Sequence[int]]], dict], str]


def _header(m: Metric) -> Piece:
    full = f"{m.name}_total" if m.type == "counter" else m.name
    return Piece(f"# HELP {full} {m.help}\n# TYPE {full} {m.type}\n".encode())


def _label_sets(m: Metric, cmap: CounterMap, labels: LabelCache) -> Callable[[tuple, dict], str]:
    """The text of a row's label set: the workload's labels, and for paired
    maps with ``key_label`` the second key by its name."""
    if not (cmap.paired and m.key_label):
        return (lambda k, _names: labels(k[:-1])) if cmap.paired else (lambda k, _names: labels(k))
    label, unnamed = m.key_label, cmap.unnamed

    def keyed(k, names):
        return f'{labels(k[:-1])},{label}="{escape(names.get(k[-1]) or unnamed.format(k[-1]))}"'
    return keyed


def _rows(m: Metric, cmap: CounterMap, labels: LabelCache) -> RowRenderer:
    """A function rendering ``m``'s samples for (key, values) rows of ``cmap``."""
    ls = _label_sets(m, cmap, labels)
    if m.type == "histogram":
        return _histogram_rows(m, cmap, ls)
    name = f"{m.name}_total" if m.type == "counter" else m.name
    idx = [cmap.index(f) for f in m.fields]
    if m.derive is not None:
        derive = m.derive

        def derived(rows, names):
            return "".join([f"{name}{{{ls(k, names)}}} {derive(*(v[i] for i in idx))}\n" for k, v in rows])
        return derived
    if m.split:
        heads = [f',{m.split}="{value}"}} ' for value in m.split_values]
        pairs = list(zip(heads, idx))

        def split(rows, names):
            return "".join(["".join([f"{name}{{{ls(k, names)}{h}{v[i]}\n" for h, i in pairs]) for k, v in rows])
        return split
    i = idx[0]

    def single(rows, names):
        return "".join([f"{name}{{{ls(k, names)}}} {v[i]}\n" for k, v in rows])
    return single


def _histogram_rows(m: Metric, cmap: CounterMap, ls: Callable[[tuple, dict], str]) -> RowRenderer:
    buckets = Buckets(m.unit, *m.buckets)
    first = cmap.index("slots")
    slots = slice(first, first + cmap.value.slots.size // 8)
    total = cmap.index("sum")
    les = [f',le="{le}"}} ' for le in buckets.les]
    name, unit = m.name, m.unit
    select = None if m.key_label or not cmap.paired else m.select

    def hist(rows, names):
        parts = []
        for k, v in rows:
            if select is not None and k[-1] != select:
                continue
            lset = ls(k, names)
            counts = buckets.cumulative_counts(v[slots])
            head = f"{name}_bucket{{{lset}"
            parts.append("".join([f"{head}{le}{n}\n" for le, n in zip(les, counts)]))
            parts.append(f"{name}_sum{{{lset}}} {v[total] * unit!r}\n{name}_count{{{lset}}} {counts[-1]}\n")
        return "".join(parts)
    return hist


class _MapPieces:
    """One counter map's families, kept as text pieces between scrapes.

    Label sets live in ``COLD`` buckets by hash, plus one *hot* bucket: a
    label set whose values change moves to the hot bucket, and back to its
    cold one after ``COOL`` scrapes without a change.  The busy workloads of
    a node (they are busy scrape after scrape) gather in the hot bucket, so
    a scrape re-renders and re-compresses them and leaves everything else
    as it was.
    """

    COLD = 32   # a power of two
    COOL = 3    # unchanged scrapes before a hot label set goes back to its cold bucket

    def __init__(self, cmap: CounterMap, metrics: list[Metric], labels: LabelCache):
        self.map = cmap
        self.headers = [_header(m) for m in metrics]
        self.renderers = [_rows(m, cmap, labels) for m in metrics]
        self.hot = self.COLD                                             # index of the hot bucket
        self.rows: dict = {}                                             # label set → values
        self.where: dict = {}                                            # label set → bucket
        self.members: list[dict] = [{} for _ in range(self.COLD + 1)]    # bucket → its label sets, in order
        self.idle: dict = {}                                             # hot label set → scrapes unchanged
        self.pieces = [[Piece(b"")] * (self.COLD + 1) for _ in metrics]

    def _move(self, key, to: int, dirty: set) -> None:
        b = self.where.get(key)
        if b is not None:
            del self.members[b][key]
            dirty.add(b)
        self.members[to][key] = None
        self.where[key] = to
        dirty.add(to)

    def update(self, series: dict, names: dict) -> None:
        rows, where, idle, hot, dirty, changed = self.rows, self.where, self.idle, self.hot, set(), set()
        for key, vals in series.items():
            old = rows.get(key)
            if old is vals or old == vals:
                continue
            rows[key] = vals
            if old is None:  # a new label set: a row like any other
                self._move(key, hash(key) & (self.COLD - 1), dirty)
            else:
                changed.add(key)
                idle[key] = 0
                if where[key] != hot:
                    self._move(key, hot, dirty)
                else:
                    dirty.add(hot)
        if len(rows) > len(series):  # label sets gone since the last scrape
            for key in [k for k in rows if k not in series]:
                del rows[key]
                idle.pop(key, None)
                dirty.add(where[key])
                del self.members[where.pop(key)][key]
        for key in [k for k in self.members[hot] if k not in changed]:
            idle[key] += 1
            if idle[key] >= self.COOL:
                del idle[key]
                self._move(key, hash(key) & (self.COLD - 1), dirty)
        for b in dirty:
            items = [(k, rows[k]) for k in self.members[b]]
            for pieces, render in zip(self.pieces, self.renderers):
                pieces[b] = Piece(render(items, names).encode())

    def page(self) -> Iterable[Piece]:
        for header, pieces in zip(self.headers, self.pieces):
            yield header
            yield from pieces


class MetricsRenderer:
    """Renders snapshots of one agent: ``families`` are those it runs."""

    def __init__(self, label_names: Sequence[str], families: Sequence[Family], edge_label_names: Sequence[str] = ()):
        self.labels = LabelCache(label_names)
        self.maps: list[_MapPieces] = []
        self.gauges = [g for f in families for g in f.gauges]
        for f in families:
            for cmap in f.counters:
                metrics = [m for m in f.metrics if m.map == cmap.name]
                self.maps.append(_MapPieces(cmap, metrics, self.labels))
        # Edges (who talks to whom) have their own label names: both ends'.
        self.edges = [_MapPieces(f.edges, list(f.edge_metrics), LabelCache(edge_label_names))
                      for f in families if f.edges is not None and edge_label_names]
        self.process = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=self.process)

    def render(self, snap: Snapshot, gzip: bool = False) -> Body:
        """The page, gzip-encoded when ``gzip``; its bytes are made as they are
        written (megabytes at a thousand pods: never joined)."""
        pieces = [Piece((self._agent_families(snap) + self._gauges(snap)).encode())]
        for mp in self.maps:
            mp.update(snap.series.get(mp.map.name, {}), snap.key_names.get(mp.map.name, {}))
            pieces.extend(mp.page())
        if snap.flow_stats is not None:
            for mp in self.edges:
                mp.update(snap.edges, {})
                pieces.extend(mp.page())
            pieces.append(Piece(self._flow_stats(snap).encode()))
        pieces.append(Piece(generate_latest(self.process)))
        return Body.gzip(pieces) if gzip else Body(pieces)

    def _gauges(self, snap: Snapshot) -> str:
        """The probes' user-space gauges: one series per node value or workload."""
        node = escape(snap.node)
        w = Writer()
        for g in self.gauges:
            if g.per_cgroup:
                values = snap.workload_gauges.get(g.name)
                if values is not None:
                    w.family(g.name, "gauge", g.help)
                    w.samples(g.name, ((self.labels(ls), v) for ls, v in values.items()))
            else:
                values = snap.gauges.get(g.name)
                if values is not None:
                    w.family(g.name, "gauge", g.help)
                    head = f'{g.label}="{{}}",' if g.label else ""
                    w.samples(g.name, ((head.format(escape(k)) + f'node="{node}"', v) for k, v in sorted(values.items())))
        return w.text()

    @staticmethod
    def _flow_stats(snap: Snapshot) -> str:
        """The flows' series budget, per node."""
        st, node = snap.flow_stats, f'node="{escape(snap.node)}"'
        w = Writer()
        w.family("podsight_flow_edges", "gauge", "Edges exported (peer rows, ~other rows included).")
        w.sample("podsight_flow_edges", node, st.edges)
        w.family("podsight_flow_peers_folded", "gauge",
                 "Edges whose traffic goes to peer_workload=\"~other\" now (beyond flows.max_peers_per_workload).")
        w.sample("podsight_flow_peers_folded", node, st.peers_folded)
        w.family("podsight_flow_edges_expired", "counter", "Edges that left /metrics after flows.idle_timeout without traffic.")
        w.sample("podsight_flow_edges_expired_total", node, st.edges_expired)
        w.family("podsight_flow_backends_unresolved", "counter",
                 "Connections to a Service address whose backend conntrack did not name (exported without it).")
        w.sample("podsight_flow_backends_unresolved_total", node, st.backends_unresolved)
        return w.text()

    @staticmethod
    def _agent_families(snap: Snapshot) -> str:
        """The agent's own families: few series, rendered afresh each scrape."""
        node = escape(snap.node)
        w = Writer()
        w.family("podsight_build_info", "gauge", "podsight build information; value is always 1.")
        w.sample("podsight_build_info",
                 f'version="{__version__}",python_version="{platform.python_version()}",node="{node}"', 1)
        w.family("podsight_probe_up", "gauge", "1 if the probe (or probe part) is attached on this kernel, 0 if unavailable.")
        for probe, ok in sorted(snap.probes.items()):
            w.sample("podsight_probe_up", f'probe="{probe}",node="{node}"', int(ok))
        if snap.probe_states:
            w.family("podsight_probe_state", "gauge", "1 for the probe's state: up, unsupported (this kernel lacks "
                     "what it needs: expected on this node) or failed (it should work and does not).")
            for probe, state in sorted(snap.probe_states.items()):
                for s in ("up", "unsupported", "failed"):
                    w.sample("podsight_probe_state", f'probe="{probe}",state="{s}",node="{node}"', int(s == state))
        if snap.kubernetes_api_up is not None:
            w.family("podsight_kubernetes_api_up", "gauge", "1 if the pod watch on the Kubernetes API is healthy.")
            w.sample("podsight_kubernetes_api_up", f'node="{node}"', int(snap.kubernetes_api_up))
        w.family("podsight_bpf_map_entries", "gauge", "Entries in a BPF map, read at scrape time "
                 "(tcp_socks: at the last RTT sample; tls_ssl: at the last handshake sweep; tcp_flows, tcp_flow_conns: at the last read).")
        for name, n in sorted(snap.map_entries.items()):
            w.sample("podsight_bpf_map_entries", f'map="{name}",node="{node}"', n)
        if snap.map_max_entries:
            w.family("podsight_bpf_map_max_entries", "gauge", "Capacity of a BPF map: entries beyond it are not counted.")
            for name, n in sorted(snap.map_max_entries.items()):
                w.sample("podsight_bpf_map_max_entries", f'map="{name}",node="{node}"', n)
        if snap.programs:
            w.family("podsight_bpf_program_runs", "counter", "Times each podsight BPF program ran (kernel BPF stats).")
            w.samples("podsight_bpf_program_runs_total",
                      ((f'program="{p}",node="{node}"', st.run_count) for p, st in sorted(snap.programs.items())))
            w.family("podsight_bpf_program_run_seconds", "counter", "Time spent in each podsight BPF program (kernel BPF stats).")
            w.samples("podsight_bpf_program_run_seconds_total",
                      ((f'program="{p}",node="{node}"', st.run_time_ns / 1e9) for p, st in sorted(snap.programs.items())))
        sec = snap.security
        if sec is not None:
            w.family("podsight_security_events", "counter", "Security rule matches, by rule, severity and namespace.")
            for (rule, severity, namespace), n in sorted(sec.matches.items()):
                w.sample("podsight_security_events_total",
                         f'rule="{escape(rule)}",severity="{severity}",namespace="{escape(namespace)}",node="{node}"', n)
            if sec.drops:
                w.family("podsight_events_dropped", "counter",
                         "Security events not delivered, by reason and event kind (every drop is counted).")
                for (reason, kind), n in sorted(sec.drops.items()):
                    w.sample("podsight_events_dropped_total", f'reason="{reason}",event="{kind}",node="{node}"', n)
        return w.text()
