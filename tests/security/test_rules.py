"""Rule files: validation errors name file, line, rule and field; loading semantics."""
from __future__ import annotations

import io
import textwrap

import pytest

from podsight.security import (
    BUILTIN_DEFAULT,
    DEFAULT_RULES_PATH,
    RuleError,
    check_files,
    config_lists,
    load_rules,
    main_rules_check,
)

from .helpers import ev, pod

GOOD_RULE = """\
rules:
  - name: cat_shadow
    event: open
    condition:
      path: /etc/shadow
    severity: warning
"""


def write(tmp_path, text, name="rules.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def only_error(paths, **kw) -> RuleError:
    errors = check_files(paths, **kw)
    assert len(errors) == 1, [str(e) for e in errors]
    return errors[0]


@pytest.mark.parametrize(
    "text,line,expected",
    [
        ("rules:\n  - name: x\n    event: [open\n", 4, "not valid YAML"),
        ("rules:\n  - name: x\n    event: open\n    colour: red\n    condition: {}\n    severity: info\n", 4,
         "rule 'x': colour: unknown field (expected one of: name, description, event"),
        ("rules:\n  - name: x\n    event: exe\n    condition: {}\n    severity: info\n", 3,
         "rule 'x': event: unknown event type 'exe' (expected one of: exec, open, chmod, ptrace, connect)"),
        ("rules:\n  - name: x\n    event: connect\n    condition:\n"
         "      dst.ip: {in_cidrs: [10.0.0.0/8, 10.0.0.300/32]}\n    severity: info\n", 5,
         "rule 'x': dst.ip: expected an IP address or CIDR, got '10.0.0.300/32'"),
        ("rules:\n  - name: x\n    event: open\n    condition:\n      open.flags: {any: [O_WRONLY, O_WRITE]}\n"
         "    severity: info\n", 5, "rule 'x': open.flags: unknown open flag 'O_WRITE'"),
        ("rules:\n  - name: x\n    event: open\n    condition:\n      open.flags: {any: [O_RDONLY]}\n"
         "    severity: info\n", 5, "O_RDONLY is 0 and cannot be tested as a bit; use 'open.read: true'"),
        ("rules:\n  - name: x\n    event: ptrace\n    condition:\n      ptrace.request: [PTRACE_ATACH]\n"
         "    severity: info\n", 5, "rule 'x': ptrace.request: unknown ptrace request 'PTRACE_ATACH'"),
        ("rules:\n  - name: x\n    event: open\n    condition: {}\n    severity: urgent\n", 5,
         "rule 'x': severity: unknown severity 'urgent' (expected one of: critical, error, warning, notice, info)"),
        ("rules:\n  - name: x\n    event: open\n    condition:\n      proces.name: sh\n    severity: info\n", 5,
         "rule 'x': proces.name: unknown field"),
        ("rules:\n  - name: x\n    event: exec\n    condition:\n      dst.port: 443\n    severity: info\n", 5,
         "rule 'x': dst.port: not available for event 'exec' (only connect)"),
        ("rules:\n  - name: x\n    event: exec\n    condition:\n      path: {startswith: /tmp}\n"
         "    severity: info\n", 5, "rule 'x': path: unknown operator 'startswith' for a str field"),
        ("rules:\n  - name: x\n    event: exec\n    condition:\n      process.name: [$shells]\n"
         "    severity: info\n", 5, "rule 'x': unknown list '$shells'"),
        ("rules:\n  - name: x\n    event: chmod\n    condition:\n      mode: {any_bits: [S_ISUID, 9000]}\n"
         "    severity: info\n", 5, "rule 'x': mode: expected a mode bit name (S_ISUID, ...) or an octal mode"),
        ("rules:\n  - name: x\n    event: open\n    condition:\n      process.uid: {lt: root}\n"
         "    severity: info\n", 5, "rule 'x': process.uid: expected an integer, got 'root'"),
        ("rules:\n  - name: x\n    event: open\n    severity: info\n", 2,
         "rule 'x': missing required field(s): condition"),
        ("rules:\n  - name: x y\n    event: open\n    condition: {}\n    severity: info\n", 2,
         "name: expected a name of letters, digits"),
        ("rulez: []\n", 1, "unknown top-level key 'rulez' (expected lists, rules)"),
        ("rules:\n  - name: x\n    event: open\n    requires: [nope]\n    condition: {}\n    severity: info\n", 4,
         "rule 'x': requires: unknown list 'nope'"),
        ("rules:\n  - name: x\n    event: open\n    summary: '{process.name} read {dst.ip}'\n    condition: {}\n"
         "    severity: info\n", 4, "rule 'x': summary: unknown placeholder {dst.ip} for event 'open'"),
        ("rules:\n  - name: x\n    event: open\n    condition:\n      path: /a\n      path: /b\n    severity: info\n",
         6, "rule 'x': path: appears twice in one condition"),
        ("rules:\n  - name: x\n    event: open\n    enabled: maybe\n    condition: {}\n    severity: info\n", 4,
         "rule 'x': enabled: expected true or false, got 'maybe'"),
        ("rules:\n  - name: x\n    event: open\n    condition:\n      any_of: []\n    severity: info\n", 5,
         "rule 'x': any_of: expected a non-empty list of conditions"),
    ],
)
def test_error_names_file_line_rule_and_field(tmp_path, text, line, expected):
    path = write(tmp_path, text)
    err = only_error([path])
    assert str(err).startswith(f"{path}:{line}: "), str(err)
    assert expected in str(err)
    assert err.file == str(path) and err.line == line


def test_bad_cidr_in_a_list_points_at_the_list_item(tmp_path):
    path = write(tmp_path, """\
        lists:
          nets:
            - 10.0.0.0/8
            - not-a-cidr
        rules:
          - name: egress
            event: connect
            condition:
              dst.ip: {not_in_cidrs: [$nets]}
            severity: notice
    """)
    err = only_error([path])
    assert str(err) == f"{path}:4: rule 'egress': dst.ip: expected an IP address or CIDR, got 'not-a-cidr'"


def test_error_in_an_appended_list_item_names_the_appending_file(tmp_path):
    base = write(tmp_path, "lists:\n  nets: [10.0.0.0/8]\n" + GOOD_RULE.replace(
        "path: /etc/shadow", "process.name: sh").replace("event: open", "event: connect").replace(
        "process.name: sh", "dst.ip: {in: [$nets]}"), "base.yaml")
    local = write(tmp_path, "lists:\n  nets:\n    append:\n      - 300.1.1.1\n", "local.yaml")
    err = only_error([base, local])
    assert str(err).startswith(f"{local}:4: rule 'cat_shadow': dst.ip: expected an IP address or CIDR")


def test_duplicate_rule_name_points_at_both_definitions(tmp_path):
    a = write(tmp_path, GOOD_RULE, "a.yaml")
    b = write(tmp_path, "\n\n" + GOOD_RULE, "b.yaml")
    err = only_error([a, b])
    assert str(err) == (f"{b}:4: rule 'cat_shadow': name: duplicate rule name (first defined at {a}:2; "
                        "use 'override: true' to change it)")


def test_list_redefinition_needs_append_or_replace(tmp_path):
    a = write(tmp_path, "lists:\n  l: [a]\n", "a.yaml")
    b = write(tmp_path, "lists:\n  l: [b]\n", "b.yaml")
    err = only_error([a, b])
    assert str(err).startswith(f"{b}:2: list 'l': already defined at {a}:2")


def test_override_of_unknown_rule(tmp_path):
    p = write(tmp_path, "rules:\n  - name: shell_in_container\n    override: true\n    enabled: false\n")
    err = only_error([p])
    assert "rule 'shell_in_container': override: override of a rule no earlier file defines" in str(err)
    assert f"e.g. {BUILTIN_DEFAULT}" in str(err)
    assert check_files([BUILTIN_DEFAULT, p]) == []


def test_override_cannot_change_the_condition(tmp_path):
    p = write(tmp_path, "rules:\n  - name: shell_in_container\n    override: true\n    condition: {}\n")
    err = only_error([DEFAULT_RULES_PATH, p])
    assert f"{p}:4: rule 'shell_in_container': condition: cannot be overridden" in str(err)


def test_list_loop_is_reported(tmp_path):
    p = write(tmp_path, """\
        lists:
          a: [x, $b]
          b: [$a]
        rules:
          - name: r
            event: exec
            condition: {process.name: [$a]}
            severity: info
    """)
    err = only_error([p])
    assert "lists refer to each other in a loop: a -> b -> a" in str(err)


def test_all_errors_are_collected_and_load_rules_raises_them_all(tmp_path):
    p = write(tmp_path, """\
        rules:
          - name: one
            event: nope
            condition: {}
            severity: info
          - name: two
            event: open
            condition: {}
            severity: loud
    """)
    errors = check_files([p])
    assert [e.line for e in errors] == [3, 9]
    with pytest.raises(RuleError) as info:
        load_rules([p])
    assert str(info.value).splitlines() == [str(e) for e in errors]


def test_unreadable_and_empty_inputs(tmp_path):
    missing = tmp_path / "missing.yaml"
    err = only_error([missing])
    assert str(err).startswith(f"{missing}: cannot read: No such file or directory")
    assert str(only_error([])) == "(rules): no rule files given"
    empty = write(tmp_path, "", "empty.yaml")
    assert load_rules([empty]).rules == ()


def test_yaml_11_booleans_and_numbers_stay_strings_for_string_fields(tmp_path):
    p = write(tmp_path, """\
        rules:
          - name: odd_names
            event: exec
            condition:
              process.name: [yes, on, 0777, "$$dollar"]
            severity: info
    """)
    rs = load_rules([p])
    for comm in ("yes", "on", "0777", "$dollar"):
        assert [r.name for r in rs.match(ev("exec", comm=comm), pod())] == ["odd_names"], comm
    assert rs.match(ev("exec", comm="True"), pod()) == []


def test_external_lists_replace_file_defaults_and_are_validated(tmp_path):
    rs = load_rules([DEFAULT_RULES_PATH], lists={"allowed_egress_cidrs": ["10.0.0.0/8"]})
    assert rs.lists["allowed_egress_cidrs"] == ("10.0.0.0/8",)
    errors = check_files([DEFAULT_RULES_PATH], lists={"allowed_egress_cidrs": ["10.0.0.0/33"]})
    assert len(errors) == 1
    assert str(errors[0]).startswith("security.egress.allowed_cidrs: rule 'egress_outside_allowed_cidrs': dst.ip")


def test_config_lists_reads_config_and_in_cluster_environment():
    class Egress:
        allowed_cidrs = ["10.0.0.0/8"]

    class Security:
        egress = Egress()

    class Cfg:
        security = Security()

    assert config_lists(Cfg(), {"KUBERNETES_SERVICE_HOST": "10.96.0.1"}) == {
        "allowed_egress_cidrs": ["10.0.0.0/8"], "kubernetes_api_cidrs": ["10.96.0.1"]}
    Egress.kubernetes_api_cidrs = ["172.20.0.1/32"]
    assert config_lists(Cfg(), {"KUBERNETES_SERVICE_HOST": "10.96.0.1"})["kubernetes_api_cidrs"] == [
        "172.20.0.1/32"]
    assert "kubernetes_api_cidrs" not in config_lists(type("C", (), {"security": None})(), {})


def test_default_rules_are_valid():
    assert check_files([BUILTIN_DEFAULT]) == []
    rs = load_rules([BUILTIN_DEFAULT])
    assert rs.files == (str(DEFAULT_RULES_PATH),)
    assert all(r.tags and r.description for r in rs.rules)
    assert all(any(t.startswith("T1") for t in r.tags) for r in rs.rules)  # a MITRE id on each


def test_disabled_rule_is_not_matched(tmp_path):
    p = write(tmp_path, GOOD_RULE + "    enabled: false\n")
    rs = load_rules([p])
    assert rs.rules[0].inactive_reason == "disabled"
    assert rs.match(ev("open", path="/etc/shadow"), pod()) == []
    assert rs.kinds() == []


def test_main_rules_check_ok_and_failure(tmp_path, capsys):
    good = write(tmp_path, GOOD_RULE, "good.yaml")
    out, err = io.StringIO(), io.StringIO()
    assert main_rules_check([str(good)], out=out, err=err) == 0
    assert out.getvalue().startswith("OK: 1 rules (1 active) in 1 file(s)")
    bad = write(tmp_path, "rules:\n  - name: x\n    event: exe\n    condition: {}\n    severity: info\n", "bad.yaml")
    out, err = io.StringIO(), io.StringIO()
    assert main_rules_check([str(good), str(bad)], out=out, err=err) == 1
    assert err.getvalue().splitlines() == [
        f"{bad}:3: rule 'x': event: unknown event type 'exe' (expected one of: exec, open, chmod, ptrace, connect)",
        "1 error; nothing would be attached",
    ]
    assert out.getvalue() == ""
    # default streams
    assert main_rules_check([BUILTIN_DEFAULT]) == 0
    assert "inactive: egress_outside_allowed_cidrs" in capsys.readouterr().out
