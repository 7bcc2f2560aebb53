"""Figure 4: user-space cost at scale.

``pods`` simulated pods (most with a kubelet cgroup only, a few with a netns
too), each with TCP traffic of its own so every map holds an entry per pod,
and their Pod objects served by the test API server (tests/support/apiserver:
a local HTTP server speaking the pod list/watch protocol, not a real API
server) so the agent labels them with real names.  Then: scrape latency,
series count, RSS, CPU while idle and at a 15 s scrape interval.
"""
from __future__ import annotations

import contextlib
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from . import env
from .stats import Budget, percentile, summary

__all__ = ["run", "BUDGETS"]

BUDGETS = {
    "scrape_p99_ms": Budget("<=", 100, " ms"),
    "rss_mb": Budget("<=", 60, " MB"),
    "idle_cpu_percent": Budget("<=", 1.0, "%"),
}
NODE_NAME = "psb-bench-node"
NETNS_PODS = 4  # two client/server pairs through the bridge

# One process visits every pod cgroup in turn: a socket is charged to the
# cgroup its creator was in when it was made, so connecting from inside each
# pod's cgroup gives that pod real traffic and real TCP lifecycle entries,
# without a thousand processes.  The listener is made before the first move
# (accepted sockets inherit its cgroup: the host's).
VISITOR = r"""
import os, socket, sys, threading
cgroups = open(sys.argv[1]).read().split()
per_pod = int(sys.argv[2])
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1024)
port = srv.getsockname()[1]
def echo():
    while True:
        c, _ = srv.accept()
        with c:
            c.sendall(c.recv(64))
threading.Thread(target=echo, daemon=True).start()
pid = str(os.getpid())
done = 0
for cg in cgroups:
    with open(os.path.join(cg, "cgroup.procs"), "w") as f:
        f.write(pid)
    for _ in range(per_pod):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
            c.sendall(b"podsight")
            c.recv(64)
        done += 1
print(done, flush=True)
"""


def _make_pods(node, n: int, log) -> list:
    pods = [node.pod(env.pod_name(f"n{i}")) for i in range(min(NETNS_PODS, n))]
    t0 = time.monotonic()
    pods += [node.pod(env.pod_name(f"c{i}"), netns=False) for i in range(len(pods), n)]
    log(f"  {n} pod cgroups ({len(pods) - (n - min(NETNS_PODS, n))} with netns) in {time.monotonic() - t0:.1f} s")
    return pods


def _traffic(node, pods, per_pod: int, log) -> None:
    t0 = time.monotonic()
    netns = [p for p in pods if p.netns]
    for server, client in zip(netns[1::2], netns[0::2]):
        s = server.run("python3", env.NETPROG, "serve", server.ip, "8080", "1000", text=True)
        env.wait_line(s, "listening")
        c = client.run("python3", env.NETPROG, "connect", server.ip, "8080", str(per_pod), text=True)
        out, err = c.communicate(timeout=60)
        if out.strip() != str(per_pod):
            raise env.BenchError(f"netprog connect in {client.ns}: {out!r} {err}")
    plain = [p for p in pods if not p.netns]
    with tempfile.NamedTemporaryFile("w", prefix="psb-cgroups-", suffix=".txt") as f:
        f.write("\n".join(str(p.cgroup) for p in plain))
        f.flush()
        r = subprocess.run([sys.executable, "-c", VISITOR, f.name, str(per_pod)],
                           capture_output=True, text=True, timeout=600)
    if r.returncode != 0 or r.stdout.strip() != str(per_pod * len(plain)):
        raise env.BenchError(f"cgroup visitor: {r.stdout!r} {r.stderr}")
    log(f"  traffic: {per_pod} connections from each pod in {time.monotonic() - t0:.1f} s")


def _api_server(pods):
    """The test API server with one Pod object per simulated pod, or None if unusable."""
    try:
        from tests.support.apiserver import PodApiServer, make_pod, start_container
    except ImportError as e:
        return None, f"tests/support/apiserver.py not importable: {e}"
    srv = PodApiServer().start()
    for i, p in enumerate(pods):
        obj = make_pod(f"web-{i}", namespace=f"psb-ns{i % 25}", node=NODE_NAME, uid=p.uid,
                       owner=("ReplicaSet", f"web-{i // 10}-6d5f8b"))
        start_container(obj, "app", p.container_id)
        srv.add_pod(obj)
    return srv, ""


def _scrape(url: str) -> tuple[float, bytes]:
    t0 = time.perf_counter()
    with urllib.request.urlopen(url + "/metrics", timeout=30) as r:
        body = r.read()
    return time.perf_counter() - t0, body


def _series(body: bytes) -> int:
    return sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))


def _pods_labelled(body: bytes) -> int:
    """Distinct pods with Kubernetes names in podsight_network_bytes_total."""
    seen = set()
    for line in body.decode().splitlines():
        if line.startswith("podsight_network_bytes_total{") and 'namespace="psb-ns' in line:
            seen.add(line.split('pod="', 1)[1].split('"', 1)[0])
    return len(seen)


