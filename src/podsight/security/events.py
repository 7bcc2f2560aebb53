"""Turn a rule match into one JSON object for SIEM pipelines.  Pure; no I/O.

Shape (published as ``event.schema.json``, documented in docs/security.md)::

    {"time": "2026-11-26T06:05:36.123456789Z", "rule": ..., "severity": ...,
     "summary": "human sentence", "tags": [...], "event": "open",
     "node", "namespace", "pod", "container", "image", "workload", ...,
     "process": {"pid", "tid", "name", "exe", "args", "cwd", "uid", "gid"},
     "parent": {"pid", "name"},
     "syscall": {"name", "path", "flags", "mode", "request", "target_pid",
                 "family", "dst_ip", "dst_port", "return_code", "error"}}

Kubernetes names sit at the top level with kube-state-metrics' names so a
log pipeline can join them with metrics; arguments are always redacted.
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Mapping

from .fields import FIELDS, EventView
from .model import RawEvent
from .names import errno_name, family_name, mode_string, open_flag_names, ptrace_request_name
from .redact import redact_args, redact_text
from .rules import Rule

__all__ = ["SCHEMA_PATH", "build_event", "event_json", "rfc3339_ns", "summary"]

SCHEMA_PATH = Path(__file__).with_name("event.schema.json")

_DEFAULT_SYSCALL = {"exec": "execve", "open": "openat", "chmod": "chmod", "ptrace": "ptrace", "connect": "connect"}
_IDENTITY_STR = ("node", "namespace", "pod", "container", "image", "workload", "workload_kind",
                 "pod_uid", "container_id", "host_cgroup")
_PLACEHOLDER_RE = re.compile(r"\{([A-Za-z0-9_.]+)\}")
_SUMMARY_ARGS_MAX = 256  # keep the sentence readable; the full argv is in process.args


def rfc3339_ns(ts_ns: int) -> str:
    """Nanoseconds since the epoch → ``2026-11-26T06:05:36.123456789Z``."""
    secs, ns = divmod(int(ts_ns), 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{ns:09d}Z"


def _where(idn: Mapping[str, object]) -> str:
    if idn.get("in_pod"):
        ns, pod, ctr = (str(idn.get(k) or "") for k in ("namespace", "pod", "container"))
        if ns or pod:
            return f"in pod {ns}/{pod}" + (f" container {ctr}" if ctr else "")
        return f"in pod uid {idn.get('pod_uid') or '?'} container {idn.get('container_id') or '?'}"
    return f"on the host ({idn.get('host_cgroup') or '/'})"


def _action(ev: RawEvent, path: str, args: list[str]) -> str:
    if ev.kind == "exec":
        cmd = " ".join(args)
        if len(cmd) > _SUMMARY_ARGS_MAX:
            cmd = cmd[:_SUMMARY_ARGS_MAX] + "…"
        return f"executed {path or ev.exe} ({cmd})" if cmd else f"executed {path or ev.exe}"
    if ev.kind == "open":
        acc = {0: "reading", 1: "writing", 2: "reading and writing"}.get(ev.flags & 3, "access")
        return f"opened {path} for {acc}"
    if ev.kind == "chmod":
        return f"set mode {mode_string(ev.mode)} on {path or 'an open file'}"
    if ev.kind == "ptrace":
        return f"called ptrace {ptrace_request_name(ev.ptrace_request)} on pid {ev.target_pid}"
    if ev.kind == "connect":
        host = f"[{ev.dst_ip}]" if ":" in ev.dst_ip else ev.dst_ip
        return f"connected to {host}:{ev.dst_port}"
    return ev.kind


def _field_text(name: str, view: EventView, args: list[str], rule: Rule) -> str:
    ev = view.ev
    special = {
        "rule": lambda: rule.name,
        "severity": lambda: rule.severity,
        "process.args": lambda: " ".join(args[1:]),
        "process.cmdline": lambda: " ".join(args),
        "path": lambda: redact_text(view.path),
        "open.flags": lambda: "|".join(open_flag_names(ev.flags)),
        "mode": lambda: mode_string(ev.mode),
        "ptrace.request": lambda: ptrace_request_name(ev.ptrace_request),
        "dst.ip": lambda: ev.dst_ip,
        "dst.family": lambda: family_name(ev.family),
    }
    if name in special:
        return special[name]()
    fld = FIELDS.get(name)
    return "" if fld is None else str(fld.get(view))


def summary(rule: Rule, view: EventView, args: list[str]) -> str:
    """The rule's ``summary`` template filled in, or a generated sentence."""
    if rule.summary:
        return _PLACEHOLDER_RE.sub(lambda m: _field_text(m.group(1), view, args, rule), rule.summary)
    ev, idn = view.ev, view.idn
    text = (f"{rule.name}: {ev.comm or '?'} (pid {ev.pid}, uid {ev.uid}, parent "
            f"{ev.parent_comm or '?'}) {_action(ev, redact_text(view.path), args)} {_where(idn)}")
    if ev.ret < 0:
        text += f"; it failed with {errno_name(ev.ret)}"
    return text


