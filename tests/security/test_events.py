"""JSON events: field values, summaries, and validity against event.schema.json."""
from __future__ import annotations

import json

import jsonschema
import pytest

from podsight.security import DEFAULT_RULES_PATH, SCHEMA_PATH, build_event, event_json, load_rules
from podsight.security.events import rfc3339_ns
from podsight.security.names import open_flag_names

from .helpers import HOST, ev, pod

SCHEMA = json.loads(SCHEMA_PATH.read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA, format_checker=jsonschema.FormatChecker())
RULES = load_rules([DEFAULT_RULES_PATH], lists={"allowed_egress_cidrs": ["10.0.0.0/8"],
                                                "kubernetes_api_cidrs": ["10.96.0.1"]})

SAMPLES = [
    (ev("exec", comm="sh", exe="/bin/dash", path="/bin/sh", syscall="execve",
        args=["sh", "-c", "mysql -uroot -phunter22 shop"]), pod()),
    (ev("exec", comm="x", exe="/tmp/x", path="./x", cwd="/tmp", args=["./x"], args_truncated=True), pod()),
    (ev("open", comm="cat", path="/etc/shadow", flags=0o2000000, ret=-13, syscall="openat2"), pod()),
    (ev("open", comm="sh", path="/etc/cron.d/x", flags=0o1101, mode=0o644, ret=3), pod()),
    (ev("chmod", comm="chmod", path="/tmp/sh", mode=0o104755, syscall="fchmodat"), pod()),
    (ev("ptrace", comm="strace", ptrace_request=0x4206, target_pid=77, ret=-1), pod()),
    (ev("connect", comm="curl", family=10, dst_ip="2001:db8::5", dst_port=443, ret=-115), pod()),
    (ev("connect", comm="python3", family=2, dst_ip="10.96.0.1", dst_port=443),
     pod(namespace="", pod="0b4d5c7e-1111", container="3f2a9c")),
]


def all_events():
    out = []
    for e, idn in SAMPLES:
        matched = RULES.match(e, idn)
        assert matched, e
        out.extend(build_event(r, e, idn) for r in matched)
    return out


def test_schema_is_a_valid_draft_2020_12_schema():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_every_generated_event_validates():
    events = all_events()
    assert {e["event"] for e in events} == {"exec", "open", "chmod", "ptrace", "connect"}
    for obj in events:
        VALIDATOR.validate(obj)
        assert json.loads(json.dumps(obj)) == obj


def test_schema_rejects_broken_events():
    good = all_events()[0]
    for breakage in (
        lambda o: o.pop("rule"),
        lambda o: o.__setitem__("severity", "loud"),
        lambda o: o.__setitem__("time", "2026-11-26T06:05:36Z"),
        lambda o: o["process"].pop("args"),
        lambda o: o["syscall"].__setitem__("mode", "755"),
        lambda o: o.__setitem__("extra", 1),
        lambda o: (o.__setitem__("event", "open"), o["syscall"].pop("path")),
    ):
        obj = json.loads(json.dumps(good))
        breakage(obj)
        assert not VALIDATOR.is_valid(obj), breakage


def test_exec_event_fields_and_redaction():
    e, idn = SAMPLES[0]
    [rule] = RULES.match(e, idn)
    line = event_json(rule, e, idn)
    assert "\n" not in line and "hunter22" not in line
    obj = json.loads(line)
    assert obj["time"] == "2025-11-26T05:55:36.123456789Z"
    assert obj["rule"] == "shell_in_container" and obj["severity"] == "notice"
    assert obj["tags"] == ["T1059.004", "container", "shell"]
    assert (obj["node"], obj["namespace"], obj["pod"], obj["container"], obj["image"]) == (
        "node-a", "shop", "web-0", "app", "registry.example/shop/web:1.4")
    assert obj["process"] == {"pid": 4242, "tid": 4242, "name": "sh", "exe": "/bin/dash",
                              "args": ["sh", "-c", "mysql -uroot -p*** shop"], "args_truncated": False,
                              "cwd": "/srv", "script": "", "uid": 1000, "gid": 1000, "start": "", "exec_id": ""}
    assert obj["parent"] == {"pid": 4200, "name": "gunicorn", "exe": "", "start": "", "exec_id": ""}
    assert obj["syscall"] == {"name": "execve", "path": "/bin/sh", "return_code": 0}
    assert obj["summary"] == ("shell_in_container: sh (pid 4242, uid 1000, parent gunicorn) executed /bin/sh "
                              "(sh -c mysql -uroot -p*** shop) in pod shop/web-0 container app")


