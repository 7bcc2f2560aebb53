"""Each shipped rule: events that must fire it and events that must not."""
from __future__ import annotations

import pytest

from podsight.security import DEFAULT_RULES_PATH, load_rules

from .helpers import HOST, ev, pod

LISTS = {"allowed_egress_cidrs": ["10.0.0.0/8", "192.168.0.0/16"], "kubernetes_api_cidrs": ["10.96.0.1"]}
RULES = load_rules([DEFAULT_RULES_PATH], lists=LISTS)

O_RDONLY, O_WRONLY, O_RDWR, O_CREAT, O_TRUNC, O_APPEND, O_CLOEXEC = 0, 1, 2, 0o100, 0o1000, 0o2000, 0o2000000
AF_UNIX, AF_INET, AF_INET6 = 1, 2, 10

SA = "/var/run/secrets/kubernetes.io/serviceaccount"

FIRES = [
    ("shell_in_container", ev("exec", comm="sh", exe="/bin/dash", path="/bin/sh", args=["sh", "-c", "id"]), pod()),
    ("shell_in_container", ev("exec", comm="bash", exe="/usr/bin/bash", path="/bin/bash", args=["bash"],
                              parent_comm="containerd-shim"), pod()),
    ("exec_from_temp_dir", ev("exec", comm="x", exe="/tmp/x", path="/tmp/x", args=["/tmp/x"]), pod()),
    ("exec_from_temp_dir", ev("exec", comm="payload", exe="", path="./payload", cwd="/dev/shm",
                              args=["./payload"]), pod()),
    ("exec_from_temp_dir", ev("exec", comm="sh", exe="/bin/dash", path="/bin/sh",
                              args=["sh", "/var/tmp/s.sh"]), pod()),
    ("exec_from_temp_dir", ev("exec", comm="x", exe="/tmp/x", path="/usr/../tmp/x", args=["x"]), pod()),
    ("sensitive_file_read", ev("open", comm="cat", path="/etc/shadow", flags=O_RDONLY | O_CLOEXEC), pod()),
    ("sensitive_file_read", ev("open", comm="cat", path="/etc//./shadow", flags=O_RDONLY), pod()),
    ("sensitive_file_read", ev("open", comm="cat", path="shadow", cwd="/etc", flags=O_RDONLY), pod()),
    ("sensitive_file_read", ev("open", comm="cat", path="/etc/sudoers.d/90-admins", flags=O_RDONLY), pod()),
    ("sensitive_file_read", ev("open", comm="cp", path="/root/.ssh/id_rsa", flags=O_RDONLY), pod()),
    ("sensitive_file_read", ev("open", comm="cp", path="/home/bob/.ssh/id_ed25519", flags=O_RDWR), pod()),
    ("service_account_token_read", ev("open", path=f"{SA}/token", flags=O_RDONLY), pod()),
    ("service_account_token_read", ev("open", comm="curl",
                                      path="/run/secrets/kubernetes.io/serviceaccount/..2026_11_26/token",
                                      flags=O_RDONLY), pod()),
    ("write_below_etc_or_bin", ev("open", comm="sh", path="/etc/passwd", flags=O_WRONLY | O_APPEND), pod()),
    ("write_below_etc_or_bin", ev("open", comm="curl", path="/usr/local/bin/kubectl",
                                  flags=O_WRONLY | O_CREAT | O_TRUNC, mode=0o755), pod()),
    ("write_below_etc_or_bin", ev("open", comm="sh", path="/etc/ld.so.preload", flags=O_RDWR | O_CREAT), pod()),
    ("write_below_etc_or_bin", ev("open", comm="sh", path="/bin/ls", flags=O_TRUNC), pod()),
    ("setuid_setgid_chmod", ev("chmod", comm="chmod", path="/tmp/sh", mode=0o4755, syscall="fchmodat"), pod()),
    ("setuid_setgid_chmod", ev("chmod", comm="chmod", path="/srv/bin", mode=0o2775), pod()),
    ("setuid_setgid_chmod", ev("chmod", comm="python3", path="", mode=0o6711, syscall="fchmod"), pod()),
    ("ptrace_attach_or_poke", ev("ptrace", comm="strace", ptrace_request=0x4206, target_pid=17), pod()),
    ("ptrace_attach_or_poke", ev("ptrace", comm="gdb", ptrace_request=16, target_pid=17), pod()),
    ("ptrace_attach_or_poke", ev("ptrace", comm="python3", ptrace_request=4, target_pid=17), pod()),
    ("egress_outside_allowed_cidrs", ev("connect", family=AF_INET, dst_ip="203.0.113.7", dst_port=443), pod()),
    ("egress_outside_allowed_cidrs", ev("connect", family=AF_INET6, dst_ip="2001:db8::1", dst_port=80), pod()),
    ("egress_outside_allowed_cidrs", ev("connect", family=AF_INET6, dst_ip="::ffff:203.0.113.7",
                                        dst_port=80, ret=-115), pod()),
    ("kubernetes_api_from_unexpected_pod", ev("connect", family=AF_INET, dst_ip="10.96.0.1", dst_port=443), pod()),
]

