"""tcp_flows read as what each kernel edge gained since the last read.

The map is cumulative per entry, but the agent deletes entries (idle edges,
and Service connections once their backend is known), and what an entry's
values mean (which workload its address is) can change between reads: so
the agent works with deltas, and a deleted entry's last gain is read just
before it goes.
"""
from __future__ import annotations

import ctypes
import struct
from dataclasses import dataclass
from operator import sub

from ..kernel.layouts import FlowCounters, FlowKey
from ..kernel.loader import Map

__all__ = ["FlowDelta", "FlowTable", "KEY", "pack_key"]

# (cgroup id, peer address, server port, client port, family, role): struct flow_key.
KEY = struct.Struct("<Q16sHHBB2x")
_WIDTH = ctypes.sizeof(FlowCounters) // 8
_VALUE = struct.Struct(f"<{_WIDTH}Q")
assert KEY.size == ctypes.sizeof(FlowKey)


def pack_key(key: tuple) -> bytes:
    return KEY.pack(*key)


@dataclass(frozen=True, slots=True)
class FlowDelta:
    key: tuple            # KEY's fields
    gain: tuple           # struct flow_counters' u64s gained since the last read
    total: tuple          # ... and their values now


class FlowTable:
    """Not thread-safe: the agent calls it under its lock."""

    def __init__(self) -> None:
        self._last: dict[bytes, bytes] = {}   # key bytes → value bytes at the last read
        self.entries = 0

    def read(self, m: Map) -> list[FlowDelta]:
        """The entries that changed since the last read (or appeared)."""
        if m.value_size != _VALUE.size:
            raise ValueError(f"map {m.name}: value is {m.value_size} bytes, not struct flow_counters")
        ks, vs = KEY.size, _VALUE.size
        last, seen, out = self._last, {}, []
        for kraw, vraw, n in m.batches():
            kraw, vraw = bytes(kraw), bytes(vraw)
            for i in range(n):
                kb, vb = kraw[i * ks:(i + 1) * ks], vraw[i * vs:(i + 1) * vs]
                seen[kb] = vb
                old = last.get(kb)
                if old == vb:
                    continue
                out.append(_delta(kb, old, vb))
        self._last = seen
        self.entries = len(seen)
        return out

    def delete(self, m: Map, keys: list[tuple]) -> list[FlowDelta]:
        """Delete entries, returning what each gained since the last read
        (an update racing the delete is lost: the agent deletes only entries
        no live connection uses)."""
        out = []
        for key in keys:
            kb = pack_key(key)
            values = m.lookup(kb)
            m.delete(kb)
            old = self._last.pop(kb, None)
            if values is not None and values[0] != old:
                out.append(_delta(kb, old, bytes(values[0])))
        self.entries = len(self._last)
        return out


def _delta(kb: bytes, old: bytes | None, vb: bytes) -> FlowDelta:
    total = _VALUE.unpack(vb)
    gain = total if old is None else tuple(map(sub, total, _VALUE.unpack(old)))
    return FlowDelta(KEY.unpack(kb), gain, total)
