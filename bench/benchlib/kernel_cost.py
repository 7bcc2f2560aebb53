"""Figure 3: the kernel's own accounting of each program's cost (BPF stats),
next to an empty program on the same hook (the floor), under the same load.

The two sets take turns, each alone on the hooks (podsight's network + TCP
objects loaded as the agent loads them; then bench/bpf/empty.bpf.c), in
alternating order, with the same loads each turn.  Alone, because the first
program on a hook pays for the cache lines the event brings in (skb, socket,
map buckets) and a second one would run warm: measured side by side, the
order decides the ratio more than the code does.
"""
from __future__ import annotations

import contextlib
import subprocess
import threading

from podsight.config import Config
from podsight.kernel import mounts
from podsight.kernel.families.network import NetworkProbe
from podsight.kernel.families.tcp import TcpProbe
from podsight.kernel.probes import program_stats

from . import churn, env
from .floor import floor_programs
from .machine import bpf_stats, bpf_stats_sysctl
from .stats import Budget, summary

__all__ = ["run", "BUDGET", "FLOOR", "PER_PACKET", "podsight_programs", "floor_programs"]

BUDGET = Budget("<=", 1.5, "x")
# podsight program → the empty program on the same hook (bench/bpf/empty.bpf.c).
FLOOR = {
    "network_ingress": "empty_ingress",
    "network_egress": "empty_egress",
    "tcp_state": "empty_state",
    "tcp_retransmit": "empty_retransmit",
    "tcp_send_reset": "empty_send_reset",
    "tcp_receive_reset": "empty_recv_reset",
    "skb_drop": "empty_skb_drop",
}
# Run for every packet / received segment: these carry the budget.  The rest
# run once per connection state change or per drop/reset/retransmit.
PER_PACKET = ("network_ingress", "network_egress")
# The sampler the agent runs every srtt_sample_interval: one run walks every
# tracked socket; no hook and so no floor.
SAMPLERS = ("tcp_rtt_sample",)
HOOKS = {
    "network_ingress": "cgroup_skb/ingress", "network_egress": "cgroup_skb/egress",
"tcp_state": "tp_btf inet_sock_set_state",
    "tcp_retransmit": "tracepoint tcp/tcp_retransmit_skb", "tcp_send_reset": "tracepoint tcp/tcp_send_reset",
    "tcp_receive_reset": "tracepoint tcp/tcp_receive_reset", "skb_drop": "tracepoint skb/kfree_skb",
}
REFUSED_PORT = 9  # nobody listens: each connect is a SYN, a RST sent, a RST received, a drop


@contextlib.contextmanager
def podsight_programs():
    """podsight's network + TCP objects, loaded and attached as the agent does; name → fd.

    A thread runs the RTT sampler twice a second, like the agent's sampler
    thread, so its cost is counted.
    """
    cfg = Config()
    root = mounts.cgroup2_root(cfg.cgroup_root)
    probes = [NetworkProbe(), TcpProbe()]
    stop = threading.Event()

    def tick() -> None:
        while not stop.wait(0.5):
            for p in probes:
                p.sample()

    ticker = threading.Thread(target=tick, daemon=True)
    try:
        fds = {}
        for p in probes:
            if not p.start(cfg, root):
                raise env.BenchError(f"probe {p.name} failed to start: {p.error}")
            fds.update(p.obj.loaded_programs())
        ticker.start()
        yield fds
    finally:
        stop.set()
        if ticker.is_alive():
            ticker.join()
        for p in probes:
            p.stop()


def read_stats(fds: dict[str, int]) -> dict[str, tuple[int, int]]:
    out = {}
    for name, fd in fds.items():
        st = program_stats(fd)
        if st is None:
            raise env.BenchError(f"no run_time_ns/run_cnt in /proc/self/fdinfo/{fd} ({name})")
        out[name] = (st.run_count, st.run_time_ns)
    return out


def delta(a, b):
    return {k: (b[k][0] - a[k][0], b[k][1] - a[k][1]) for k in a}


def _turn(programs, loads) -> dict[str, dict[str, tuple[int, int]]]:
    """One side's turn: attach, run every load, detach; per-load deltas."""
    out = {}
    with programs() as fds:
        for w, load in loads.items():
            before = read_stats(fds)
            load()
            out[w] = delta(before, read_stats(fds))
    return out


