"""Where security event lines go: stdout and/or a file, one write per batch,
and/or an HTTP receiver (``http_output.HttpOutput``: queued, sent by its own
thread, never blocking the writer)."""
from __future__ import annotations

import logging
import sys
from typing import Sequence, TextIO

from .http_output import HttpOutput

__all__ = ["EventOutput"]

log = logging.getLogger("podsight.security")


class EventOutput:
    def __init__(self, streams: list[TextIO] | None = None, file: str = "", http: HttpOutput | None = None):
        """Raises OSError when ``file`` cannot be opened: a config mistake that stops the agent."""
        self.streams: list[TextIO] = list(streams or [])
        self._file = open(file, "a", buffering=1) if file else None
        if self._file is not None:
            self.streams.append(self._file)
        self.http = http

    @classmethod
    def from_config(cls, stdout: bool, file: str, http=None) -> "EventOutput":
        """``http``: ``config.HttpOutput`` (``security.output.http``); no HTTP output while its url is empty."""
        return cls([sys.stdout] if stdout else [], file,
                   HttpOutput.from_config(http) if http is not None and http.url else None)

    def write_lines(self, lines: Sequence[str], kinds: Sequence[str]) -> None:
        """One event per line (no newlines), its kind (``exec``, ``open``...) beside it:
        one write per stream, and every line offered to the HTTP output."""
        if not lines:
            return
        self._write_streams("\n".join(lines) + "\n")
        if self.http is not None:
            self.http.offer_many(zip(kinds, lines))

    def _write_streams(self, text: str) -> None:
        for out in self.streams:
            try:
                out.write(text)
                out.flush()
            except (OSError, ValueError) as e:  # a closed or full output must not stop the others
                log.error("cannot write security events: %s", e)

    def dropped(self) -> dict[tuple[str, str], int]:
        """Lines the HTTP output could not deliver: {(reason, event kind): n}."""
        return self.http.dropped() if self.http is not None else {}

    def close(self, timeout: float = 1.0) -> None:
        """``timeout``: at most this long (plus half a second) sending what the HTTP
        output still holds; the agent exits within two seconds of SIGTERM."""
        if self.http is not None:
            self.http.close(timeout)
        if self._file is not None:
            self._file.close()