@contextlib.contextmanager
def scaled_agent(node, n_pods: int, per_pod: int, log):
    """``n_pods`` pods with traffic and metadata, and the agent showing all of them.

    Yields ``(agent, info)``; pods, API server and agent are gone afterwards.
    """
    pods = _make_pods(node, n_pods, log)
    srv, why_not = _api_server(pods)
    tmp = tempfile.TemporaryDirectory(prefix="psb-")
    args = ["--node-name", NODE_NAME]
    config = 'log_level: warning\nkubernetes:\n  enabled: "false"\n'
    if srv is not None:
        from tests.support.apiserver import write_kubeconfig

        kubeconfig = write_kubeconfig(Path(tmp.name) / "kubeconfig", srv.url)
        args += ["--kubeconfig", str(kubeconfig)]
        config = 'log_level: warning\nkubernetes:\n  enabled: "true"\n'
    info: dict = {"pods": n_pods, "netns_pods": min(NETNS_PODS, n_pods), "connections_per_pod": per_pod,
                  "kubernetes_metadata": srv is not None,
                  "kubernetes_note": why_not or "test API server (tests/support/apiserver.py), not a real API server"}
    try:
        with env.agent(config, *args) as agent:
            _traffic(node, pods, per_pod, log)
            t0 = time.monotonic()
            expect = n_pods if srv is not None else 0
            while True:
                _, body = _scrape(agent.url)
                have = _pods_labelled(body)
                if have >= expect and (expect or _series(body) > n_pods):
                    break
                if time.monotonic() - t0 > 120:
                    raise env.BenchError(f"agent labelled {have} of {n_pods} pods after 120 s")
                time.sleep(1)
            log(f"  agent shows all {n_pods} pods after {time.monotonic() - t0:.1f} s")
            info["pods_labelled"] = have
            info["series"] = _series(body)
            info["body_bytes"] = len(body)
            yield agent, info
    finally:
        if srv is not None:
            srv.stop()
        tmp.cleanup()
        t0 = time.monotonic()
        for p in list(node.pods):
            node.remove(p)
        log(f"  removed {n_pods} pods in {time.monotonic() - t0:.1f} s")


def run(node, n_pods: int, per_pod: int, scrapes: int, repeats: int, idle_seconds: float,
        interval_seconds: float, log) -> dict:
    log(f"scale: {n_pods} pods, {per_pod} connections each, {scrapes} scrapes x {repeats}")
    with scaled_agent(node, n_pods, per_pod, log) as (agent, out):
        pid = agent.proc.pid
        p50, p99, cpu_per_scrape = [], [], []
        for _ in range(repeats):
            lat = []
            c0 = env.cpu_seconds(pid)
            for _ in range(scrapes):
                dt, body = _scrape(agent.url)
                lat.append(dt * 1000)
            cpu_per_scrape.append((env.cpu_seconds(pid) - c0) / scrapes * 1000)
            p50.append(percentile(lat, 50))
            p99.append(percentile(lat, 99))
        out["scrape_p50_ms"] = summary(p50)
        out["scrape_p99_ms"] = summary(p99)
        out["cpu_ms_per_scrape"] = summary(cpu_per_scrape)
        rss = [env.rss_bytes(pid) / 2**20]

        log(f"  idle {idle_seconds:g} s (no scrapes)")
        idle = []
        for _ in range(repeats):
            c0, t = env.cpu_seconds(pid), time.monotonic()
            time.sleep(idle_seconds / repeats)
            idle.append((env.cpu_seconds(pid) - c0) / (time.monotonic() - t) * 100)
        out["idle_cpu_percent"] = summary(idle)
        rss.append(env.rss_bytes(pid) / 2**20)

        # A 15 s interval, simulated: one scrape every 15 s for interval_seconds.
        log(f"  15 s scrape interval, simulated for {interval_seconds:g} s")
        c0, t = env.cpu_seconds(pid), time.monotonic()
        n = 0
        while time.monotonic() - t < interval_seconds:
            _scrape(agent.url)
            n += 1
            time.sleep(max(0.0, min(t + n * 15, t + interval_seconds) - time.monotonic()))
        sim = (env.cpu_seconds(pid) - c0) / (time.monotonic() - t) * 100
        extrap = out["idle_cpu_percent"]["median"] + out["cpu_ms_per_scrape"]["median"] / 15_000 * 100
        out["interval_15s_cpu_percent"] = {
            "simulated": sim, "simulated_seconds": round(time.monotonic() - t, 1), "scrapes": n,
            "extrapolated": extrap,
            "method": "simulated: a scrape every 15 s, agent CPU over the window; "
                      "extrapolated: idle % + (CPU per scrape / 15 s)"}
        rss.append(env.rss_bytes(pid) / 2**20)
        out["rss_mb"] = summary(rss)
        out["rss_peak_mb"] = env.rss_bytes(pid, "VmHWM") / 2**20
    for key, b in BUDGETS.items():
        out[key]["budget"] = b.judge(out[key])
    return out
