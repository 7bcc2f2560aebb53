"""kernel_filter: what it allows the kernel to drop, and that dropping never hides a match.

The model below runs security.bpf.c's filter on the very tables
``security_config()`` loads into the kernel (clauses, path and comm entries),
so the property checks the rules' compilation and its encoding together;
tests/kernel/test_kernel_filter_real.py holds the model to the loaded programs.
"""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from podsight.config import Config
from podsight.kernel.layouts import (CLAUSE_COMM, CLAUSE_PATH, CLAUSE_READ, CLAUSE_WRITE, SEC_KINDS, SEC_PATH_LEN,
                                     SecurityConfig)
from podsight.kernel.families.security import fit_clauses, security_config
from podsight.security import DEFAULT_RULES_PATH, RawEvent, kernel_filter, load_rules
from podsight.security.fields import normalize_path

from .helpers import HOST, pod

LISTS = {"allowed_egress_cidrs": ["10.0.0.0/8"], "kubernetes_api_cidrs": ["10.96.0.1"]}
RULES = load_rules([DEFAULT_RULES_PATH], lists=LISTS)
FILTER = kernel_filter(RULES)
TABLES = security_config(FILTER, Config())
O_PATH = 0o10000000


def unnormalized(raw: str) -> bool:
    """security.bpf.c ``unnormalized()``: a path the kernel may not judge.

    ``raw`` is the argument as the process passed it.  The kernel reads at most
    SEC_PATH_LEN - 1 bytes of it, and passes every path that fills that
    buffer (the cut may hide anything), so ``//`` and friends are searched in
    the whole of a shorter path.
    """
    return (len(raw.encode()) >= SEC_PATH_LEN - 1 or not raw.startswith("/") or "//" in raw or "/./" in raw
            or "/../" in raw or raw.endswith(("/.", "/..")))


def path_clauses(sc: SecurityConfig, raw: bytes) -> int:
    """match_path(): the clauses of the path entries ``raw`` equals or starts with."""
    out = 0
    for e in sc.paths[: sc.n_paths]:
        s = bytes(e.s)[: e.len]
        if raw.startswith(s) and (not e.exact or len(raw) == e.len):
            out |= e.clauses
    return out


def passes(sc: SecurityConfig, kind: int, paths: int, e: RawEvent) -> int:
    """passes(): the clauses of ``kind`` the event satisfies."""
    include = exclude = 0
    for c in sc.comms[: sc.n_comms]:
        if bytes(c.s) == e.comm.encode()[:15]:
            include, exclude = c.include, c.exclude
    flags = e.flags if e.kind == "open" else 0
    read = flags & 3 != 1 and not flags & O_PATH
    write = bool(flags & (0o1 | 0o2 | 0o100 | 0o1000))
    ok = 0
    for k in range(sc.n_clauses):
        c = sc.clauses[k]
        bit = 1 << k
        if not sc.kind_clauses[kind] & bit or exclude & bit:
            continue
        if (c.need & CLAUSE_PATH and not paths & bit) or (c.need & CLAUSE_COMM and not include & bit) or \
                (c.need & CLAUSE_READ and not read) or (c.need & CLAUSE_WRITE and not write) or \
                (c.mode_any and not e.mode & c.mode_any):
            continue
        ok |= bit
    return ok


def kernel_passes(f: dict, sc: SecurityConfig, e: RawEvent, idn) -> bool:
    """What security.bpf.c sends to user space (before any budget)."""
    if e.kind not in f["kinds"]:
        return False
    if f["pods_only"] and not idn.get("in_pod"):
        return False
    kind = SEC_KINDS.index(e.kind)
    if e.kind == "ptrace" and sc.n_requests and e.ptrace_request not in list(sc.requests[: sc.n_requests]):
        return False
    if e.kind == "connect" and sc.n_families and e.family not in list(sc.families[: sc.n_families]):
        return False
    if e.kind in ("exec", "open", "chmod") and e.syscall != "fchmod":
        raw = e.path.encode()[: SEC_PATH_LEN - 1]
        if unnormalized(e.path):
            return passes(sc, kind, ~0, e) != 0
        return passes(sc, kind, path_clauses(sc, raw), e) != 0
    return passes(sc, kind, 0, e) != 0


