"""Traffic with exact, known byte counts between simulated pods (programs in netprog.py)."""
from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["NETPROG", "PYTHON", "transfer"]

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
