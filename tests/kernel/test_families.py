"""Every probe family's declaration (podsight.kernel.families) against the
compiled objects and this kernel: each declared program, map and tracepoint
exists, counter maps have the declared layout, every metric reads fields
that exist, and enums shared by C and Python agree value by value (read
from bpf/podsight.h: clang leaves enums used only as constants out of BTF)."""
from __future__ import annotations

import ctypes
import os
import re
from pathlib import Path

import pytest

from podsight.kernel import mounts
from podsight.kernel.families import COUNTER_FAMILIES, FAMILIES
from podsight.kernel.loader import BpfObject

HEADER = Path(__file__).resolve().parents[2] / "bpf" / "podsight.h"
ENUM = re.compile(r"^enum (\w+) \{(.*?)^\};", re.M | re.S)
ENUMERATOR = re.compile(r"^\s*(\w+)\s*=\s*(\d+),", re.M)
PERCPU_HASH = 5


def header_enums() -> dict[str, dict[str, int]]:
    """Every enum of bpf/podsight.h (all its members carry explicit values)."""
    return {m.group(1): {k: int(v) for k, v in ENUMERATOR.findall(m.group(2))} for m in ENUM.finditer(HEADER.read_text())}


@pytest.fixture(scope="module")
def tracefs_events():
    return os.path.join(mounts.tracefs_root(), "events")


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_declared_programs_exist_where_declared(family, tracefs_events):
    with BpfObject(family.name) as obj:
        sections = obj.sections()
    missing = set(family.programs) - set(sections)
    assert not missing, f"{family.name}: declared programs not in {family.name}.bpf.o: {sorted(missing)}"
    for prog, hook in family.programs.items():
        section = sections[prog]
        if hook is None:  # run by the agent, attached nowhere
            assert section == "raw_tp", (prog, section)
        elif hook.startswith("cgroup_skb/") or hook == "uprobe":  # uprobes: attached per library file
            assert section == hook, (prog, section)
        else:  # a tracepoint: the section names it (tracepoint/ or tp_btf/), and this kernel has it
            assert section in (f"tracepoint/{hook}", f"tp_btf/{hook.split('/')[1]}"), (prog, section, hook)
            assert os.path.isdir(os.path.join(tracefs_events, hook)), f"{hook}: no such tracepoint on this kernel"


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_declared_maps_exist_with_the_declared_layout(family):
    with BpfObject(family.name) as obj:
        specs = obj.map_specs()
    missing = set(family.maps) - set(specs)
    assert not missing, f"{family.name}: declared maps not in {family.name}.bpf.o: {sorted(missing)}"
    for cmap in family.counters:
        assert cmap.name in family.maps, f"{cmap.name}: a counter map must be in the family's maps"
        mtype, key_size, value_size = specs[cmap.name]
        assert mtype == PERCPU_HASH, f"{cmap.name}: read as a per-CPU hash, type {mtype}"
        assert key_size == cmap.key.size == (ctypes.sizeof(cmap.key_type) if cmap.paired else 8), cmap.name
        assert value_size == ctypes.sizeof(cmap.value) == cmap.width * 8, cmap.name


@pytest.mark.parametrize("family", COUNTER_FAMILIES, ids=lambda f: f.name)
def test_every_metric_reads_declared_fields(family):
    maps = {c.name: c for c in family.counters}
    for m in family.metrics:
        cmap = maps.get(m.map)
        assert cmap is not None, f"{m.name}: map {m.map} is not a counter map of {family.name}"
        for f in m.fields:
            assert hasattr(cmap.value, f), f"{m.name}: {cmap.value.__name__} has no field {f}"
        if m.type == "histogram":
            assert hasattr(cmap.value, "slots") and hasattr(cmap.value, "sum"), m.name
            assert cmap.paired and (m.select is not None or m.key_label), m.name
    assert {m.map for m in family.metrics} == set(maps), f"{family.name}: a counter map no metric reads"


def test_metric_names_are_unique_and_follow_conventions():
    names = [m.name for f in FAMILIES for m in (*f.metrics, *f.gauges)]
    assert len(names) == len(set(names)), names
    for f in FAMILIES:
        for m in f.metrics:
            assert m.name.startswith("podsight_") and not m.name.endswith("_total"), m.name
            assert m.type != "histogram" or m.name.endswith("_seconds"), m.name
        for g in f.gauges:
            assert g.name.startswith("podsight_") and not g.name.endswith("_total"), g.name


@pytest.mark.parametrize("family", [f for f in FAMILIES if f.enums], ids=lambda f: f.name)
def test_enums_agree_with_c(family):
    enums = header_enums()
    for c_name, (prefix, names) in family.enums.items():
        assert c_name in enums, f"enum {c_name} not in {HEADER}"
        by_value = {v: k for k, v in enums[c_name].items()}
        c_names = tuple(by_value[v][len(prefix):].lower() for v in range(len(names)) if v in by_value)
        assert c_names == names, f"enum {c_name}: C {c_names}, Python {names}"
        extra = {k: v for k, v in enums[c_name].items() if v >= len(names)}
        assert all(v == len(names) for v in extra.values()), f"enum {c_name}: values Python does not know: {extra}"
