"""security.output.format: podsight, falco and ecs lines.  Every line of a
representative set (each kind, exec with arguments, connect v4/v6/unix,
ptrace, host processes, summaries of repeats, process identity) validates
against its format's schema, carries a unique id and says it is podsight's;
Falco's shape and names, ECS's categories, and the same redaction in all."""
from __future__ import annotations

import base64
import dataclasses
import json
import re
import uuid

import jsonschema
import pytest
from hypothesis import given, settings

from podsight.config import ConfigError, load_config
from podsight.security import RawEvent, build_event
from podsight.security.aggregate import Repeat
from podsight.security.events import IdentityPart, event_line
from podsight.security.fields import EventView
from podsight.security.formats import (
    ECS_SEVERITY,
    FALCO_PRIORITY,
    FORMATS,
    SCHEMA_PATHS,
    exec_id,
    make_formatter,
    new_event_id,
    process_identity,
    split_image,
)
from podsight.security.rules import SEVERITIES

from .helpers import HOST, ev, pod
from .test_event_line import any_rule, identities, raw_events
from .test_events import RULES, SAMPLES

SCHEMAS = {name: json.loads(path.read_text()) for name, path in SCHEMA_PATHS.items()}
VALIDATORS = {name: jsonschema.Draft202012Validator(s, format_checker=jsonschema.FormatChecker())
              for name, s in SCHEMAS.items()}
UUID7 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
START = 1_764_000_000_000_000_000  # process starts in these tests: realtime ns (model.py)
FALCO_KEYS = ["hostname", "output", "output_fields", "priority", "rule", "source", "tags", "time"]

_HAS_IDENTITY = {"start_ns", "parent_start_ns", "parent_exe"} <= {f.name for f in dataclasses.fields(RawEvent)}
if _HAS_IDENTITY:
    IdEvent = RawEvent
else:  # before the lead engineer adds them to RawEvent: the same fields on a subclass
    @dataclasses.dataclass(slots=True)
    class IdEvent(RawEvent):
        start_ns: int = 0
        parent_start_ns: int = 0
        parent_exe: str = ""


def id_ev(kind, **fields) -> RawEvent:
    base = dataclasses.asdict(ev(kind))
    base.pop("kind")
    return IdEvent(kind, **{**base, **fields})


# Beyond test_events.SAMPLES: exec with arguments and a script, IPv4/IPv6/unix connects, a host
# process, process identity, and a secret in the arguments.
EXTRA = [
    (id_ev("exec", comm="bash", exe="/usr/bin/bash", path="/usr/bin/bash", cwd="/tmp/x",
           args=["bash", "run.sh", "--token=hunter2hunter2"], start_ns=START + 5_000_000_123, parent_start_ns=START + 4_000_000_000,
           parent_exe="/usr/bin/containerd-shim-runc-v2"), pod()),
    (id_ev("connect", comm="nc", family=2, dst_ip="10.96.0.1", dst_port=6443, start_ns=77, parent_exe="/bin/sh"),
     pod(namespace="shop")),
    (ev("connect", comm="curl", family=10, dst_ip="2001:db8::7", dst_port=443), pod()),
    (ev("connect", comm="curl", family=10, dst_ip="::ffff:10.96.0.1", dst_port=443), pod()),
    (ev("open", comm="cat", path="/etc/shadow", flags=0, ret=3), pod(image="registry:5000/shop/web@sha256:abc")),
]


def matches():
    """(rule, event, identity) for every match of the representative events."""
    out = []
    for e, idn in SAMPLES + EXTRA:
        rules = RULES.match(e, idn)
        assert rules, e
        out.extend((r, e, idn) for r in rules)
    return out


def host_match():
    from podsight.security import load_rules
    import tempfile
    from pathlib import Path
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "host.yaml"
        p.write_text("rules:\n  - name: host_shadow\n    event: open\n    condition: {in_pod: false}\n"
                     "    severity: critical\n    tags: [T1003.008]\n")
        rs = load_rules([p])
    e = ev("open", comm="cat", path="/etc/shadow", flags=0o1101, mode=0o600)
    [rule] = rs.match(e, HOST)
    return rule, e, HOST


