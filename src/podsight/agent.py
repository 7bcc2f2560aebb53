"""The running agent: probes, identity, and one consistent snapshot per scrape.

Order matters for the "bad input loses nothing" promise: everything that can
fail on input (config, rule files) is checked by the caller before
``Agent.start()`` attaches a single program.
"""
from __future__ import annotations

import logging
import os
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

from .config import Config
from .identity.cgroups import CgroupIdentity
from .identity.labels import Labeler
from .identity.resolver import CgroupResolver
from .kernel import mounts
from .kernel.libbpf import BPF_STATS_RUN_TIME, LibbpfError, check_int, lib
from .kernel.probes import NetworkProbe, Probe, ProgramStats, TcpProbe, program_stats
from .kernel.layouts import SEC_DROPS, SEC_KINDS
from .reader.counters import PAIR_KEY, U32_KEY, U64_KEY, read_counters
from .reader.ledger import Ledger

__all__ = ["Agent", "Snapshot", "Source", "node_name"]

log = logging.getLogger("podsight.agent")

Labels = tuple[str, ...]

# Counts of cgroups removed before we ever saw their directory.
_UNKNOWN = CgroupIdentity(host_group="unknown")
# cgroup id 0: no socket to charge (e.g. a packet dropped before socket lookup).
_UNATTRIBUTED = CgroupIdentity(host_group="unattributed")


def node_name(cfg: Config) -> str:
    return cfg.node_name or os.environ.get("NODE_NAME") or socket.gethostname()


@dataclass
class Source:
    """One kernel map feeding one group of series."""

    probe: str
    map: str
    width: int
    key: struct.Struct = U64_KEY
    ledger: Ledger = field(init=False)

    def __post_init__(self) -> None:
        self.ledger = Ledger(self.width)

    @property
    def paired(self) -> bool:
        return self.key is PAIR_KEY


SOURCES = (
    Source("network", "network_traffic", 4),
    Source("tcp", "tcp_stats", 8),
    Source("tcp", "tcp_histograms", 33, PAIR_KEY),  # (cgroup, kind) → 32 slots + sum
    Source("tcp", "network_drops", 1, PAIR_KEY),  # (cgroup, reason) → count
)


@dataclass
class Snapshot:
    """Everything one scrape exports, read at one instant.

    ``series[map]`` maps a label tuple (for paired maps: plus the kind or
    reason as last element) to the summed values.
    """

    label_names: tuple[str, ...]
    series: dict[str, dict[Labels, list[int]]] = field(default_factory=dict)
    map_entries: dict[str, int] = field(default_factory=dict)
    probes: dict[str, bool] = field(default_factory=dict)
    programs: dict[str, ProgramStats] = field(default_factory=dict)
    event_drops: dict[tuple[str, str], int] = field(default_factory=dict)  # (reason, event kind)


