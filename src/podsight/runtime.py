"""Wires the agent's parts together in the order that keeps bad input harmless.

``Runtime(cfg)`` does everything that can fail on input (bind the listen
address, read rule files, reach the cgroup tree) without touching the kernel;
``start()`` then attaches.  ``stop()`` detaches everything.
"""
from __future__ import annotations

import logging
import os

from .agent import Agent
from .config import Config, parse_listen
from .exporters.http import MetricsServer
from .exporters.prometheus import MetricsRenderer
from .kernel.mounts import MountError, tracefs_root

__all__ = ["Runtime", "StartupError"]

log = logging.getLogger("podsight.runtime")


class StartupError(RuntimeError):
    pass


def _kubernetes_wanted(cfg: Config) -> bool:
    if cfg.kubernetes.enabled == "false":
        return False
    if cfg.kubernetes.enabled == "true":
        return True
    return bool(cfg.kubernetes.kubeconfig or os.environ.get("KUBERNETES_SERVICE_HOST"))


class Runtime:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.pods = None
        self.sink = None
        self.events = None
        self.security_probe = None
        try:
            self.agent = Agent(cfg)
            if cfg.probes.tcp.enabled or cfg.security.enabled:
                # Mounted (or found) now, before any program is loaded: a node
                # where we may not mount it stops here with nothing attached.
                tracefs_root()
        except MountError as e:
            raise StartupError(str(e)) from None
        if cfg.security.enabled:
            self._load_security()
        if _kubernetes_wanted(cfg):
            from .identity.kubeconfig import KubeConfigError
            from .identity.pods import PodWatcher

            try:
                self.pods = PodWatcher(
                    self.agent.node,
                    cfg.kubernetes.kubeconfig or None,
                    on_change=self.agent.labeler.invalidate,
                )
            except KubeConfigError as e:
                raise StartupError(f"kubernetes: {e}") from None
            self.agent.pods = self.pods
            self.agent.labeler.pods = self.pods
        self.renderer = MetricsRenderer(self.agent, self)
        host, port = parse_listen(cfg.listen)
        try:
            self.server = MetricsServer(host, port, self.renderer.render, self.readiness)
        except OSError as e:
            raise StartupError(f"cannot listen on {cfg.listen}: {e.strerror}") from None
        self.port = self.server.port

    def _load_security(self) -> None:
        """Rules are read and compiled before anything is attached: a bad file stops us here."""
        from .kernel.probes import SecurityProbe
        from .security.kernel_filter import kernel_filter
        from .security.rules import RuleError, config_lists, load_rules

        from .exporters.events import EventSink, ProcessInfo
        from .security.aggregate import Aggregator

        try:
            self.rules = load_rules(self.cfg.security.rules_files, config_lists(self.cfg))
        except RuleError as e:
            raise StartupError(f"security rules: {e}") from None
        out = self.cfg.security.output
        try:
            self.sink = EventSink(self.rules, self.agent.identity_of, ProcessInfo(self.cfg.security.proc_root),
                                  stdout=out.stdout, file=out.file,
                                  aggregator=Aggregator(out.aggregate.window, out.aggregate.max_lines))
        except OSError as e:
            raise StartupError(f"security.output.file {out.file!r}: {e.strerror}") from None
        self.security_probe = SecurityProbe(kernel_filter(self.rules))
        self.agent.probes["security"] = self.security_probe

    def _start_security(self) -> None:
        from .reader.events import EventReader

        probe = self.security_probe
        if probe is None or not probe.up:
            return
        probe.set_pod_roots(self.agent.pod_roots())
        self.agent.after_scan.append(lambda: probe.set_pod_roots(self.agent.pod_roots()))
        self.events = EventReader(probe.obj.maps["security_events"].fd, self.sink.handle, self.sink.flush)
        self.events.start()

    def start(self) -> None:
        self.agent.start()
        self._start_security()
        if self.pods is not None:
            self.pods.start()
        self.server.start()

    def stop(self) -> None:
        self.server.stop()
        if self.pods is not None:
            self.pods.stop()
        if self.events is not None:
            self.events.stop()
        self.agent.stop()
        if self.sink is not None:
            self.sink.close()

    def readiness(self) -> tuple[bool, str]:
        if not self.agent.started:
            return False, "starting: probes not attached yet"
        down = [name for name, p in self.agent.probes.items() if not p.up]
        notes = []
        if down:
            notes.append(f"probes unavailable: {', '.join(down)}")
        if self.pods is not None and not (self.pods.api_up and self.pods.synced):
            notes.append("kubernetes API unreachable, exporting with cgroup-derived labels")
        return True, ("degraded: " + "; ".join(notes)) if notes else "ready"

    def kubernetes_api_up(self) -> int | None:
        return None if self.pods is None else int(self.pods.api_up)