def lines_of(fmt_name: str):
    fmt = make_formatter(fmt_name)
    out = []
    for rule, e, idn in matches() + [host_match()]:
        part = IdentityPart(idn)
        out.append(fmt.line(rule, e, part, EventView(e, idn)))
        # The summary of its repeats, as EventSink writes it when the window closes.
        rep = Repeat(closes_at=0.0, first_ns=e.ts_ns - 9_000_000_000, last_ns=e.ts_ns, count=7)
        out.append(fmt.line(rule, e, part, EventView(e, idn), rep))
    return out


def kinds_of(name, obj):
    return {"podsight": lambda o: o["event"], "falco": lambda o: o["output_fields"]["podsight.event"],
            "ecs": lambda o: o["event"]["action"]}[name](obj)


def id_of(name, obj):
    return {"podsight": lambda o: o["id"], "falco": lambda o: o["output_fields"]["podsight.uuid"],
            "ecs": lambda o: o["event"]["id"]}[name](obj)


@pytest.mark.parametrize("name", FORMATS)
def test_schemas_are_valid_draft_2020_12(name):
    jsonschema.Draft202012Validator.check_schema(SCHEMAS[name])


@pytest.mark.parametrize("name", FORMATS)
def test_every_line_of_every_kind_validates_and_has_a_unique_podsight_id(name):
    lines = lines_of(name)
    objs = [json.loads(line) for line in lines]
    assert all("\n" not in line for line in lines)
    assert {kinds_of(name, o) for o in objs} == {"exec", "open", "chmod", "ptrace", "connect"}
    for obj in objs:
        VALIDATORS[name].validate(obj)
    ids = [id_of(name, o) for o in objs]
    assert all(UUID7.match(i) for i in ids) and len(set(ids)) == len(ids)
    says_podsight = {"podsight": lambda o: o["source"] == "podsight",
                     "falco": lambda o: "podsight" in o["tags"] and "podsight.uuid" in o["output_fields"],
                     "ecs": lambda o: o["event"]["module"] == "podsight" and o["observer"]["vendor"] == "podsight"}
    assert all(says_podsight[name](o) for o in objs)


@pytest.mark.parametrize("name", FORMATS)
def test_summaries_carry_count_and_first_and_last_time(name):
    objs = [json.loads(line) for line in lines_of(name)]
    summaries, singles = objs[1::2], objs[0::2]
    get = {"podsight": lambda o: (o.get("count"), o.get("first_time"), o.get("last_time")),
           "falco": lambda o: tuple(o["output_fields"].get(f"podsight.{k}") for k in ("count", "first_time", "last_time")),
           "ecs": lambda o: (o["podsight"].get("count"), o["event"].get("start"), o["event"].get("end"))}[name]
    for s in summaries:
        count, first, last = get(s)
        assert count == 7 and first < last
    assert all(get(o) == (None, None, None) for o in singles)
    if name == "ecs":
        assert all(s["event"]["duration"] == 9_000_000_000 for s in summaries)
    if name == "falco":
        assert all("repeats=7 from " in s["output"] for s in summaries)


@pytest.mark.parametrize("name", FORMATS)
@pytest.mark.parametrize("breakage", ["drop_id", "bad_id", "unknown_top_level", "summary_without_first"])
def test_schemas_reject_broken_lines(name, breakage):
    obj = json.loads(lines_of(name)[1])  # a summary
    holder, id_key, first_key = {"podsight": lambda: (obj, "id", "first_time"),
                                 "falco": lambda: (obj["output_fields"], "podsight.uuid", "podsight.first_time"),
                                 "ecs": lambda: (obj["event"], "id", "start")}[name]()
    if breakage == "drop_id":
        if name == "podsight":
            del obj["id"]  # source alone: dependentRequired
        else:
            del holder[id_key]
    elif breakage == "bad_id":
        holder[id_key] = "not-a-uuid"
    elif breakage == "unknown_top_level":
        obj["extra"] = 1
    else:
        del holder[first_key]
    assert not VALIDATORS[name].is_valid(obj)


