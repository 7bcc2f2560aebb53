"""The floor: a bench object's programs (bench/bpf/*.bpf.c) on podsight's hooks.

Shared by the off/on/floor rounds (ab) and the kernel's own accounting
(kernel_cost); it imports no other benchlib module, so neither has to import
the other.
"""
from __future__ import annotations

import contextlib

from podsight.kernel import mounts
from podsight.kernel.loader import BpfObject

__all__ = ["floor_programs", "uprobe_floor", "CGROUP_SKB"]

# Programs of bench/bpf/*.bpf.c attached to a cgroup (the rest attach by their tracepoint section).
CGROUP_SKB = {"empty_ingress", "empty_egress", "v1_cgroup_id", "v2_hash_lookup", "v3_plain_add",
              "v4_atomic_add", "v5_array_add", "v6_sk_plain", "v7_sk_atomic", "v8_sk_atomic_in",
              "v9_cg_storage", "v9_cg_storage_in", "v10_cg_no_segs_in"}


@contextlib.contextmanager
def floor_programs(obj_dir, name: str = "empty", only: tuple[str, ...] | None = None):
    """A bench object's programs on the same hooks (cgroup_skb ones on the cgroup2 root); name → fd."""
    root = mounts.cgroup2_root()
    with BpfObject(name, directory=obj_dir) as obj:
        obj.load()
        progs = [p for p in obj.program_names() if only is None or p in only]
        for prog in progs:
            if prog in CGROUP_SKB:
                obj.attach_cgroup(prog, root)
            else:
                obj.attach(prog)
        fds = obj.loaded_programs()
        yield {p: fds[p] for p in progs}



@contextlib.contextmanager
def uprobe_floor(obj_dir, paths: list[str]):
    """bench/bpf/empty_tls.bpf.c's two programs (entry, return) in place of
    each of the tls probe's programs, on the same functions of each library
    file of ``paths``, attached the way the agent attaches its own
    (podsight.kernel.families.tls: uprobe_multi links where the kernel has
    them, else one perf-event uprobe per function); name → fd."""
    from podsight.kernel.families import tls
    from podsight.kernel.loader import BPF_TRACE_UPROBE_MULTI

    links = tuple(("empty_uretprobe" if ret else "empty_uprobe", ret, fns) for _prog, ret, fns in tls.LINKS)
    multi = tls.uprobe_multi()
    with BpfObject("empty_tls", directory=obj_dir) as obj:
        if multi:
            for prog in ("empty_uprobe", "empty_uretprobe"):
                obj.set_expected_attach_type(prog, BPF_TRACE_UPROBE_MULTI)
        obj.load()
        for path in paths:
            tls.attach_file(obj, path, multi, links=links)
        yield obj.loaded_programs()
