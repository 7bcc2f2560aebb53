"""Who talks to whom: the kernel's edges (tcp_flows, and tcp_flow_conns
for connections to Service addresses) named at workload (or pod)
level on both ends, within a series budget.

Each update reads what every kernel edge gained since the last (reader.flows)
and adds it:
- to its cgroup's TCP totals (with flows on, tcp.bpf.c counts connections,
  retransmits and RTT only per edge; the per-cgroup families are their sums);
- to the edge it belongs to now: local workload, role, server port, peer.
  A connection to a Service address waits (``BACKEND_WAIT``) for conntrack
  to name its backend, then its kernel entry goes.

Per local workload the ``max_peers_per_workload`` edges with the most bytes
over ``peer_window`` are exported; the others' gains go to one
``peer_workload="~other"`` row, so every exported counter only grows.  Rows
change only right after a scrape: a row folded then has had every gain it
got scraped, and just stops, as a gone pod's series do.  An edge
with no gain for ``idle_timeout`` leaves, and so does its kernel entry once
no connection of it is open.
"""
from __future__ import annotations

import heapq
import logging
import time
from dataclasses import dataclass
from operator import add

from ..config import Flows
from ..identity.node import NodeIdentity
from ..identity.peers import PEER_FIELDS, PeerNamer
from ..kernel.layouts import FLOW_ROLES, HIST_CONNECT, HIST_SLOTS, HIST_SRTT
from ..reader.flows import FlowDelta, FlowTable

__all__ = ["FlowPipeline", "FlowStats", "OTHER"]

log = logging.getLogger("podsight.flows")

OTHER = "~other"
_EDGE_WIDTH = 8 + HIST_SLOTS + 1                       # counters, then the RTT histogram
_OPENED, _FAILED, _CLOSED, _BYTES_SENT, _BYTES_RECEIVED = 0, 1, 2, 3, 4
_RETRANSMITS = 7
_SRTT = slice(8, 8 + HIST_SLOTS + 1)
_CONNECT = slice(8 + HIST_SLOTS + 1, 8 + 2 * (HIST_SLOTS + 1))
_TCP_FIELDS = 9                                        # struct tcp_counters


@dataclass(frozen=True)
class FlowStats:
    """The budget's health, per node."""

    edges: int = 0             # edges exported now (~other rows included)
    peers_folded: int = 0      # edges whose gains go to ~other now
    edges_expired: int = 0     # edges that left for being idle (since start)
    backends_unresolved: int = 0   # Service connections conntrack did not name (since start)
    kernel_entries: int = 0


class _Edge:
    """An edge's row: its values exist once it is (or was) a row; a folded
    edge keeps only what ranks it (most edges of a busy workload)."""

    __slots__ = ("values", "window", "changed", "exported", "ip_named")

    def __init__(self) -> None:
        self.values: tuple | None = None
        self.window = [0, 0]       # bytes this half window, the last one
        self.changed = 0.0
        self.exported = False
        self.ip_named = True       # False: an external address beyond flows.external.top_ips

    def add(self, gain: list) -> None:
        self.values = tuple(gain) if self.values is None else tuple(map(add, self.values, gain))


@dataclass
class _Pending:
    gain: list
    since: float


def _top(items: list, k: int) -> list:
    """The k edges with the most bytes over the window.  A row counts double
    and wins ties: a folded edge replaces one only with twice its bytes, so
    peers of about the same size do not swap rows (new series) each window."""
    if len(items) <= k:
        return items
    return heapq.nlargest(k, items, key=lambda le: ((le[1].window[0] + le[1].window[1]) * (1 + le[1].exported),
                                                    le[1].exported))  # quiet windows: rows stay