def test_podsight_format_is_event_line_with_id_and_source_at_the_end():
    fmt = make_formatter("podsight", new_id=lambda ts: "0190b1a5-0000-7000-8000-000000000000")
    for rule, e, idn in matches():
        line = fmt.line(rule, e, IdentityPart(idn))
        old = event_line(rule, e, IdentityPart(idn))
        assert line == old[:-1] + ',"id":"0190b1a5-0000-7000-8000-000000000000","source":"podsight"}'
        assert json.loads(line) == {**build_event(rule, e, idn), "id": "0190b1a5-0000-7000-8000-000000000000",
                                    "source": "podsight"}


def test_event_ids_are_uuid7_in_event_time_order():
    ts = 1_764_136_536_123_456_789
    ids = [new_event_id(ts + i * 1_000_000) for i in range(50)]
    for i in ids:
        u = uuid.UUID(i)
        assert u.version == 7 and u.variant == uuid.RFC_4122
    assert int(ids[0][:8] + ids[0][9:13], 16) == ts // 1_000_000  # the first 48 bits: the event's milliseconds
    assert ids == sorted(ids) and len(set(new_event_id(ts) for _ in range(1000))) == 1000


def test_falco_shape_names_and_priorities():
    fmt = make_formatter("falco")
    e, idn = SAMPLES[2]  # cat /etc/shadow, EACCES, openat2
    [rule] = RULES.match(e, idn)
    line = fmt.line(rule, e, IdentityPart(idn))
    obj = json.loads(line)
    assert list(obj) == FALCO_KEYS  # Falco writes its keys sorted, and only these
    f = obj["output_fields"]
    assert list(f) == sorted(f)
    assert (obj["rule"], obj["priority"], obj["source"], obj["hostname"]) == (
        "sensitive_file_read", "Warning", "syscall", "node-a")
    assert obj["tags"] == sorted({"T1003.008", "T1552.004", "container", "podsight"})
    assert obj["time"] == "2025-11-26T05:55:36.123456789Z" and f["evt.time"] == 1_764_136_536_123_456_789
    assert obj["output"].startswith("05:55:36.123456789: Warning sensitive_file_read: cat (pid 4242")
    assert {k: f[k] for k in ("evt.type", "evt.res", "evt.rawres", "fd.name", "evt.arg.flags", "evt.is_open_read",
                              "evt.is_open_write", "proc.name", "proc.pid", "proc.ppid", "proc.pname", "user.uid",
                              "k8s.ns.name", "k8s.pod.name", "container.id", "container.image.repository",
                              "container.image.tag")} == {
        "evt.type": "openat2", "evt.res": "EACCES", "evt.rawres": -13, "fd.name": "/etc/shadow",
        "evt.arg.flags": "O_RDONLY|O_CLOEXEC", "evt.is_open_read": True, "evt.is_open_write": False,
        "proc.name": "cat", "proc.pid": 4242, "proc.ppid": 4200, "proc.pname": "gunicorn", "user.uid": 1000,
        "k8s.ns.name": "shop", "k8s.pod.name": "web-0", "container.id": "3f2a9c",
        "container.image.repository": "registry.example/shop/web", "container.image.tag": "1.4"}
    # What the event does not know is null, as in Falco, never missing.
    assert f["proc.pexepath"] is None and f["proc.cmdline"] is None and f["podsight.exec_id"] is None


@pytest.mark.parametrize("severity", SEVERITIES)
def test_every_severity_has_a_falco_priority_and_an_ecs_severity(severity):
    assert FALCO_PRIORITY[severity] in SCHEMAS["falco"]["properties"]["priority"]["enum"]
    assert ECS_SEVERITY[severity] in SCHEMAS["ecs"]["properties"]["event"]["properties"]["severity"]["enum"]
    assert list(FALCO_PRIORITY) == list(SEVERITIES)  # highest first, as rules.SEVERITIES
    assert [ECS_SEVERITY[s] for s in SEVERITIES] == sorted(ECS_SEVERITY.values(), reverse=True)


