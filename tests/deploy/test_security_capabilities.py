"""With security on, the chart's capability set lets the agent see user space:
run the real agent with exactly the chart's capabilities (setpriv) against a
process of another user (uid 65534, as most pods run).  exe and cwd come from
the kernel (security.bpf.c walks them); a working directory the walk cannot
cover (longer than 255 bytes) is read from /proc/<pid>/cwd, which needs
ptrace read access (PTRACE_MODE_READ_FSCREDS): that is what SYS_PTRACE is
for, and without it such a relative-path detection is silently missed."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from podsight.kernel.mounts import tracefs_root  # the agent's own code mounts it where missing
from tests.deploy.chart import render, render_scenario
from tests.deploy.test_capabilities import CAP_NUMBERS, OPTIONAL_HERE, _bounding_set, chart_caps
from tests.support.agent import AgentProcess, WaitTimeout

pytestmark = pytest.mark.root

CAP_NUMBERS = {**CAP_NUMBERS, "SYS_PTRACE": 19}
NOBODY = 65534
PYTHON = "/usr/bin/python3"  # not the venv's: uid 65534 cannot be assumed to reach the checkout

# Started before the agent, so its exec is not seen and exe must come from
# /proc. Opens a credential file by a relative path (cwd /etc) and, as the
# proof that its events reach the agent, another by an absolute path; both
# fail with EACCES as uid 65534, which is still an attempt the rule reports.
CHILD = r"""
import os, sys
os.chdir(sys.argv[1])
print("ready", flush=True)
sys.stdin.readline()
for path in (sys.argv[2], "/etc/gshadow"):
    try:
        open(path).close()
    except OSError:
        pass
print("opened", flush=True)
sys.stdin.readline()  # stay alive: the agent may read cwd from /proc/<pid>
"""
# Started before the agent (so its exec is not seen). Opens a credential file
# by a relative path from ``cwd`` and, as the proof that its events reach the
# agent, /etc/gshadow; both fail with EACCES as uid 65534, which is still an
# attempt the rule reports.

AGENT_CONFIG = "security:\n  enabled: true\n"  # the default rules (builtin:default)


def applicable(caps: list[str]) -> set[str]:
    """``caps`` less those this machine's bounding set lacks (only OPTIONAL_HERE may be)."""
    bnd = _bounding_set()
    missing = {c for c in caps if not bnd >> CAP_NUMBERS[c] & 1}
    assert missing <= OPTIONAL_HERE, f"this test runs without {missing}: cannot check the chart's set"
    return set(caps) - missing


def setpriv_prefix(caps: list[str]) -> list[str]:
    """Run the next command as uid 0 with exactly ``caps``, the way the
    container runtime applies `drop: [ALL]` + `add: caps` (as test_capabilities)."""
    if not shutil.which("setpriv"):
        pytest.fail("setpriv (util-linux) is needed to run with a reduced capability set")
    capset = ",".join(["-all", *(f"+{c.lower()}" for c in sorted(applicable(caps)))])
    return ["setpriv", f"--inh-caps={capset}", f"--ambient-caps={capset}", f"--bounding-set={capset}", "--"]


def effective_caps(pid: int) -> set[str]:
    names = {n: c for c, n in CAP_NUMBERS.items()}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            mask = int(line.split()[1], 16)
            return {names.get(bit, str(bit)) for bit in range(64) if mask >> bit & 1}
    raise AssertionError(f"no CapEff in /proc/{pid}/status")


def security_caps() -> list[str]:
    return chart_caps(render_scenario("security-values.yaml"))


