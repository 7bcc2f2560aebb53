"""The running agent: probes attached, their periodic work driven, and one
consistent snapshot per scrape.

Everything is handed in by the caller (podsight.runtime), which checks
everything that can fail on input (config, rule files) before
``Agent.start()`` attaches a single program.
"""
from __future__ import annotations

import logging
import threading
import time

from ..exporters.snapshot import Snapshot
from ..heartbeat import Heartbeat
from ..identity.node import NodeIdentity
from ..kernel.families import COUNTER_FAMILIES
from ..kernel.probes import Probe, ProgramStats
from .bpf_stats import BpfStats
from .counters import CounterSeries, Source
from .flows import FlowPipeline
from .security import SecurityPipeline

__all__ = ["Agent"]

log = logging.getLogger("podsight.agent")


class Agent:
    # Seconds a background pass may take beyond its interval before /healthz
    # calls the agent stuck: a walk of the tracked sockets takes about a
    # millisecond and waits at most for a scrape; a cgroup sweep at 1,000
    # pods tens of milliseconds, a walk a few hundred.
    SAMPLE_SLACK = 30.0
    SWEEP_SLACK = 60.0

    def __init__(self, identity: NodeIdentity, probes: list[Probe], *, cgroup_root: str, cfg,
                 security: SecurityPipeline | None = None, flows: FlowPipeline | None = None):
        self.cfg = cfg
        self.identity = identity
        self.cgroup_root = cgroup_root
        self.probes: dict[str, Probe] = {p.name: p for p in probes}
        self.security = security
        if security is not None:
            self.probes[security.probe.name] = security.probe
        # Flows need the tcp probe: its per-connection state holds the peer.
        self.flows = flows if "tcp" in self.probes else None
        # The declared counter maps of the probes we run (podsight.kernel.families).
        self.counters = CounterSeries(identity, [
            Source(self.probes[f.name], cmap) for f in COUNTER_FAMILIES if f.name in self.probes for cmap in f.counters
        ], self.flows.derived if self.flows is not None else (lambda _name: {}))
        self._per_cgroup = {g.name for f in COUNTER_FAMILIES for g in f.gauges if g.per_cgroup}
        self.bpf_stats = BpfStats(cfg.bpf_stats)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.sampler_beat = Heartbeat("sampler")
        self.gc_beat = Heartbeat("cgroup sweep")
        self.started = False

    # -- lifecycle ---------------------------------------------------------
    def start(self) -> None:
        self.bpf_stats.enable()
        self.identity.resolver.scan()
        for probe in self.probes.values():
            probe.start(self.cfg, self.cgroup_root)
        if self.security is not None:
            self.security.start()
        for target, name in ((self._gc_loop, "podsight-gc"), (self._sample_loop, "podsight-sample")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        self.started = True

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=1.0)
        self.sampler_beat.done()
        self.gc_beat.done()
        if self.security is not None:
            self.security.stop()
        with self._lock:  # no scrape or sample may touch an object being closed
            for probe in self.probes.values():
                probe.stop()
        self.bpf_stats.disable()
        if self.security is not None:
            self.security.close()

    def probes_down(self) -> list[str]:
        return [name for name, p in self.probes.items() if not p.up]

    def heartbeats(self) -> list[Heartbeat]:
        beats = [self.sampler_beat, self.gc_beat]
        if self.security is not None and self.security.reader is not None:
            beats.append(self.security.reader.heartbeat)
        return beats

    # -- snapshot ----------------------------------------------------------
    def _flow_maps(self):
        return self.probes["tcp"].flow_maps() if self.flows is not None else None

    def _update_flows(self, connections_only: bool = False) -> None:
        """The kernel's edges read (under the lock), before anything reads
        the per-cgroup sums they feed."""
        maps = self._flow_maps()
        if maps is not None:
            self.flows.set_service_ranges(self.probes["tcp"])
            self.flows.update(maps, connections_only=connections_only)

    def snapshot(self) -> Snapshot:
        with self._lock:
            self._update_flows()
            series, fill = self.counters.read()
            m = self._flow_maps()
            if m is not None:
                fill["tcp_flows"] = (self.flows.table.entries, m.edges.max_entries)
                fill["tcp_flow_conns"] = (self.flows.conn_table.entries, m.connections.max_entries)
            states: dict[str, str] = {}
            gauges: dict[str, dict] = {}
            for p in self.probes.values():
                states.update(p.states())
                fill.update(p.map_fill())
                gauges.update(p.gauges())
            node_gauges, workload_gauges = self._gauges(gauges)
            return Snapshot(
                node=self.identity.node,
                label_names=self.identity.label_names,
                series=series,
                key_names={s.map.name: s.probe.key_names(s.map.name) for s in self.counters.sources if s.map.paired},
                map_entries={m: n for m, (n, _) in fill.items()},
                map_max_entries={m: n for m, (_, n) in fill.items()},
                probe_states=states,
                programs=self._program_stats(),
                kubernetes_api_up=self.identity.kubernetes_api_up,
                security=self.security.counts() if self.security is not None else None,
                gauges=node_gauges,
                workload_gauges=workload_gauges,
                edge_label_names=self.flows.label_names if m is not None else (),
                edges=self.flows.series() if m is not None else {},
                flow_stats=self.flows.flow_stats() if m is not None else None,
            )

    def _gauges(self, values: dict[str, dict]) -> tuple[dict, dict]:
        """The probes' gauges: per node as they are; per cgroup summed into
        each workload's label set (cgroups not resolvable yet are left out)."""
        node, workload = {}, {}
        for name, per in values.items():
            if name not in self._per_cgroup:
                node[name] = per
                continue
            labels, _ = self.identity.labels_for(per)
            out: dict = {}
            for cid, v in per.items():
                ls = labels.get(cid)
                if ls is not None:
                    out[ls] = out.get(ls, 0) + v
            workload[name] = out
        return node, workload

    def _program_stats(self) -> dict[str, ProgramStats]:
        out: dict[str, ProgramStats] = {}
        for p in self.probes.values():
            if p.obj is not None:
                out.update(self.bpf_stats.read(p.obj.loaded_programs()))
        return out

    # -- background work ---------------------------------------------------
    def _sample_loop(self) -> None:
        """Drive the probes' periodic work (the TCP RTT sampler, the TLS
        library rescan), each at its own interval.  ``prepare()`` reads /proc
        outside the lock; ``sample()`` touches BPF objects under it."""
        probes = [p for p in self.probes.values() if p.up and p.sample_interval > 0]
        if not probes:
            return
        interval = min(p.sample_interval for p in probes)
        due = {p.name: time.monotonic() + p.sample_interval for p in probes}
        self.sampler_beat.beat(interval + self.SAMPLE_SLACK)
        while not self._stop.wait(interval):
            self.sampler_beat.beat(interval + self.SAMPLE_SLACK)
            now = time.monotonic()
            for p in [p for p in probes if now >= due[p.name]]:
                due[p.name] = now + p.sample_interval
                try:
                    p.prepare()
                    with self._lock:
                        p.sample()
                        if p.name == "tcp" and self.flows is not None and self.flows.follows_connections:
                            # Service connections, named and deleted as they close
                            self._update_flows(connections_only=True)
                except OSError as e:
                    log.warning("probe %s: sampling failed: %s", p.name, e)

    def _gc_loop(self) -> None:
        # Only cgroups that are gone are looked for here (new ones are found
        # on demand at scrape time), with a stat per known cgroup, not a walk:
        # at idle this is the agent's main cost on a node with many pods.
        # Until the kubelet's top directories exist (an agent started before
        # the kubelet), walk: the security probe needs them as pod roots.
        resolver = self.identity.resolver
        interval = max(self.cfg.rescan_interval, 0.5) * 5
        self.gc_beat.beat(interval + self.SWEEP_SLACK)
        while not self._stop.wait(interval):
            self.gc_beat.beat(interval + self.SWEEP_SLACK)
            try:
                if resolver.pod_roots():
                    resolver.sweep()
                else:
                    resolver.scan()
                self.collect_garbage()
                if self.security is not None:
                    self.security.refresh_pod_roots()
            except Exception:  # keep exporting whatever happens here
                log.exception("garbage collection failed")

    def collect_garbage(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        grace = self.cfg.kubernetes.grace_period
        with self._lock:
            gone = self.counters.collect_garbage(now, grace)
            if self.flows is not None:
                m = self._flow_maps()
                if gone:
                    self.flows.forget_cgroups(m, gone)
                self.flows.expire(m, now)
            pods = self.identity.pods
            if pods is not None:
                for uid, when in pods.deleted().items():
                    if now - when >= grace:
                        pods.forget(uid)