def test_default_rules_clauses():
    assert FILTER["kinds"] == ["exec", "open", "chmod", "ptrace", "connect"]
    assert FILTER["pods_only"] is True
    by_rule = {}
    for c in FILTER["clauses"]:
        by_rule.setdefault(c.rule, []).append(c)
    # Three ways to read a credential file, each an exact clause with the exceptions' names left out.
    reads = by_rule["sensitive_file_read"]
    assert len(reads) == 3 and all(c.read and not c.write and "sshd" in c.comm_out for c in reads)
    assert {("/etc/shadow", True), ("/etc/sudoers", True)} <= reads[0].paths
    assert ("/etc/ssh/ssh_host_", False) in reads[2].paths  # a glob's prefix
    [write] = by_rule["write_below_etc_or_bin"]
    assert write.write and ("/etc/", False) in write.paths and "dpkg" in write.comm_out
    [shell] = by_rule["shell_in_container"]
    assert shell.paths is None and "bash" in shell.comms
    assert by_rule["setuid_setgid_chmod"][0].mode_any == 0o6000
    assert FILTER["ptrace"]["requests"] == sorted([4, 5, 6, 13, 15, 16, 0x4205, 0x4206])
    assert FILTER["connect"]["families"] == [2, 10]
    assert TABLES.n_clauses == len(FILTER["clauses"]) and TABLES.n_paths > 20 and TABLES.n_comms > 50