def run_relative_open(node, caps: list[str], cwd: str = "/etc", rel: str = "shadow") -> tuple[list[dict], float]:
    """Agent under ``caps``; a uid-65534 process in a pod opens ``rel`` in
    ``cwd``, then /etc/gshadow. Returns the agent's events from that process,
    once the absolute-path detection has come (so events flow), and the open
    events the agent dropped (rate limit, full ring buffer)."""
    tracefs_root()
    pod = node.pod("seccaps", netns=False)
    child = pod.run("setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--",
                    PYTHON, "-c", CHILD, cwd, rel, stdin=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready", child.stderr.read()
        with AgentProcess(config=AGENT_CONFIG, prefix=setpriv_prefix(caps)) as agent:
            assert effective_caps(agent.proc.pid) == applicable(caps)  # setpriv exec'd the agent
            child.stdin.write("go\n")
            child.stdin.flush()
            assert child.stdout.readline().strip() == "opened"
            try:
                agent.wait_events(lambda e: e["process"]["pid"] == child.pid
                                  and e["syscall"].get("path") == "/etc/gshadow",
                                  what=f"the absolute-path open of /etc/gshadow by pid {child.pid}")
            except WaitTimeout as e:
                raise WaitTimeout(f"{e}\nagent log:\n" + "\n".join(agent.log[-30:])) from None
            # The relative open came first on the same thread: whatever the
            # agent made of it was printed before the line above.
            events = [e for e in agent.events() if e["process"]["pid"] == child.pid and "count" not in e]
            dropped = agent.scrape().value("podsight_events_dropped_total", event="open")
        child.stdin.write("exit\n")
        child.stdin.flush()
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
    return events, dropped


def by_path(events: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for e in events:
        out.setdefault(e["syscall"].get("path", ""), []).append(e)
    return out


def test_security_enabled_chart_adds_sys_ptrace():
    assert "SYS_PTRACE" in security_caps()
    assert "SYS_PTRACE" not in chart_caps(render(sets=["config.probes.tls.enabled=false"]))


def test_chart_capabilities_see_exe_cwd_and_relative_paths_of_other_users(node):
    events, _ = run_relative_open(node, security_caps())
    exe = os.path.realpath(PYTHON)
    paths = by_path(events)
    (rel,) = paths.get("/etc/shadow", [None])
    assert rel is not None, f"the relative open of shadow in /etc was missed: {events}"
    assert rel["rule"] == "sensitive_file_read", rel
    assert rel["process"]["cwd"] == "/etc", rel
    assert rel["process"]["exe"] == exe, rel
    assert rel["process"]["uid"] == NOBODY, rel
    assert rel["syscall"].get("error") == "EACCES", rel
    (absolute,) = paths["/etc/gshadow"]
    assert absolute["rule"] == "sensitive_file_read" and absolute["process"]["exe"] == exe, absolute
    assert rel["in_pod"] and absolute["in_pod"]


@pytest.fixture
def deep_cwd():
    """A directory whose path is longer than the kernel walk takes (255 bytes), that uid 65534 may enter,
    and the relative path from it to /etc/shadow."""
    top = Path("/srv") / f"podsight-deep-{os.getpid()}"
    d = top
    for i in range(5):
        d = d / (f"{i}" * 60)
    d.mkdir(parents=True)
    for p in [top, *top.rglob("*")]:
        p.chmod(0o755)
    rel = "../" * len(d.parts[1:]) + "etc/shadow"
    try:
        yield str(d), rel
    finally:
        shutil.rmtree(top)


def test_chart_capabilities_resolve_a_cwd_the_kernel_walk_cannot(node, deep_cwd):
    cwd, rel = deep_cwd
    assert len(cwd) > 255
    events, _ = run_relative_open(node, security_caps(), cwd, rel)
    (e,) = by_path(events)["/etc/shadow"]
    assert (e["rule"], e["process"]["cwd"]) == ("sensitive_file_read", cwd), e


def test_without_sys_ptrace_only_what_the_kernel_walks_is_left(node, deep_cwd):
    """Why the chart adds SYS_PTRACE: the set minus it (the chart's set with
    security and tls off) still gets exe and an ordinary cwd from the kernel,
    but misses the relative open from a cwd only /proc can give."""
    caps = [c for c in security_caps() if c != "SYS_PTRACE"]
    assert caps == chart_caps(render(sets=["config.probes.tls.enabled=false"]))
    events, dropped = run_relative_open(node, caps)
    (rel,) = by_path(events)["/etc/shadow"]
    assert (rel["process"]["cwd"], rel["process"]["exe"]) == ("/etc", os.path.realpath(PYTHON)), rel

    cwd, path = deep_cwd
    events, dropped = run_relative_open(node, caps, cwd, path)
    paths = by_path(events)
    # Positive signal: the same process's absolute-path detection fired, and
    # nothing was dropped on the way...
    (absolute,) = paths["/etc/gshadow"]
    assert absolute["rule"] == "sensitive_file_read" and absolute["process"]["uid"] == NOBODY, absolute
    assert dropped == 0
    # ...but its relative open stayed relative: no cwd, no match.
    assert "/etc/shadow" not in paths, paths
    assert all(e["process"]["cwd"] == "" for e in events), events