def test_falco_priority_names():
    assert FALCO_PRIORITY == {"critical": "Critical", "error": "Error", "warning": "Warning", "notice": "Notice",
                              "info": "Informational"}


def test_falco_host_process_is_in_container_host_without_kubernetes_names():
    rule, e, idn = host_match()
    obj = json.loads(make_formatter("falco").line(rule, e, IdentityPart(idn)))
    f = obj["output_fields"]
    assert (f["container.id"], f["container.name"], f["k8s.ns.name"], f["k8s.pod.name"]) == ("host", "host", None, None)
    assert f["podsight.host_cgroup"] == "system.slice/ssh.service" and obj["priority"] == "Critical"
    assert f["evt.is_open_write"] is True and f["evt.is_open_create"] is True and f["evt.arg.mode"] == "0600"


def test_exec_with_arguments_and_process_identity():
    e, idn = EXTRA[0]
    [rule] = [r for r in RULES.match(e, idn) if r.name == "shell_in_container"]
    start, parent_start = START + 5_000_000_123, START + 4_000_000_000
    assert process_identity(e) == (start, parent_start, "/usr/bin/containerd-shim-runc-v2")
    want_exec = base64.b64encode(f"node-a:{start}:4242".encode()).decode()
    want_parent = base64.b64encode(f"node-a:{parent_start}:4200".encode()).decode()
    assert exec_id("node-a", start, 4242) == want_exec and exec_id("node-a", 0, 4242) == ""

    f = json.loads(make_formatter("falco").line(rule, e, IdentityPart(idn)))["output_fields"]
    assert (f["proc.exe"], f["proc.args"], f["proc.cmdline"]) == ("bash", "run.sh --token=***", "bash run.sh --token=***")
    assert (f["proc.exepath"], f["proc.pexepath"], f["evt.arg.filename"]) == (
        "/usr/bin/bash", "/usr/bin/containerd-shim-runc-v2", "/usr/bin/bash")
    assert (f["podsight.exec_id"], f["podsight.parent_exec_id"]) == (want_exec, want_parent)
    assert (f["proc.pid.ts"], f["proc.ppid.ts"]) == (start, parent_start)
    assert f["podsight.script"] == "/tmp/x/run.sh" and f["evt.type"] == "execve"

    doc = json.loads(make_formatter("ecs").line(rule, e, IdentityPart(idn)))
    p = doc["process"]
    assert (p["entity_id"], p["parent"]["entity_id"], p["parent"]["executable"]) == (
        want_exec, want_parent, "/usr/bin/containerd-shim-runc-v2")
    assert p["args"] == ["bash", "run.sh", "--token=***"] and p["args_count"] == 3
    assert p["command_line"] == "bash run.sh --token=***" and p["executable"] == "/usr/bin/bash"
    assert p["start"] == "2025-11-24T16:00:05.000000123Z" and p["parent"]["start"] == "2025-11-24T16:00:04.000000000Z"
    assert (doc["event"]["category"], doc["event"]["type"], doc["event"]["action"]) == (["process"], ["start"], "exec")

    # Starts given in another clock: the formatter adds the offset (the exec ids keep the raw value).
    boot = 1_000
    f = json.loads(make_formatter("falco", start_offset_ns=boot).line(rule, e, IdentityPart(idn)))["output_fields"]
    assert f["proc.pid.ts"] == start + boot and f["podsight.exec_id"] == want_exec


def test_unknown_starts_are_null_in_falco_and_absent_in_ecs():
    e = id_ev("exec", comm="sh", exe="/bin/sh", path="/bin/sh", args=["sh"], start_ns=0, parent_start_ns=0)
    [rule] = RULES.match(e, pod())
    f = json.loads(make_formatter("falco").line(rule, e, IdentityPart(pod())))["output_fields"]
    assert (f["proc.pid.ts"], f["proc.ppid.ts"], f["podsight.exec_id"], f["proc.pexepath"]) == (None, None, None, None)
    p = json.loads(make_formatter("ecs").line(rule, e, IdentityPart(pod())))["process"]
    assert "start" not in p and "entity_id" not in p and p["parent"] == {"pid": 4200, "name": "gunicorn"}


