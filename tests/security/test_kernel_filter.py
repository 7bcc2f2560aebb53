"""kernel_filter: what it allows the kernel to drop, and that dropping never hides a match."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from podsight.security import DEFAULT_RULES_PATH, RawEvent, kernel_filter, load_rules

from .helpers import HOST, pod

LISTS = {"allowed_egress_cidrs": ["10.0.0.0/8"], "kubernetes_api_cidrs": ["10.96.0.1"]}
RULES = load_rules([DEFAULT_RULES_PATH], lists=LISTS)
FILTER = kernel_filter(RULES)


def kernel_passes(f: dict, e: RawEvent, idn) -> bool:
    """What the BPF side does with the knobs (the contract documented in kernel_filter)."""
    if e.kind not in f["kinds"]:
        return False
    if f["pods_only"] and not idn.get("in_pod"):
        return False
    k = f[e.kind]
    if k["comms"] is not None and e.comm not in k["comms"]:
        return False
    prefixes = k.get("path_prefixes")
    if prefixes is not None:
        raw = e.path
        unnormalized = not raw.startswith("/") or "//" in raw or "/./" in raw or "/../" in raw or \
            raw.endswith(("/.", "/.."))
        if not unnormalized and not raw.startswith(tuple(prefixes)):
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


_paths = st.sampled_from([
    "/etc/shadow", "/etc//shadow", "shadow", "../etc/shadow", "/tmp/../etc/passwd", "/tmp/x", "/dev/shm/p",
    "/srv/app/main.py", "/usr/local/bin/kubectl", "/home/bob/.ssh/id_rsa", "/root/.ssh/id_rsa.pub",
    "/var/run/secrets/kubernetes.io/serviceaccount/token", "/run/secrets/kubernetes.io/serviceaccount/token",
    "/etc/sudoers.d/x", "", "./payload", "/bin/sh", "/usr/bin/python3",
])
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