QUIET = [
    ("shell_in_container", ev("exec", comm="sh", exe="/bin/dash", path="/bin/sh", args=["sh", "-c", "id"]), HOST),
    ("shell_in_container", ev("exec", comm="python3", path="/usr/bin/python3", args=["python3"]), pod()),
    ("exec_from_temp_dir", ev("exec", comm="ls", exe="/usr/bin/ls", path="/usr/bin/ls", args=["ls"]), pod()),
    ("exec_from_temp_dir", ev("exec", comm="x", exe="/tmp/x", path="/tmp/x", args=["/tmp/x"]), HOST),
    ("exec_from_temp_dir", ev("exec", comm="x", exe="/tmpfs/x", path="/tmpfs/x", args=["x"]), pod()),
    ("exec_from_temp_dir", ev("exec", comm="sh", exe="/bin/dash", path="/bin/sh",
                              args=["sh", "-c", "ls /tmp/"]), pod()),
    ("sensitive_file_read", ev("open", comm="cat", path="/etc/shadow", flags=O_RDONLY), HOST),
    ("sensitive_file_read", ev("open", comm="cat", path="/etc/passwd", flags=O_RDONLY), pod()),
    ("sensitive_file_read", ev("open", comm="unix_chkpwd", path="/etc/shadow", flags=O_RDONLY), pod()),
    ("sensitive_file_read", ev("open", comm="ssh", path="/home/bob/.ssh/id_ed25519.pub", flags=O_RDONLY), pod()),
    ("sensitive_file_read", ev("open", comm="ssh", path="/root/.ssh/known_hosts", flags=O_RDONLY), pod()),
    ("sensitive_file_read", ev("open", comm="sh", path="/etc/shadow", flags=O_WRONLY), pod()),
    ("service_account_token_read", ev("open", comm="kubectl", path=f"{SA}/token", flags=O_RDONLY), pod()),
    ("service_account_token_read", ev("open", path=f"{SA}/token", flags=O_RDONLY), pod(namespace="kube-system")),
    ("service_account_token_read", ev("open", path=f"{SA}/namespace", flags=O_RDONLY), pod()),
    ("service_account_token_read", ev("open", path=f"{SA}/token", flags=O_RDONLY), HOST),
    ("write_below_etc_or_bin", ev("open", comm="nginx", path="/etc/hosts", flags=O_RDONLY), pod()),
    ("write_below_etc_or_bin", ev("open", comm="dpkg", path="/usr/bin/curl", flags=O_WRONLY | O_CREAT), pod()),
    ("write_below_etc_or_bin", ev("open", comm="etcd", path="/etcd/member/wal", flags=O_WRONLY), pod()),
    ("write_below_etc_or_bin", ev("open", comm="sh", path="/etc/passwd", flags=O_WRONLY), HOST),
    ("setuid_setgid_chmod", ev("chmod", comm="chmod", path="/srv/run.sh", mode=0o755), pod()),
    ("setuid_setgid_chmod", ev("chmod", comm="chmod", path="/tmp/sh", mode=0o4755), HOST),
    ("setuid_setgid_chmod", ev("chmod", comm="dpkg", path="/usr/bin/passwd", mode=0o4755), pod()),
    ("setuid_setgid_chmod", ev("chmod", comm="chmod", path="/srv/x", mode=0o1777), pod()),
    ("ptrace_attach_or_poke", ev("ptrace", comm="app", ptrace_request=0, target_pid=0), pod()),
    ("ptrace_attach_or_poke", ev("ptrace", comm="gdb", ptrace_request=2, target_pid=17), pod()),
    ("ptrace_attach_or_poke", ev("ptrace", comm="strace", ptrace_request=16, target_pid=17), HOST),
    ("egress_outside_allowed_cidrs", ev("connect", family=AF_INET, dst_ip="10.1.2.3", dst_port=5432), pod()),
    ("egress_outside_allowed_cidrs", ev("connect", family=AF_INET6, dst_ip="::ffff:10.1.2.3",
                                        dst_port=5432), pod()),
    ("egress_outside_allowed_cidrs", ev("connect", family=AF_INET, dst_ip="127.0.0.1", dst_port=8080), pod()),
    ("egress_outside_allowed_cidrs", ev("connect", family=AF_INET6, dst_ip="::1", dst_port=8080), pod()),
    ("egress_outside_allowed_cidrs", ev("connect", family=AF_UNIX, dst_ip="", dst_port=0), pod()),
    ("egress_outside_allowed_cidrs", ev("connect", family=AF_INET, dst_ip="203.0.113.7", dst_port=443), HOST),
    ("kubernetes_api_from_unexpected_pod", ev("connect", family=AF_INET, dst_ip="10.96.0.1", dst_port=443),
     pod(namespace="kube-system")),
    ("kubernetes_api_from_unexpected_pod", ev("connect", family=AF_INET, dst_ip="10.96.0.1", dst_port=80), pod()),
    ("kubernetes_api_from_unexpected_pod", ev("connect", family=AF_INET, dst_ip="10.96.0.2", dst_port=443), pod()),
    ("kubernetes_api_from_unexpected_pod", ev("connect", family=AF_INET, dst_ip="10.96.0.1", dst_port=443), HOST),
]