def run(node, httpd, repeats: int, seconds: float, refused: int, log) -> dict:
    client, server = node.pod(env.pod_name("kcc")), churn.serve(node, httpd)
    server.run("iperf3", "-s", "-B", server.ip, "-p", "5202", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env.wait_listen(server, 5202)

    def iperf() -> None:
        p = client.run("iperf3", "-c", server.ip, "-p", "5202", "-t", f"{seconds:g}", stdout=subprocess.DEVNULL)
        if p.wait(timeout=seconds + 30) != 0:
            raise env.BenchError(f"iperf3 failed: {p.stderr.read()}")

    def refuse() -> None:
        p = client.run("python3", env.NETPROG, "refused", server.ip, str(REFUSED_PORT), str(refused), text=True)
        out, err = p.communicate(timeout=120)
        if p.returncode != 0 or out.strip() != str(refused):
            raise env.BenchError(f"netprog refused: expected {refused} failures, got {out!r} {err}")

    loads = {"connect_close": lambda: churn.wrk(client, server, seconds), "iperf3": iperf, "refused": refuse}
    empty_dir = env.build_tools()["empty_dir"]
    sides = {"podsight": podsight_programs, "floor": lambda: floor_programs(empty_dir)}
    turns: dict[str, list[dict]] = {s: [] for s in sides}
    was = bpf_stats_sysctl()
    log(f"kernel cost: BPF stats on; podsight and empty programs take turns; "
        f"loads {', '.join(loads)} ({seconds:g} s each) x {repeats}")
    with bpf_stats():
        for i in range(repeats):
            for side in (("podsight", "floor") if i % 2 == 0 else ("floor", "podsight")):
                turns[side].append(_turn(sides[side], loads))
            log(f"  repeat {i + 1}/{repeats} done")
    after = bpf_stats_sysctl()
    node.remove(client)
    node.remove(server)

    def per_run(side: str, prog: str, i: int, windows=tuple(loads)) -> tuple[int, float | None]:
        c = sum(turns[side][i][w].get(prog, (0, 0))[0] for w in windows)
        t = sum(turns[side][i][w].get(prog, (0, 0))[1] for w in windows)
        return c, (t / c if c else None)

    programs = {}
    for prog, floor in FLOOR.items():
        if prog not in turns["podsight"][0]["iperf3"]:
            programs[prog] = {"hook": HOOKS[prog], "loaded": False}
            continue
        runs, floor_runs, ns, floor_ns, ratio, cc = [], [], [], [], [], []
        for i in range(repeats):
            c, x = per_run("podsight", prog, i)
            fc, fx = per_run("floor", floor, i)
            runs.append(c)
            floor_runs.append(fc)
            if x is not None and fx is not None:
                ns.append(x)
                floor_ns.append(fx)
                ratio.append(x / fx)
            _, y = per_run("podsight", prog, i, ("connect_close",))
            if y is not None:
                cc.append(y)
        entry = {
            "hook": HOOKS[prog], "floor_program": floor, "per_packet": prog in PER_PACKET,
            "runs_per_repeat": summary(runs), "floor_runs_per_repeat": summary(floor_runs),
            "ns_per_run": summary(ns), "floor_ns_per_run": summary(floor_ns),
            # Ratio of each repeat's pair of turns, so slow and fast moments of the machine pair up.
            "ratio": summary(ratio),
            # Issue 3: ns per event of each TCP program under a connect/close loop alone.
            "connect_close_ns_per_run": summary(cc),
        }
        if prog in PER_PACKET:
            entry["budget"] = BUDGET.judge(entry["ratio"])
        programs[prog] = entry
    samplers = {}
    for prog in SAMPLERS:
        per = [per_run("podsight", prog, i) for i in range(repeats)]
        samplers[prog] = {"runs_per_repeat": summary([c for c, _ in per]),
                           "ns_per_run": summary([x for _, x in per if x is not None])}
    return {"unit": "ns/run", "seconds_per_load": seconds, "refused_connects": refused,
            "method": "podsight and empty programs alone on the hooks in alternating turns, same loads",
            "bpf_stats_enabled_before": was, "bpf_stats_enabled_after": after,
            "turns": {s: [{w: {k: list(v) for k, v in d.items()} for w, d in t.items()} for t in ts]
                      for s, ts in turns.items()},
            "programs": programs,
            # One run walks every tracked socket; the bench runs it twice a second.
            "samplers": samplers}
