"""One security event in the shape its reader expects.  Pure, but for the
random part of each event's id.

``security.output.format`` picks one:

- ``podsight``: the line of ``events.event_line`` (``event.schema.json``)
  with two members added at its end: ``"id"`` (below) and
  ``"source":"podsight"`` (CloudEvents' names for the two).
- ``falco``: Falco's JSON output (``falco.schema.json``): ``hostname``,
  ``output``, ``output_fields``, ``priority``, ``rule``, ``source``, ``tags``,
  ``time``, keys sorted as Falco writes them, field names from Falco's
  field classes (``proc.name``, ``fd.name``, ``k8s.ns.name``...), a field
  without a value is ``null`` as in Falco.  podsight's own fields are
  ``podsight.*`` keys of ``output_fields`` (as Falco's ``append_output``
  extra fields would be) and ``tags`` carries ``podsight``: Falcosidekick
  replaces any top-level ``uuid`` with its own, so the id is
  ``output_fields["podsight.uuid"]``.
- ``ecs``: Elastic Common Schema (``ecs.schema.json``), nested objects,
  ``event.kind: alert``, ``event.module: podsight``, ``observer.vendor:
  podsight``, the id in ``event.id``; what ECS has no field for is under
  ``podsight.*`` (ECS's advice for custom fields).  Empty values are left
  out (an ``ip`` field must not be ``""``).

Every format is built from ``build_event``'s object, so arguments, paths and
the summary are redacted the same way in all three.

Event ids are UUIDv7 (RFC 9562): the first 48 bits are the event's kernel
time in milliseconds, the rest random, so ids sort by event time to the
millisecond and are unique without coordination between nodes.

Process identity: ``start_ns`` (process start), ``parent_start_ns`` and
``parent_exe`` are read with ``getattr`` so this module works with
RawEvents that have them and those that do not.  ``start_ns`` is taken as
nanoseconds since the epoch (CLOCK_REALTIME, as model.py documents it);
a formatter made with ``start_offset_ns`` adds that to it first (the boot
time, were the starts boot-time ns).  0 means unknown.  An exec id is
Tetragon's: base64 of ``"node:start_ns:pid"``; it names one execution
however often the pid is reused.
"""
from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path
from typing import Callable, Mapping

from .aggregate import Repeat
from .events import SCHEMA_PATH, IdentityPart, _redacted, build_event, event_line, exec_id, rfc3339_ns
from .fields import EventView, parse_ip
from .model import RawEvent
from .rules import Rule

__all__ = [
    "ECS_SEVERITY",
    "ECS_VERSION",
    "FALCO_PRIORITY",
    "FORMATS",
    "SCHEMA_PATHS",
    "EcsFormat",
    "FalcoFormat",
    "Formatter",
    "PodsightFormat",
    "exec_id",
    "make_formatter",
    "new_event_id",
    "process_identity",
]

FORMATS = ("podsight", "falco", "ecs")
SCHEMA_PATHS = {
    "podsight": SCHEMA_PATH,
    "falco": Path(__file__).with_name("falco.schema.json"),
    "ecs": Path(__file__).with_name("ecs.schema.json"),
}
SOURCE = "podsight"
ECS_VERSION = "8.17.0"
# podsight severities (rules.SEVERITIES) → Falco priorities (as Falco writes them).
FALCO_PRIORITY = {"critical": "Critical", "error": "Error", "warning": "Warning", "notice": "Notice",
                  "info": "Informational"}
# → ECS event.severity: Elastic's risk bands (low 21, medium 47, high 73, critical 99), info below them.
ECS_SEVERITY = {"critical": 99, "error": 73, "warning": 47, "notice": 21, "info": 10}

_MITRE = re.compile(r"T\d{4}(?:\.\d{3})?")
_O_CREAT, _O_PATH = 0o100, 0o10000000


