"""Security monitoring as an attacker meets it: other libcs, long and odd
paths, repeats.  The real agent, the default rules, actions in a simulated pod."""
from __future__ import annotations

import os
import shutil
import sys
import uuid
from pathlib import Path

import pytest

from tests.support.agent import AgentProcess

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parents[2]
RAWOPEN = REPO / "build" / "tools" / "rawopen"  # static musl: open(2) and creat(2), never openat(2)


def security(extra: str = "") -> str:
    return "security:\n  enabled: true\n" + extra


@pytest.fixture
def rawopen() -> str:
    if not RAWOPEN.exists():
        pytest.fail(f"{RAWOPEN} is missing: `make setup-test` builds it (musl-tools)")
    return str(RAWOPEN)


@pytest.fixture
def etc_name():
    """A file name below /etc that the test may create (the simulated pod shares the host's files)."""
    path = Path("/etc") / f"podsight-test-{uuid.uuid4().hex[:8]}"
    yield str(path)
    path.unlink(missing_ok=True)


def run_in(pod, *cmd: str) -> str:
    p = pod.run(*cmd, text=True)
    out, err = p.communicate(timeout=20)
    assert p.returncode == 0, err
    return out.strip()


def test_musl_open_of_a_sensitive_file_is_seen(node, rawopen):
    pod = node.pod("musl", netns=False)
    with AgentProcess(config=security()) as agent:
        fd = run_in(pod, rawopen, "open", "/etc/shadow")
        [e] = agent.wait_events(lambda e: e["rule"] == "sensitive_file_read" and e["process"]["name"] == "rawopen",
                                what="sensitive_file_read from the musl program")
    assert e["syscall"]["name"] == "open" and e["syscall"]["path"] == "/etc/shadow"
    assert e["syscall"]["return_code"] == int(fd) and e["process"]["exe"] == rawopen


@pytest.mark.parametrize("how,syscall", [("creat", "creat"), ("write", "open")])
def test_musl_write_below_etc_is_seen(node, rawopen, etc_name, how, syscall):
    pod = node.pod("muslw", netns=False)
    with AgentProcess(config=security()) as agent:
        run_in(pod, rawopen, how, etc_name)
        [e] = agent.wait_events(lambda e: e["rule"] == "write_below_etc_or_bin" and e["syscall"]["path"] == etc_name,
                                what=f"write_below_etc_or_bin from musl {how}")
    assert os.path.exists(etc_name)  # the write really happened
    assert e["syscall"]["name"] == syscall and "O_CREAT" in e["syscall"]["flags"]
    assert e["syscall"]["mode"] == "0644"


def test_a_long_climb_back_to_a_sensitive_file(node):
    """The kernel filter judges the whole path: /opt/<27 a>/../../etc/shadow is /etc/shadow."""
    pod = node.pod("climb", netns=False)
    odd = "/opt/" + "a" * 27 + "/../../etc/shadow"
    with AgentProcess(config=security()) as agent:
        pod.run("cat", odd).wait(10)  # fails (no such directory): still an attempt to read /etc/shadow
        [e] = agent.wait_events(lambda e: e["rule"] == "sensitive_file_read" and e["process"]["name"] == "cat",
                                what="sensitive_file_read through a long ../ path")
    assert e["syscall"]["path"] == "/etc/shadow" and e["syscall"]["error"] == "ENOENT"


@pytest.fixture(params=["/tmp", "/dev/shm"])
def temp_script_dir(request):
    """A directory in a temp dir holding run.sh; /dev/shm is its own mount (the cwd walk crosses it)."""
    d = Path(request.param) / f"podsight-test-{uuid.uuid4().hex[:8]}"
    d.mkdir()
    (d / "run.sh").write_text("#!/bin/sh\ntrue\n")
    (d / "run.sh").chmod(0o755)
    yield d
    for p in d.iterdir():
        p.unlink()
    d.rmdir()


@pytest.mark.parametrize("argv", [["bash", "run.sh"], ["sh", "-e", "run.sh"], ["./run.sh"]])
def test_script_run_by_a_relative_name_from_a_temp_dir(node, temp_script_dir, argv):
    """cd /tmp/x && bash run.sh: argv names no temp dir, the resolved script does."""
    pod = node.pod("rel", netns=False)
    with AgentProcess(config=security()) as agent:
        assert pod.run(*argv, cwd=temp_script_dir).wait(10) == 0
        [e] = agent.wait_events(lambda e: e["rule"] == "exec_from_temp_dir", what="exec_from_temp_dir")
    script = str(temp_script_dir / "run.sh")
    # The cwd comes from the kernel: for `bash run.sh` (an absolute exec path)
    # nothing reads /proc, and these processes are gone by the time it could.
    assert e["process"]["cwd"] == str(temp_script_dir)
    if argv[0] == "./run.sh":
        assert e["syscall"]["path"] == script and e["process"]["exe"] == script
    else:
        assert e["process"]["script"] == script and e["syscall"]["path"] == shutil.which(argv[0])


def test_relative_open_by_a_short_lived_process_has_its_cwd(node):
    pod = node.pod("cwd", netns=False)
    with AgentProcess(config=security()) as agent:
        assert pod.run("cat", "shadow", cwd="/etc").wait(10) == 0
        [e] = agent.wait_events(lambda e: e["rule"] == "sensitive_file_read" and e["process"]["name"] == "cat",
                                what="sensitive_file_read of a relative path")
    assert (e["process"]["cwd"], e["syscall"]["path"]) == ("/etc", "/etc/shadow")


RETRY = r"""
import socket, sys
for _ in range(20):  # what a client does while the API server does not answer
    s = socket.socket()
    s.settimeout(0.2)
    try:
        s.connect((sys.argv[1], 443))
    except OSError:
        pass
    s.close()
print("done")
"""


def test_twenty_connection_retries_are_one_line_and_one_summary(node):
    """One `kubectl get secrets` retrying against the API: the first attempt at
    once, then one summary with the count, not twenty identical lines."""
    pod = node.pod("retry")
    api = "10.244.0.250"  # on the pod's subnet, nobody there: each connect times out or fails
    # The default window (10 s) covers all twenty attempts (about 4 s).
    config = security(f"  egress: {{kubernetes_api_cidrs: [{api}/32]}}\n")
    with AgentProcess(config=config) as agent:
        assert run_in(pod, sys.executable, "-c", RETRY, api) == "done"
        summary = agent.wait_events(lambda e: e["rule"] == "kubernetes_api_from_unexpected_pod" and "count" in e,
                                    timeout=20, what="the retries' summary line")
        lines = [e for e in agent.events() if e["rule"] == "kubernetes_api_from_unexpected_pod"]
        s = agent.scrape()
    assert len(lines) == 2 and "count" not in lines[0], lines
    assert summary[0]["count"] == 20 and summary[0]["first_time"] == lines[0]["time"]
    assert s.value("podsight_security_events_total", rule="kubernetes_api_from_unexpected_pod") == 20
