"""Traffic with exact, known byte counts between simulated pods."""
from __future__ import annotations

import sys

__all__ = ["SINK", "SEND"]

# Accepts one connection, reads to EOF, prints how many bytes arrived.
SINK = r"""
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(8)
print("listening", flush=True)
c, _ = s.accept(); n = 0
while True:
    b = c.recv(1 << 16)
    if not b: break
    n += len(b)
c.close(); print(n, flush=True)
"""

# Connects, sends exactly N bytes, waits for the peer to close.
SEND = r"""
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
n = int(sys.argv[3]); buf = b"p" * 65536; left = n
while left:
    left -= c.send(buf[:min(left, len(buf))])
c.shutdown(socket.SHUT_WR); c.recv(1); c.close(); print(n, flush=True)
"""

PYTHON = sys.executable
