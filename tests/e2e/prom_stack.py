"""Real Prometheus and Alertmanager processes for the end-to-end tests.

Both run from the Debian packages' binaries, listen on 127.0.0.1 only
(ephemeral ports), keep their data in the test's temp directory, and are
stopped when the test ends, pass or fail. Prometheus scrapes and evaluates
every second so a test sees scrapes, recording rules and alerts within
seconds.
"""
from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

import prom_tools

SCRAPE_INTERVAL_S = 1
# What Grafana would use for $__rate_interval at a 1s scrape is 4s; 15s keeps
# a few samples in every window even when a scrape is late on a busy 2-core box.
RATE_INTERVAL = "15s"


def free_port() -> int:
    """An unused 127.0.0.1 port. The tiny race until the process binds it is
    caught by the start-up wait, which reports the process's own error."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_json(url: str, data: bytes | None = None, timeout: float = 10) -> dict | list:
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"} if data else {})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read() or b"null")


class Process:
    """A child process with its output in a log file, stopped by stop()."""

    def __init__(self, name: str, argv: list[str], log: Path) -> None:
        self.name, self.argv, self.log = name, argv, log
        self._log_file = open(log, "wb")
        self.proc = subprocess.Popen(argv, stdout=self._log_file, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def wait_ready(self, url: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode} before it was ready; "
                                   f"command {self.argv}\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready at {url} after {timeout}s\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            # Our own child, by pid (its own session, so nothing else is hit).
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._log_file.close()


def start_service(binary: str, workdir: Path, config: dict, url: str, args: list[str]) -> tuple[Path, "Process"]:
    """Write ``config`` as YAML in ``workdir``, start ``binary`` on it, wait for /-/ready."""
    workdir.mkdir(parents=True, exist_ok=True)
    config_file = workdir / f"{binary}.yml"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    process = Process(binary, [prom_tools.require(binary), f"--config.file={config_file}", *args, "--log.level=info"],
                      workdir / f"{binary}.log")
    try:
        process.wait_ready(f"{url}/-/ready")
    except Exception:
        process.stop()
        raise
    return config_file, process


class Prometheus:
    def __init__(self, workdir: Path, scrape_jobs: dict[str, list[str]], rule_dirs: list[Path],
                 alertmanager: str | None, scrape_self: bool = False) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        if scrape_self:
            scrape_jobs = {**scrape_jobs, "prometheus": [f"127.0.0.1:{self.port}"]}
        config = {
            "global": {"scrape_interval": f"{SCRAPE_INTERVAL_S}s", "scrape_timeout": f"{SCRAPE_INTERVAL_S}s",
                       "evaluation_interval": f"{SCRAPE_INTERVAL_S}s"},
            "rule_files": [str(d / "*.yaml") for d in rule_dirs],
            # honor_labels: the agent's own namespace/pod labels describe the
            # workload and must not be renamed exported_* (same setting the
            # chart's ServiceMonitor needs).
            "scrape_configs": [{"job_name": job, "honor_labels": True,
                                "static_configs": [{"targets": targets}]}
                               for job, targets in scrape_jobs.items()],
        }
        if alertmanager:
            config["alerting"] = {"alertmanagers": [
                {"api_version": "v2", "static_configs": [{"targets": [alertmanager]}]}]}
        self.config_file, self.process = start_service(
            "prometheus", workdir, config, self.url,
            [f"--storage.tsdb.path={workdir / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}",
             "--rules.alert.resend-delay=1s"])

    def stop(self) -> None:
        self.process.stop()

    def api(self, path: str, **params) -> dict:
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            body = http_json(url)
        except urllib.error.HTTPError as exc:
            body = json.loads(exc.read() or b"{}")
            raise PromQueryError(f"{path} {params}: HTTP {exc.code}: {body.get('error', body)}") from exc
        if body.get("status") != "success":
            raise PromQueryError(f"{path} {params}: {body}")
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        return self.api("query", query=expr)["result"]

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict]:
        return self.api("query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}", step=f"{step}")["result"]

    def rule_groups(self) -> list[dict]:
        return self.api("rules")["groups"]

    def wait_for(self, expr: str, timeout: float) -> list[dict]:
        """Poll an instant query until it returns something; [] on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(expr)
            if result or time.monotonic() > deadline:
                return result
            time.sleep(0.5)


class PromQueryError(AssertionError):
    pass


def finite_points(result: list[dict]) -> int:
    """Number of non-NaN, non-Inf samples in a query/query_range result."""
    n = 0
    for series in result:
        values = series.get("values") or ([series["value"]] if "value" in series else [])
        n += sum(1 for _, v in values if math.isfinite(float(v)))
    return n


def alertmanager_test_config(example: Path, webhook_base: str) -> dict:
    """The shipped example config, made testable: every receiver's webhook
    goes to `<webhook_base>/<receiver name>` and every route waits 1s instead
    of tens of seconds. Routing, matchers, grouping and inhibition stay as
    shipped, so the test exercises the documented routing."""
    config = yaml.safe_load(example.read_text())
    for receiver in config["receivers"]:
        hooks = receiver.get("webhook_configs")
        if not hooks:
            raise AssertionError(f"{example}: receiver {receiver['name']} has no webhook_configs to redirect")
        for hook in hooks:
            hook["url"] = f"{webhook_base}/{receiver['name']}"

    def fast(route: dict) -> None:
        for key in ("group_wait", "group_interval"):
            if key in route or route is config["route"]:
                route[key] = "1s"
        for child in route.get("routes", []):
            fast(child)
    fast(config["route"])
    return config


class Alertmanager:
    def __init__(self, workdir: Path, config: dict) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.address = f"127.0.0.1:{self.port}"
        self.config_file, self.process = start_service(
            "prometheus-alertmanager", workdir, config, self.url,
            [f"--storage.path={workdir / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}",
             # An empty address disables the gossip cluster (it would bind 0.0.0.0:9094).
             "--cluster.listen-address="])

    def stop(self) -> None:
        self.process.stop()

    def post_alerts(self, alerts: list[dict]) -> None:
        http_json(f"{self.url}/api/v2/alerts", data=json.dumps(alerts).encode())

    def alerts(self) -> list[dict]:
        return http_json(f"{self.url}/api/v2/alerts")