@pytest.mark.parametrize("name", ["falco", "ecs"])
def test_events_without_the_identity_fields_still_render(name):
    e = ev("exec", comm="sh", exe="/bin/sh", path="/bin/sh", args=["sh"])
    assert not hasattr(e, "parent_exe") or e.parent_exe == ""
    [rule] = RULES.match(e, pod())
    VALIDATORS[name].validate(json.loads(make_formatter(name).line(rule, e, IdentityPart(pod()))))


def test_connect_v4_v6_in_falco_and_ecs():
    by_ip = {}
    for rule, e, idn in matches():
        if e.kind == "connect":
            by_ip[e.dst_ip] = (json.loads(make_formatter("falco").line(rule, e, IdentityPart(idn))),
                               json.loads(make_formatter("ecs").line(rule, e, IdentityPart(idn))))
    falco4, ecs4 = by_ip["10.96.0.1"]
    assert {k: falco4["output_fields"][k] for k in ("fd.type", "fd.sockfamily", "fd.sip", "fd.sport", "fd.rip",
                                                    "fd.rport")} == {
        "fd.type": "ipv4", "fd.sockfamily": "ip", "fd.sip": "10.96.0.1", "fd.sport": 6443 if "nc" in falco4["output"]
        else 443, "fd.rip": "10.96.0.1", "fd.rport": falco4["output_fields"]["fd.sport"]}
    assert ecs4["destination"]["ip"] == "10.96.0.1" and ecs4["network"] == {"type": "ipv4"}
    assert ecs4["event"]["category"] == ["network"] and ecs4["related"] == {"ip": ["10.96.0.1"]}
    falco6, ecs6 = by_ip["2001:db8::5"]
    assert falco6["output_fields"]["fd.type"] == "ipv6" and "connection=[2001:db8::5]:443" in falco6["output"]
    assert ecs6["destination"] == {"ip": "2001:db8::5", "port": 443, "address": "2001:db8::5"}
    assert ecs6["network"] == {"type": "ipv6"} and ecs6["event"]["outcome"] == "failure"


def test_ecs_leaves_out_what_is_not_an_address():
    e = ev("connect", comm="x", family=1, dst_ip="", dst_port=0)
    from podsight.security import load_rules
    import tempfile
    from pathlib import Path
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "r.yaml"
        p.write_text("rules:\n  - name: any_connect\n    event: connect\n    condition: {}\n    severity: info\n")
        [rule] = load_rules([p]).match(e, pod())
    doc = json.loads(make_formatter("ecs").line(rule, e, IdentityPart(pod())))
    VALIDATORS["ecs"].validate(doc)
    assert "destination" not in doc and doc["podsight"]["syscall"]["family"] == "AF_UNIX"
    f = json.loads(make_formatter("falco").line(rule, e, IdentityPart(pod())))["output_fields"]
    assert (f["fd.type"], f["fd.sockfamily"], f["fd.sip"]) == ("unix", "unix", None)
    # An AF_INET connect whose address did not decode: no ip field, or Elasticsearch would refuse the document.
    e = ev("connect", comm="x", family=2, dst_ip="not-an-ip", dst_port=80)
    doc = json.loads(make_formatter("ecs").line(rule, e, IdentityPart(pod())))
    VALIDATORS["ecs"].validate(doc)
    assert "destination" not in doc and "related" not in doc and doc["podsight"]["syscall"]["dst_ip"] == "not-an-ip"