def _ids(cases):
    return [f"{rule}-{i}" for i, (rule, *_rest) in enumerate(cases)]


@pytest.mark.parametrize("rule,event,identity", FIRES, ids=_ids(FIRES))
def test_rule_fires(rule, event, identity):
    assert rule in [r.name for r in RULES.match(event, identity)]


@pytest.mark.parametrize("rule,event,identity", QUIET, ids=_ids(QUIET))
def test_rule_stays_quiet(rule, event, identity):
    assert rule not in [r.name for r in RULES.match(event, identity)]


def test_every_default_rule_has_both_kinds_of_case():
    names = {r.name for r in RULES.rules}
    assert names == {c[0] for c in FIRES} == {c[0] for c in QUIET}


def test_ordinary_pod_activity_matches_nothing():
    quiet = [
        ev("open", path="/srv/app/static/main.css", flags=O_RDONLY | O_CLOEXEC),
        ev("open", path="/srv/app/cache/x.tmp", flags=O_WRONLY | O_CREAT, mode=0o644),
        ev("exec", comm="python3", path="/usr/bin/python3", args=["python3", "manage.py"]),
        ev("connect", family=AF_INET, dst_ip="10.96.0.10", dst_port=53),
        ev("chmod", path="/srv/app/run.sh", mode=0o755),
    ]
    for e in quiet:
        assert RULES.match(e, pod()) == [], e


def test_network_rules_are_inactive_until_configured():
    rules = {r.name: r for r in load_rules([DEFAULT_RULES_PATH]).rules}
    for name in ("egress_outside_allowed_cidrs", "kubernetes_api_from_unexpected_pod"):
        assert not rules[name].active and "list(s) empty" in rules[name].inactive_reason
    ruleset = load_rules([DEFAULT_RULES_PATH])
    outside = ev("connect", family=AF_INET, dst_ip="203.0.113.7", dst_port=443)
    assert ruleset.match(outside, pod()) == []


def test_kubernetes_api_outside_allowed_cidrs_fires_both_rules():
    rs = load_rules([DEFAULT_RULES_PATH], lists={"allowed_egress_cidrs": ["192.168.0.0/16"],
                                                  "kubernetes_api_cidrs": ["10.96.0.1"]})
    e = ev("connect", family=AF_INET, dst_ip="10.96.0.1", dst_port=443)
    assert {r.name for r in rs.match(e, pod())} == {"egress_outside_allowed_cidrs",
                                                    "kubernetes_api_from_unexpected_pod"}


def test_user_file_extends_allow_lists_and_disables_rules(tmp_path):
    local = tmp_path / "local.yaml"
    local.write_text(
        "lists:\n"
        "  ptrace_allowed_processes: {append: [dlv]}\n"
        "  shell_allowed_images: {append: [registry.example/shop/]}\n"
        "rules:\n"
        "  - name: write_below_etc_or_bin\n"
        "    override: true\n"
        "    enabled: false\n"
        "  - name: sensitive_file_read\n"
        "    override: true\n"
        "    severity: critical\n"
        "    exceptions:\n"
        "      - name: backup_job\n"
        "        condition: {namespace: backup, process.name: restic}\n"
    )
    rs = load_rules([DEFAULT_RULES_PATH, local], lists=LISTS)
    names = lambda e, i=None: [r.name for r in rs.match(e, i or pod())]  # noqa: E731
    assert names(ev("ptrace", comm="dlv", ptrace_request=16, target_pid=3)) == []
    assert names(ev("ptrace", comm="gdb", ptrace_request=16, target_pid=3)) == ["ptrace_attach_or_poke"]
    assert names(ev("exec", comm="sh", path="/bin/sh", args=["sh"])) == []
    assert names(ev("exec", comm="sh", path="/bin/sh", args=["sh"]), pod(image="docker.io/alpine")) == [
        "shell_in_container"]
    assert names(ev("open", comm="sh", path="/etc/passwd", flags=O_WRONLY)) == []
    shadow = ev("open", comm="restic", path="/etc/shadow", flags=O_RDONLY)
    assert names(shadow, pod(namespace="backup")) == []
    fired = rs.match(shadow, pod())
    assert [r.name for r in fired] == ["sensitive_file_read"] and fired[0].severity == "critical"
