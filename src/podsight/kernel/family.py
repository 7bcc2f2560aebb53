"""The vocabulary of a probe family's declaration.

A family is one ``bpf/<name>.bpf.c`` plus one module in
``podsight.kernel.families`` that says, as data: which programs attach
where, which counter maps it fills and with which value layout (the ctypes
mirror, so widths and field positions are never spelled as numbers), and
which Prometheus metric families each map feeds.  The agent, the reader and
the renderer are generic over these declarations (the way ebpf_exporter
keeps a config beside each program); tests/kernel/test_families.py checks
every name against the compiled objects.
"""
from __future__ import annotations

import ctypes
import struct
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable

__all__ = ["CounterMap", "Family", "Gauge", "Metric", "U64_KEY", "key_struct"]

U64_KEY = struct.Struct("<Q")        # a bare cgroup id

_CODES = {ctypes.c_uint64: "Q", ctypes.c_uint32: "I", ctypes.c_uint16: "H", ctypes.c_uint8: "B"}


def key_struct(mirror: type[ctypes.Structure]) -> struct.Struct:
    """A map key's ``struct`` format from its ctypes mirror: every field
    unpacked but those named ``pad`` (the layout test holds the mirror to C)."""
    fmt, pos = "<", 0
    for name, ctype in mirror._fields_:
        f = getattr(mirror, name)
        fmt += f"{f.offset - pos}x" if f.offset > pos else ""
        fmt += f"{f.size}x" if name == "pad" else _CODES[ctype]
        pos = f.offset + f.size
    return struct.Struct(fmt + (f"{ctypes.sizeof(mirror) - pos}x" if ctypes.sizeof(mirror) > pos else ""))


@dataclass(frozen=True)
class CounterMap:
    """A per-CPU hash of u64 counters keyed by cgroup id, or by a key struct
    of (cgroup id, second key) (``key_type``, its ctypes mirror); the agent
    sums CPUs and labels the cgroup."""

    name: str
    value: type[ctypes.Structure]
    key_type: type[ctypes.Structure] | None = None
    # How a second key with no name is shown (names come from the probe at
    # run time, e.g. this kernel's drop reasons).
    unnamed: str = "{}"

    def __post_init__(self) -> None:
        if self.key_type is not None and len(self.key.unpack(bytes(self.key.size))) != 2:
            raise ValueError(f"{self.name}: a key is a cgroup id, or a cgroup id and one more field")

    @property
    def paired(self) -> bool:
        return self.key_type is not None

    @property
    def width(self) -> int:
        return ctypes.sizeof(self.value) // 8

    @cached_property
    def key(self) -> struct.Struct:
        return U64_KEY if self.key_type is None else key_struct(self.key_type)

    def index(self, name: str) -> int:
        """Position of a u64 field (or the first u64 of an array field) in the value."""
        return getattr(self.value, name).offset // 8


@dataclass(frozen=True)
class Metric:
    """One Prometheus metric family fed by a counter map, one series (or
    group of series) per label set.

    - ``fields`` with ``split``: one sample per field, told apart by the
      label ``split`` with the values ``split_values`` (``direction``);
    - one field: one sample;
    - ``derive``: a gauge computed from ``fields``' values;
    - ``type="histogram"``: a ``struct hist`` value (``slots`` + ``sum``) of
      the entries whose second key is ``select``, ``unit`` seconds per base
      unit, buckets for slots ``buckets[0]..buckets[1]``;
    - ``key_label``: paired maps, the second key named as that label (with
      any of the above); without it, a paired map's second key is ``select``.
    """

    name: str        # counters without _total (added when rendered, as OpenMetrics names them)
    type: str        # counter | gauge | histogram
    help: str
    map: str
    fields: tuple[str, ...] = ()
    split: str = ""
    split_values: tuple[str, ...] = ()
    derive: Callable[..., int] | None = None
    key_label: str = ""
    select: int | None = None
    unit: float = 1.0
    buckets: tuple[int, int] = (0, 0)

    def __post_init__(self) -> None:
        if self.type not in ("counter", "gauge", "histogram"):
            raise ValueError(f"{self.name}: unknown metric type {self.type!r}")
        if self.split and len(self.split_values) != len(self.fields):
            raise ValueError(f"{self.name}: {len(self.fields)} fields, {len(self.split_values)} {self.split} values")


@dataclass(frozen=True)
class Gauge:
    """A gauge the probe computes in user space (``Probe.gauges()``), not read
    from a counter map: per node, one sample per value of ``label``; or,
    ``per_cgroup``, a value per cgroup id summed into each workload's label set."""

    name: str
    help: str
    label: str = ""
    per_cgroup: bool = False


@dataclass(frozen=True)
class Family:
    """Everything podsight knows about one ``bpf/<name>.bpf.c``."""

    name: str                               # object build/bpf/<name>.bpf.o
    probe: type                             # podsight.kernel.probes.Probe subclass that loads and attaches it
    programs: dict[str, str | None]         # program → tracepoint "group/event", hook name, "uprobe", or None (run, not attached)
    maps: tuple[str, ...] = ()              # every map the agent touches by name
    counters: tuple[CounterMap, ...] = ()
    metrics: tuple[Metric, ...] = ()
    gauges: tuple[Gauge, ...] = ()
    structs: dict[str, type[ctypes.Structure]] = field(default_factory=dict)   # C struct → mirror
    enums: dict[str, tuple[str, ...]] = field(default_factory=dict)           # C enum → names by value (Python side)
    # Series the agent builds per edge (who talks to whom) rather than per
    # cgroup: their values' layout, and the metric families they feed.
    edges: CounterMap | None = None
    edge_metrics: tuple[Metric, ...] = ()

    def counter(self, name: str) -> CounterMap:
        for c in self.counters:
            if c.name == name:
                return c
        raise KeyError(name)