def test_ecs_categories_rule_and_mitre_and_kubernetes():
    by = {}
    for rule, e, idn in matches():
        by[(rule.name, e.syscall or e.kind)] = json.loads(make_formatter("ecs").line(rule, e, IdentityPart(idn)))
    shadow = by[("sensitive_file_read", "openat2")]
    assert (shadow["event"]["category"], shadow["event"]["type"], shadow["event"]["outcome"]) == (
        ["file"], ["access"], "failure")
    assert shadow["threat"] == {"framework": "MITRE ATT&CK", "technique": {
        "id": ["T1003", "T1552"], "subtechnique": {"id": ["T1003.008", "T1552.004"]}}}
    assert shadow["orchestrator"] == {"type": "kubernetes", "namespace": "shop", "resource": {
        "type": "pod", "name": "web-0", "id": "0b4d5c7e-1111-2222-3333-444455556666", "parent": {"type": "StatefulSet"}}}
    assert shadow["container"] == {"id": "3f2a9c", "name": "app",
                                   "image": {"name": "registry.example/shop/web", "tag": ["1.4"]}}
    assert shadow["rule"]["name"] == "sensitive_file_read" and shadow["log"] == {"level": "warning"}
    assert shadow["event"]["severity"] == 47 and shadow["user"] == {"id": "1000"}
    cron = by[("write_below_etc_or_bin", "open")]
    assert cron["event"]["type"] == ["change", "creation"] and cron["file"] == {"path": "/etc/cron.d/x", "mode": "0644"}
    chmod = by[("setuid_setgid_chmod", "fchmodat")]
    assert chmod["event"]["type"] == ["change"] and chmod["file"]["mode"] == "4755"
    ptrace = by[("ptrace_attach_or_poke", "ptrace")]
    assert ptrace["event"]["category"] == ["process"]
    assert ptrace["podsight"]["syscall"]["request"] == "PTRACE_SEIZE" and ptrace["podsight"]["syscall"]["target_pid"] == 77
    rule, e, idn = host_match()
    host = json.loads(make_formatter("ecs").line(rule, e, IdentityPart(idn)))
    assert "orchestrator" not in host and "container" not in host and host["podsight"]["in_pod"] is False


@pytest.mark.parametrize("image, want", [
    ("registry.example/shop/web:1.4", ("registry.example/shop/web", "1.4", "")),
    ("registry:5000/shop/web", ("registry:5000/shop/web", "", "")),
    ("registry:5000/shop/web:2@sha256:ab", ("registry:5000/shop/web", "2", "sha256:ab")),
    ("nginx", ("nginx", "", "")),
    ("", ("", "", "")),
])
def test_split_image(image, want):
    assert split_image(image) == want


@pytest.mark.parametrize("name", FORMATS)
def test_a_secret_is_masked_in_every_format(name):
    e = ev("exec", comm="sh", exe="/bin/sh", path="/bin/sh", args=["sh", "-c", "mysql -uroot -phunter22 shop"],
           cwd="/srv/token=hunter22")
    for rule in RULES.match(e, pod()):
        line = make_formatter(name).line(rule, e, IdentityPart(pod()))
        assert "hunter22" not in line


def test_unknown_format_is_refused_here_and_in_config():
    with pytest.raises(ValueError, match="expected one of: podsight, falco, ecs"):
        make_formatter("cef")
    with pytest.raises(ConfigError, match=re.escape("security.output.format: expected one of podsight, falco, ecs")):
        load_config(None, env={"PODSIGHT_SECURITY__OUTPUT__FORMAT": "cef"})
    assert load_config(None, env={}).security.output.format == "podsight"
    assert load_config(None, env={"PODSIGHT_SECURITY__OUTPUT__FORMAT": "ecs"}).security.output.format == "ecs"


@settings(max_examples=150, deadline=None)
@given(rule=any_rule(), e=raw_events(), idn=identities)
def test_any_event_validates_in_every_format(rule, e, idn):
    if e.kind != rule.event:
        e.kind = rule.event
    for name in FORMATS:
        fmt = make_formatter(name)
        for rep in (None, Repeat(0.0, max(0, e.ts_ns - 5), e.ts_ns, 2)):
            line = fmt.line(rule, e, IdentityPart(idn), None, rep)
            assert "\n" not in line
            VALIDATORS[name].validate(json.loads(line))
