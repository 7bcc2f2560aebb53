"""Waiting for a condition in a test: a wait that times out fails."""
from __future__ import annotations

import time


def wait_for(cond, timeout: float = 5.0, what: str = "condition", interval: float = 0.02):
    """Poll ``cond`` until it is truthy and return its value; fail the test
    with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