def test_filter_narrows_with_the_rules(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("""\
rules:
  - name: w
    event: open
    severity: info
    condition:
      open.write: true
      any_of:
        - path: {prefix: [/etc/]}
        - path: {glob: ['/usr/*/bin/**']}
  - name: s
    event: exec
    condition: {process.name: [sh, bash], in_pod: true}
    severity: info
""")
    f = kernel_filter(load_rules([p]))
    assert f["kinds"] == ["exec", "open"]
    assert f["pods_only"] is False  # the open rule has no in_pod
    assert [(c.kind, c.rule, c.paths, c.comms, c.write) for c in f["clauses"]] == [
        ("open", "w", frozenset({("/etc/", False)}), None, True),
        ("open", "w", frozenset({("/usr/", False)}), None, True),
        ("exec", "s", None, frozenset({"sh", "bash"}), False),
    ]
    assert "connect" not in f


def test_no_active_rules_needs_nothing(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("rules:\n  - name: x\n    event: open\n    condition: {}\n    severity: info\n    enabled: false\n")
    assert kernel_filter(load_rules([p])) == {"kinds": [], "pods_only": False, "clauses": []}


def test_clauses_that_do_not_fit_are_widened_not_lost():
    many = FILTER["clauses"] * 4
    fitted = fit_clauses(many, 32)
    assert len(fitted) <= 32
    widened = [c for c in fitted if c.rule == "(widened)"]
    assert widened and all(c.paths is None and c.comms is None and not c.read and not c.write for c in widened)
    assert {c.kind for c in many[32 - 5:]} == {c.kind for c in widened}


_paths = st.one_of(
    st.sampled_from([
        "/etc/shadow", "/etc//shadow", "shadow", "../etc/shadow", "/tmp/../etc/passwd", "/tmp/x", "/dev/shm/p",
        "/srv/app/main.py", "/usr/local/bin/kubectl", "/home/bob/.ssh/id_rsa", "/root/.ssh/id_rsa.pub",
        "/var/run/secrets/kubernetes.io/serviceaccount/token", "/run/secrets/kubernetes.io/serviceaccount/token",
        "/etc/sudoers.d/x", "", "./payload", "/bin/sh", "/usr/bin/python3", "/etc/shadow/.", "//etc/shadow",
        "/./etc/shadow", "/srv/x/..", "/opt/" + "a" * 27 + "/../../etc/shadow",
    ]),
    # A climb out of a directory of any length: the ".." lands before, at and
    # after byte 32, and near or past the kernel's 256-byte read.
    st.builds(lambda n, up, target: "/opt/" + "a" * n + "/.." * up + target, st.integers(0, 300),
              st.integers(1, 3), st.sampled_from(["/etc/shadow", "/root/.ssh/id_rsa", "/etc/sudoers.d/x",
                                                  "/var/run/secrets/kubernetes.io/serviceaccount/token"])),
)
def _exec_exe(e: RawEvent) -> RawEvent:
    if e.kind == "exec":
        e.exe = normalize_path(e.path, e.cwd)  # what decode and the sink make of an exec
    return e


_events = st.builds(
    RawEvent,
    kind=st.sampled_from(["exec", "open", "chmod", "ptrace", "connect"]),
    comm=st.sampled_from(["sh", "bash", "cat", "python3", "kubectl", "dpkg", "strace", "x", "unix_chkpwd"]),
    exe=st.sampled_from(["/bin/sh", "/tmp/x", "/usr/bin/python3", ""]),
    args=st.sampled_from([[], ["sh", "-c", "id"], ["sh", "/tmp/a.sh"], ["x"]]),
    cwd=st.sampled_from(["", "/etc", "/dev/shm", "/srv"]),
    path=_paths,
    flags=st.sampled_from([0, 1, 2, 0o100, 0o1000, 0o2000000, 0o10000000, 0o1101]),
    mode=st.sampled_from([0, 0o755, 0o4755, 0o2755, 0o1777]),
    ptrace_request=st.sampled_from([0, 2, 4, 16, 0x4206, 0x4200]),
    family=st.sampled_from([1, 2, 10]),
    dst_ip=st.sampled_from(["", "10.1.1.1", "10.96.0.1", "203.0.113.9", "::1", "2001:db8::1", "::ffff:8.8.8.8"]),
    dst_port=st.sampled_from([53, 443, 6443, 8080]),
).map(_exec_exe)


@settings(max_examples=2000, deadline=None)
@given(e=_events, idn=st.sampled_from([pod(), HOST, pod(namespace="kube-system")]))
def test_kernel_filter_never_drops_a_match(e, idn):
    if RULES.match(e, idn):
        assert kernel_passes(FILTER, TABLES, e, idn), e


def test_unnormalized_cases():
    counterexample = "/opt/" + "a" * 27 + "/../../etc/shadow"  # ".." after byte 32
    assert unnormalized(counterexample)
    assert RULES.match(RawEvent("open", comm="cat", path=counterexample), pod())
    assert [unnormalized(p) for p in ("/etc/shadow", "/srv/.venv/x.py", "/srv/..x", "/srv/x/", "/" + "a" * 253)] \
        == [False] * 5
    assert [unnormalized(p) for p in ("/srv/x/.", "/srv/x/..", "//x", "x", "", "/" + "a" * 254)] == [True] * 6


def test_kernel_filter_does_drop_something():
    # The filter must be worth having: ordinary events are dropped.
    ordinary = [
        RawEvent("open", comm="python3", path="/srv/app/main.py", cwd="/srv"),
        RawEvent("chmod", comm="chmod", path="/srv/run.sh", mode=0o755),
        RawEvent("ptrace", comm="app", ptrace_request=0),
        RawEvent("connect", comm="app", family=1),
        RawEvent("exec", comm="sh", path="/bin/sh"),
    ]
    assert [kernel_passes(FILTER, TABLES, e, pod()) for e in ordinary] == [False, False, False, False, True]
    assert not kernel_passes(FILTER, TABLES, ordinary[4], HOST)
    # What the old filter passed (any open below /etc/, every exec) and can match no rule.
    noise = [RawEvent("open", comm="python3", path="/etc/ld.so.cache"), RawEvent("open", comm="python3",
             path="/etc/localtime"), RawEvent("exec", comm="true", path="/usr/bin/true"),
             RawEvent("open", comm="sshd", path="/etc/shadow"), RawEvent("open", comm="cat", path="/etc/passwd")]
    assert [kernel_passes(FILTER, TABLES, e, pod()) for e in noise] == [False] * 5
    # ...while the same places still pass what a rule wants.
    wanted = [RawEvent("open", comm="cat", path="/etc/shadow"), RawEvent("open", comm="sh", path="/etc/x", flags=0o101),
              RawEvent("exec", comm="true", path="/tmp/true"), RawEvent("exec", comm="bash", path="/usr/bin/bash")]
    assert [kernel_passes(FILTER, TABLES, e, pod()) for e in wanted] == [True] * 4
