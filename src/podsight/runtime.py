"""Wires the agent's parts together in the order that keeps bad input harmless.

``Runtime(cfg)`` does everything that can fail on input (bind the listen
address, read rule files, open the event output, reach the cgroup tree,
mount tracefs) without attaching anything; ``start()`` then attaches.
``stop()`` detaches everything.  Every part gets what it uses when it is
made; nothing is patched in afterwards.
"""
from __future__ import annotations

import logging
import os

from .agent import Agent
from .config import Config, parse_listen
from .exporters.http import MetricsServer
from .exporters.prometheus import MetricsRenderer
from .heartbeat import late
from .identity.labels import Labeler
from .identity.node import NodeIdentity, node_name
from .identity.resolver import CgroupResolver
from .kernel import mounts
from .kernel.families import COUNTER_FAMILIES

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
        node = node_name(cfg)
        try:
            cgroup_root = mounts.cgroup2_root(cfg.cgroup_root)
            if cfg.probes.tcp.enabled or cfg.security.enabled:
                # Mounted (or found) now, before any program is loaded: a node
                # where we may not mount it stops here with nothing attached.
                mounts.tracefs_root()
        except mounts.MountError as e:
            raise StartupError(str(e)) from None
        self.pods = self._pod_watcher(node) if _kubernetes_wanted(cfg) else None
        self.identity = NodeIdentity(node, CgroupResolver(cgroup_root, cfg.rescan_interval),
                                     Labeler(node, cfg.labels, self.pods), self.pods)
        self.security = self._security_pipeline() if cfg.security.enabled else None
        families = [f for f in COUNTER_FAMILIES if getattr(cfg.probes, f.name).enabled]
        self.cluster = self.nat = None
        flows = self._flow_pipeline() if cfg.flows.enabled and cfg.probes.tcp.enabled else None
        self.agent = Agent(self.identity, [f.probe() for f in families], cgroup_root=cgroup_root, cfg=cfg,
                           security=self.security, flows=flows)
        renderer = MetricsRenderer(self.identity.label_names, families, flows.label_names if flows else ())
        host, port = parse_listen(cfg.listen)
        try:
            self.server = MetricsServer(host, port, lambda gzip: renderer.render(self.agent.snapshot(), gzip),
                                        self.readiness, self.liveness)
        except OSError as e:
            raise StartupError(f"cannot listen on {cfg.listen}: {e.strerror}") from None
        self.port = self.server.port

    def _pod_watcher(self, node: str):
        from .identity.kubeconfig import KubeConfigError
        from .identity.pods import PodWatcher

        try:
            return PodWatcher(node, self.cfg.kubernetes.kubeconfig or None)
        except KubeConfigError as e:
            raise StartupError(f"kubernetes: {e}") from None

    def _flow_pipeline(self):
        """Peers are named from a cluster-wide watch (with Kubernetes) and
        Service backends from the host's conntrack (flows.conntrack)."""
        from .agent.flows import FlowPipeline
        from .identity.peers import PeerNamer

        if self.pods is not None:
            from .identity.cluster import ClusterIndex
            from .identity.kubeconfig import KubeConfigError

            try:
                self.cluster = ClusterIndex(self.cfg.kubernetes.kubeconfig or None, zone_label=self.cfg.flows.zone_label)
            except KubeConfigError as e:
                raise StartupError(f"kubernetes: {e}") from None
        if self.cfg.flows.conntrack:
            from .reader.conntrack import NatTable

            self.nat = NatTable()
        cluster = self.cluster
        return FlowPipeline(self.cfg.flows, self.identity, PeerNamer(self.cfg.flows, cluster, self.nat, self.identity.node),
                            zone=(cluster.zone if cluster is not None else (lambda _node: "")))

    def _security_pipeline(self):
        """Rules are read and compiled, and the output opened, before anything is attached."""
        from .agent.security import SecurityPipeline
        from .exporters.event_output import EventOutput
        from .security.rules import RuleError, config_lists, load_rules

        try:
            rules = load_rules(self.cfg.security.rules_files, config_lists(self.cfg))
        except RuleError as e:
            raise StartupError(f"security rules: {e}") from None
        out = self.cfg.security.output
        try:
            output = EventOutput.from_config(out.stdout, out.file, out.http)
        except OSError as e:
            raise StartupError(f"security.output.file {out.file!r}: {e.strerror}") from None
        return SecurityPipeline(self.cfg, rules, self.identity, output)

    def start(self) -> None:
        self.agent.start()
        if self.pods is not None:
            self.pods.start()
        if self.cluster is not None:
            self.cluster.start()
        if self.nat is not None:
            try:
                self.nat.start()
            except OSError as e:
                # Service connections keep the Service's name, without a backend.
                log.warning("flows: conntrack unavailable, Service backends are not named: %s", e)
        self.server.start()

    def stop(self) -> None:
        self.server.stop()
        if self.nat is not None:
            self.nat.stop()
        if self.cluster is not None:
            self.cluster.stop()
        if self.pods is not None:
            self.pods.stop()
        self.agent.stop()

    def liveness(self) -> tuple[bool, str]:
        """Alive while every background thread keeps its promise of progress."""
        beats = self.agent.heartbeats() + ([self.pods.heartbeat] if self.pods is not None else [])
        beats += [self.cluster.heartbeat] if self.cluster is not None else []
        stuck = late(beats)
        return (False, "stuck: " + "; ".join(stuck)) if stuck else (True, "ok")

    def readiness(self) -> tuple[bool, str]:
        if not self.agent.started:
            return False, "starting: probes not attached yet"
        down = self.agent.probes_down()
        notes = []
        if down:
            notes.append(f"probes unavailable: {', '.join(down)}")
        if self.pods is not None and not (self.pods.api_up and self.pods.synced):
            notes.append("kubernetes API unreachable, exporting with cgroup-derived labels")
        if self.cluster is not None and not (self.cluster.api_up and self.cluster.synced):
            notes.append("cluster watch (flow peers) not synced: peers may show as external")
        if self.nat is not None and not self.nat.up:
            notes.append("conntrack unavailable: Service backends are not named")
        return True, ("degraded: " + "; ".join(notes)) if notes else "ready"
