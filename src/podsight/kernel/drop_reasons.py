"""Kernel drop reason numbers → names, read from this kernel's own tracepoint format.

The enum skb_drop_reason changes between kernel versions; its numbers must
never be hard-coded.  skb:kfree_skb's print format carries the mapping.
"""
from __future__ import annotations

import os
import re

__all__ = ["drop_reasons"]

_PAIR = re.compile(r'\{\s*(\d+)\s*,\s*"([A-Z0-9_]+)"\s*\}')


def drop_reasons(tracefs: str) -> dict[int, str]:
    path = os.path.join(tracefs, "events", "skb", "kfree_skb", "format")
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return {}
    fmt = text[text.find("print fmt:"):]
    start = fmt.find("__print_symbolic(REC->reason")
    return {int(n): name for n, name in _PAIR.findall(fmt[start:])} if start >= 0 else {}
