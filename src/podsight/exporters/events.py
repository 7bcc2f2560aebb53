"""Security events out: rule matching, JSON lines, and the counters behind
``podsight_security_events_total``."""
from __future__ import annotations

import logging
import os
import sys
import threading
from collections import OrderedDict
from typing import Callable, Mapping, TextIO

from ..security.events import event_json
from ..security.model import RawEvent
from ..security.rules import RuleSet

__all__ = ["EventSink", "ProcessInfo"]

log = logging.getLogger("podsight.security")


class ProcessInfo:
    """exe and cwd of a pid: remembered from exec events, else read from /proc.

    /proc is read only when an event needs it (non-exec events, relative
    paths); a process that already exited leaves the field empty.
    """

    def __init__(self, proc_root: str = "/proc", size: int = 4096):
        self.proc_root = proc_root
        self._exe: OrderedDict[int, str] = OrderedDict()
        self._size = size

    def remember_exec(self, pid: int, exe: str) -> None:
        self._exe[pid] = exe
        self._exe.move_to_end(pid)
        if len(self._exe) > self._size:
            self._exe.popitem(last=False)

    def exe(self, pid: int) -> str:
        exe = self._exe.get(pid)
        if exe is None:
            exe = self._link(pid, "exe")
        return exe

    def cwd(self, pid: int) -> str:
        return self._link(pid, "cwd")

    def _link(self, pid: int, what: str) -> str:
        try:
            return os.readlink(f"{self.proc_root}/{pid}/{what}")
        except OSError:
            return ""


class EventSink:
    def __init__(
        self,
        rules: RuleSet,
        identity_of: Callable[[int], Mapping[str, object]],
        proc: ProcessInfo,
        stdout: bool = True,
        file: str = "",
    ):
        self.rules = rules
        self.identity_of = identity_of
        self.proc = proc
        self._outs: list[TextIO] = []
        if stdout:
            self._outs.append(sys.stdout)
        self._file = open(file, "a", buffering=1) if file else None
        if self._file is not None:
            self._outs.append(self._file)
        self._lock = threading.Lock()
        self.matches: dict[tuple[str, str, str], int] = {}

    def handle(self, ev: RawEvent) -> None:
        if ev.kind == "exec":
            self.proc.remember_exec(ev.pid, ev.exe)
        else:
            ev.exe = self.proc.exe(ev.pid)
        if ev.path and not ev.path.startswith("/"):
            ev.cwd = self.proc.cwd(ev.pid)
        identity = self.identity_of(ev.cgroup_id)
        for rule in self.rules.match(ev, identity):
            line = event_json(rule, ev, identity)
            key = (rule.name, rule.severity, str(identity.get("namespace", "")))
            with self._lock:
                self.matches[key] = self.matches.get(key, 0) + 1
                for out in self._outs:
                    out.write(line + "\n")
                    out.flush()

    def counts(self) -> dict[tuple[str, str, str], int]:
        with self._lock:
            return dict(self.matches)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
