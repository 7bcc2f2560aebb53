"""What the figures were measured on, and the kernel's BPF run-time statistics switch."""
from __future__ import annotations

import contextlib
import datetime
import os
import platform
import socket
import sys
from pathlib import Path

from podsight.kernel.libbpf import BPF_STATS_RUN_TIME, check_int, lib

__all__ = ["machine_info", "bpf_stats", "bpf_stats_sysctl"]

SYSCTL = Path("/proc/sys/kernel/bpf_stats_enabled")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_mb() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except OSError:
        pass
    return None


def machine_info() -> dict:
    return {
        "hostname": socket.gethostname(),
        "kernel": platform.release(),
        "arch": platform.machine(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "memory_mb": _mem_total_mb(),
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "argv": sys.argv[1:],
    }


def bpf_stats_sysctl() -> int:
    return int(SYSCTL.read_text().strip())


@contextlib.contextmanager
def bpf_stats():
    """Kernel BPF run-time stats on for the ``with`` body only.

    bpf_enable_stats() hands back an fd; the kernel keeps stats on while any
    such fd is open, so they go off again when we close it, or when this
    process dies.  Nothing to restore by hand, nothing left on after a crash.
    """
    fd = check_int("bpf_enable_stats", lib.bpf_enable_stats(BPF_STATS_RUN_TIME))
    try:
        yield
    finally:
        os.close(fd)
