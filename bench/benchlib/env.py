"""The bench's private stage: simulated pods, helper binaries, the agent.

Reuses tests/support (Node, Pod, AgentProcess) but under names of its own,
so a benchmark and the test suite can run on the same machine at once:
the node namespace and bridge get a ``psb`` prefix, pod veths start at
index 200, and every pod cgroup lives below ``<cgroup2 root>/psbench``
(the kubelet tree may sit below another cgroup; the agent's path parser
finds the pod segment anywhere), so ``Node.close()`` only sweeps ours.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # tests.support importable

from tests.support import pods as _pods  # noqa: E402
from tests.support.agent import AgentProcess  # noqa: E402

__all__ = ["REPO", "BUILD", "NETPROG", "bench_node", "build_tools", "agent", "cpu_seconds", "rss_bytes",
           "peak_rss_bytes", "sweep_leftovers", "BenchError"]

BUILD = REPO / "build" / "bench"
NETPROG = str(REPO / "tests" / "support" / "netprog.py")
PREFIX = "psb"
CGROUP_DIR = "psbench"
FIRST_INDEX = 200  # pod veths psv200.. in the root netns during setup: clear of the tests' psv10..

# Rebind the helper module's constants for this process only: the tests use
# ps-node/psbr0 and would tear down each other's network with ours.
_pods.NODE_NS = f"{PREFIX}-node"
_pods.BRIDGE = f"{PREFIX}br0"

# Extra environment for every agent the bench starts (run.py --agent-env), to
# A/B a setting such as MALLOC_ARENA_MAX without editing the agent.
AGENT_ENV: dict[str, str] = {}

OFF_CONFIG = 'kubernetes:\n  enabled: "false"\nlog_level: warning\n'


class BenchError(RuntimeError):
    pass


def sh(*cmd: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), capture_output=True, text=True, **kw)


def _newer(out: Path, *srcs: Path) -> bool:
    return out.exists() and all(out.stat().st_mtime >= s.stat().st_mtime for s in srcs)


def build_tools() -> dict[str, Path]:
    """Compile the floor programs (same flags as scripts/build-bpf.sh), the churn server and the
    TLS handshake client/server."""
    BUILD.mkdir(parents=True, exist_ok=True)
    vmlinux = REPO / "build" / "vmlinux.h"
    if not vmlinux.exists():
        raise BenchError(f"{vmlinux}: missing; run `make setup` (scripts/build-bpf.sh) first")
    arch = {"x86_64": "x86", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)
    httpd_src, httpd = REPO / "bench" / "tools" / "httpd.c", BUILD / "httpd"
    tls_src, tlsbench = REPO / "bench" / "tools" / "tlsbench.c", BUILD / "tlsbench"
    jobs = []
    for name in ("empty", "empty_tls", "variants"):
        src, obj = REPO / "bench" / "bpf" / f"{name}.bpf.c", BUILD / f"{name}.bpf.o"
        if not _newer(obj, src, vmlinux, REPO / "bpf" / "podsight.h"):
            jobs.append(["clang", "-g", "-O2", "-Wall", "-Werror", "-target", "bpf", f"-D__TARGET_ARCH_{arch}",
                         f"-I{REPO / 'build'}", f"-I{REPO / 'bpf'}", "-c", str(src), "-o", str(obj)])
    if not _newer(httpd, httpd_src):
        jobs.append(["clang", "-O2", "-Wall", "-Werror", str(httpd_src), "-o", str(httpd)])
    if not _newer(tlsbench, tls_src):
        # Linked dynamically: the tls probe's uprobes sit in the libssl.so.3 it maps.
        jobs.append(["clang", "-O2", "-Wall", "-Werror", str(tls_src), "-o", str(tlsbench), "-lssl", "-lcrypto"])
    for cmd in jobs:
        r = sh(*cmd)
        if r.returncode != 0:
            raise BenchError(f"{' '.join(cmd)} failed:\n{r.stderr}")
    return {"empty_dir": BUILD, "httpd": httpd, "tlsbench": tlsbench}


def cgroup_base() -> Path:
    return Path(_pods.cgroup2_root()) / CGROUP_DIR


def _kill_cgroup_procs(base: Path) -> None:
    if not base.exists():
        return
    for procs in base.rglob("cgroup.procs"):
        try:
            pids = [int(p) for p in procs.read_text().split()]
        except OSError:
            continue
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def sweep_leftovers() -> None:
    """Remove what a killed earlier run left: our netns and our cgroup subtree."""
    for line in sh("ip", "netns", "list").stdout.splitlines():
        name = line.split()[0] if line.strip() else ""
        if name.startswith(f"ps-{PREFIX}-") or name == _pods.NODE_NS:
            sh("ip", "netns", "del", name)
    base = cgroup_base()
    _kill_cgroup_procs(base)
    if base.exists():
        for d in sorted((p for p in base.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            _pods._rmdir(d)
        _pods._rmdir(base)


LOCK = Path("/run/lock" if Path("/run/lock").is_dir() else "/tmp") / "podsight-bench.lock"


@contextlib.contextmanager
def _exclusive():
    """One bench at a time per machine: a second one would sweep the first one's pods."""
    import fcntl

    fd = os.open(LOCK, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            print(f"bench: another benchmark (pid {holder or '?'}) holds {LOCK}; waiting", flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def bench_node():
    """A Node of our own; everything it made is gone afterwards, failure or not."""
    with _exclusive(), _node() as node:
        yield node


@contextlib.contextmanager
def _node():
    sweep_leftovers()
    base = cgroup_base()
    base.mkdir(exist_ok=True)
    node = None
    try:
        node = _pods.Node(cgroup_root=str(base))
        node._next = FIRST_INDEX
        yield node
    finally:
        try:
            if node is not None:
                _kill_cgroup_procs(base)
                node.close()
        finally:
            sweep_leftovers()


def pod_name(name: str) -> str:
    return f"{PREFIX}-{name}"


@contextlib.contextmanager
def agent(config: str = OFF_CONFIG, *args: str, check_probes: tuple[str, ...] = ("network", "tcp"),
          extra_env: dict[str, str] | None = None):
    """The real agent (``podsight run``) as a child process, its probes checked attached."""
    a = AgentProcess(*args, config=config, env={**AGENT_ENV, **(extra_env or {})})
    a.start(timeout=60)
    try:
        s = a.scrape()
        for probe in check_probes:
            # A probe switched off (--agent-env) has no series: only a present one must be up.
            if s.series("podsight_probe_up", probe=probe) and s.value("podsight_probe_up", probe=probe) != 1:
                raise BenchError(f"agent started but probe {probe} is not up:\n" + "\n".join(a.log[-20:]))
        yield a
    finally:
        a.stop()


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / _TICK


def rss_bytes(pid: int, field: str = "VmRSS") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise BenchError(f"/proc/{pid}/status: no {field}")


def peak_rss_bytes(pid: int) -> int:
    """The process's high-water mark of resident memory since it started (``VmHWM``)."""
    return rss_bytes(pid, "VmHWM")


def wait_line(proc: subprocess.Popen, expect: str, timeout: float = 10.0) -> None:
    """Read the child's first stdout line; it must be ``expect``."""
    import select

    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline().strip() if ready else ""
    if expect not in line:
        err = proc.stderr.read() if proc.poll() is not None else ""
        raise BenchError(f"{proc.args}: expected {expect!r}, got {line!r} {err}")


def wait_listen(pod, port: int, timeout: float = 10.0) -> None:
    """Until something listens on ``port`` in the pod's netns (iperf3 buffers its banner)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = sh("ip", "netns", "exec", pod.ns, "ss", "-Hltn", f"sport = :{port}").stdout
        if out.strip():
            return
        time.sleep(0.05)
    raise BenchError(f"nothing listens on port {port} in {pod.ns} after {timeout:g} s")
