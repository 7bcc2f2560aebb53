"""Per-CPU counter maps read into sums, no kernel: a fake map hands out the
raw batches the kernel would (keys, then each entry's CPU slots in turn)."""
from __future__ import annotations

import struct

import pytest

from podsight.kernel.family import U64_KEY, key_struct
from podsight.kernel.layouts import HistKey

PAIR_KEY = key_struct(HistKey)
from podsight.reader.counters import CounterReader


class RawMap:
    def __init__(self, width: int, ncpu: int, key: struct.Struct, batch: int = 3):
        self.name, self.width, self.ncpu, self.key, self.batch = "m", width, ncpu, key, batch
        self.value_size = width * 8
        self.entries: dict[tuple, list[list[int]]] = {}

    def batches(self):
        items = list(self.entries.items())
        for i in range(0, len(items), self.batch):
            chunk = items[i:i + self.batch]
            keys = b"".join(self.key.pack(*k) for k, _ in chunk)
            vals = b"".join(struct.pack(f"<{self.width}Q", *cpu) for _, per_cpu in chunk for cpu in per_cpu)
            yield keys, vals, len(chunk)


@pytest.mark.parametrize("ncpu", [1, 2, 3])
def test_sums_cpus_across_batches(ncpu):
    m = RawMap(2, ncpu, U64_KEY)
    for cid in range(1, 8):
        m.entries[(cid,)] = [[cid * 10 + c, c] for c in range(ncpu)]
    got = CounterReader(2, U64_KEY).read(m)
    assert got == {cid: (sum(cid * 10 + c for c in range(ncpu)), sum(range(ncpu))) for cid in range(1, 8)}


def test_paired_keys_come_back_as_tuples():
    m = RawMap(1, 2, PAIR_KEY)
    m.entries[(7, 3)] = [[1], [2]]
    m.entries[(7, 4)] = [[0], [5]]
    assert CounterReader(1, PAIR_KEY).read(m) == {(7, 3): (3,), (7, 4): (5,)}


def test_unchanged_runs_are_reused_and_changed_ones_read_again(monkeypatch):
    m = RawMap(2, 2, U64_KEY, batch=100)
    for cid in range(1, 71):  # three runs of 32
        m.entries[(cid,)] = [[cid, 1], [2, 2]]
    r = CounterReader(2, U64_KEY)
    first = r.read(m)
    m.entries[(40,)] = [[40, 1], [3, 2]]   # the second run changes
    m.entries[(71,)] = [[9, 9], [0, 0]]    # the third grows
    second = r.read(m)
    assert second[1] is first[1] and second[32] is first[32]  # the first run was not unpacked again
    assert second[33] is not first[33]
    assert second == {**{cid: (cid + 2, 3) for cid in range(1, 71)}, 40: (43, 3), 71: (9, 9)}
    del m.entries[(1,)]  # every run shifts: all read again, and the gone entry is gone
    assert r.read(m) == {k: v for k, v in second.items() if k != 1}


def test_a_value_size_other_than_declared_is_an_error():
    m = RawMap(3, 1, U64_KEY)
    with pytest.raises(ValueError, match="not 2 u64s"):
        CounterReader(2, U64_KEY).read(m)
