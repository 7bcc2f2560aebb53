"""Condition operators: what each one matches, on real compiled rules."""
from __future__ import annotations

import textwrap

import pytest

from podsight.security import load_rules
from podsight.security.conditions import glob_to_regex
from podsight.security.fields import normalize_path, parse_ip

from .helpers import HOST, ev, pod


@pytest.fixture
def rule(tmp_path):
    """rule(kind, condition_yaml, exceptions_yaml=None) → predicate(event, identity)."""
    def make(kind, condition, exceptions=None, lists=""):
        text = f"lists:\n{textwrap.indent(textwrap.dedent(lists), '  ')}\n" if lists else ""
        text += f"rules:\n  - name: r\n    event: {kind}\n    severity: info\n    condition:\n"
        text += textwrap.indent(textwrap.dedent(condition), "      ")
        if exceptions:
            text += "    exceptions:\n" + textwrap.indent(textwrap.dedent(exceptions), "      ")
        path = tmp_path / "r.yaml"
        path.write_text(text)
        rs = load_rules([path])
        return lambda e, i=None: bool(rs.match(e, pod() if i is None else i))
    return make


def test_string_operators(rule):
    m = rule("exec", "process.exe: {prefix: [/usr/], suffix: [/curl, /wget]}\n")
    assert m(ev("exec", exe="/usr/bin/curl"))
    assert not m(ev("exec", exe="/opt/bin/curl"))
    assert not m(ev("exec", exe="/usr/bin/curly"))
    m = rule("exec", "process.cmdline: {contains: ['base64 -d', '| sh']}\n")
    assert m(ev("exec", args=["sh", "-c", "echo x | base64 -d"]))
    assert not m(ev("exec", args=["sh", "-c", "echo x"]))
    m = rule("exec", "process.name: {not_in: [sh, bash]}\n")
    assert m(ev("exec", comm="zsh")) and not m(ev("exec", comm="bash"))
    m = rule("exec", "process.args: '-c id'\n")
    assert m(ev("exec", args=["sh", "-c", "id"])) and not m(ev("exec", args=["-c", "id"]))


def test_glob_star_stays_in_one_segment_and_double_star_crosses(rule):
    m = rule("open", "path: {glob: ['/home/*/.ssh/id_*']}\n")
    assert m(ev("open", path="/home/bob/.ssh/id_rsa"))
    assert not m(ev("open", path="/home/bob/x/.ssh/id_rsa"))
    m = rule("open", "path: {glob: ['/srv/**.pem', '/etc/ssl/private/key?.[pk][!x]m']}\n")
    assert m(ev("open", path="/srv/a/b/c.pem"))
    assert m(ev("open", path="/etc/ssl/private/key1.pem"))
    assert not m(ev("open", path="/etc/ssl/private/key1.pxm"))
    assert not m(ev("open", path="/etc/ssl/private/key12.pem"))
    assert glob_to_regex("a.b+c") == r"a\.b\+c"


def test_path_is_normalized_before_matching(rule):
    m = rule("open", "path: /etc/shadow\n")
    for spelled in ("/etc/shadow", "//etc/shadow", "/etc/./shadow", "/tmp/../etc/shadow", "/./etc//shadow"):
        assert m(ev("open", path=spelled)), spelled
    assert m(ev("open", path="../etc/shadow", cwd="/srv"))
    assert not m(ev("open", path="shadow", cwd=""))  # unknown cwd: cannot resolve
    assert normalize_path("etc/shadow", "/") == "/etc/shadow"
    assert normalize_path("", "/x") == ""


def test_integer_comparisons(rule):
    m = rule("open", "process.uid: {ge: 1000, lt: 2000}\n")
    assert m(ev("open", uid=1000)) and m(ev("open", uid=1999))
    assert not m(ev("open", uid=999)) and not m(ev("open", uid=2000))
    m = rule("open", "ret: {in: [-13, -1]}\n")
    assert m(ev("open", ret=-13)) and not m(ev("open", ret=3))
    m = rule("open", "success: false\n")
    assert m(ev("open", ret=-2)) and not m(ev("open", ret=0))


def test_open_flags_and_access(rule):
    m = rule("open", "open.flags: {any: [O_CREAT, O_TRUNC], none: [O_EXCL]}\n")
    assert m(ev("open", flags=0o1101))
    assert not m(ev("open", flags=0o1301))      # O_EXCL set
    assert not m(ev("open", flags=0o2000000))   # neither
    m = rule("open", "open.flags: {all: [O_WRONLY, O_SYNC]}\n")
    assert m(ev("open", flags=0o1 | 0o4010000))
    assert not m(ev("open", flags=0o1 | 0o10000))  # O_DSYNC alone is not O_SYNC
    m = rule("open", "open.read: true\nopen.write: false\n")
    assert m(ev("open", flags=0)) and not m(ev("open", flags=2)) and not m(ev("open", flags=0o100))
    assert not m(ev("open", flags=0o10000000))  # O_PATH reads nothing


