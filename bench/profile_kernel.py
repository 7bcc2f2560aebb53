#!/usr/bin/env python3
"""Where the kernel's time goes with podsight's programs attached: perf on iperf3.

    .venv/bin/python bench/profile_kernel.py [--seconds 5] [--load iperf3|churn]

Runs the same load three times (no programs, the empty floor programs,
podsight's network + TCP programs), each under ``perf record -a -e cpu-clock``,
and prints the share of CPU samples in BPF programs and in the hooks that
call them (tracepoint argument copies, cgroup_skb dispatch), next to the
load's own figure.  The hooks' cost is paid by any program on them, even an
empty one, and BPF stats (figure 3) do not see it; this does.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))

from benchlib import churn, env, kernel_cost  # noqa: E402

# Symbols that exist only because a program is attached to a hook.
HOOK_SYMBOLS = re.compile(
    r"^(bpf_prog_|__cgroup_bpf_run_filter|bpf_trace_run|__bpf_trace_|perf_trace_|trace_event_raw_event_|"
    r"bpf_prog_run|__bpf_prog_|htab_|__htab_|bpf_map_|bpf_ktime|bpf_probe_read|bpf_skb_cgroup_id|"
    r"lookup_nulls_elem|pcpu_|bpf_lru|__bpf_lru|bpf_percpu_lru)")


@contextlib.contextmanager
def _attached(mode: str):
    if mode == "off":
        yield
    elif mode == "empty":
        from podsight.kernel import mounts
        from podsight.kernel.loader import BpfObject

        root = mounts.cgroup2_root()
        with BpfObject("empty", directory=env.build_tools()["empty_dir"]) as obj:
            obj.load()
            for prog in obj.program_names():
                obj.attach_cgroup(prog, root) if prog in ("empty_ingress", "empty_egress") else obj.attach(prog)
            yield
    else:
        with kernel_cost.podsight_programs():
            yield


def _perf_symbols(data: str) -> dict[str, float]:
    out = subprocess.run(["perf", "report", "-i", data, "--stdio", "--sort", "sym", "-g", "none",
                          "--percent-limit", "0.05"], capture_output=True, text=True).stdout
    syms: dict[str, float] = collections.Counter()
    for line in out.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+\[[k.]\]\s+(\S+)", line)
        if m:
            syms[m.group(2)] += float(m.group(1))
    return syms


VARIANTS = ("v1_cgroup_id", "v2_hash_lookup", "v3_plain_add", "v4_atomic_add", "v5_array_add",
            "v6_sk_plain", "v7_sk_atomic", "v8_sk_atomic_in", "v9_cg_storage", "v9_cg_storage_in", "v10_cg_no_segs_in",
            "t1_core_read", "t2_direct_read", "t3_ktime", "t4_raw_tp", "t5_btf_sk_storage", "t6_btf_sk_lookup")


def variants(tools, seconds: float, rounds: int = 3, only: list[str] | None = None, loads=("iperf3", "churn")) -> int:
    """ns/run of each step of bench/bpf/variants.bpf.c, each alone on its hook,
    next to podsight's programs and the floor, under iperf3 + churn."""
    from benchlib.machine import bpf_stats

    with env.bench_node() as node:
        client = node.pod(env.pod_name("pvc"))
        server = churn.serve(node, tools["httpd"])
        server.run("iperf3", "-s", "-B", server.ip, "-p", "5204", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        env.wait_listen(server, 5204)

        def load() -> None:
            if "iperf3" in loads:
                c = client.run("iperf3", "-c", server.ip, "-p", "5204", "-t", f"{seconds:g}", stdout=subprocess.DEVNULL)
                c.wait()
            if "churn" in loads:
                churn.wrk(client, server, seconds)

        sets = [("podsight", kernel_cost.podsight_programs),
                ("empty", lambda: kernel_cost.floor_programs(tools["empty_dir"], "empty", ("empty_egress", "empty_ingress", "empty_state")))]
        for v in VARIANTS:
            if only and v not in only:
                continue
            sets.append((v, lambda v=v: kernel_cost.floor_programs(tools["empty_dir"], "variants", (v,))))
        rows: dict[str, list[float]] = collections.defaultdict(list)
        with bpf_stats():
            for r in range(rounds):
                # Rotate the order each round: no set always runs when the machine is busiest.
                for label, programs in sets[r % len(sets):] + sets[: r % len(sets)]:
                    with programs() as fds:
                        before = kernel_cost.read_stats(fds)
                        load()
                        for name, (runs, ns) in kernel_cost.delta(before, kernel_cost.read_stats(fds)).items():
                            if runs:
                                rows[name].append(ns / runs)
    import statistics

    rows = {k: (statistics.median(v), min(v), max(v)) for k, v in rows.items()}
    print(f"{'program (alone on its hook)':<28} ns/run median [min..max] over {rounds} rounds")
    for name in ("empty_egress", "empty_ingress", "network_egress", "network_ingress", "empty_state", "tcp_state", *VARIANTS):
        if name in rows:
            print(f"{name:<28} {rows[name][0]:6.1f} [{rows[name][1]:.1f}..{rows[name][2]:.1f}]")
    return 0


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=float, default=5)
    p.add_argument("--load", choices=("iperf3", "churn"),
                   help="the load (default: iperf3; with --variants: both, one after the other)")
    p.add_argument("--top", type=int, default=12)
    p.add_argument("--variants", action="store_true",
                   help="instead: BPF stats of bench/bpf/variants.bpf.c, step by step, under iperf3 + churn")
    p.add_argument("--only", nargs="+", metavar="VARIANT", help=f"with --variants: only these ({', '.join(VARIANTS)})")
    a = p.parse_args()
    a.load = a.load if a.load or a.variants else "iperf3"
    tools = env.build_tools()
    if a.variants:
        return variants(tools, a.seconds, only=a.only, loads=(a.load,) if a.load else ("iperf3", "churn"))
    with env.bench_node() as node:
        client = node.pod(env.pod_name("pkc"))
        server = churn.serve(node, tools["httpd"])
        server.run("iperf3", "-s", "-B", server.ip, "-p", "5203", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        env.wait_listen(server, 5203)
        by_mode: dict[str, dict[str, float]] = {}
        for mode in ("off", "empty", "podsight"):
            with _attached(mode), tempfile.TemporaryDirectory(prefix="psb-perf-") as tmp:
                data = str(Path(tmp) / "perf.data")
                rec = subprocess.Popen(["perf", "record", "-q", "-a", "-e", "cpu-clock", "-o", data],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                if a.load == "iperf3":
                    c = client.run("iperf3", "-c", server.ip, "-p", "5203", "-t", f"{a.seconds:g}", "-J", text=True)
                    out, _ = c.communicate()
                    import json

                    figure = f"{json.loads(out)['end']['sum_received']['bits_per_second'] / 1e9:.2f} Gbit/s"
                else:
                    figure = f"{churn.wrk(client, server, a.seconds):,.0f} connections/s"
                rec.send_signal(2)
                rec.wait()
                syms = _perf_symbols(data)
            by_mode[mode] = syms
            hooks = {s: v for s, v in syms.items() if HOOK_SYMBOLS.match(s)}
            print(f"\n== {mode}: {a.load} {figure}; {sum(hooks.values()):.1f}% of all CPU samples in BPF/hook symbols")
            for s, v in sorted(hooks.items(), key=lambda kv: -kv[1])[: a.top]:
                print(f"  {v:5.2f}%  {s}")
    # Costs outside the hooks (allocation, RCU, cache misses in the stack
    # itself) show only as symbols that grow from "empty" to "podsight".
    empty, ours = by_mode["empty"], by_mode["podsight"]
    grew = sorted(((ours.get(k, 0) - empty.get(k, 0), k) for k in set(ours) | set(empty)), reverse=True)
    print("\n== symbols that grew most from empty to podsight (share of all CPU samples)")
    for d, k in grew[: a.top]:
        print(f"  {d:+5.2f}%  {k}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
