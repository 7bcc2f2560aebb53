"""The declared counter maps of the running probes, read into labelled
series with totals that never go back, and their entries freed when their
cgroup is gone."""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from operator import add

from ..identity.node import NodeIdentity
from ..kernel.family import CounterMap
from ..kernel.probes import Probe
from ..reader.counters import CounterReader
from .ledger import Ledger

__all__ = ["CounterSeries", "Source"]

Labels = tuple


@dataclass
class Source:
    """One declared counter map of one probe, and the totals its gone cgroups left."""

    probe: Probe
    map: CounterMap
    ledger: Ledger = field(init=False)
    reader: CounterReader = field(init=False)

    def __post_init__(self) -> None:
        self.ledger = Ledger(self.map.width)
        self.reader = CounterReader(self.map.width, self.map.key)

    def kernel_map(self):
        p = self.probe
        return p.obj.maps[self.map.name] if p.up and p.obj is not None else None


def _merged(raw: dict, extra: dict) -> dict:
    """A map's read with counts kept elsewhere added (flows: a cgroup's edges)."""
    if not extra:
        return raw
    out = dict(raw)
    for key, vals in extra.items():
        old = out.get(key)
        out[key] = tuple(vals) if old is None else tuple(map(add, old, vals))
    return out


class CounterSeries:
    """Not thread-safe: the agent calls it under its lock.

    ``derived(map name)`` gives counts that belong to a map's cgroups but are
    kept elsewhere ({key: values}, growing only): with flows on, tcp.bpf.c
    counts connections per edge, and their per-cgroup sums are added here."""

    def __init__(self, identity: NodeIdentity, sources: list[Source], derived=lambda _name: {}):
        self.identity = identity
        self.sources = sources
        self.derived = derived
        self._unresolvable: set[int] = set()  # ids the last read could not resolve, for GC

    def read(self) -> tuple[dict[str, dict], dict[str, tuple[int, int]]]:
        """(series by map, (entries, max entries) by map) at this instant."""
        raw, fill = {}, {}
        for s in self.sources:
            m = s.kernel_map()
            raw[s.map.name] = _merged(s.reader.read(m), self.derived(s.map.name)) if m is not None else {}
            if m is not None:
                fill[s.map.name] = (len(raw[s.map.name]), m.max_entries)
        ids: set[int] = set()
        for s in self.sources:
            ids.update((k[0] for k in raw[s.map.name]) if s.map.paired else raw[s.map.name])
        base, self._unresolvable = self.identity.labels_for(ids)
        series = {}
        for s in self.sources:
            if s.map.paired:
                def label_of(k):
                    b = base[k[0]]
                    return None if b is None else b + (k[1],)
            else:
                label_of = base.get
            series[s.map.name] = s.ledger.aggregate(raw[s.map.name], label_of)
        return series, fill

    def collect_garbage(self, now: float, grace: float) -> set[int]:
        """Free map entries of cgroups that are gone.

        Host cgroups retire at once into the ledger (their label set lives on);
        a pod's entries stay for the grace period so its final values are
        scraped, then go with its series.
        """
        resolver = self.identity.resolver
        due = {}
        for cid, since in resolver.gone().items():
            info = resolver.resolve(cid)
            in_pod = info is not None and info.identity.in_pod
            if not in_pod or now - since >= grace:
                due[cid] = info
        # Entries recreated by late packets of a cgroup we already forgot
        # (sockets outlive their cgroup) go the same way, as "unknown";
        # the last read saw them, so no map walk is needed here.
        for cid in self._unresolvable:
            due.setdefault(cid, None)
        self._unresolvable = set()
        if not due:
            return set()
        for s in self.sources:
            m = s.kernel_map()
            if m is not None:
                self._drop_entries(s, m, due)
        for cid in due:
            self.identity.forget(cid)
        return set(due)

    def _drop_entries(self, s: Source, m, due: dict) -> None:
        key = s.map.key
        vfmt = struct.Struct(f"<{s.map.width}Q")
        extra = {k: v for k, v in self.derived(s.map.name).items() if (k[0] if s.map.paired else k) in due}
        keys = [k for k in m.keys() if key.unpack(k)[0] in due] if s.map.paired else [key.pack(cid) for cid in due]
        keys += [key.pack(*k) if s.map.paired else key.pack(k) for k in extra]
        for raw_key in dict.fromkeys(keys):
            per_cpu = m.lookup(raw_key)
            m.delete(raw_key)
            k = key.unpack(raw_key)
            info = due[k[0]]
            kept = extra.get(k if s.map.paired else k[0])
            if (per_cpu is None and kept is None) or (info is not None and info.identity.in_pod):
                continue  # a pod's series leave with it
            labels = self.identity.retired_labels(info)
            if s.map.paired:
                labels += (k[1],)
            values = tuple(map(sum, zip(*map(vfmt.unpack, per_cpu)))) if per_cpu is not None else (0,) * s.map.width
            s.ledger.retire(labels, tuple(map(add, values, kept)) if kept is not None else values)
