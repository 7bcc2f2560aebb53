"""Probe families: which object, which programs, attached where.

A probe that cannot start on this kernel reports ``up == False`` with the
reason, and the agent runs on without it.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field

from ..config import Config
from . import mounts
from .layouts import TcpConfig
from .loader import BpfObject

__all__ = ["Probe", "NetworkProbe", "TcpProbe", "ProgramStats", "program_stats"]

log = logging.getLogger("podsight.probes")


@dataclass
class Probe:
    name: str
    obj_name: str
    up: bool = False
    error: str = ""
    obj: BpfObject | None = field(default=None, repr=False)

    def configure(self, obj: BpfObject, cfg: Config) -> None:
        """Set load-time knobs (``const volatile``) and map sizes before load."""

    def attach(self, obj: BpfObject, cfg: Config, cgroup_root: str) -> None:
        raise NotImplementedError

    def status(self) -> dict[str, bool]:
        """``podsight_probe_up`` values: probe (or probe part) name → attached."""
        return {self.name: self.up}

    def start(self, cfg: Config, cgroup_root: str) -> bool:
        obj = None
        try:
            obj = BpfObject(self.obj_name)
            self.configure(obj, cfg)
            obj.load()
            self.attach(obj, cfg, cgroup_root)
        except (OSError, ValueError) as e:
            if obj is not None:
                obj.close()
            self.up, self.error = False, str(e)
            log.warning("probe %s unavailable: %s", self.name, e)
            return False
        self.obj, self.up, self.error = obj, True, ""
        log.info("probe %s attached (%d links)", self.name, len(obj.links))
        return True

    def stop(self) -> None:
        if self.obj is not None:
            self.obj.close()
            self.obj = None
        self.up = False


class NetworkProbe(Probe):
    """cgroup_skb ingress/egress on the cgroup v2 root: bytes and packets per cgroup."""

    def __init__(self) -> None:
        super().__init__("network", "network")

    def attach(self, obj: BpfObject, cfg: Config, cgroup_root: str) -> None:
        obj.attach_cgroup("network_ingress", cgroup_root)
        obj.attach_cgroup("network_egress", cgroup_root)


class TcpProbe(Probe):
    """Tracepoints for TCP health.  Parts whose tracepoint this kernel lacks
    stay unattached and report up=0; the other parts run."""

    PARTS = {
        "tcp": {
            "tcp_state": "sock/inet_sock_set_state",
            "tcp_retransmit": "tcp/tcp_retransmit_skb",
            "tcp_send_reset": "tcp/tcp_send_reset",
            "tcp_receive_reset": "tcp/tcp_receive_reset",
        },
        "tcp_rtt": {"tcp_rtt": "tcp/tcp_probe"},
        "network_drops": {"skb_drop": "skb/kfree_skb"},
    }

    def __init__(self) -> None:
        super().__init__("tcp", "tcp")
        self.parts: dict[str, bool] = {part: False for part in self.PARTS}

    def configure(self, obj: BpfObject, cfg: Config) -> None:
        obj.set_config(TcpConfig(int(cfg.probes.tcp.srtt_sample_interval * 1e9)))
        events = os.path.join(mounts.tracefs_root(), "events")
        self._present = {}
        for part, progs in self.PARTS.items():
            for prog, tp in progs.items():
                ok = os.path.isdir(os.path.join(events, tp))
                self._present[prog] = ok
                if not ok:
                    log.warning("tracepoint %s missing on this kernel: %s part disabled", tp, part)
                    obj.set_autoload(prog, False)

    def attach(self, obj: BpfObject, cfg: Config, cgroup_root: str) -> None:
        for part, progs in self.PARTS.items():
            ok = True
            for prog in progs:
                if not self._present[prog]:
                    ok = False
                    continue
                try:
                    obj.attach(prog)
                except OSError as e:
                    log.warning("cannot attach %s: %s", prog, e)
                    ok = False
            self.parts[part] = ok
        if not self.parts["tcp"]:
            raise OSError(f"tcp lifecycle tracepoints unavailable: {self.parts}")

    def status(self) -> dict[str, bool]:
        return {part: self.up and ok for part, ok in self.parts.items()}


@dataclass(frozen=True)
class ProgramStats:
    run_count: int
    run_time_ns: int


_FDINFO = re.compile(r"^(run_time_ns|run_cnt):\s+(\d+)$", re.M)


def program_stats(prog_fd: int) -> ProgramStats | None:
    """The kernel's own cost accounting for one program (needs BPF stats enabled)."""
    try:
        with open(f"/proc/self/fdinfo/{prog_fd}") as f:
            text = f.read()
    except OSError:
        return None
    vals = dict(_FDINFO.findall(text))
    if not vals:
        return None
    return ProgramStats(int(vals.get("run_cnt", 0)), int(vals.get("run_time_ns", 0)))

