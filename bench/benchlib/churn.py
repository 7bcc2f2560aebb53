"""Figure 2: connection churn (wrk, ``Connection: close``) between two pods, agent off vs on."""
from __future__ import annotations

import re

from . import env
from .ab import alternate
from .stats import Budget

__all__ = ["run", "BUDGET", "serve", "wrk"]

BUDGET = Budget(">=", 0.97)
PORT = 8080
CONNECTIONS = 16


def serve(node, httpd):
    server = node.pod(env.pod_name("https"))
    p = server.run(str(httpd), server.ip, str(PORT), text=True)
    env.wait_line(p, "listening")
    return server


def wrk(client, server, seconds: float) -> float:
    """Connections per second: with ``Connection: close`` every request is one connection."""
    p = client.run("wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds:g}s", "-H", "Connection: close",
                   f"http://{server.ip}:{PORT}/", text=True)
    out, err = p.communicate(timeout=seconds + 30)
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if p.returncode != 0 or not m:
        raise env.BenchError(f"wrk failed ({p.returncode}): {out} {err}")
    if "Socket errors" in out or "Non-2xx" in out:
        raise env.BenchError(f"wrk saw errors, the figure would be meaningless:\n{out}")
    return float(m.group(1))


def run(node, httpd, repeats: int, seconds: float, log) -> dict:
    client, server = node.pod(env.pod_name("httpc")), serve(node, httpd)
    log(f"churn: wrk -c{CONNECTIONS} 'Connection: close' {seconds:g} s x {repeats} pairs (connections/s)")
    result = alternate(lambda: wrk(client, server, seconds), repeats, log)
    node.remove(client)
    node.remove(server)
    return {"unit": "connections/s", "seconds_per_run": seconds, "tool": f"wrk -t1 -c{CONNECTIONS}",
            **result, "budget": BUDGET.judge(result["ratio"], result["ratio_ci"])}
