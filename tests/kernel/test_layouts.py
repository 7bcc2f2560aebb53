"""The Python mirror of bpf/podsight.h agrees with the compiled objects' BTF."""
from __future__ import annotations

import ctypes
import re
import subprocess

import pytest

from podsight.kernel.families import FAMILIES
from podsight.kernel.loader import bpf_dir

# C struct name → mirror, as each family declares them.
MIRRORED = {name: py for f in FAMILIES for name, py in f.structs.items()}

STRUCT = re.compile(r"^\[\d+\] STRUCT '(\w+)' size=(\d+) vlen=\d+$")
MEMBER = re.compile(r"^\s+'(\w+)' type_id=\d+ bits_offset=(\d+)")


def btf_structs(obj) -> dict[str, tuple[int, dict[str, int]]]:
    out = subprocess.run(["bpftool", "btf", "dump", "file", str(obj)], capture_output=True, text=True, check=True).stdout
    structs, current = {}, None
    for line in out.splitlines():
        if m := STRUCT.match(line):
            current = structs[m.group(1)] = (int(m.group(2)), {})
        elif (m := MEMBER.match(line)) and current is not None:
            current[1][m.group(1)] = int(m.group(2)) // 8
        elif not line.startswith("\t"):
            current = None
    return structs


def all_objects():
    objs = sorted(bpf_dir().glob("*.bpf.o"))
    assert objs, f"no BPF objects in {bpf_dir()}: run make setup"
    return objs


def test_every_mirrored_struct_matches_btf():
    seen = {}
    for obj in all_objects():
        seen.update({k: v for k, v in btf_structs(obj).items() if k in MIRRORED})
    # Each shared struct must be used by at least one object, or the check proves nothing.
    assert set(seen) == set(MIRRORED), f"structs not found in any object's BTF: {set(MIRRORED) - set(seen)}"
    for name, (size, members) in seen.items():
        py = MIRRORED[name]
        assert ctypes.sizeof(py) == size, name
        offsets = {f[0]: getattr(py, f[0]).offset for f in py._fields_}
        assert offsets == members, name


@pytest.mark.parametrize("name", sorted(MIRRORED))
def test_mirror_has_no_implicit_padding(name):
    py = MIRRORED[name]
    end = max(getattr(py, f).offset + ctypes.sizeof(t) for f, t in py._fields_)
    assert end == ctypes.sizeof(py), f"{name}: trailing padding the C side may lay out differently"
