"""kernel_filter: what it allows the kernel to drop, and that dropping never hides a match."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from podsight.kernel.layouts import SEC_PATH_LEN
from podsight.security import DEFAULT_RULES_PATH, RawEvent, kernel_filter, load_rules

from .helpers import HOST, pod

LISTS = {"allowed_egress_cidrs": ["10.0.0.0/8"], "kubernetes_api_cidrs": ["10.96.0.1"]}
RULES = load_rules([DEFAULT_RULES_PATH], lists=LISTS)
FILTER = kernel_filter(RULES)


def unnormalized(raw: str) -> bool:
    """security.bpf.c ``unnormalized()``: a path the prefix test may not judge.

    ``raw`` is the argument as the process passed it.  The kernel reads at most
    SEC_PATH_LEN - 1 bytes of it, and passes every path that fills that
    buffer (the cut may hide anything), so ``//`` and friends are searched in
    the whole of a shorter path.
    """
    return (len(raw.encode()) >= SEC_PATH_LEN - 1 or not raw.startswith("/") or "//" in raw or "/./" in raw
            or "/../" in raw or raw.endswith(("/.", "/..")))


def kernel_passes(f: dict, e: RawEvent, idn) -> bool:
    """What the knobs allow the BPF side to drop (the contract documented in
    kernel_filter); the path test is exactly security.bpf.c's, which
    tests/kernel/test_kernel_filter_real.py checks against the loaded programs.
    (The kernel implements only some knobs, so it drops less than this.)"""
    if e.kind not in f["kinds"]:
        return False
    if f["pods_only"] and not idn.get("in_pod"):
        return False
    k = f[e.kind]
    if k["comms"] is not None and e.comm not in k["comms"]:
        return False
    prefixes = k.get("path_prefixes")
    if prefixes is not None and not unnormalized(e.path) and \
            not e.path.encode().startswith(tuple(p.encode() for p in prefixes)):
        return False
    if k.get("write_only") and not e.flags & (0o1 | 0o2 | 0o100 | 0o1000):
        return False
    if k.get("mode_bits_any") is not None and not e.mode & k["mode_bits_any"]:
        return False
    if k.get("requests") is not None and e.ptrace_request not in k["requests"]:
        return False
    if k.get("families") is not None and e.family not in k["families"]:
        return False
    return True


def test_default_rules_filter_values():
    assert FILTER["kinds"] == ["exec", "open", "chmod", "ptrace", "connect"]
    assert FILTER["pods_only"] is True
    assert FILTER["exec"] == {"comms": None, "path_prefixes": None}
    assert "/etc/" in FILTER["open"]["path_prefixes"] and "/etc/shadow" not in FILTER["open"]["path_prefixes"]
    assert FILTER["open"]["write_only"] is False
    assert FILTER["chmod"]["mode_bits_any"] == 0o6000
    assert FILTER["ptrace"]["requests"] == sorted([4, 5, 6, 13, 15, 16, 0x4205, 0x4206])
    assert FILTER["connect"]["families"] == [2, 10]


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
    assert f["open"] == {"comms": None, "path_prefixes": ["/etc/", "/usr/"], "write_only": True}
    assert f["exec"] == {"comms": ["bash", "sh"], "path_prefixes": None}
    assert "connect" not in f


def test_no_active_rules_needs_nothing(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("rules:\n  - name: x\n    event: open\n    condition: {}\n    severity: info\n    enabled: false\n")
    assert kernel_filter(load_rules([p])) == {"kinds": [], "pods_only": False}


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
)


@settings(max_examples=2000, deadline=None)
@given(e=_events, idn=st.sampled_from([pod(), HOST, pod(namespace="kube-system")]))
def test_kernel_filter_never_drops_a_match(e, idn):
    if RULES.match(e, idn):
        assert kernel_passes(FILTER, e, idn), e


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
    assert [kernel_passes(FILTER, e, pod()) for e in ordinary] == [False, False, False, False, True]
    assert not kernel_passes(FILTER, ordinary[4], HOST)
