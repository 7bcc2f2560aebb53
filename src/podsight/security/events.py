"""Turn a rule match into one JSON object for SIEM pipelines.  Pure; no I/O.

Shape (published as ``event.schema.json``, documented in docs/security.md)::

    {"time": "2026-11-26T06:05:36.123456789Z", "rule": ..., "severity": ...,
     "summary": "human sentence", "tags": [...], "event": "open",
     "node", "namespace", "pod", "container", "image", "workload", ...,
     "process": {"pid", "tid", "name", "exe", "args", "cwd", "script", "uid", "gid", "start", "exec_id"},
     "parent": {"pid", "name", "exe", "start", "exec_id"},
     "syscall": {"name", "path", "flags", "mode", "request", "target_pid",
                 "family", "dst_ip", "dst_port", "return_code", "error"},
     "count", "first_time", "last_time"}         # only on a summary of repeats

Kubernetes names sit at the top level with kube-state-metrics' names so a
log pipeline can join them with metrics; arguments are always redacted.

``build_event`` gives the dict; ``event_json``/``event_line`` write the same
object as text directly: every matched event pays for its line, so the
parts that repeat (a rule's name and tags, a cgroup's identity, the time to
the second, open flags, redacted paths) are rendered once and reused.  The
text is byte for byte ``json.dumps(build_event(...), ensure_ascii=False,
separators=(",", ":"))``; tests hold the two together.
"""
from __future__ import annotations

import base64
import json
import re
import time
from functools import lru_cache
from pathlib import Path
from typing import Mapping

from .aggregate import Repeat
from .fields import FIELDS, EventView, script_of
from .model import RawEvent
from .names import errno_name, family_name, mode_string, open_flag_names, ptrace_request_name
from .redact import redact_args, redact_text
from .rules import Rule

__all__ = ["SCHEMA_PATH", "IdentityPart", "build_event", "event_json", "event_line", "rfc3339_ns", "summary"]

SCHEMA_PATH = Path(__file__).with_name("event.schema.json")

_DEFAULT_SYSCALL = {"exec": "execve", "open": "openat", "chmod": "chmod", "ptrace": "ptrace", "connect": "connect"}
_IDENTITY_STR = ("node", "namespace", "pod", "container", "image", "workload", "workload_kind",
                 "pod_uid", "container_id", "host_cgroup")
_PLACEHOLDER_RE = re.compile(r"\{([A-Za-z0-9_.]+)\}")
_SUMMARY_ARGS_MAX = 256  # keep the sentence readable; the full argv is in process.args
_ACCESS = {0: "reading", 1: "writing", 2: "reading and writing"}
_O_CREAT, _O_TMPFILE_BIT = 0o100, 0o20000000  # the mode argument is used only with these

# What json.dumps(ensure_ascii=False) itself calls for a str (the C encoder).
_jstr = json.encoder.encode_basestring
_CACHE_MAX = 4096  # bound on every cache here: their keys come from the traced processes


@lru_cache(maxsize=_CACHE_MAX)
def _redact_cached(text: str) -> str:
    return redact_text(text)


def _redacted(text: str) -> str:
    """redact_text, remembered for short strings: paths, exe and cwd repeat from event to event."""
    return _redact_cached(text) if len(text) <= 512 else redact_text(text)


_second: tuple[int, str] = (-1, "")  # last second formatted; one tuple so threads see a consistent pair


def rfc3339_ns(ts_ns: int) -> str:
    """Nanoseconds since the epoch → ``2026-11-26T06:05:36.123456789Z``."""
    global _second
    secs, ns = divmod(int(ts_ns), 1_000_000_000)
    last = _second
    if last[0] != secs:
        last = _second = (secs, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)))
    return f"{last[1]}.{ns:09d}Z"


def _script(ev: RawEvent, args: list[str]) -> str:
    """From the redacted arguments: a secret passed as the first operand stays hidden."""
    return _redacted(script_of(ev.comm, args, ev.cwd)) if ev.kind == "exec" else ""


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
        return f"opened {path} for {_ACCESS.get(ev.flags & 3, 'access')}"
    if ev.kind == "chmod":
        return f"set mode {mode_string(ev.mode)} on {path or 'an open file'}"
    if ev.kind == "ptrace":
        return f"called ptrace {ptrace_request_name(ev.ptrace_request)} on pid {ev.target_pid}"
    if ev.kind == "connect":
        host = f"[{ev.dst_ip}]" if ":" in ev.dst_ip else ev.dst_ip
        return f"connected to {host}:{ev.dst_port}"
    return ev.kind


