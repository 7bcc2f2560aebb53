"""The agent as a platform engineer runs it: start, signals, SIGKILL, bad config."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.agent import AgentProcess

def _prog_ids_of(pid: int) -> set[int]:
    """Programs the agent process holds (its fds), by kernel id."""
    ids = set()
    for fd in Path(f"/proc/{pid}/fdinfo").iterdir():
        try:
            m = re.search(r"^prog_id:\s+(\d+)$", fd.read_text(), re.M)
        except FileNotFoundError:
            continue
        if m:
            ids.add(int(m.group(1)))
    return ids


def _attached() -> set[int]:
    """Program ids attached anywhere: through a link, or on a cgroup (bpftool, not the agent)."""
    links = json.loads(subprocess.run(["bpftool", "-j", "link", "list"], capture_output=True, text=True, check=True).stdout)
    tree = json.loads(subprocess.run(["bpftool", "-j", "cgroup", "tree"], capture_output=True, text=True, check=True).stdout)
    return {l["prog_id"] for l in links} | {p["id"] for cg in tree for p in cg["programs"]}


def _wait_detached(ours: set[int], timeout: float = 5.0) -> set[int]:
    deadline = time.monotonic() + timeout
    while (left := ours & _attached()) and time.monotonic() < deadline:
        time.sleep(0.1)  # link release after the last fd closes is deferred in the kernel
    return left


@pytest.mark.root
def test_sigkill_leaves_nothing_attached():
    agent = AgentProcess().start()
    try:
        ours = _prog_ids_of(agent.proc.pid)
        # network: 2 cgroup_skb; tcp: 5 tracepoints (the RTT sampler runs on demand, attached nowhere)
        assert len(ours & _attached()) == 7, "agent running but its programs are not attached"
    finally:
        agent.stop(signal.SIGKILL)
    assert agent.proc.returncode == -signal.SIGKILL
    assert _wait_detached(ours) == set()


@pytest.mark.root
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_detaches_and_exits_zero_within_2s(sig):
    agent = AgentProcess().start()
    assert agent.get("/readyz")[0] == 200
    ours = _prog_ids_of(agent.proc.pid)
    assert ours & _attached()
    t0 = time.monotonic()
    agent.send_signal(sig)
    rc = agent.proc.wait(5)
    assert rc == 0 and time.monotonic() - t0 < 2.0
    assert _wait_detached(ours, 1.0) == set()


BAD_CONFIGS = [
    ("listen: 0.0.0.0:9963\nprobez: {}\n", "line 2", "probez: unknown key"),
    ("probes:\n  network:\n    enabled: maybe\n", "line 3", "probes.network.enabled: expected a boolean"),
    ("listen: nowhere\n", "line 1", "listen: expected an address"),
    ("kubernetes:\n  grace_period: soon\n", "line 2", "kubernetes.grace_period: expected a duration"),
    ("labels: [a, b]\n", "line 1", "labels: expected a mapping"),
    ("security:\n  egress:\n    allowed_cidrs: [10.0.0.0/8, 300.1.0.0/16]\n", "line 3", "allowed_cidrs[1]: expected a CIDR"),
    ("listen: 0.0.0.0:9963\n  bad: indent\n", "line 2", "not valid YAML"),
]


@pytest.mark.parametrize("text,line,message", BAD_CONFIGS)
def test_bad_config_exits_before_attaching(tmp_path, text, line, message):
    cfg = tmp_path / "podsight.yaml"
    cfg.write_text(text)
    # A libbpf that cannot load proves the agent never reached the kernel:
    # it would fail with a different error if it tried.
    env = {**os.environ, "PODSIGHT_LIBBPF": "/nonexistent/libbpf.so"}
    r = subprocess.run(
        [sys.executable, "-m", "podsight.cli", "run", "--config", str(cfg), "--listen", "127.0.0.1:0"]
        if "listen" not in text else [sys.executable, "-m", "podsight.cli", "run", "--config", str(cfg)],
        capture_output=True, text=True, env=env, timeout=30,
    )
    assert r.returncode == 2, r.stderr
    assert f"{cfg}:{line.split()[1]}" in r.stderr and message in r.stderr, r.stderr
    assert "attached" not in r.stderr


def test_bad_listen_flag_names_the_flag():
    env = {**os.environ, "PODSIGHT_LIBBPF": "/nonexistent/libbpf.so"}
    r = subprocess.run([sys.executable, "-m", "podsight.cli", "run", "--listen", "1.2.3.4:99999"],
                       capture_output=True, text=True, env=env, timeout=30)
    assert r.returncode == 2 and "flag --listen" in r.stderr and "65535" in r.stderr, r.stderr


@pytest.mark.root
def test_check_reports_this_kernel():
    r = subprocess.run([sys.executable, "-m", "podsight.cli", "check"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    for needed in ("[ok ] kernel BTF", "[ok ] cgroup v2", "[ok ] program type cgroup_skb",
                   "[ok ] tracepoint sock/inet_sock_set_state", "[ok ] uprobe attach",  # this kernel has uprobes
                   "podsight can run on this kernel"):
        assert needed in r.stdout, r.stdout


def test_rules_check_command(tmp_path):
    from podsight.security import DEFAULT_RULES_PATH

    ok = subprocess.run([sys.executable, "-m", "podsight.cli", "rules", "check", str(DEFAULT_RULES_PATH)],
                        capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0 and ok.stdout.startswith("OK: 9 rules"), ok.stdout + ok.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - name: x\n    event: exex\n    condition: {in_pod: true}\n    severity: warning\n")
    r = subprocess.run([sys.executable, "-m", "podsight.cli", "rules", "check", str(bad)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and f"{bad}:3" in r.stderr and "exex" in r.stderr, r.stderr


def _malloc_arenas(pid: int) -> int:
    """glibc arenas besides the main one, from /proc/<pid>/maps: each owns an anonymous
    heap that reserves 64 MiB at a 64 MiB boundary, a rw-p head plus a ---p tail."""
    heap = 64 << 20
    anon = []
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        f = line.split()
        if len(f) == 5:  # no path: anonymous
            lo, hi = (int(x, 16) for x in f[0].split("-"))
            anon.append((lo, hi, f[1]))
    tails = {lo: hi for lo, hi, perm in anon if perm == "---p"}
    return sum(1 for lo, hi, perm in anon
               if lo % heap == 0 and perm.startswith("rw") and tails.get(hi, hi) - lo == heap)


@pytest.mark.root
def test_agent_caps_its_malloc_arenas():
    """`podsight run` caps glibc's arenas at 2 (an RSS saving the bench measures): however
    many threads serve scrapes at once, the agent has one arena besides the main one.
    Uncapped, 16 concurrent scrapes give it about ten."""
    from concurrent.futures import ThreadPoolExecutor

    agent = AgentProcess()
    agent.env.pop("MALLOC_ARENA_MAX", None)  # the cap must be the agent's own doing
    with agent, ThreadPoolExecutor(16) as pool:
        for _ in range(3):
            assert all(status == 200 for status, _ in pool.map(lambda _: agent.get("/metrics"), range(16)))
        # Exactly one: the scrape threads did get an arena (so the count sees them), and no more.
        assert _malloc_arenas(agent.proc.pid) == 1
