"""The security pre-filter on the REAL loaded programs: an open that a default
rule matches in user space is never dropped in the kernel.

The security object is loaded the way the agent loads it (SecurityProbe with
the kernel filter of the default rules, pod roots set, the agent's
EventReader on the ring buffer), and one long-lived helper process inside a
simulated pod opens generated paths with real openat/openat2 calls.  Every
event the kernel passed is read raw from the ring buffer, matched or not, so
both directions are observable: what reached user space, and, once a
sentinel opened after a batch has arrived with no drop counted for any other
reason, what the kernel dropped.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from podsight.config import Config
from podsight.kernel.layouts import SEC_PATH_LEN
from podsight.kernel.families.security import SecurityProbe, security_config
from podsight.reader.events import EventReader
from podsight.security import RawEvent
from tests.security.helpers import pod as pod_identity
from tests.security.test_kernel_filter import FILTER, RULES, kernel_passes

pytestmark = pytest.mark.root

FLAGS = os.O_RDONLY | os.O_NONBLOCK  # read opens (what the credential rules want); a FIFO cannot block us
COUNTEREXAMPLE = "/opt/" + "a" * 27 + "/../../etc/shadow"  # ".." after byte 32: the case

# Reads "<call>:<hex path>" lines; "sync" opens the path (the sentinel) and answers.
HELPER = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
class OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]
how = OpenHow(FLAGS, 0, 0)
for line in sys.stdin:
    call, _, path = line.rstrip("\n").partition(":")
    path = bytes.fromhex(path)
    if call == "openat2":
        fd = libc.syscall(437, -100, path, ctypes.byref(how), ctypes.sizeof(how))  # SYS_openat2, AT_FDCWD
    else:
        try:
            fd = os.open(path, FLAGS)
        except OSError:
            fd = -1
    if fd >= 0:
        os.close(fd)
    if call == "sync":
        print("ok", flush=True)
""".replace("FLAGS", str(FLAGS))


def kernel_view(path: str) -> str:
    """What the kernel reads of the argument (bpf_probe_read_user_str into SEC_PATH_LEN bytes)."""
    return path.encode()[: SEC_PATH_LEN - 1].decode()


class Harness:
    """The security object loaded as the agent loads it, plus a helper in a pod."""

    def __init__(self, node):
        self.pod = node.pod("kf", netns=False)
        cfg = Config()
        # Nothing may be rate limited or lost: an absent event must mean "filtered".
        cfg.security.rate_limit.events_per_second = 10**6
        cfg.security.rate_limit.burst = 10**6
        cfg.security.guard.events_per_second = 10**6
        cfg.security.guard.burst = 10**6
        cfg.security.ringbuf_size_kb = 8192
        self.probe = SecurityProbe(FILTER)
        self.reader: EventReader | None = None
        assert self.probe.start(cfg, node.cgroup_root), self.probe.error
        try:
            self._start(node, cfg)
        except BaseException:
            self.close()
            raise

    def _start(self, node, cfg: Config) -> None:
        assert {"sec_openat", "sec_openat2"} <= set(self.probe._attach), self.probe._attach
        # What the agent derives from the cgroup tree: the kubelet's top directory and its depth.
        top = self.pod.cgroup_dirs[0]
        self.probe.set_pod_roots([(os.stat(top).st_ino, len(top.relative_to(node.cgroup_root).parts))])
        # The model runs on the tables the kernel really holds.
        self.tables = security_config(FILTER, cfg)

        self.events: list[RawEvent] = []
        self.reader = EventReader(self.probe.obj.maps["security_events"].fd, self.events.append)
        self.reader.start()
        self.cwd = "/etc"  # relative paths can then match a rule in user space
        self.proc = self.pod.run(sys.executable, "-c", HELPER, stdin=subprocess.PIPE, text=True, cwd=self.cwd)
        with open(f"/proc/{self.proc.pid}/comm") as f:
            self.comm = f.read().strip()
        self.seen = 0  # events[:seen] belong to earlier batches
        self.sync()  # the helper's own start-up opens are behind us

    def close(self) -> None:
        # The helper is the pod's: the node fixture kills it.
        if self.reader is not None:
            self.reader.stop()
        self.probe.stop()

    def drops(self) -> int:
        m = self.probe.obj.maps["security_drops"]
        return sum(int.from_bytes(v, "little") for i in range(m.max_entries)
                   for v in m.lookup(i.to_bytes(4, "little")) or [])

    def sync(self, timeout: float = 10.0) -> list[str]:
        """Open a sentinel (a relative path: always passed), wait for its event,
        and return the paths of the helper's events since the last sync."""
        sentinel = f"podsight-sentinel-{uuid.uuid4().hex}"
        self.proc.stdin.write(f"sync:{sentinel.encode().hex()}\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "ok", "the helper in the pod died"
        deadline = time.monotonic() + timeout
        while True:
            mine = [e for e in self.events[self.seen:] if e.pid == self.proc.pid]
            if any(e.path == sentinel for e in mine):
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"waited {timeout:g} s for the sentinel open {sentinel!r}; its event never came")
            time.sleep(0.01)
        self.seen = len(self.events)  # one thread: its events arrive in order, the sentinel last
        # The reader's thread appended them; no lost events, or absence proves nothing.
        assert self.drops() == 0, f"{self.drops()} events lost to the rate limit or a full buffer"
        return [e.path for e in mine if e.path != sentinel]

    def run(self, calls: list[tuple[str, str]]) -> set[str]:
        """Open each (syscall, path); return the kernel-read paths that reached the ring buffer."""
        self.proc.stdin.write("".join(f"{call}:{path.encode().hex()}\n" for call, path in calls))
        got = self.sync()
        sent = {kernel_view(p) for _, p in calls}
        stray = set(got) - sent
        assert not stray, f"events for paths the helper did not open: {sorted(stray)[:5]}"
        return set(got)

    def matches(self, path: str) -> list[str]:
        """Default rules matching this open in user space: on the whole path, or on the kernel's read of it."""
        names = set()
        for p in {path, kernel_view(path)}:
            ev = RawEvent("open", comm=self.comm, path=p, cwd=self.cwd, flags=FLAGS)
            names.update(r.name for r in RULES.match(ev, pod_identity()))
        return sorted(names)

    def model_passes(self, path: str) -> bool:
        ev = RawEvent("open", comm=self.comm, path=path, cwd=self.cwd, flags=FLAGS)
        return kernel_passes(FILTER, self.tables, ev, pod_identity())

    def check(self, calls: list[tuple[str, str]]) -> set[str]:
        passed = self.run(calls)
        lost = [(call, p, self.matches(p)) for call, p in calls if self.matches(p) and kernel_view(p) not in passed]
        assert not lost, "the kernel dropped opens a default rule matches:\n" + "\n".join(
            f"  {call}({p!r}) [{len(p.encode())} bytes] -> {rules}" for call, p, rules in lost)
        # Both directions, byte for byte: the kernel does what the Python model says.
        differ = [(p, kernel_view(p) in passed) for _, p in calls if (kernel_view(p) in passed) != self.model_passes(p)]
        assert not differ, "kernel and model (tests/security/test_kernel_filter.py) disagree:\n" + "\n".join(
            f"  {p!r} [{len(p.encode())} bytes]: kernel {'passed' if k else 'dropped'} it" for p, k in differ)
        return passed