def _syscall_fields(ev: RawEvent, path: str) -> dict[str, object]:
    out: dict[str, object] = {"name": ev.syscall or _DEFAULT_SYSCALL.get(ev.kind, ev.kind)}
    if ev.kind in ("exec", "open", "chmod"):
        out["path"] = path
    if ev.kind == "open":
        out["flags"] = open_flag_names(ev.flags)
        if ev.flags & 0o100 or ev.flags & 0o20000000:  # O_CREAT / O_TMPFILE: mode is used
            out["mode"] = mode_string(ev.mode)
    if ev.kind == "chmod":
        out["mode"] = mode_string(ev.mode)
    if ev.kind == "ptrace":
        out["request"] = ptrace_request_name(ev.ptrace_request)
        out["target_pid"] = ev.target_pid
    if ev.kind == "connect":
        out["family"] = family_name(ev.family)
        out["dst_ip"] = ev.dst_ip
        out["dst_port"] = ev.dst_port
    out["return_code"] = ev.ret
    if ev.ret < 0:
        out["error"] = errno_name(ev.ret)
    return out


def build_event(rule: Rule, ev: RawEvent, identity: Mapping[str, object],
                view: EventView | None = None) -> dict[str, object]:
    """The JSON-ready dict for one match (``view`` reuses matching's work)."""
    view = view or EventView(ev, identity)
    args = redact_args(ev.args)
    path = redact_text(view.path)
    obj: dict[str, object] = {
        "time": rfc3339_ns(ev.ts_ns),
        "rule": rule.name,
        "severity": rule.severity,
        "summary": summary(rule, view, args),
        "tags": list(rule.tags),
        "event": ev.kind,
    }
    for key in _IDENTITY_STR:
        obj[key] = str(identity.get(key) or "")
    obj["in_pod"] = bool(identity.get("in_pod"))
    obj["cgroup_id"] = ev.cgroup_id
    obj["process"] = {
        "pid": ev.pid,
        "tid": ev.tid,
        "name": ev.comm,
        "exe": redact_text(ev.exe),
        "args": args,
        "args_truncated": ev.args_truncated,
        "cwd": redact_text(ev.cwd),
        "uid": ev.uid,
        "gid": ev.gid,
    }
    obj["parent"] = {"pid": ev.ppid, "name": ev.parent_comm}
    obj["syscall"] = _syscall_fields(ev, path)
    return obj


def event_json(rule: Rule, ev: RawEvent, identity: Mapping[str, object],
               view: EventView | None = None) -> str:
    """One JSON line (no trailing newline)."""
    return json.dumps(build_event(rule, ev, identity, view), ensure_ascii=False, separators=(",", ":"))
