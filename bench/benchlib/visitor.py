"""Connections from many pod cgroups without a process per pod.

One process visits every pod cgroup in turn: a socket is charged to the
cgroup its creator is in when it is made, so connecting from inside each
pod's cgroup gives that pod real traffic and real TCP lifecycle entries.
Its echo listener is made before the first move, so the accepted sockets
are the host's (or the node namespace's), not a pod's.
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from . import env

_SCRIPT = r"""
import ctypes, os, socket, sys, threading
netns, plan, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
if netns != "-":
    libc = ctypes.CDLL(None, use_errno=True)
    with open(netns) as ns:
        if libc.setns(ns.fileno(), 0x40000000) != 0:  # CLONE_NEWNET, before any thread starts
            raise OSError(ctypes.get_errno(), "setns " + netns)
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", port)); srv.listen(4096)
port = srv.getsockname()[1]
def echo():
    while True:
        c, _ = srv.accept()
        with c:
            c.sendall(c.recv(64))
threading.Thread(target=echo, daemon=True).start()
pid = str(os.getpid())
done = 0
for line in open(plan):
    cg, *peers = line.split()
    with open(os.path.join(cg, "cgroup.procs"), "w") as f:
        f.write(pid)
    for peer in peers:
        with socket.create_connection((peer, port), timeout=5) as c:
            c.sendall(b"podsight")
            c.recv(64)
        done += 1
print(done, flush=True)
"""


def visit(plan: list[tuple[Path, list[str]]], *, port: int = 0, netns: str | None = None,
          timeout: float = 600, what: str = "cgroup visitor") -> None:
    """One echo exchange from each cgroup to each of its peer addresses, all
    served by the visitor's own listener on ``port`` (0: any free port) in
    ``netns`` (a /run/netns path; None: this namespace)."""
    with tempfile.NamedTemporaryFile("w", prefix="psb-visit-", suffix=".txt") as f:
        for cgroup, peers in plan:
            f.write(" ".join([str(cgroup), *peers]) + "\n")
        f.flush()
        r = subprocess.run([sys.executable, "-c", _SCRIPT, netns or "-", f.name, str(port)],
                           capture_output=True, text=True, timeout=timeout)
    want = sum(len(peers) for _, peers in plan)
    if r.returncode != 0 or r.stdout.strip() != str(want):
        raise env.BenchError(f"{what}: {r.stdout!r} {r.stderr[-2000:]}")
