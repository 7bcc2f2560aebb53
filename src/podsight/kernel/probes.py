"""Probe families: which object, which programs, attached where.

A probe that cannot start on this kernel reports ``up == False`` with the
reason, and the agent runs on without it.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field, replace

from ..config import Config
from . import mounts
from .drop_reasons import drop_reasons
from .layouts import (CLAUSE_COMM, CLAUSE_PATH, CLAUSE_READ, CLAUSE_WRITE, DROP_REASON_WORDS, SEC_CLAUSES, SEC_FAMILIES,
                      SEC_KINDS, SEC_MATCH_COMMS, SEC_MATCH_PATH_LEN, SEC_MATCH_PATHS, SEC_REQUESTS, PodRoot,
                      SecClause, SecMatchComm, SecMatchPath, SecurityConfig, TcpConfig)
from .loader import BpfObject

__all__ = ["Probe", "NetworkProbe", "TcpProbe", "SecurityProbe", "ProgramStats", "fit_clauses", "program_stats",
           "security_config", "tcp_config"]

log = logging.getLogger("podsight.probes")


@dataclass
class Probe:
    name: str
    obj_name: str
    up: bool = False
    error: str = ""
    obj: BpfObject | None = field(default=None, repr=False)
    sample_interval: float = 0.0  # seconds between sample() calls; 0: never

    def configure(self, obj: BpfObject, cfg: Config) -> None:
        """Set load-time knobs (``const volatile``) and map sizes before load."""

    def attach(self, obj: BpfObject, cfg: Config, cgroup_root: str) -> None:
        raise NotImplementedError

    def status(self) -> dict[str, bool]:
        """``podsight_probe_up`` values: probe (or probe part) name → attached."""
        return {self.name: self.up}

    def sample(self) -> None:
        """Periodic in-kernel work the agent drives (every ``sample_interval`` s)."""

    def optional_programs(self) -> set[str]:
        """Programs whose refusal at load takes down only their own part:
        the object is loaded again without them."""
        return set()

    def refused(self, programs: set[str]) -> None:
        """The kernel refused ``programs`` at load (the object was loaded without them)."""

    def _open(self, cfg: Config, without: set[str]) -> BpfObject:
        obj = BpfObject(self.obj_name)
        try:
            self.configure(obj, cfg)
            for prog in without:
                obj.set_autoload(prog, False)
        except BaseException:
            obj.close()
            raise
        return obj

    def start(self, cfg: Config, cgroup_root: str) -> bool:
        obj = None
        try:
            obj = self._open(cfg, set())
            try:
                obj.load()
            except OSError as e:
                optional = {p for p in self.optional_programs() if obj.autoload(p)}
                if not optional:
                    raise
                # A kernel may refuse one kind of program (seen: iterators, EPERM)
                # and take the rest: lose only the part that needs it.
                obj.close()
                obj = self._open(cfg, optional)
                obj.load()
                self.refused(optional)
                log.warning("probe %s: %s refused by this kernel (%s); loaded without", self.name,
                            ", ".join(sorted(optional)), e)
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
    """Tracepoints for TCP health.  Parts whose tracepoint this kernel lacks,
    or whose program it refuses, stay unattached and report up=0; the other
    parts run."""

    RTT_SAMPLER = "tcp_rtt_sample"
    PARTS = {
        "tcp": {
            "tcp_state": "sock/inet_sock_set_state",
            "tcp_retransmit": "tcp/tcp_retransmit_skb",
            "tcp_send_reset": "tcp/tcp_send_reset",
            "tcp_receive_reset": "tcp/tcp_receive_reset",
        },
        "tcp_rtt": {RTT_SAMPLER: None},  # run by the agent, attached nowhere
        "network_drops": {"skb_drop": "skb/kfree_skb"},
    }

    def __init__(self) -> None:
        super().__init__("tcp", "tcp")
        self.parts: dict[str, bool] = {part: False for part in self.PARTS}
        self.drop_reasons: dict[int, str] = {}  # this kernel's numbering

    def configure(self, obj: BpfObject, cfg: Config) -> None:
        self.sample_interval = float(cfg.probes.tcp.srtt_sample_interval)
        obj.set_max_entries("tcp_socks", cfg.probes.tcp.max_tracked_connections)
        tracefs = mounts.tracefs_root()
        self.drop_reasons = drop_reasons(tracefs)
        obj.set_config(tcp_config(cfg.probes.tcp.ignored_drop_reasons, self.drop_reasons))
        events = os.path.join(tracefs, "events")
        self._present = {}
        for part, progs in self.PARTS.items():
            for prog, tp in progs.items():
                ok = tp is None or os.path.isdir(os.path.join(events, tp))
                self._present[prog] = ok
                if not ok:
                    log.warning("%s missing on this kernel: %s part disabled", tp, part)
                    obj.set_autoload(prog, False)

    def optional_programs(self) -> set[str]:
        return {self.RTT_SAMPLER}

    def refused(self, programs: set[str]) -> None:
        for prog in programs:
            self._present[prog] = False

    def attach(self, obj: BpfObject, cfg: Config, cgroup_root: str) -> None:
        for part, progs in self.PARTS.items():
            ok = True
            for prog, tp in progs.items():
                if not self._present[prog]:
                    ok = False
                elif tp is not None:
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

    def sample(self) -> None:
        if self.up and self.parts["tcp_rtt"]:
            self.obj.run(self.RTT_SAMPLER)


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



class SecurityProbe(Probe):
    """Syscall tracepoints for security events; kinds no rule needs stay unattached."""

    # program → (kind, tracepoint)
    PROGRAMS = {
        "sec_exec": ("exec", "sched/sched_process_exec"),
        "sec_open": ("open", "syscalls/sys_enter_open"),
        "sec_open_exit": ("open", "syscalls/sys_exit_open"),
        "sec_creat": ("open", "syscalls/sys_enter_creat"),
        "sec_creat_exit": ("open", "syscalls/sys_exit_creat"),
        "sec_openat": ("open", "syscalls/sys_enter_openat"),
        "sec_openat_exit": ("open", "syscalls/sys_exit_openat"),
        "sec_openat2": ("open", "syscalls/sys_enter_openat2"),
        "sec_openat2_exit": ("open", "syscalls/sys_exit_openat2"),
        "sec_chmod": ("chmod", "syscalls/sys_enter_chmod"),
        "sec_chmod_exit": ("chmod", "syscalls/sys_exit_chmod"),
        "sec_fchmodat": ("chmod", "syscalls/sys_enter_fchmodat"),
        "sec_fchmodat_exit": ("chmod", "syscalls/sys_exit_fchmodat"),
        "sec_fchmodat2": ("chmod", "syscalls/sys_enter_fchmodat2"),
        "sec_fchmodat2_exit": ("chmod", "syscalls/sys_exit_fchmodat2"),
        "sec_fchmod": ("chmod", "syscalls/sys_enter_fchmod"),
        "sec_fchmod_exit": ("chmod", "syscalls/sys_exit_fchmod"),
        "sec_ptrace": ("ptrace", "syscalls/sys_enter_ptrace"),
        "sec_ptrace_exit": ("ptrace", "syscalls/sys_exit_ptrace"),
        "sec_connect": ("connect", "syscalls/sys_enter_connect"),
        "sec_connect_exit": ("connect", "syscalls/sys_exit_connect"),
    }

    def __init__(self, kfilter: dict) -> None:
        super().__init__("security", "security")
        self.kfilter = kfilter
        self.kinds = set(kfilter.get("kinds", []))

    def configure(self, obj: BpfObject, cfg: Config) -> None:
        obj.set_config(security_config(self.kfilter, cfg))
        obj.set_max_entries("security_events", cfg.security.ringbuf_size_kb * 1024)
        events = os.path.join(mounts.tracefs_root(), "events")
        self._attach = []
        for prog, (kind, tp) in self.PROGRAMS.items():
            if kind in self.kinds and os.path.isdir(os.path.join(events, tp)):
                self._attach.append(prog)
            else:
                obj.set_autoload(prog, False)

    def attach(self, obj: BpfObject, cfg: Config, cgroup_root: str) -> None:
        for prog in self._attach:
            obj.attach(prog)

    def set_pod_roots(self, roots: list[tuple[int, int]]) -> None:
        """(cgroup id, depth) of each kubepods directory: the in-kernel "in a pod?" test."""
        if self.obj is None:
            return
        m = self.obj.maps["pod_roots"]
        for i in range(m.max_entries):
            cid, level = roots[i] if i < len(roots) else (0, 0)
            m.update(i.to_bytes(4, "little"), bytes(PodRoot(cid, level)))


def tcp_config(ignored: list[str], reasons: dict[int, str]) -> TcpConfig:
    """tcp.bpf.c's config: the ignored drop reasons as a bitmap of this
    kernel's numbers.  A name this kernel does not have cannot occur here
    (one config serves nodes on different kernels), so it is only logged."""
    tc = TcpConfig()
    number = {name: n for n, name in reasons.items()}
    for name in ignored:
        n = number.get(name)
        if n is None:
            if reasons:
                log.warning("probes.tcp.ignored_drop_reasons: %s is not a drop reason of this kernel", name)
        elif n >= DROP_REASON_WORDS * 64:
            log.warning("probes.tcp.ignored_drop_reasons: %s (%d) is beyond the first %d reasons and stays counted",
                        name, n, DROP_REASON_WORDS * 64)
        else:
            tc.ignored_drop_reasons[n // 64] |= 1 << (n % 64)
    return tc


def security_config(kf: dict, cfg: Config) -> SecurityConfig:
    """The kernel filter derived from the rules, as security.bpf.c's config struct."""
    sc = SecurityConfig()
    sc.rate_per_sec = cfg.security.rate_limit.events_per_second
    sc.burst = cfg.security.rate_limit.burst
    sc.guard_per_sec = cfg.security.guard.events_per_second
    sc.guard_burst = cfg.security.guard.burst
    sc.include_host = int(cfg.security.include_host or not kf.get("pods_only", True))
    clauses = fit_clauses(kf.get("clauses", []), SEC_CLAUSES)
    paths: dict[tuple[bytes, bool], int] = {}
    comms: dict[bytes, list[int]] = {}  # comm → [include, exclude]
    for k, c in enumerate(clauses):
        bit = 1 << k
        sc.kind_clauses[SEC_KINDS.index(c.kind)] |= bit
        need = (CLAUSE_READ if c.read else 0) | (CLAUSE_WRITE if c.write else 0)
        entries = [_path_entry(p, exact) for p, exact in c.paths or ()]
        if c.paths is not None and len(set(paths) | set(entries)) <= SEC_MATCH_PATHS:
            need |= CLAUSE_PATH
            for e in entries:
                paths[e] = paths.get(e, 0) | bit
        names = [n.encode() for n in c.comms or ()]
        if c.comms is not None and len(set(comms) | set(names)) <= SEC_MATCH_COMMS:
            need |= CLAUSE_COMM
            for n in names:
                comms.setdefault(n, [0, 0])[0] |= bit
        for n in (n.encode() for n in c.comm_out):  # an exclusion that does not fit only widens
            if n in comms or len(comms) < SEC_MATCH_COMMS:
                comms.setdefault(n, [0, 0])[1] |= bit
        sc.clauses[k] = SecClause(SEC_KINDS.index(c.kind), need, c.mode_any)
    sc.n_clauses = len(clauses)
    for i, ((raw, exact), mask) in enumerate(paths.items()):
        sc.paths[i] = SecMatchPath(mask, len(raw), int(exact), 0, raw)
    sc.n_paths = len(paths)
    for i, (raw, (include, exclude)) in enumerate(comms.items()):
        sc.comms[i] = SecMatchComm(include, exclude, raw)
    sc.n_comms = len(comms)
    requests = (kf.get("ptrace") or {}).get("requests")
    if requests and len(requests) <= SEC_REQUESTS:
        sc.n_requests = len(requests)
        for i, r in enumerate(requests):
            sc.requests[i] = r
    families = (kf.get("connect") or {}).get("families")
    if families and len(families) <= SEC_FAMILIES:
        sc.n_families = len(families)
        for i, f in enumerate(families):
            sc.families[i] = f
    return sc


def _path_entry(path: str, exact: bool) -> tuple[bytes, bool]:
    """A path as the kernel compares it: one longer than the table holds is
    cut and compared as a prefix, which only widens the test."""
    raw = path.encode()
    if len(raw) >= SEC_MATCH_PATH_LEN:
        return raw[: SEC_MATCH_PATH_LEN - 1], False
    return raw, exact


def fit_clauses(clauses: list, slots: int) -> list:
    """At most ``slots`` clauses (podsight.security.kernel_filter.Clause)
    passing at least what ``clauses`` pass: those that do not fit become one
    unconstrained clause per kind."""
    if len(clauses) <= slots:
        return list(clauses)
    rest = {c.kind: c for c in reversed(clauses[slots - len(SEC_KINDS):])}
    log.warning("security rules need %d kernel filter clauses, %d fit: %s events are filtered less in the kernel",
                len(clauses), slots, ", ".join(rest))
    return list(clauses[: slots - len(SEC_KINDS)]) + [
        replace(c, rule="(widened)", paths=None, comms=None, comm_out=frozenset(), read=False, write=False, mode_any=0)
        for c in rest.values()]