class Agent:
    # A pod's traffic seen before its metadata is held back this long (while
    # the API is healthy) so it appears once, with its real labels.
    METADATA_HOLD = 30.0

    def __init__(self, cfg: Config, pods=None):
        self.cfg = cfg
        self.node = node_name(cfg)
        self.cgroup_root = mounts.cgroup2_root(cfg.cgroup_root)
        self.resolver = CgroupResolver(self.cgroup_root, cfg.rescan_interval)
        self.pods = pods
        self.labeler = Labeler(self.node, cfg.labels, pods)
        self.probes: dict[str, Probe] = {}
        if cfg.probes.network.enabled:
            self.probes["network"] = NetworkProbe()
        if cfg.probes.tcp.enabled:
            self.probes["tcp"] = TcpProbe()
        self.sources = [Source(s.probe, s.map, s.width, s.key) for s in SOURCES]
        self.drop_reasons: dict[int, str] = {}
        self._lock = threading.Lock()
        self._first_seen: dict[int, float] = {}
        self._stop = threading.Event()
        self._gc_thread: threading.Thread | None = None
        self._sample_thread: threading.Thread | None = None
        self._stats_fd: int | None = None
        self.after_scan: list = []  # callables run after each periodic sweep or rescan
        self._unresolvable: set[int] = set()  # ids the last snapshot could not resolve, for GC
        self.started = False

    # -- lifecycle ---------------------------------------------------------
    def start(self) -> None:
        if self.cfg.bpf_stats:
            try:
                # Stats stay on while this fd is open, and stop when we exit.
                self._stats_fd = check_int("bpf_enable_stats", lib.bpf_enable_stats(BPF_STATS_RUN_TIME))
            except LibbpfError as e:
                log.warning("BPF run-time statistics unavailable: %s", e)
        self.resolver.scan()
        for probe in self.probes.values():
            probe.start(self.cfg, self.cgroup_root)
        if "tcp" in self.probes and self.probes["tcp"].up:
            self.drop_reasons = self.probes["tcp"].drop_reasons
        self._gc_thread = threading.Thread(target=self._gc_loop, name="podsight-gc", daemon=True)
        self._gc_thread.start()
        self._sample_thread = threading.Thread(target=self._sample_loop, name="podsight-sample", daemon=True)
        self._sample_thread.start()
        self.started = True

    def stop(self) -> None:
        self._stop.set()
        for t in (self._sample_thread, self._gc_thread):
            if t is not None:
                t.join(timeout=1.0)
        with self._lock:  # no scrape or sample may touch an object being closed
            for probe in self.probes.values():
                probe.stop()
        if self._stats_fd is not None:
            os.close(self._stats_fd)
            self._stats_fd = None

    def pod_roots(self) -> list[tuple[int, int]]:
        """(cgroup id, depth) of the kubelet's top directories (kubepods.slice / kubepods)."""
        return self.resolver.pod_roots()

    def identity_of(self, cgroup_id: int) -> dict[str, object]:
        """Everything known about a cgroup, for security events (not limited by the label policy)."""
        info = self.resolver.resolve_many([cgroup_id]).get(cgroup_id) if cgroup_id else None
        ident = info.identity if info is not None else _UNKNOWN
        out: dict[str, object] = {
            "node": self.node, "namespace": "", "pod": "", "container": "", "image": "",
            "workload": "", "workload_kind": "", "pod_uid": ident.pod_uid,
            "container_id": ident.container_id, "host_cgroup": ident.host_group, "in_pod": ident.in_pod,
        }
        pod = self.pods.pod(ident.pod_uid) if self.pods is not None and ident.in_pod else None
        if pod is not None:
            c = pod.containers.get(ident.container_id)
            out.update(namespace=pod.namespace, pod=pod.name, workload=pod.workload, workload_kind=pod.workload_kind)
            if c is not None:
                out.update(container=c.name, image=c.image)
        return out

    def probe_status(self) -> dict[str, bool]:
        out: dict[str, bool] = {}
        for p in self.probes.values():
            out.update(p.status())
        return out

    def program_stats(self) -> dict[str, ProgramStats]:
        """The kernel's accounting of our programs' own cost, when enabled."""
        if self._stats_fd is None:
            return {}
        out = {}
        for p in self.probes.values():
            if p.obj is not None:
                for name, fd in p.obj.loaded_programs().items():
                    st = program_stats(fd)
                    if st is not None:
                        out[name] = st
        return out

    # -- snapshot ----------------------------------------------------------
    def _base_labels(self, cid: int, infos, now: float) -> Labels | None:
        if cid == 0:
            return self.labeler.labels(_UNATTRIBUTED)
        info = infos.get(cid)
        if info is None:
            if self.resolver.unresolvable(cid):
                return self.labeler.labels(_UNKNOWN)
            return None  # not scanned yet: hold, counts stay in the map
        ident = info.identity
        if ident.in_pod and self._waiting_for_metadata(cid, ident, now):
            return None
        return self.labeler.labels(ident)

    def _extra(self, source: Source, second: int) -> str:
        if source.map == "network_drops":
            return self.drop_reasons.get(second, f"reason_{second}")
        return str(second)

    def _waiting_for_metadata(self, cid: int, ident, now: float) -> bool:
        pods = self.pods
        if pods is None or not pods.api_up or self.labeler.has_metadata(ident):
            return False
        first = self._first_seen.setdefault(cid, now)
        return now - first < self.METADATA_HOLD

    def snapshot(self) -> Snapshot:
        with self._lock:
            now = time.monotonic()
            snap = Snapshot(self.labeler.names, probes=self.probe_status(), programs=self.program_stats())
            sec = self.probes.get("security")
            if sec is not None and sec.up and sec.obj is not None:
                drops = read_counters(sec.obj.maps["security_drops"], 1, U32_KEY)
                n = len(SEC_KINDS)
                snap.event_drops = {
                    (SEC_DROPS[k // n], SEC_KINDS[k % n]): v[0] for k, v in drops.items() if k < n * len(SEC_DROPS)
                }
            raw = {s.map: self._read(s, snap) for s in self.sources}
            ids: set[int] = set()
            for s in self.sources:
                ids.update((k[0] for k in raw[s.map]) if s.paired else raw[s.map])
            infos = self.resolver.resolve_many(ids - {0})
            base = {cid: self._base_labels(cid, infos, now) for cid in ids}
            self._unresolvable = {cid for cid in ids if cid and infos.get(cid) is None and self.resolver.unresolvable(cid)}
            for s in self.sources:
                if s.paired:
                    def label_of(k, s=s):
                        b = base[k[0]]
                        return None if b is None else b + (self._extra(s, k[1]),)
                else:
                    label_of = base.get
                snap.series[s.map] = s.ledger.aggregate(raw[s.map], label_of)
            return snap

    def _sample_loop(self) -> None:
        """Drive the probes' periodic in-kernel work (the TCP RTT sampler)."""
        probes = [p for p in self.probes.values() if p.up and p.sample_interval > 0]
        if not probes:
            return
        interval = min(p.sample_interval for p in probes)
        while not self._stop.wait(interval):
            with self._lock:
                for p in probes:
                    try:
                        p.sample()
                    except OSError as e:
                        log.warning("probe %s: sampling failed: %s", p.name, e)

    def _map(self, source: Source):
        p = self.probes.get(source.probe)
        if p is None or not p.up or p.obj is None:
            return None
        return p.obj.maps[source.map]

    def _read(self, source: Source, snap: Snapshot) -> dict:
        m = self._map(source)
        if m is None:
            return {}
        data = read_counters(m, source.width, source.key)
        snap.map_entries[source.map] = len(data)
        return data

    # -- garbage collection ------------------------------------------------
    def _gc_loop(self) -> None:
        # Only cgroups that are gone are looked for here (new ones are found
        # on demand at scrape time), with a stat per known cgroup, not a walk:
        # at idle this is the agent's main cost on a node with many pods.
        # Until the kubelet's top directories exist (an agent started before
        # the kubelet), walk: the security probe needs them as pod roots.
        interval = max(self.cfg.rescan_interval, 0.5) * 5
        while not self._stop.wait(interval):
            try:
                if self.resolver.pod_roots():
                    self.resolver.sweep()
                else:
                    self.resolver.scan()
                self.collect_garbage()
                for hook in self.after_scan:
                    hook()
            except Exception:  # keep exporting whatever happens here
                log.exception("garbage collection failed")

    def collect_garbage(self, now: float | None = None) -> None:
        """Free map entries of cgroups that are gone.

        Host cgroups retire at once into the ledger (their label set lives on);
        a pod's entries stay for the grace period so its final values are
        scraped, then go with its series.
        """
        now = time.monotonic() if now is None else now
        grace = self.cfg.kubernetes.grace_period
        with self._lock:
            due = {}
            for cid, since in self.resolver.gone().items():
                info = self.resolver.resolve(cid)
                in_pod = info is not None and info.identity.in_pod
                if not in_pod or now - since >= grace:
                    due[cid] = info
            # Entries recreated by late packets of a cgroup we already forgot
            # (sockets outlive their cgroup) go the same way, as "unknown";
            # the last snapshot saw them, so no map walk is needed here.
            for cid in self._unresolvable:
                due.setdefault(cid, None)
            self._unresolvable = set()
            if due:
                for s in self.sources:
                    m = self._map(s)
                    if m is not None:
                        self._drop_entries(s, m, due)
                for cid in due:
                    self.resolver.forget(cid)
                    self._first_seen.pop(cid, None)
            if self.pods is not None:
                for uid, when in self.pods.deleted().items():
                    if now - when >= grace:
                        self.pods.forget(uid)

    def _drop_entries(self, s: Source, m, due: dict) -> None:
        vfmt = struct.Struct(f"<{s.width}Q")
        keys = [k for k in m.keys() if s.key.unpack(k)[0] in due] if s.paired else [
            U64_KEY.pack(cid) for cid in due
        ]
        for raw_key in keys:
            per_cpu = m.lookup(raw_key)
            m.delete(raw_key)
            k = s.key.unpack(raw_key)
            info = due[k[0]]
            if per_cpu is None or (info is not None and info.identity.in_pod):
                continue  # a pod's series leave with it
            labels = self.labeler.labels(info.identity if info else _UNKNOWN)
            if s.paired:
                labels += (self._extra(s, k[1]),)
            s.ledger.retire(labels, tuple(map(sum, zip(*map(vfmt.unpack, per_cpu)))))
