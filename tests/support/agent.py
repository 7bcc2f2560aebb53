"""Run the real agent (``podsight run``) as a child process and scrape it."""
from __future__ import annotations

import inspect
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["AgentProcess", "Scrape", "WaitTimeout", "describe"]

REPO = Path(__file__).resolve().parents[2]


class WaitTimeout(AssertionError):
    """A wait's condition never held: the test fails (an AssertionError, so pytest shows it as one)."""


def describe(predicate) -> str:
    """The source text of a condition, for a failure message."""
    try:
        return " ".join(inspect.getsource(predicate).split())
    except (OSError, TypeError):
        return getattr(predicate, "__qualname__", repr(predicate))


class Scrape:
    """One /metrics page, parsed by prometheus_client's own parser."""

    def __init__(self, text: str):
        self.text = text
        self.samples = [s for fam in text_string_to_metric_families(text) for s in fam.samples]

    def series(self, name: str, **match: str) -> list[tuple[dict[str, str], float]]:
        return [
            (s.labels, s.value)
            for s in self.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in match.items())
        ]

    def value(self, name: str, **match: str) -> float:
        """Sum of the matching series; 0 when there is none."""
        return sum(v for _, v in self.series(name, **match))


class AgentProcess:
    def __init__(self, *args: str, config: str | None = None, env: dict[str, str] | None = None,
                 prefix: list[str] | None = None):
        self.args = list(args)
        self.prefix = list(prefix or [])  # e.g. unshare/setpriv: commands that exec the agent
        self.config_path = None
        if config is not None:
            fd, self.config_path = tempfile.mkstemp(suffix=".yaml", prefix="podsight-test-")
            with os.fdopen(fd, "w") as f:
                f.write(config)
            self.args += ["--config", self.config_path]
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.url = ""
        self.log: list[str] = []  # stderr: logs and the banner
        self.stdout: list[str] = []  # stdout: security events, one JSON object per line

    def start(self, timeout: float = 20.0) -> "AgentProcess":
        if self.proc is not None and self.proc.poll() is None:
            # A second agent over the first would orphan it (its links, its
            # port): `with AgentProcess(...).start()` is a test bug.
            raise RuntimeError("AgentProcess.start(): already running; stop() it first")
        cmd = [*self.prefix, sys.executable, "-m", "podsight.cli", "run", "--listen", "127.0.0.1:0", *self.args]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=self.env, cwd=REPO
        )
        ready = threading.Event()

        def pump_log() -> None:
            for line in self.proc.stderr:
                self.log.append(line.rstrip())
                m = re.search(r"serving (http://\S+)/metrics", line)
                if m:
                    self.url = m.group(1)
                    ready.set()

        def pump_out() -> None:
            for line in self.proc.stdout:
                self.stdout.append(line.rstrip())

        threading.Thread(target=pump_log, daemon=True).start()
        threading.Thread(target=pump_out, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not ready.is_set():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("agent did not start:\n" + "\n".join(self.log))
            ready.wait(0.05)
        return self

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=10) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def scrape(self) -> Scrape:
        status, body = self.get("/metrics")
        assert status == 200, body
        return Scrape(body)

    def wait_for(self, predicate, timeout: float = 15.0, interval: float = 0.3, what: str = "") -> Scrape:
        """Scrape until ``predicate(scrape)`` holds and return that scrape.

        A timeout fails the test, naming the condition (``what``, else the
        predicate's source line): a check after a wait that never held must
        not pass by accident.
        """
        deadline = time.monotonic() + timeout
        while True:
            s = self.scrape()
            if predicate(s):
                return s
            if time.monotonic() > deadline:
                tail = "\n".join(self.log[-15:])
                raise WaitTimeout(f"waited {timeout:g} s for {what or describe(predicate)}; it never held\n"
                                  f"agent log, last lines:\n{tail}")
            time.sleep(interval)

    def events(self) -> list[dict]:
        """Security events printed so far (every stdout line must be JSON)."""
        return [json.loads(line) for line in list(self.stdout) if line.strip()]

    def wait_events(self, predicate, timeout: float = 10.0, what: str = "") -> list[dict]:
        """Events matching ``predicate``, once there is at least one; a timeout fails the test."""
        deadline = time.monotonic() + timeout
        while True:
            found = [e for e in self.events() if predicate(e)]
            if found:
                return found
            if time.monotonic() > deadline:
                raise WaitTimeout(f"waited {timeout:g} s for an event with {what or describe(predicate)}; none came")
            time.sleep(0.1)

    def send_signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 5.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.config_path:
            os.unlink(self.config_path)
            self.config_path = None
        return self.proc.returncode

    def __enter__(self) -> "AgentProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
