"""Figure 1: iperf3 throughput between two simulated pods, agent off vs on."""
from __future__ import annotations

import json
import subprocess

from . import env
from .ab import alternate
from .stats import Budget

__all__ = ["run", "BUDGET", "serve", "iperf3"]

BUDGET = Budget(">=", 0.99)
PORT = 5201


def serve(node, name: str = "ips"):
    """A pod with an iperf3 server listening on PORT."""
    server = node.pod(env.pod_name(name))
    server.run("iperf3", "-s", "-B", server.ip, "-p", str(PORT), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env.wait_listen(server, PORT)
    return server


def iperf3(client, server, seconds: float) -> float:
    """One iperf3 run from ``client`` to ``server``: Gbit/s received."""
    p = client.run("iperf3", "-c", server.ip, "-p", str(PORT), "-t", f"{seconds:g}", "-J", text=True)
    out, err = p.communicate(timeout=seconds + 30)
    if p.returncode != 0:
        raise env.BenchError(f"iperf3 client failed ({p.returncode}): {out[-500:]} {err}")
    return json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e9


def run(node, repeats: int, seconds: float, log) -> dict:
    client, server = node.pod(env.pod_name("ipc")), serve(node)
    log(f"throughput: iperf3 {seconds:g} s x {repeats} pairs (Gbit/s)")
    result = alternate(lambda: iperf3(client, server, seconds), repeats, log)
    node.remove(client)
    node.remove(server)
    return {"unit": "Gbit/s", "seconds_per_run": seconds, **result,
            "budget": BUDGET.judge(result["ratio"], result["ratio_ci"])}
