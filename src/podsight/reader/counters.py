"""Read per-CPU counter maps into plain ``{key: (sum, sum, ...)}`` snapshots."""
from __future__ import annotations

import struct

from ..kernel.loader import Map

__all__ = ["read_counters", "U32_KEY", "U64_KEY", "PAIR_KEY"]

U64_KEY = struct.Struct("<Q")  # cgroup id
U32_KEY = struct.Struct("<I")  # array index
PAIR_KEY = struct.Struct("<QI4x")  # (cgroup id, kind/reason): hist_key, drop_key


def read_counters(m: Map, width: int, key: struct.Struct = U64_KEY) -> dict:
    """Entries of a map whose value is ``width`` u64s, per-CPU slots summed.

    Keys come back as an int for single-field keys, else as a tuple.
    """
    vfmt = struct.Struct(f"<{width}Q")
    single = len(key.unpack(bytes(key.size))) == 1
    out: dict = {}
    for raw_key, per_cpu in m.items_raw():
        k = key.unpack(raw_key)
        k = k[0] if single else k
        if len(per_cpu) == 1:
            out[k] = vfmt.unpack(per_cpu[0])
        else:
            out[k] = tuple(map(sum, zip(*map(vfmt.unpack, per_cpu))))
    return out