@pytest.fixture
def harness(node):
    h = Harness(node)
    try:
        yield h
    finally:
        h.close()


# Path pieces: names from the default rules, dot names, and runs of "a" that
# push what follows before, across and after byte 32 and near byte 256.
_names = st.sampled_from([
    "etc", "shadow", "gshadow", "sudoers", "sudoers.d", "root", ".ssh", "id_rsa", "id_rsa.pub", "home", "bob",
    ".aws", "credentials", "var", "run", "secrets", "kubernetes.io", "serviceaccount", "token", "kubernetes",
    "pki", "usr", "bin", "local", "opt", "srv", "app", "main.py", "tmp", ".venv", "..x", "...", "x.",
])
_pads = st.integers(1, 260).map(lambda n: "a" * n)
_parts = st.one_of(_names, _names, _names, _pads, st.sampled_from(["", ".", ".."]))
_free = st.builds(lambda lead, parts, tail: lead + "/".join(parts) + tail,
                  st.sampled_from(["/", "/", "/", "", "./", "../", "//", "/./", "/../"]),
                  st.lists(_parts, min_size=1, max_size=10),
                  st.sampled_from(["", "", "", "/", "/.", "/..", "//"]))
# A climb back to a watched file from a directory of any length.
_climb = st.builds(lambda lead, n, up, target: lead + "a" * n + "/.." * up + target,
                   st.sampled_from(["/opt/", "/srv/app/", "/", "/tmp//", "opt/"]), st.integers(0, 300),
                   st.integers(1, 4), st.sampled_from(["/etc/shadow", "/root/.ssh/id_rsa", "/etc/sudoers.d/x",
                                                       "/var/run/secrets/kubernetes.io/serviceaccount/token",
                                                       "/home/bob/.ssh/id_ed25519", "/etc/ssh/ssh_host_rsa_key"]))
# Long, plain absolute paths around the 255-byte read, under a watched prefix or not.
_long = st.builds(lambda lead, n: lead + "a" * n, st.sampled_from(["/srv/", "/etc/", "/opt/x/"]),
                  st.integers(230, 270))
_paths = st.one_of(_free, _free, _climb, _long, st.just(COUNTEREXAMPLE))
_calls = st.tuples(st.sampled_from(["openat", "openat", "openat2"]), _paths)


def test_kernel_never_drops_an_open_a_rule_matches(harness):
    matched = 0

    @settings(max_examples=8, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])
    @given(batch=st.lists(_calls, min_size=150, max_size=250))
    def check(batch):
        nonlocal matched
        harness.check(batch)
        matched += sum(1 for _, p in batch if harness.matches(p))

    check()
    assert matched > 50, f"only {matched} generated opens matched a rule: the generator lost its teeth"


def test_known_paths(harness):
    cases = {
        # path: (a default rule matches it, the kernel passes it)
        COUNTEREXAMPLE: (True, True),
        "/opt/" + "a" * 230 + "/../../etc/shadow": (True, True),  # ".." near byte 256
        "/opt/" + "a" * 260 + "/../../etc/shadow": (True, True),  # ".." past the read: passed as cut
        "//etc/shadow": (True, True),
        "/./etc/shadow": (True, True),
        "shadow": (True, True),  # relative to /etc, the helper's cwd
        "/etc/shadow": (True, True),  # a watched prefix
        "/srv/app/main.py": (False, False),  # the point of the filter: ordinary opens stay in the kernel
        "/srv/app/.venv/lib/site.py": (False, False),  # a dot name is not "/./"
        "/srv/" + "a" * 249: (False, False),  # 254 bytes: read whole
        "/srv/" + "a" * 250: (False, True),  # 255 bytes fill the read: maybe cut, so passed
        "/srv/app/x/..": (False, True),
    }
    for call in ("openat", "openat2"):
        passed = harness.check([(call, p) for p in cases])
        for p, (match, passes) in cases.items():
            assert bool(harness.matches(p)) == match, p
            assert (kernel_view(p) in passed) == passes, \
                f"{call}({p!r}): the kernel {'dropped' if passes else 'passed'} it"
