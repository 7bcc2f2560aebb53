"""Read per-CPU counter maps into plain ``{key: (sum, sum, ...)}`` snapshots."""
from __future__ import annotations

import struct
from operator import add

from ..kernel.loader import Map

__all__ = ["read_counters", "U32_KEY", "U64_KEY", "PAIR_KEY"]

U64_KEY = struct.Struct("<Q")  # cgroup id
U32_KEY = struct.Struct("<I")  # array index
PAIR_KEY = struct.Struct("<QI4x")  # (cgroup id, kind/reason): hist_key, drop_key


def read_counters(m: Map, width: int, key: struct.Struct = U64_KEY) -> dict:
    """Entries of a map whose value is ``width`` u64s, per-CPU slots summed.

    Keys come back as an int for single-field keys, else as a tuple.  Whole
    batches are unpacked at once: at a thousand pods this runs every scrape.
    """
    ncpu = m.ncpu
    if m.value_size != width * 8:
        raise ValueError(f"map {m.name}: value is {m.value_size} bytes, not {width} u64s")
    entry = struct.Struct(f"<{width * ncpu}Q")
    single = len(key.unpack(bytes(key.size))) == 1
    out: dict = {}
    for kraw, vraw, _n in m.batches():
        keys = (k[0] for k in key.iter_unpack(kraw)) if single else key.iter_unpack(kraw)
        if ncpu == 1:
            out.update(zip(keys, entry.iter_unpack(vraw)))
        elif ncpu == 2:
            out.update((k, tuple(map(add, v[:width], v[width:]))) for k, v in zip(keys, entry.iter_unpack(vraw)))
        else:
            out.update(
                (k, tuple(sum(v[i::width]) for i in range(width))) for k, v in zip(keys, entry.iter_unpack(vraw))
            )
    return out