def new_event_id(ts_ns: int) -> str:
    """A UUIDv7 whose time is ``ts_ns`` (nanoseconds since the epoch), 74 random bits."""
    ms = (int(ts_ns) // 1_000_000) & 0xFFFF_FFFF_FFFF
    rand = int.from_bytes(os.urandom(10), "big")
    value = ms << 80 | 0x7 << 76 | (rand >> 68 & 0xFFF) << 64 | 0b10 << 62 | rand & 0x3FFF_FFFF_FFFF_FFFF
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def process_identity(ev: RawEvent) -> tuple[int, int, str]:
    """(start_ns, parent_start_ns, parent_exe) of an event (0, 0, "" when unknown)."""
    return ev.start_ns, ev.parent_start_ns, ev.parent_exe


def split_image(image: str) -> tuple[str, str, str]:
    """``registry:5000/shop/web:1.4@sha256:ab`` → (``registry:5000/shop/web``, ``1.4``, ``sha256:ab``)."""
    name, _, digest = image.partition("@")
    colon = name.rfind(":")
    if colon > name.rfind("/"):
        return name[:colon], name[colon + 1:], digest
    return name, "", digest


def _dumps(obj: object, sort: bool = False) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), sort_keys=sort)


class Formatter:
    """Writes one event (or the summary of its repeats) as one JSON line.

    ``part`` is the identity rendered once per cgroup (``IdentityPart``), as
    ``event_line`` takes it; ``view`` reuses matching's work.
    """

    name = ""

    def __init__(self, new_id: Callable[[int], str] = new_event_id, start_offset_ns: int = 0):
        """``start_offset_ns``: added to process starts to make them epoch ns (0: they are)."""
        self.new_id = new_id
        self.start_offset_ns = start_offset_ns
        self.schema_path = SCHEMA_PATHS[self.name]

    def line(self, rule: Rule, ev: RawEvent, part: IdentityPart, view: EventView | None = None,
             repeat: Repeat | None = None) -> str:
        raise NotImplementedError

    def _epoch(self, start_ns: int) -> int | None:
        """A process start as epoch ns; None when unknown."""
        return self.start_offset_ns + start_ns if start_ns else None


class PodsightFormat(Formatter):
    """``event_line`` plus ``"id"`` and ``"source":"podsight"`` at the end."""

    name = "podsight"

    def line(self, rule, ev, part, view=None, repeat=None) -> str:
        text = event_line(rule, ev, part, view, repeat)
        return f'{text[:-1]},"id":"{self.new_id(ev.ts_ns)}","source":"{SOURCE}"}}'


def _or_none(value: object) -> object:
    return None if value == "" else value


def _fd_type(family: int) -> tuple[str | None, str | None]:
    """Falco's fd.type and fd.sockfamily for an address family."""
    if family == socket.AF_INET:
        return "ipv4", "ip"
    if family == socket.AF_INET6:
        return "ipv6", "ip"
    if family == socket.AF_UNIX:
        return "unix", "unix"
    return None, None