class FlowPipeline:
    """Not thread-safe: the agent calls it under its lock."""

    BACKEND_WAIT = 5.0   # seconds a Service connection waits for conntrack to name its backend

    def __init__(self, cfg: Flows, identity: NodeIdentity, namer: PeerNamer, zone=lambda node: "",
                 clock=time.monotonic):
        self.cfg = cfg
        self.identity = identity
        self.namer = namer
        self.zone = zone
        self.clock = clock
        self.pod_level = cfg.level == "pod"
        local = ("node", "namespace", "workload", "workload_kind") + (("pod",) if self.pod_level else ()) + ("zone",)
        peer = tuple(f for f in PEER_FIELDS if (f != "peer_pod" or self.pod_level) and (f != "peer_ip" or
                                                                                       cfg.external.raw_ips))
        self._peer_index = [PEER_FIELDS.index(f) for f in peer]
        self.label_names: tuple[str, ...] = local + ("role", "port") + peer
        self.table = FlowTable()                          # tcp_flows: the edges
        self.conn_table = FlowTable()                     # tcp_flow_conns: Service connections
        self.stats: dict[int, list] = {}                 # cgroup → struct tcp_counters gained
        self.hists: dict[tuple[int, int], list] = {}     # (cgroup, hist kind) → struct hist gained
        self.edges: dict[tuple, _Edge] = {}               # labels → edge
        self.other: dict[tuple, _Edge] = {}               # local labels → its ~other row
        self._pending: dict[tuple, _Pending] = {}         # kernel key → gains waiting for names
        self._service_edges: dict[tuple, tuple] = {}      # kernel key of a Service connection → its edge
        self._kernel_changed: dict[tuple, tuple[float, bool]] = {}   # kernel key → (last gain, open connections)
        self._half = max(1.0, float(cfg.peer_window) / 2)
        self._rotated = clock()
        self._expired = 0
        self._unresolved = 0
        self._ranges: list = []
        self._exported: dict[tuple, int] = {}             # local labels → edges exported
        self._named: dict[tuple, int] = {}                # local labels → external addresses named
        self._raw_ips = cfg.external.raw_ips
        self._rechoose = False

    # -- reading -------------------------------------------------------------
    def update(self, maps, now: float | None = None, connections_only: bool = False) -> None:
        """Read what the kernel entries gained (``maps``: tcp_flows and
        tcp_flow_conns).  ``connections_only``: only the Service connections,
        as the sampler does between scrapes to name and delete them."""
        now = self.clock() if now is None else now
        if now - self._rotated >= self._half:
            self._rotated = now
            for e in self.edges.values():
                e.window = [0, e.window[0]]
            self._rechoose = True  # at the next scrape, once this one's rows are out
        gains = self.conn_table.read(maps.connections)
        if not connections_only:
            gains += self.table.read(maps.edges)
        for d in gains:
            self._per_cgroup(d)
            self._kernel_changed[d.key] = (now, d.total[_OPENED] > d.total[_CLOSED])
            self._queue(d, now)
        self._attribute(now)
        self._delete_done(maps, now)

    def _per_cgroup(self, d: FlowDelta) -> None:
        cid, role = d.key[0], d.key[5]
        g = d.gain
        s = self.stats.get(cid)
        if s is None:
            s = self.stats[cid] = [0] * _TCP_FIELDS
        client = role == 1
        s[0 if client else 1] += g[_OPENED]
        s[2 if client else 3] += g[_FAILED]
        s[4] += g[_CLOSED]
        s[5] += g[_RETRANSMITS]
        for kind, part in ((HIST_SRTT, g[_SRTT]), (HIST_CONNECT, g[_CONNECT])):
            if any(part):
                h = self.hists.get((cid, kind))
                self.hists[(cid, kind)] = list(part) if h is None else list(map(add, h, part))

    def _queue(self, d: FlowDelta, now: float) -> None:
        p = self._pending.get(d.key)
        if p is None:
            self._pending[d.key] = _Pending(list(d.gain[:_EDGE_WIDTH]), now)
        else:
            p.gain = list(map(add, p.gain, d.gain[:_EDGE_WIDTH]))

    def _attribute(self, now: float) -> None:
        """Pending gains onto their edges, where both ends can be named."""
        if not self._pending:
            return
        locals_ = self.identity.workloads_for({k[0] for k in self._pending})
        zone = self.zone(self.identity.node)
        for key, p in list(self._pending.items()):
            local = locals_.get(key[0])
            if local is None:
                continue  # not resolvable yet: its gains wait, as per-cgroup counts do
            labels = self._edge_labels(key, local, zone, p, now)
            if labels is None:
                continue  # a Service connection waiting for conntrack
            del self._pending[key]
            self._add(labels, p.gain, now)

    def _edge_labels(self, key: tuple, local: tuple, zone: str, p: _Pending, now: float) -> tuple | None:
        cid, addr, port, client_port, family, role = key
        namespace, workload, kind, pod = local
        peer = self.namer.peer(family, addr)
        if client_port:  # one connection into the Service ranges: named once, deleted once closed
            known = self._service_edges.get(key)
            if known is not None:
                peer = known
            else:
                found = peer
                if peer[0] == "service":
                    found = self.namer.backend(family, addr, port, client_port, peer,
                                               self.namer.client_ips(namespace, pod))
                    if found is None:
                        if now - p.since < self.BACKEND_WAIT:
                            return None
                        self._unresolved += 1
                        found = peer
                self._service_edges[key] = peer = found
        head = (self.identity.node, namespace, workload, kind) + ((pod,) if self.pod_level else ()) + (zone,)
        return head + (FLOW_ROLES[role], str(port)) + tuple(peer[i] for i in self._peer_index)

    def _add(self, labels: tuple, gain: list, now: float) -> None:
        e = self._edge(labels)
        e.changed = now
        e.window[0] += gain[_BYTES_SENT] + gain[_BYTES_RECEIVED]
        if not e.ip_named:  # an external address beyond top_ips: its CIDR set's row
            self._add(labels[:-1] + ("",), gain, now)
            return
        if e.exported:
            e.add(gain)
            return
        local = self._local(labels)
        o = self.other.get(local)
        if o is None:
            o = self.other[local] = _Edge()
        o.add(gain)
        o.changed = now

    def _edge(self, labels: tuple) -> _Edge:
        """An edge, new ones admitted while their workload is within budget:
        a new edge is its own row from its first gain."""
        e = self.edges.get(labels)
        if e is not None:
            return e
        e = self.edges[labels] = _Edge()
        local = self._local(labels)
        if self._raw_ips and labels[-1]:
            n = self._named.get(local, 0)
            e.ip_named = n < self.cfg.external.top_ips
            self._named[local] = n + e.ip_named
        if e.ip_named:
            n = self._exported.get(local, 0)
            if n < self.cfg.max_peers_per_workload:
                e.exported = True
                self._exported[local] = n + 1
        return e

    def _local(self, labels: tuple) -> tuple:
        return labels[:5 + self.pod_level]

    # -- the budget ------------------------------------------------------------
    def _choose(self) -> None:
        """Per local workload, the edges with the most bytes over the window
        are exported; the rest fold.  An edge folded from the start has
        given its gains to ~other, so its own row starts at zero.  With raw
        IPs, the top_ips external addresses are named first; the others'
        gains go to their CIDR set's row."""
        by_local: dict[tuple, list] = {}
        for labels, e in self.edges.items():
            by_local.setdefault(self._local(labels), []).append((labels, e))
        k = self.cfg.max_peers_per_workload
        self._exported, self._named = {}, {}
        for local, items in by_local.items():
            if self._raw_ips:
                ips = [le for le in items if le[0][-1]]
                named = {id(e) for _, e in _top(ips, self.cfg.external.top_ips)}
                for _, e in ips:
                    e.ip_named = id(e) in named
                self._named[local] = len(named)
                items = [le for le in items if le[1].ip_named]
            chosen = {id(e) for _, e in _top(items, k)}
            for _, e in items:
                e.exported = id(e) in chosen
            self._exported[local] = len(chosen)
        for e in self.edges.values():
            if not e.ip_named:
                e.exported = False

    def expire(self, maps, now: float | None = None) -> None:
        """Edges idle for ``idle_timeout`` leave /metrics; kernel entries idle
        as long with no open connection leave the map."""
        now = self.clock() if now is None else now
        idle = float(self.cfg.idle_timeout)
        for rows in (self.edges, self.other):
            for labels in [lb for lb, e in rows.items() if now - e.changed >= idle]:
                e = rows.pop(labels)
                if rows is self.edges:
                    self._expired += 1
                    self._rechoose = True
                    local = self._local(labels)  # its row is free for the next new edge
                    if e.exported:
                        self._exported[local] -= 1
                    if self._raw_ips and labels[-1] and e.ip_named:
                        self._named[local] -= 1
        done = [k for k, (t, live) in self._kernel_changed.items() if now - t >= idle and not live]
        if done and maps is not None:
            self._forget_kernel(maps, done, now)

    def _delete_done(self, maps, now: float) -> None:
        """Service connections that closed and were attributed leave the
        kernel map at once: they are one entry per connection."""
        done = [k for k in self._service_edges if k not in self._pending and not self._kernel_changed.get(k, (0, 1))[1]]
        if done:
            self._forget_kernel(maps, done, now)

    def _delete(self, maps, keys: list) -> list[FlowDelta]:
        """Delete kernel entries from the map each lives in (a Service
        connection's key holds its client port)."""
        out = []
        for table, m, part in ((self.table, maps.edges, [k for k in keys if not k[3]]),
                               (self.conn_table, maps.connections, [k for k in keys if k[3]])):
            if part:
                out += table.delete(m, part)
        return out

    def _forget_kernel(self, maps, keys: list, now: float) -> None:
        for d in self._delete(maps, keys):   # their last gains, read before they went
            self._per_cgroup(d)
            self._queue(d, now)
        self._attribute(now)
        for k in keys:
            if k not in self._pending:
                self._service_edges.pop(k, None)
                self._kernel_changed.pop(k, None)

    def forget_cgroups(self, maps, cids: set[int]) -> None:
        """Cgroups that are gone: their per-cgroup sums and kernel entries go."""
        for cid in cids:
            self.stats.pop(cid, None)
            self.hists.pop((cid, HIST_SRTT), None)
            self.hists.pop((cid, HIST_CONNECT), None)
        keys = [k for k in self._kernel_changed if k[0] in cids]
        if keys and maps is not None:
            self._delete(maps, keys)
        for k in keys:
            self._kernel_changed.pop(k, None)
            self._service_edges.pop(k, None)
        for k in [k for k in self._pending if k[0] in cids]:
            del self._pending[k]

    @property
    def follows_connections(self) -> bool:
        """Connections to Service addresses are kernel entries of their own,
        to be read (and deleted) as they close, not only at scrape time."""
        return bool(self._ranges)

    def set_service_ranges(self, probe) -> None:
        """Tell the kernel where Service addresses are, when that changed."""
        nets = self.namer.service_networks()
        if nets != self._ranges:
            self._ranges = nets
            probe.set_service_ranges(nets)
            log.info("flows: connections to %s are followed one by one (Service addresses)",
                     ", ".join(map(str, nets)) or "nothing")

    # -- output --------------------------------------------------------------
    def derived(self, counter_map: str) -> dict:
        """What tcp_stats and tcp_histograms would hold without flows."""
        if counter_map == "tcp_stats":
            return self.stats
        if counter_map == "tcp_histograms":
            return self.hists
        return {}

    def series(self) -> dict[tuple, tuple]:
        """The rows of one scrape.  Rows are chosen anew (each half window,
        and after edges expire) only after a scrape took them: every gain a
        row got is on /metrics before it folds (its row then just stops, as
        a gone pod's series do).  Reads between scrapes only give free rows
        to new edges."""
        zero = (0,) * _EDGE_WIDTH
        out = {labels: e.values or zero for labels, e in self.edges.items() if e.exported}
        blank = ("", "") + ("",) * len(self._peer_index)
        other = 2 + self._peer_index.index(PEER_FIELDS.index("peer_workload"))
        for local, o in self.other.items():
            row = list(blank)
            row[other] = OTHER
            out[local + tuple(row)] = o.values or zero
        if self._rechoose:
            self._rechoose = False
            self._choose()
        return out

    def flow_stats(self) -> FlowStats:
        exported = sum(1 for e in self.edges.values() if e.exported)
        return FlowStats(edges=exported + len(self.other), peers_folded=len(self.edges) - exported,
                         edges_expired=self._expired, backends_unresolved=self._unresolved,
                         kernel_entries=self.table.entries + self.conn_table.entries)
