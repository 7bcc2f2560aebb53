"""What one scrape exports, read at one instant: the renderer's only input.

Everything a metric family needs is in here (the Kubernetes API state and
the security pipeline's counts too), so nothing that renders reaches back
into the agent.  A snapshot is not changed after it is made.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

from ..kernel.probes import ProgramStats

__all__ = ["Snapshot", "SecurityCounts"]

Labels = tuple


@dataclass(frozen=True)
class SecurityCounts:
    matches: Mapping[tuple[str, str, str], int] = field(default_factory=dict)  # (rule, severity, namespace)
    drops: Mapping[tuple[str, str], int] = field(default_factory=dict)         # (reason, event kind)


@dataclass(frozen=True)
class Snapshot:
    """``series[map]``: label values (plus, for paired maps, the second key
    as an int) → the map's value fields summed over CPUs and cgroups.
    ``key_names[map]``: this kernel's names for a paired map's second key
    (or a family's fixed ones, e.g. TLS roles)."""

    node: str
    label_names: tuple[str, ...]
    series: Mapping[str, Mapping[Labels, Sequence[int]]] = field(default_factory=dict)
    key_names: Mapping[str, Mapping[int, str]] = field(default_factory=dict)
    map_entries: Mapping[str, int] = field(default_factory=dict)
    map_max_entries: Mapping[str, int] = field(default_factory=dict)
    probe_states: Mapping[str, str] = field(default_factory=dict)  # part → up | unsupported | failed
    programs: Mapping[str, ProgramStats] = field(default_factory=dict)
    kubernetes_api_up: bool | None = None
    security: SecurityCounts | None = None
    # The probes' user-space gauges (podsight.kernel.family.Gauge): per node,
    # name → {label value: v}; per workload, name → {label set: v}.
    gauges: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    workload_gauges: Mapping[str, Mapping[Labels, float]] = field(default_factory=dict)
    # Who talks to whom (podsight.agent.flows): edge labels → a family's
    # edge values, under their own label names; and the budget's health.
    edge_label_names: tuple[str, ...] = ()
    edges: Mapping[Labels, Sequence[int]] = field(default_factory=dict)
    flow_stats: object | None = None

    @property
    def probes(self) -> dict[str, bool]:
        """Probe part → attached (``podsight_probe_up``)."""
        return {part: state == "up" for part, state in self.probe_states.items()}
