"""The JSON line is written directly, with cached parts; it must stay exactly
``json.dumps(build_event(...))``, whatever the strings and numbers are."""
from __future__ import annotations

import json
import string
import tempfile
import time
from pathlib import Path

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from podsight.security import RawEvent, build_event, event_json, load_rules
from podsight.security.events import IdentityPart, event_line, rfc3339_ns
from podsight.security.fields import EventView

from .helpers import HOST, ev, pod
from .test_events import RULES, SAMPLES


def reference(rule, e, idn) -> str:
    return json.dumps(build_event(rule, e, idn), ensure_ascii=False, separators=(",", ":"))


def test_samples_render_exactly_like_json_dumps():
    for e, idn in SAMPLES:
        for rule in RULES.match(e, idn):
            assert event_json(rule, e, idn) == reference(rule, e, idn)
            assert event_line(rule, e, IdentityPart(idn), EventView(e, idn)) == reference(rule, e, idn)


def test_a_changed_identity_mapping_is_rendered_afresh():
    e = ev("open", comm="cat", path="/etc/shadow")
    idn = pod()
    [rule] = RULES.match(e, idn)
    assert json.loads(event_json(rule, e, idn))["pod"] == "web-0"
    idn["pod"] = "web-1"
    idn["namespace"] = "other"
    obj = json.loads(event_json(rule, e, idn))
    assert (obj["namespace"], obj["pod"]) == ("other", "web-1")
    assert "in pod other/web-1" in obj["summary"]


def test_time_is_right_across_seconds_and_back():
    base = 1_764_136_536_000_000_000
    for ts in (base + 5, base + 1_000_000_007, base + 5, base - 1, 0, base + 999_999_999):
        secs, ns = divmod(ts, 1_000_000_000)
        want = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{ns:09d}Z"
        assert rfc3339_ns(ts) == want


# Strings the kernel can hand us: any UTF-8 (with replacement characters),
# quotes, backslashes, control characters, and planted secrets.
texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)
paths = st.one_of(texts, st.lists(st.sampled_from(["etc", "shadow", ".", "..", "", "tmp", "a b", "ü"]),
                                  max_size=5).map(lambda p: "/" + "/".join(p)))
u32 = st.integers(0, 2**32 - 1)
kinds = st.sampled_from(["exec", "open", "chmod", "ptrace", "connect"])


@st.composite
def raw_events(draw):
    kind = draw(kinds)
    fields = dict(
        ts_ns=draw(st.integers(0, 2**63 - 1)), cgroup_id=draw(st.integers(0, 2**64 - 1)),
        pid=draw(u32), tid=draw(u32), ppid=draw(u32), uid=draw(u32), gid=draw(u32),
        comm=draw(texts), exe=draw(paths), parent_comm=draw(texts), cwd=draw(paths),
        syscall=draw(st.sampled_from(["", "openat2", "execve", "fchmodat", "x\"y"])),
        path=draw(paths), flags=draw(u32), mode=draw(u32), ret=draw(st.integers(-4096, 2**31)),
    )
    if kind == "exec":
        fields.update(args=draw(st.lists(texts, max_size=5)), args_truncated=draw(st.booleans()))
    if kind == "ptrace":
        fields.update(ptrace_request=draw(st.integers(-1, 0x4300)), target_pid=draw(u32))
    if kind == "connect":
        fields.update(family=draw(st.sampled_from([1, 2, 10, 99])),
                      dst_ip=draw(st.sampled_from(["", "10.1.2.3", "2001:db8::5", "weird\n"])),
                      dst_port=draw(st.integers(0, 65535)))
    return RawEvent(kind, **fields)


identities = st.one_of(
    st.just(HOST),
    st.builds(pod, namespace=texts, pod=texts, container=texts, image=texts, pod_uid=texts),
    st.builds(pod, namespace=st.just(""), pod=st.just(""), in_pod=st.booleans()),
)


@st.composite
def any_rule(draw):
    """Every event kind, a generated summary or a template naming many fields, odd names and tags."""
    kind = draw(kinds)
    tags = draw(st.lists(texts, max_size=3))
    template = draw(st.sampled_from(["", "{process.name} {process.cmdline} {namespace} {pod_uid} {ret}",
                                     "{rule}/{severity}: {process.exe} in {process.cwd} \"{parent.name}\""]))
    if template and kind in ("exec", "open", "chmod"):
        template += " {path}"
    severity = draw(st.sampled_from(["critical", "error", "warning", "notice", "info"]))
    doc = {"rules": [{"name": "r-1.x", "event": kind, "condition": {}, "severity": severity, "tags": tags,
                      **({"summary": template} if template else {})}]}
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "r.yaml"
        p.write_text(json.dumps(doc))  # JSON is YAML
        return load_rules([p]).rules[0]


@settings(max_examples=400, deadline=None)
@given(rule=any_rule(), e=raw_events(), idn=identities)
def test_any_event_renders_exactly_like_json_dumps(rule, e, idn):
    if e.kind != rule.event:
        e.kind = rule.event
    line = event_json(rule, e, idn)
    assert line == reference(rule, e, idn)
    assert "\n" not in line


@settings(max_examples=200, deadline=None)
@given(secret=st.text(alphabet=string.ascii_letters + string.digits, min_size=8, max_size=20))
def test_planted_secrets_in_paths_and_exe_are_masked_in_every_field(secret):
    def event(s):
        return ev("exec", comm="git", exe=f"/opt/tools/PASSWORD={s}/git", path=f"/opt/tools/PASSWORD={s}/git",
                  cwd=f"/srv/token={s}", args=["git", "clone", f"https://bob:{s}@git.example.com/x", f"--password={s}"])

    # The shipped exec rules (generated summaries) and a template naming every path-like field.
    rules = [r for r in RULES.rules if r.event == "exec"] + [_catch_all()]
    for rule in rules:
        assume(secret not in event_line(rule, event("PLACEHOLDER"), IdentityPart(pod())))  # not there by chance
        e = event(secret)
        line = event_line(rule, e, IdentityPart(pod()), EventView(e, pod()))
        assert secret not in line, line
        assert line == reference(rule, e, pod())


_CATCH_ALL = None


def _catch_all():
    global _CATCH_ALL
    if _CATCH_ALL is None:
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / "r.yaml"
            p.write_text("rules:\n  - name: all\n    event: exec\n    condition: {}\n    severity: info\n"
                         "    summary: '{process.exe} {process.cwd} {path} {process.cmdline} {process.args}'\n")
            _CATCH_ALL = load_rules([p]).rules[0]
    return _CATCH_ALL