def test_syscall_fields_per_kind():
    by_rule = {(o["rule"], o["syscall"]["name"]): o for o in all_events()}
    shadow = by_rule[("sensitive_file_read", "openat2")]
    assert shadow["syscall"] == {"name": "openat2", "path": "/etc/shadow", "flags": ["O_RDONLY", "O_CLOEXEC"],
                                 "return_code": -13, "error": "EACCES"}
    assert shadow["summary"].endswith("opened /etc/shadow for reading in pod shop/web-0 container app; "
                                      "it failed with EACCES")
    cron = by_rule[("write_below_etc_or_bin", "openat")]
    assert cron["syscall"]["flags"] == ["O_WRONLY", "O_CREAT", "O_TRUNC"] and cron["syscall"]["mode"] == "0644"
    chmod = by_rule[("setuid_setgid_chmod", "fchmodat")]
    assert chmod["syscall"]["mode"] == "4755"
    ptrace = by_rule[("ptrace_attach_or_poke", "ptrace")]
    assert ptrace["syscall"] == {"name": "ptrace", "request": "PTRACE_SEIZE", "target_pid": 77,
                                 "return_code": -1, "error": "EPERM"}
    conn = by_rule[("egress_outside_allowed_cidrs", "connect")]
    assert conn["syscall"] == {"name": "connect", "family": "AF_INET6", "dst_ip": "2001:db8::5", "dst_port": 443,
                               "return_code": -115, "error": "EINPROGRESS"}
    assert "connected to [2001:db8::5]:443" in conn["summary"]
    api = by_rule[("kubernetes_api_from_unexpected_pod", "connect")]
    assert "in pod /0b4d5c7e-1111 container 3f2a9c" in api["summary"] and api["namespace"] == ""
    tmp = by_rule[("exec_from_temp_dir", "execve")]
    assert tmp["syscall"]["path"] == "/tmp/x" and tmp["process"]["args_truncated"] is True


def test_host_process_event(tmp_path):
    p = tmp_path / "host.yaml"
    p.write_text("rules:\n  - name: host_shadow\n    event: open\n    condition: {in_pod: false}\n"
                 "    severity: critical\n    tags: [T1003.008]\n")
    rs = load_rules([p])
    e = ev("open", comm="cat", path="/etc/shadow")
    [rule] = rs.match(e, HOST)
    obj = build_event(rule, e, HOST)
    VALIDATOR.validate(obj)
    assert (obj["namespace"], obj["pod"], obj["container"], obj["in_pod"]) == ("", "", "", False)
    assert obj["host_cgroup"] == "system.slice/ssh.service"
    assert obj["summary"].endswith("on the host (system.slice/ssh.service)")


def test_summary_template(tmp_path):
    p = tmp_path / "t.yaml"
    p.write_text("rules:\n  - name: t\n    event: open\n    condition: {}\n    severity: info\n"
                 "    summary: '{rule}/{severity}: {process.name} opened {path} ({open.flags}) in {namespace}'\n")
    rs = load_rules([p])
    e = ev("open", comm="cat", path="../etc/./shadow", cwd="/srv", flags=0o2)
    [rule] = rs.match(e, pod())
    assert build_event(rule, e, pod())["summary"] == "t/info: cat opened /etc/shadow (O_RDWR) in shop"


@pytest.mark.parametrize("ts,text", [
    (0, "1970-01-01T00:00:00.000000000Z"),
    (1_764_136_536_000_000_001, "2025-11-26T05:55:36.000000001Z"),
])
def test_rfc3339_nanoseconds(ts, text):
    assert rfc3339_ns(ts) == text


def test_flag_names_keep_unknown_bits():
    assert open_flag_names(0o4010001) == ["O_WRONLY", "O_SYNC"]
    assert open_flag_names(0o10001) == ["O_WRONLY", "O_DSYNC"]
    assert open_flag_names(3 | 0x80000000) == ["O_ACCMODE", "0x80000000"]


def test_process_identity_survives_pid_reuse():
    """start and exec_id tell two processes that had the same pid apart."""
    import base64

    from podsight.security import RawEvent
    rules = load_rules([DEFAULT_RULES_PATH])
    rule = next(r for r in rules.rules if r.name == "shell_in_container")
    ident = {"node": "node-a", "namespace": "shop", "pod": "web", "in_pod": True}
    make = lambda start: RawEvent("exec", ts_ns=1_764_136_536_000_000_001, pid=77, ppid=1, comm="sh",  # noqa: E731
                                  exe="/bin/sh", path="/bin/sh", args=["sh"], start_ns=start,
                                  parent_start_ns=1_764_136_000_000_000_000, parent_exe="/usr/bin/containerd-shim")
    a, b = (json.loads(event_json(rule, make(s), ident)) for s in (1_764_136_500_000_000_000, 1_764_136_530_000_000_000))
    assert a["process"]["pid"] == b["process"]["pid"] and a["process"]["exec_id"] != b["process"]["exec_id"]
    assert base64.b64decode(a["process"]["exec_id"]).decode() == "node-a:1764136500000000000:77"
    assert a["process"]["start"] == "2025-11-26T05:55:00.000000000Z"
    assert a["parent"]["exe"] == "/usr/bin/containerd-shim" and a["parent"]["start"].startswith("2025-11-26T05:46:40")