# Summary placeholders that are not plain fields, or that must be shown redacted.
_SPECIAL = {
    "rule": lambda v, args, rule: rule.name,
    "severity": lambda v, args, rule: rule.severity,
    "process.args": lambda v, args, rule: " ".join(args[1:]),
    "process.cmdline": lambda v, args, rule: " ".join(args),
    "path": lambda v, args, rule: _redacted(v.path),
    "process.exe": lambda v, args, rule: _redacted(v.ev.exe),
    "process.cwd": lambda v, args, rule: _redacted(v.ev.cwd),
    "open.flags": lambda v, args, rule: "|".join(open_flag_names(v.ev.flags)),
    "mode": lambda v, args, rule: mode_string(v.ev.mode),
    "ptrace.request": lambda v, args, rule: ptrace_request_name(v.ev.ptrace_request),
    "dst.ip": lambda v, args, rule: v.ev.dst_ip,
    "dst.family": lambda v, args, rule: family_name(v.ev.family),
}


def _field_text(name: str, view: EventView, args: list[str], rule: Rule) -> str:
    special = _SPECIAL.get(name)
    if special is not None:
        return special(view, args, rule)
    fld = FIELDS.get(name)
    return "" if fld is None else str(fld.get(view))


def _summary(rule: Rule, view: EventView, args: list[str], path: str, where: str) -> str:
    """``path`` is the redacted path, ``where`` the identity's ``_where``."""
    if rule.summary:
        return _PLACEHOLDER_RE.sub(lambda m: _field_text(m.group(1), view, args, rule), rule.summary)
    ev = view.ev
    text = (f"{rule.name}: {ev.comm or '?'} (pid {ev.pid}, uid {ev.uid}, parent "
            f"{ev.parent_comm or '?'}) {_action(ev, path, args)} {where}")
    if ev.ret < 0:
        text += f"; it failed with {errno_name(ev.ret)}"
    return text


def summary(rule: Rule, view: EventView, args: list[str]) -> str:
    """The rule's ``summary`` template filled in, or a generated sentence."""
    return _summary(rule, view, args, _redacted(view.path), _where(view.idn))


def _syscall_fields(ev: RawEvent, path: str) -> dict[str, object]:
    out: dict[str, object] = {"name": ev.syscall or _DEFAULT_SYSCALL.get(ev.kind, ev.kind)}
    if ev.kind in ("exec", "open", "chmod"):
        out["path"] = path
    if ev.kind == "open":
        out["flags"] = open_flag_names(ev.flags)
        if ev.flags & _O_CREAT or ev.flags & _O_TMPFILE_BIT:
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


def exec_id(node: str, start_ns: int, pid: int) -> str:
    """Tetragon's exec id: base64 of ``node:start_ns:pid``, one execution of
    one process on one node (a reused PID has another start); "" while the
    start is unknown."""
    if not start_ns:
        return ""
    return base64.b64encode(f"{node}:{start_ns}:{pid}".encode()).decode("ascii")


def _start(ns: int) -> str:
    return rfc3339_ns(ns) if ns else ""


def build_event(rule: Rule, ev: RawEvent, identity: Mapping[str, object],
                view: EventView | None = None, repeat: Repeat | None = None) -> dict[str, object]:
    """The JSON-ready dict for one match (``view`` reuses matching's work);
    with ``repeat``, the summary of a detection's repeats (``ev`` the latest)."""
    view = view or EventView(ev, identity)
    args = redact_args(ev.args)
    path = _redacted(view.path)
    obj: dict[str, object] = {
        "time": rfc3339_ns(ev.ts_ns),
        "rule": rule.name,
        "severity": rule.severity,
        "summary": _summary(rule, view, args, path, _where(identity)),
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
        "exe": _redacted(ev.exe),
        "args": args,
        "args_truncated": bool(ev.args_truncated),
        "cwd": _redacted(ev.cwd),
        "script": _script(ev, args),
        "uid": ev.uid,
        "gid": ev.gid,
        "start": _start(ev.start_ns),
        "exec_id": exec_id(str(identity.get("node") or ""), ev.start_ns, ev.pid),
    }
    obj["parent"] = {"pid": ev.ppid, "name": ev.parent_comm, "exe": _redacted(ev.parent_exe),
                     "start": _start(ev.parent_start_ns),
                     "exec_id": exec_id(str(identity.get("node") or ""), ev.parent_start_ns, ev.ppid)}
    obj["syscall"] = _syscall_fields(ev, path)
    if repeat is not None:
        obj["count"] = repeat.count
        obj["first_time"] = rfc3339_ns(repeat.first_ns)
        obj["last_time"] = rfc3339_ns(repeat.last_ns)
    return obj


# ---------------------------------------------------------------------------
# The same object written as text directly


class IdentityPart:
    """An identity rendered once: its JSON members and the summary's "in pod ..." words.

    Build one per identity snapshot and reuse it for every event of that
    cgroup; it does not follow later changes to the mapping.
    """

    __slots__ = ("identity", "json", "where")

    def __init__(self, identity: Mapping[str, object]):
        self.identity = identity
        members = [f'"{k}":{_jstr(str(identity.get(k) or ""))}' for k in _IDENTITY_STR]
        members.append('"in_pod":true' if identity.get("in_pod") else '"in_pod":false')
        self.json = ",".join(members)
        self.where = _where(identity)


_parts: dict[tuple, IdentityPart] = {}
_rule_parts: dict[tuple, tuple[str, str]] = {}
_flags_json: dict[int, str] = {}


