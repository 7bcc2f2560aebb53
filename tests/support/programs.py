"""Small programs the tests run inside simulated pods (``python -c PROGRAM``)."""
from __future__ import annotations

__all__ = ["PTRACE"]

# Attaches to a child of its own with ptrace, detaches, prints ptrace's return value.
PTRACE = r"""
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
child = os.fork()
if child == 0:
    time.sleep(5); os._exit(0)
rc = libc.ptrace(16, child, None, None)  # PTRACE_ATTACH
time.sleep(0.1)
libc.ptrace(17, child, None, None)       # PTRACE_DETACH
os.kill(child, 9); os.waitpid(child, 0)
print(rc)
"""
