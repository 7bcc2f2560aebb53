"""The kernel's accounting of our programs' own cost (``bpf_stats: true``)."""
from __future__ import annotations

import logging
import os

from ..kernel.libbpf import BPF_STATS_RUN_TIME, LibbpfError, check_int, lib
from ..kernel.probes import ProgramStats, program_stats

__all__ = ["BpfStats"]

log = logging.getLogger("podsight.agent")


class BpfStats:
    def __init__(self, wanted: bool):
        self.wanted = wanted
        self._fd: int | None = None

    def enable(self) -> None:
        if not self.wanted:
            return
        try:
            # Stats stay on while this fd is open, and stop when we exit.
            self._fd = check_int("bpf_enable_stats", lib.bpf_enable_stats(BPF_STATS_RUN_TIME))
        except LibbpfError as e:
            log.warning("BPF run-time statistics unavailable: %s", e)

    def read(self, programs: dict[str, int]) -> dict[str, ProgramStats]:
        """program name → stats, for ``programs`` (name → fd); empty while disabled."""
        if self._fd is None:
            return {}
        out = {}
        for name, fd in programs.items():
            st = program_stats(fd)
            if st is not None:
                out[name] = st
        return out

    def disable(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
