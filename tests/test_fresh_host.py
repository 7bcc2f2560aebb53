"""A fresh host: nothing mounted by hand.

Each test runs podsight through scripts/fresh-mounts.sh: in a private mount
namespace (``unshare --mount --propagation private``) where tracefs, debugfs
and bpffs were unmounted first, so it proves what the agent's own code does on
a node where they never were mounted, whatever earlier tests, sessions or the
suite itself (``make test`` runs it the same way) left mounted.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.support.agent import AgentProcess

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parents[1]
PROBES = {"network", "tcp", "tcp_rtt", "network_drops", "tls"}
OUR_PROGRAMS = {"network_ingress", "network_egress", "tcp_state", "tcp_rtt_sample", "skb_drop", "sec_exec"}

# Every tracefs, debugfs and bpffs unmounted in a private mount namespace.
FRESH = [str(REPO / "scripts" / "fresh-mounts.sh")]
NO_SYS_ADMIN = ["setpriv", "--inh-caps=-sys_admin", "--bounding-set=-sys_admin", "--"]

SECURITY = "security:\n  enabled: true\n"


def _mounts_of(pid: int) -> dict[str, str]:
    """Mount point → file system type, as the process ``pid`` sees them."""
    out = {}
    for line in Path(f"/proc/{pid}/mounts").read_text().splitlines():
        _, point, fstype, *_ = line.split()
        out[point] = fstype
    return out


def _our_programs() -> set[int]:
    """Ids of loaded programs named like ours."""
    progs = json.loads(subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True,
                                      check=True).stdout)
    return {p["id"] for p in progs if p.get("name") in OUR_PROGRAMS}


def _probes_up(scrape) -> dict[str, float]:
    return {labels["probe"]: v for labels, v in scrape.series("podsight_probe_up")}


def test_check_mounts_tracefs_itself():
    out = subprocess.run([*FRESH, sys.executable, "-m", "podsight.cli", "check"], capture_output=True, text=True,
                         cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert "[ok ] tracefs: /sys/kernel/tracing" in lines, out.stdout
    for name in ("tracepoint sock/inet_sock_set_state", "tracepoint syscalls/sys_enter_openat",
                 "program tcp_rtt_sample", "program sec_openat"):
        assert any(line.startswith(f"[ok ] {name}") for line in lines), f"{name} not ok:\n{out.stdout}"
    assert not [line for line in lines if line.startswith("[FAIL]")], out.stdout


def test_run_mounts_tracefs_and_attaches_every_probe():
    agent = AgentProcess(config=SECURITY, prefix=FRESH).start()
    try:
        # The wrapper left no tracefs: the one the agent sees now is its own.
        assert _mounts_of(agent.proc.pid).get("/sys/kernel/tracing") == "tracefs"
        assert any("mounted tracefs at /sys/kernel/tracing" in line for line in agent.log), agent.log
        # The scrape itself is a TCP connection on this host: counted, so the
        # probes do not only report up, they count.
        s = agent.wait_for(lambda s: s.value("podsight_tcp_connections_opened_total") > 0,
                           what="a TCP connection counted")
        assert _probes_up(s) == {**{p: 1.0 for p in PROBES}, "security": 1.0}
    finally:
        assert agent.stop() == 0


def test_without_cap_sys_admin_stops_clearly_with_nothing_attached():
    before = _our_programs()
    out = subprocess.run([*FRESH, *NO_SYS_ADMIN, sys.executable, "-m", "podsight.cli", "run",
                          "--listen", "127.0.0.1:0"], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 2, out.stderr
    assert ("podsight: the tcp and security probes need tracefs: tracefs is not mounted "
            "(looked at /sys/kernel/tracing, /sys/kernel/debug/tracing) and mounting it at /sys/kernel/tracing "
            "failed (Operation not permitted)") in out.stderr, out.stderr
    # It stopped before loading anything, not after attaching and detaching.
    assert "attached" not in out.stderr and "serving" not in out.stderr, out.stderr
    assert _our_programs() <= before, "programs left loaded"


def test_without_cap_sys_admin_runs_where_tracefs_is_mounted():
    """CAP_SYS_ADMIN is needed only to mount tracefs (the chart mounts it from the
    host instead): with it mounted, the agent runs without it."""
    premount = [sys.executable, "-c", "import sys; from podsight.kernel.mounts import tracefs_root; tracefs_root(); "
                "import os; os.execvp(sys.argv[1], sys.argv[1:])"]
    agent = AgentProcess(prefix=[*FRESH, *premount, *NO_SYS_ADMIN]).start()
    try:
        status = Path(f"/proc/{agent.proc.pid}/status").read_text()
        eff = int(re.search(r"^CapEff:\s+(\w+)", status, re.M).group(1), 16)
        assert not eff >> 21 & 1, "the agent still has CAP_SYS_ADMIN"
        s = agent.wait_for(lambda s: s.value("podsight_tcp_connections_opened_total") > 0,
                           what="a TCP connection counted")
        assert _probes_up(s) == {p: 1.0 for p in PROBES}
    finally:
        assert agent.stop() == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _clean_clone(dest: Path) -> None:
    """The files a clone of this checkout has (tracked, plus new ones not ignored): no build/, no .venv."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, check=True).stdout.split(b"\0")
    for name in filter(None, files):
        src = REPO / os.fsdecode(name)
        if src.is_file():  # a file deleted in the working tree is not in the clone either
            (dest / os.fsdecode(name)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / os.fsdecode(name))


def test_readme_make_run_on_a_fresh_host(tmp_path):
    """The README's first command, from a clean clone, where tracefs was never mounted."""
    clone = tmp_path / "podsight"
    _clean_clone(clone)
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PODSIGHT_", "VIRTUAL_ENV"))}
    proc = subprocess.Popen([*FRESH, "make", "run", f"ARGS=--listen 127.0.0.1:{port}"], cwd=clone, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    log: list[str] = []
    serving = threading.Event()

    def pump() -> None:
        for line in proc.stdout:
            log.append(line.rstrip())
            if f"serving http://127.0.0.1:{port}/metrics" in line:
                serving.set()

    threading.Thread(target=pump, daemon=True).start()
    try:
        deadline = time.monotonic() + 600  # set-up makes a venv, installs from PyPI, runs clang
        while not serving.wait(0.5):
            tail = "\n".join(log[-40:])
            assert proc.poll() is None, f"make run exited ({proc.returncode}) before serving:\n{tail}"
            assert time.monotonic() < deadline, f"make run did not serve in 600 s:\n{tail}"
        # Set up in the clone itself, not borrowed from this checkout.
        assert (clone / ".venv" / "bin" / "podsight").exists() and (clone / "build" / "bpf" / "tcp.bpf.o").exists()
        agent = AgentProcess()
        agent.url = f"http://127.0.0.1:{port}"
        s = agent.wait_for(lambda s: s.value("podsight_tcp_connections_opened_total") > 0,
                           what="a TCP connection counted")
        assert _probes_up(s) == {p: 1.0 for p in PROBES}, "\n".join(log[-40:])
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(10)