def test_mode_bits_are_octal(rule):
    m = rule("chmod", "mode: {any_bits: [S_ISUID, '2000'], none_bits: [0o002]}\n")
    assert m(ev("chmod", mode=0o4755)) and m(ev("chmod", mode=0o2755))
    assert not m(ev("chmod", mode=0o4757))
    assert not m(ev("chmod", mode=0o755))
    m = rule("chmod", "mode: {all_bits: [S_IWOTH, S_IXOTH]}\n")
    assert m(ev("chmod", mode=0o777)) and not m(ev("chmod", mode=0o775))


def test_ptrace_requests_by_name_or_number(rule):
    m = rule("ptrace", "ptrace.request: [PTRACE_ATTACH, 16902]\nptrace.target_pid: {gt: 1}\n")
    assert m(ev("ptrace", ptrace_request=16, target_pid=5))
    assert m(ev("ptrace", ptrace_request=0x4206, target_pid=5))
    assert not m(ev("ptrace", ptrace_request=16, target_pid=1))
    assert not m(ev("ptrace", ptrace_request=2, target_pid=5))


def conn(ip: str, family: int | None = None):
    return ev("connect", dst_ip=ip, family=family if family is not None else (10 if ":" in ip else 2))


def test_cidrs_v4_v6_and_mapped(rule):
    m = rule("connect", "dst.ip: {in_cidrs: [10.0.0.0/8, 192.168.1.7, 'fd00::/8']}\n")
    assert m(conn("10.200.3.4"))
    assert m(conn("192.168.1.7")) and not m(conn("192.168.1.8"))
    assert m(conn("fd12::1")) and not m(conn("fe80::1"))
    assert m(conn("::ffff:10.1.1.1"))
    assert not m(conn("")) and not m(conn("garbage"))
    assert not m(conn("10.200.3.4", family=1))  # only AF_INET/AF_INET6 have an IP destination
    m = rule("connect", "dst.ip: {not_in_cidrs: [0.0.0.0/1]}\n")
    assert m(conn("203.0.113.1")) and not m(conn("10.0.0.1"))
    assert m(conn("2001:db8::1"))   # an IPv6 address is outside an IPv4-only list
    assert not m(conn(""))          # no IP destination: the test is false
    assert not m(conn("203.0.113.1", family=1))
    assert parse_ip("fe80::1%eth0") == (6, 0xFE800000000000000000000000000001)


def test_any_of_all_of_not(rule):
    m = rule("exec", """\
        any_of:
          - process.name: sh
          - all_of:
              - process.name: python3
              - process.args: {prefix: ['-c']}
        not:
          parent.name: [cron]
    """)
    assert m(ev("exec", comm="sh", parent_comm="bash"))
    assert not m(ev("exec", comm="sh", parent_comm="cron"))
    assert m(ev("exec", comm="python3", args=["python3", "-c", "1"]))
    assert not m(ev("exec", comm="python3", args=["python3", "app.py"]))


def test_exceptions_suppress_and_lists_nest(rule):
    m = rule("exec", "process.name: [$shells]\n",
             exceptions="- name: ci\n  condition: {namespace: ci}\n- {parent.name: [$allowed]}\n",
             lists="base: [sh]\nshells: [$base, bash]\nallowed: [make]\n")
    assert m(ev("exec", comm="sh")) and m(ev("exec", comm="bash"))
    assert not m(ev("exec", comm="sh"), pod(namespace="ci"))
    assert not m(ev("exec", comm="sh", parent_comm="make"))


def test_identity_fields(rule):
    m = rule("open", "namespace: {prefix: [team-]}\nimage: {glob: ['*/nginx:*']}\nin_pod: true\n")
    assert m(ev("open"), pod(namespace="team-a", image="docker.io/nginx:1.27"))
    assert not m(ev("open"), pod(namespace="ops", image="docker.io/nginx:1.27"))
    assert not m(ev("open"), HOST)
    m = rule("open", "in_pod: false\n")
    assert m(ev("open"), HOST) and not m(ev("open"))
    m = rule("open", "{}\n")
    assert m(ev("open")) and m(ev("open"), HOST)


def test_unknown_field_suggests_the_closest(tmp_path):
    from podsight.security import check_files
    p = tmp_path / "r.yaml"
    p.write_text("rules:\n  - name: r\n    event: exec\n    condition: {proces.name: sh}\n    severity: info\n")
    [err] = check_files([p])
    assert str(err).endswith("proces.name: unknown field (did you mean 'process.name'?)")
