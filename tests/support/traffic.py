"""Traffic with exact, known byte counts between simulated pods (programs in netprog.py)."""
from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["NETPROG", "PYTHON", "abort", "transfer"]

NETPROG = str(Path(__file__).with_name("netprog.py"))
PYTHON = sys.executable


def transfer(a, b, nbytes: int, port: int) -> None:
    """Exactly ``nbytes`` from pod a to a sink in pod b, which checks it read them all."""
    sink = b.run(PYTHON, NETPROG, "sink", b.ip, str(port), text=True)
    assert sink.stdout.readline().strip() == "listening", sink.stderr.read()
    send = a.run(PYTHON, NETPROG, "send", b.ip, str(port), str(nbytes), text=True)
    assert send.wait(30) == 0, send.stderr.read()
    assert int(sink.stdout.readline()) == nbytes  # every byte really crossed
    sink.wait(10)


# Connect, exchange one byte with an echoing server, then close with
# SO_LINGER {on, 0}: the kernel resets the established connection instead of
# sending a FIN.  Prints how many connections it aborted.
_ABORT = """
import socket, struct, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for _ in range(n):
    c = socket.create_connection((host, port), timeout=5)
    c.sendall(b"x")
    assert c.recv(1) == b"x"
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()
print(n, flush=True)
"""


def abort(pod, host: str, port: int, n: int) -> None:
    """``n`` connections from ``pod`` to an echo server, each reset by its client once established."""
    p = pod.run(PYTHON, "-c", _ABORT, host, str(port), str(n), text=True)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 0 and out.strip() == str(n), err