def _part_of(identity: Mapping[str, object]) -> IdentityPart:
    # Keyed by value, so a mapping changed between calls is rendered afresh.
    key = (*map(identity.get, _IDENTITY_STR), bool(identity.get("in_pod")))
    part = _parts.get(key)
    if part is None:
        if len(_parts) >= _CACHE_MAX:
            _parts.clear()
        part = _parts[key] = IdentityPart(dict(identity))
    return part


def _rule_json(rule: Rule) -> tuple[str, str]:
    """(the members before the summary's value, those between it and the event kind's)."""
    key = (rule.name, rule.severity, rule.tags)
    out = _rule_parts.get(key)
    if out is None:
        if len(_rule_parts) >= _CACHE_MAX:
            _rule_parts.clear()
        out = _rule_parts[key] = (
            f'"rule":{_jstr(rule.name)},"severity":{_jstr(rule.severity)},"summary":',
            f',"tags":[{",".join(map(_jstr, rule.tags))}],"event":',
        )
    return out


def _open_flags_json(flags: int) -> str:
    out = _flags_json.get(flags)
    if out is None:
        if len(_flags_json) >= _CACHE_MAX:
            _flags_json.clear()
        out = _flags_json[flags] = "[" + ",".join(map(_jstr, open_flag_names(flags))) + "]"
    return out


def _syscall_json(ev: RawEvent, path: str) -> str:
    """``_syscall_fields`` as JSON members, in the same order."""
    kind = ev.kind
    out = '"name":' + _jstr(ev.syscall or _DEFAULT_SYSCALL.get(kind, kind))
    if kind == "open":
        out += f',"path":{_jstr(path)},"flags":{_open_flags_json(ev.flags)}'
        if ev.flags & _O_CREAT or ev.flags & _O_TMPFILE_BIT:
            out += f',"mode":"{mode_string(ev.mode)}"'
    elif kind == "exec":
        out += ',"path":' + _jstr(path)
    elif kind == "chmod":
        out += f',"path":{_jstr(path)},"mode":"{mode_string(ev.mode)}"'
    elif kind == "ptrace":
        out += f',"request":{_jstr(ptrace_request_name(ev.ptrace_request))},"target_pid":{ev.target_pid}'
    elif kind == "connect":
        out += f',"family":{_jstr(family_name(ev.family))},"dst_ip":{_jstr(ev.dst_ip)},"dst_port":{ev.dst_port}'
    out += f',"return_code":{ev.ret}'
    if ev.ret < 0:
        out += ',"error":' + _jstr(errno_name(ev.ret))
    return out


def _repeat_json(repeat: Repeat | None) -> str:
    if repeat is None:
        return ""
    return (f',"count":{repeat.count},"first_time":"{rfc3339_ns(repeat.first_ns)}",'
            f'"last_time":"{rfc3339_ns(repeat.last_ns)}"')


def event_line(rule: Rule, ev: RawEvent, part: IdentityPart, view: EventView | None = None,
               repeat: Repeat | None = None) -> str:
    """One JSON line (no trailing newline) for an identity rendered beforehand."""
    view = view or EventView(ev, part.identity)
    args = redact_args(ev.args) if ev.args else []
    path = _redacted(view.path)
    head, tail = _rule_json(rule)
    text = _summary(rule, view, args, path, part.where)
    node = str(part.identity.get("node") or "")
    return (
        f'{{"time":"{rfc3339_ns(ev.ts_ns)}",{head}{_jstr(text)}{tail}{_jstr(ev.kind)},{part.json},'
        f'"cgroup_id":{ev.cgroup_id},"process":{{"pid":{ev.pid},"tid":{ev.tid},"name":{_jstr(ev.comm)},'
        f'"exe":{_jstr(_redacted(ev.exe))},"args":[{",".join(map(_jstr, args))}],'
        f'"args_truncated":{"true" if ev.args_truncated else "false"},"cwd":{_jstr(_redacted(ev.cwd))},'
        f'"script":{_jstr(_script(ev, args))},"uid":{ev.uid},"gid":{ev.gid},"start":"{_start(ev.start_ns)}",'
        f'"exec_id":"{exec_id(node, ev.start_ns, ev.pid)}"}},"parent":{{"pid":{ev.ppid},"name":{_jstr(ev.parent_comm)},'
        f'"exe":{_jstr(_redacted(ev.parent_exe))},"start":"{_start(ev.parent_start_ns)}",'
        f'"exec_id":"{exec_id(node, ev.parent_start_ns, ev.ppid)}"}},'
        f'"syscall":{{{_syscall_json(ev, path)}}}{_repeat_json(repeat)}}}'
    )


def event_json(rule: Rule, ev: RawEvent, identity: Mapping[str, object],
               view: EventView | None = None, repeat: Repeat | None = None) -> str:
    """One JSON line (no trailing newline)."""
    return event_line(rule, ev, _part_of(identity), view or EventView(ev, identity), repeat)
