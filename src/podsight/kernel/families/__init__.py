"""Every probe family podsight has: one module per ``bpf/<name>.bpf.c``.

Adding a family is its ``.bpf.c``, its module here (a ``FAMILY``
declaration, see podsight.kernel.family), its entry below, and tests.
"""
from __future__ import annotations

from ..family import Family
from . import network, security, tcp, tls

__all__ = ["FAMILIES", "COUNTER_FAMILIES", "family"]

FAMILIES: tuple[Family, ...] = (network.FAMILY, tcp.FAMILY, tls.FAMILY, security.FAMILY)
# Families whose counter maps the agent reads for /metrics (configured under ``probes.<name>``).
COUNTER_FAMILIES: tuple[Family, ...] = tuple(f for f in FAMILIES if f.counters)


def family(name: str) -> Family:
    for f in FAMILIES:
        if f.name == name:
            return f
    raise KeyError(name)
