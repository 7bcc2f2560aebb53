"""Simulated pods that talk to each other with known byte counts, named in
the test API server: what the flow tests (kernel and e2e) share."""
from __future__ import annotations

import contextlib

from tests.support.apiserver import make_node, make_pod, start_container
from tests.support.pods import sh

PY = "python3"
NODE, OTHER_NODE = "node-a", "node-b"
NS = "shop"

# A server: per connection read to EOF, then send the byte count asked for
# on its command line, then close.  A client: connect, send N, half-close,
# read to EOF.
SERVER = """
import socket, sys, threading
host, port, back = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
fam = socket.AF_INET6 if ':' in host else socket.AF_INET
s = socket.socket(fam); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((host, port)); s.listen(256)
print('listening', flush=True)
def handle(c):
    with c:
        while c.recv(65536): pass
        if back: c.sendall(b'b' * back)
while True:
    c, _ = s.accept(); threading.Thread(target=handle, args=(c,), daemon=True).start()
"""
CLIENT = """
import socket, sys
host, port, n, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
for _ in range(count):
    c = socket.create_connection((host, port)); c.sendall(b'a' * n); c.shutdown(socket.SHUT_WR)
    got = 0
    while True:
        d = c.recv(65536)
        if not d: break
        got += len(d)
    c.close()
print(got, flush=True)
"""

# A client that holds its connection open: connect, send N bytes, print
# "sent", and close only when stdin closes.
HOLD = """
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2]))); c.sendall(b'h' * int(sys.argv[3]))
print('sent', flush=True); sys.stdin.read(); c.close()
"""


def serve(pod, port, back=0, host=None):
    p = pod.run(PY, "-c", SERVER, host or pod.ip, str(port), str(back), text=True)
    assert p.stdout.readline().strip() == "listening", p.stderr.read()
    return p


def send(pod, host, port, n, count=1, timeout=60) -> int:
    p = pod.run(PY, "-c", CLIENT, host, str(port), str(n), str(count), text=True)
    out, err = p.communicate(timeout=timeout)
    assert p.returncode == 0, err
    return int(out)


def register(api, sim, name, workload, node=NODE, ips=None):
    pod = make_pod(name, namespace=NS, node=node, uid=sim.uid, owner=("StatefulSet", workload),
                   ips=ips or [sim.ip])
    start_container(pod, "app", sim.container_id)
    api.add_pod(pod)


def cluster(api, zones=(("node-a", "zone-a", "192.0.2.1"), ("node-b", "zone-b", "192.0.2.2"))):
    for name, zone, ip in zones:
        api.add_node(make_node(name, [ip], zone=zone))


def three_pods(api, a, b, c) -> None:
    """Nodes node-a (zone-a) and node-b (zone-b); A (client) and B (db) on
    node-a, C (cache) a pod of node-b (its netns is here, its object says
    node-b)."""
    cluster(api)
    register(api, a, "client-0", "client")
    register(api, b, "db-0", "db")
    register(api, c, "cache-0", "cache", node=OTHER_NODE)


@contextlib.contextmanager
def lossy(pod, port: int, probability: float = 0.03):
    """Drop that share of the data segments arriving at ``pod``'s ``port``
    (iptables statistic; SYNs pass, so every connection opens)."""
    rule = ["INPUT", "-p", "tcp", "--dport", str(port), "--tcp-flags", "SYN", "NONE", "-m", "statistic",
            "--mode", "random", "--probability", str(probability), "-j", "DROP"]
    sh("iptables", "-A", *rule, ns=pod.ns)
    try:
        yield
    finally:
        sh("iptables", "-D", *rule, ns=pod.ns)