class FalcoFormat(Formatter):
    """Falco's JSON output; one object per line, what Falcosidekick takes at ``/``."""

    name = "falco"

    def obj(self, rule: Rule, ev: RawEvent, identity: Mapping[str, object], view: EventView | None = None,
            repeat: Repeat | None = None) -> dict[str, object]:
        base = build_event(rule, ev, identity, view, repeat)
        proc, parent, sc = base["process"], base["parent"], base["syscall"]
        start_ns, parent_start_ns, parent_exe = process_identity(ev)
        node, in_pod = str(base["node"]), bool(base["in_pod"])
        cid, image = str(base["container_id"]), str(base["image"])
        repo, tag, digest = split_image(image)
        args: list[str] = proc["args"]
        uid = self.new_id(ev.ts_ns)
        f: dict[str, object] = {
            "evt.time": int(ev.ts_ns),
            "evt.type": sc["name"],
            "evt.res": "SUCCESS" if ev.ret >= 0 else sc.get("error"),
            "evt.rawres": ev.ret,
            "proc.name": _or_none(proc["name"]),
            "proc.exepath": _or_none(proc["exe"]),
            "proc.pexepath": _or_none(_redacted(parent_exe)),
            "proc.pid": proc["pid"],
            "proc.ppid": parent["pid"],
            "proc.pname": _or_none(parent["name"]),
            "proc.cwd": _or_none(proc["cwd"]),
            "proc.exe": args[0] if args else None,
            "proc.args": " ".join(args[1:]) if args else None,
            "proc.cmdline": " ".join([proc["name"], *args[1:]]) if args else None,  # Falco: name + args
            "proc.pid.ts": self._epoch(start_ns),
            "proc.ppid.ts": self._epoch(parent_start_ns),
            "thread.tid": proc["tid"],
            "user.uid": proc["uid"],
            "group.gid": proc["gid"],
            # Falco: "host" for both outside a container.
            "container.id": cid[:12] or None if in_pod else "host",
            "container.full_id": _or_none(cid) if in_pod else "host",
            "container.name": _or_none(base["container"]) if in_pod else "host",
            "container.image": _or_none(image),
            "container.image.repository": _or_none(repo),
            "container.image.tag": _or_none(tag),
            "container.image.digest": _or_none(digest),
            "k8s.ns.name": _or_none(base["namespace"]),
            "k8s.pod.name": _or_none(base["pod"]),
            "k8s.pod.uid": _or_none(base["pod_uid"]),
            "podsight.uuid": uid,
            "podsight.event": ev.kind,
            "podsight.exec_id": _or_none(exec_id(node, start_ns, ev.pid)),
            "podsight.parent_exec_id": _or_none(exec_id(node, parent_start_ns, ev.ppid)),
            "podsight.cgroup_id": base["cgroup_id"],
            "podsight.host_cgroup": _or_none(base["host_cgroup"]),
            "podsight.workload": _or_none(base["workload"]),
            "podsight.workload_kind": _or_none(base["workload_kind"]),
        }
        details: list[tuple[str, object]] = []
        kind = ev.kind
        if kind == "exec":
            f["evt.arg.filename"] = sc["path"]
            f["podsight.script"] = _or_none(proc["script"])
            f["podsight.args_truncated"] = proc["args_truncated"]
            details = [("command", f["proc.cmdline"]), ("file", sc["path"])]
        elif kind == "open":
            access = ev.flags & 3
            f["fd.name"] = sc["path"]
            f["evt.arg.flags"] = "|".join(sc["flags"])
            f["evt.arg.mode"] = sc.get("mode")
            f["evt.is_open_read"] = access in (0, 2) and not ev.flags & _O_PATH
            f["evt.is_open_write"] = access in (1, 2)
            f["evt.is_open_create"] = bool(ev.flags & _O_CREAT)
            details = [("file", sc["path"]), ("flags", f["evt.arg.flags"])]
        elif kind == "chmod":
            f["fs.path.name"] = sc["path"]
            f["evt.arg.mode"] = sc["mode"]
            details = [("file", sc["path"]), ("mode", sc["mode"])]
        elif kind == "ptrace":
            f["evt.arg.request"] = sc["request"]
            f["evt.arg.pid"] = sc["target_pid"]
            details = [("request", sc["request"]), ("target_pid", sc["target_pid"])]
        elif kind == "connect":
            ip = _or_none(sc["dst_ip"])
            f["fd.type"], f["fd.sockfamily"] = _fd_type(ev.family)
            f["fd.sip"] = f["fd.rip"] = ip
            f["fd.sport"] = f["fd.rport"] = sc["dst_port"]
            host = f"[{ip}]" if ip and ":" in ip else ip
            details = [("connection", f"{host}:{sc['dst_port']}" if ip else None)]
        if repeat is not None:
            f["podsight.count"] = base["count"]
            f["podsight.first_time"] = base["first_time"]
            f["podsight.last_time"] = base["last_time"]
            details.append(("repeats", f"{base['count']} from {base['first_time']} to {base['last_time']}"))
        priority = FALCO_PRIORITY[rule.severity]
        time_text = str(base["time"])
        pairs = [("evt_type", sc["name"]), ("user_uid", proc["uid"]), ("process", f["proc.name"]),
                 ("proc_exepath", f["proc.exepath"]), ("parent", f["proc.pname"]), *details,
                 ("k8s_ns", f["k8s.ns.name"]), ("k8s_pod_name", f["k8s.pod.name"]),
                 ("container_id", f["container.id"]), ("container_image_repository", f["container.image.repository"]),
                 ("container_image_tag", f["container.image.tag"]), ("podsight_uuid", uid)]
        output = (f"{time_text[11:-1]}: {priority} {base['summary']} | "
                  + " ".join(f"{k}={v}" for k, v in pairs if v is not None and v != ""))
        return {
            "hostname": node,
            "output": output,
            "output_fields": f,
            "priority": priority,
            "rule": rule.name,
            "source": "syscall",
            "tags": sorted({*rule.tags, SOURCE}),
            "time": time_text,
        }

    def line(self, rule, ev, part, view=None, repeat=None) -> str:
        return _dumps(self.obj(rule, ev, part.identity, view, repeat), sort=True)  # Falco sorts every object's keys


