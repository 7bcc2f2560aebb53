"""Where security event lines go: stdout and/or a file, one write per batch."""
from __future__ import annotations

import logging
import sys
from typing import TextIO

__all__ = ["EventOutput"]

log = logging.getLogger("podsight.security")


class EventOutput:
    def __init__(self, streams: list[TextIO] | None = None, file: str = ""):
        """Raises OSError when ``file`` cannot be opened: a config mistake that stops the agent."""
        self.streams: list[TextIO] = list(streams or [])
        self._file = open(file, "a", buffering=1) if file else None
        if self._file is not None:
            self.streams.append(self._file)

    @classmethod
    def from_config(cls, stdout: bool, file: str) -> "EventOutput":
        return cls([sys.stdout] if stdout else [], file)

    def write(self, text: str) -> None:
        for out in self.streams:
            try:
                out.write(text)
                out.flush()
            except (OSError, ValueError) as e:  # a closed or full output must not stop the others
                log.error("cannot write security events: %s", e)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
