"""bpf/security.bpf.c: syscall tracepoints filtered in the kernel by tables
derived from the rules; matches go to user space through a ring buffer
(podsight.agent.security reads them), losses are counted by reason."""
from __future__ import annotations

import logging
import os
from dataclasses import replace

from ...config import Config
from .. import mounts
from ..family import Family
from ..layouts import (CLAUSE_COMM, CLAUSE_PATH, CLAUSE_READ, CLAUSE_WRITE, SEC_CLAUSES, SEC_DROPS, SEC_FAMILIES,
                       SEC_KINDS, SEC_MATCH_COMMS, SEC_MATCH_PATH_LEN, SEC_MATCH_PATHS, SEC_REQUESTS, SEC_SYSCALLS,
                       PodRoot, SecClause, SecMatchComm, SecMatchPath, SecurityConfig, SecurityEvent)
from ..loader import BpfObject
from ..probes import Probe

__all__ = ["FAMILY", "SecurityProbe", "fit_clauses", "security_config"]

log = logging.getLogger("podsight.probes")


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

    def drops(self) -> dict[tuple[str, str], int]:
        """Events the kernel could not hand over, by (reason, event kind): security_drops decoded."""
        if self.obj is None:
            return {}
        m, n, out = self.obj.maps["security_drops"], len(SEC_KINDS), {}
        for i in range(n * len(SEC_DROPS)):
            per_cpu = m.lookup(i.to_bytes(4, "little"))
            total = sum(int.from_bytes(v[:8], "little") for v in per_cpu or ())
            if total:
                out[(SEC_DROPS[i // n], SEC_KINDS[i % n])] = total
        return out


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


FAMILY = Family(
    name="security",
    probe=SecurityProbe,
    programs={prog: tp for prog, (_kind, tp) in SecurityProbe.PROGRAMS.items()},
    maps=("security_events", "security_drops", "pod_roots"),
    structs={"security_event": SecurityEvent, "security_config": SecurityConfig, "sec_clause": SecClause,
             "sec_match_path": SecMatchPath, "sec_match_comm": SecMatchComm, "pod_root": PodRoot},
    enums={"sec_kind": ("SEC_", SEC_KINDS), "sec_syscall": ("SYSC_", SEC_SYSCALLS), "sec_drop": ("SEC_DROP_", SEC_DROPS)},
)