def _prune(obj: dict) -> dict:
    """Leave out "", None, and mappings and lists left empty (never items inside lists)."""
    out = {}
    for k, v in obj.items():
        if isinstance(v, dict):
            v = _prune(v)
        if v is None or v == "" or v == {} or v == []:
            continue
        out[k] = v
    return out


_ECS_CATEGORY = {"exec": ("process", ["start"]), "chmod": ("file", ["change"]),
                 "ptrace": ("process", ["access"]), "connect": ("network", ["connection", "start"])}


def _ecs_category(ev: RawEvent) -> tuple[str, list[str]]:
    if ev.kind == "open":
        types = ["change"] if ev.flags & 3 in (1, 2) else ["access"]
        if ev.flags & _O_CREAT:
            types.append("creation")
        return "file", types
    return _ECS_CATEGORY[ev.kind]


class EcsFormat(Formatter):
    """Elastic Common Schema, one nested document per line."""

    name = "ecs"

    def obj(self, rule: Rule, ev: RawEvent, identity: Mapping[str, object], view: EventView | None = None,
            repeat: Repeat | None = None) -> dict[str, object]:
        base = build_event(rule, ev, identity, view, repeat)
        proc, parent, sc = base["process"], base["parent"], base["syscall"]
        start_ns, parent_start_ns, parent_exe = process_identity(ev)
        node, in_pod = str(base["node"]), bool(base["in_pod"])
        category, types = _ecs_category(ev)
        args: list[str] = proc["args"]
        event: dict[str, object] = {
            "kind": "alert",
            "category": [category],
            "type": types,
            "action": ev.kind,
            "outcome": "success" if ev.ret >= 0 else "failure",
            "severity": ECS_SEVERITY[rule.severity],
            "module": "podsight",
            "dataset": "podsight.security",
            "provider": "podsight",
            "id": self.new_id(ev.ts_ns),
        }
        custom: dict[str, object] = {
            "cgroup_id": base["cgroup_id"],
            "in_pod": in_pod,
            "host_cgroup": base["host_cgroup"],
            "workload": base["workload"],
            "workload_kind": base["workload_kind"],
            "process": {"args_truncated": proc["args_truncated"], "script": proc["script"]},
        }
        if repeat is not None:
            event["start"], event["end"] = base["first_time"], base["last_time"]
            event["duration"] = max(0, repeat.last_ns - repeat.first_ns)
            custom.update(count=base["count"], first_time=base["first_time"], last_time=base["last_time"])
        process_start, parent_start = self._epoch(start_ns), self._epoch(parent_start_ns)
        doc: dict[str, object] = {
            "@timestamp": base["time"],
            "ecs": {"version": ECS_VERSION},
            "message": base["summary"],
            "event": event,
            "log": {"level": rule.severity},
            "rule": {"name": rule.name, "description": rule.description, "ruleset": "podsight"},
            "tags": [*rule.tags, *(() if SOURCE in rule.tags else (SOURCE,))],
            "process": {
                "pid": proc["pid"],
                "name": proc["name"],
                "executable": proc["exe"],
                "args": args,
                "args_count": len(args) if args else None,
                "command_line": " ".join(args),
                "working_directory": proc["cwd"],
                "entity_id": exec_id(node, start_ns, ev.pid),
                "start": rfc3339_ns(process_start) if process_start is not None else None,
                "thread": {"id": proc["tid"]},
                "parent": {
                    "pid": parent["pid"],
                    "name": parent["name"],
                    "executable": _redacted(parent_exe),
                    "entity_id": exec_id(node, parent_start_ns, ev.ppid),
                    "start": rfc3339_ns(parent_start) if parent_start is not None else None,
                },
            },
            "user": {"id": str(proc["uid"])},
            "group": {"id": str(proc["gid"])},
            "host": {"hostname": node, "name": node},
            "observer": {"vendor": "podsight", "product": "podsight", "type": "sensor", "hostname": node},
        }
        if ev.kind in ("open", "chmod") and sc["path"]:
            doc["file"] = {"path": sc["path"], "mode": sc.get("mode")}
        if ev.kind == "connect" and ev.family in (socket.AF_INET, socket.AF_INET6) and parse_ip(sc["dst_ip"]):
            # ECS ip fields take addresses only: anything else would make Elasticsearch refuse the document.
            doc["destination"] = {"ip": sc["dst_ip"], "port": sc["dst_port"], "address": sc["dst_ip"]}
            doc["network"] = {"type": "ipv6" if ev.family == socket.AF_INET6 else "ipv4"}
            doc["related"] = {"ip": [sc["dst_ip"]]}
        if in_pod:
            repo, tag, _ = split_image(str(base["image"]))
            doc["container"] = {"id": base["container_id"], "name": base["container"],
                                "image": {"name": repo, "tag": [tag] if tag else []}}
            doc["orchestrator"] = {"type": "kubernetes", "namespace": base["namespace"],
                                   "resource": {"type": "pod", "name": base["pod"], "id": base["pod_uid"],
                                                "parent": {"type": base["workload_kind"]}}}
        mitre = [t for t in rule.tags if _MITRE.fullmatch(t)]
        if mitre:
            doc["threat"] = {"framework": "MITRE ATT&CK", "technique": {
                "id": sorted({t.split(".")[0] for t in mitre}),
                "subtechnique": {"id": sorted({t for t in mitre if "." in t})}}}
        doc["podsight"] = custom
        doc = _prune(doc)
        doc["podsight"]["syscall"] = sc  # as in the podsight format, empty strings included
        return doc

    def line(self, rule, ev, part, view=None, repeat=None) -> str:
        return _dumps(self.obj(rule, ev, part.identity, view, repeat))


_CLASSES: dict[str, type[Formatter]] = {"podsight": PodsightFormat, "falco": FalcoFormat, "ecs": EcsFormat}


def make_formatter(name: str, *, new_id: Callable[[int], str] = new_event_id, start_offset_ns: int = 0) -> Formatter:
    """The formatter ``security.output.format`` names (one of ``FORMATS``)."""
    try:
        cls = _CLASSES[name]
    except KeyError:
        raise ValueError(f"unknown security output format {name!r} (expected one of: {', '.join(FORMATS)})") from None
    return cls(new_id=new_id, start_offset_ns=start_offset_ns)
