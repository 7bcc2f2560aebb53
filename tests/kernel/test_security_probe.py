"""Security events from the real syscall tracepoints: every default rule fires
on the real action inside a simulated pod, with the pod's identity, and stays
quiet for the same action on the host or by an allow-listed program."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import jsonschema
import pytest

from podsight.security.events import SCHEMA_PATH
from tests.support.agent import AgentProcess
from tests.support.programs import PTRACE
from tests.support.traffic import NETPROG





def config(b_ip: str) -> str:
    # A generous rate limit: this test is about the rules, the storm test about limits.
    return (
        "security:\n  enabled: true\n  rate_limit: {events_per_second: 100000, burst: 100000}\n"
        "  egress:\n    allowed_cidrs: [10.244.0.0/30]\n"
        f"    kubernetes_api_cidrs: [{b_ip}/32]\n"
    )


@pytest.fixture
def scratch():
    """A directory outside the temp dirs (so exec from it is not 'exec from /tmp')."""
    d = Path("/root") / f".podsight-test-{uuid.uuid4().hex[:8]}"
    d.mkdir()
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def alias(scratch: Path, name: str, target: str) -> str:
    """A program whose process name (comm) is ``name``: comm comes from the exec'd file name."""
    p = scratch / name
    p.symlink_to(shutil.which(target))
    return str(p)


def run_in(pod, *cmd: str) -> int:
    p = pod.run(*cmd)
    p.wait(20)
    return p.pid


def run_host(*cmd: str) -> int:
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    p.wait(20)
    return p.pid


@pytest.mark.root
def test_default_rules_fire_in_pods_only(node, scratch, token_file):
    a, b = node.pod("a"), node.pod("b")
    tmpdir = Path(tempfile.mkdtemp(prefix="podsight-"))  # below /tmp
    payload = tmpdir / "payload"
    shutil.copy(shutil.which("true"), payload)
    etc_file = f"/etc/podsight-test-{uuid.uuid4().hex[:8]}"
    setuid_target = scratch / "suid"
    setuid_target.write_text("")
    server = b.run(sys.executable, NETPROG, "serve", b.ip, "6443", text=True)
    assert server.stdout.readline().strip() == "listening"
    try:
        with AgentProcess(config=config(b.ip)) as agent:
            pod_actions = {
                "shell_in_container": run_in(a, "sh", "-c", "true"),
                "exec_from_temp_dir": run_in(a, str(payload)),
                "sensitive_file_read": run_in(a, "cat", "/etc/shadow"),
                "service_account_token_read": run_in(a, "cat", str(token_file)),
                "write_below_etc_or_bin": run_in(a, "touch", etc_file),
                "setuid_setgid_chmod": run_in(a, "chmod", "u+s", str(setuid_target)),
                "ptrace_attach_or_poke": run_in(a, sys.executable, "-c", PTRACE),
                "egress_outside_allowed_cidrs": run_in(a, sys.executable, NETPROG, "connect", b.ip, "6443", "1"),
            }
            # The API rule fires on the same connect as the egress rule.
            pod_actions["kubernetes_api_from_unexpected_pod"] = pod_actions["egress_outside_allowed_cidrs"]
            os.unlink(etc_file)
            quiet = {  # same actions on the host, and by allow-listed programs in the pod
                "shell_in_container": [run_host("sh", "-c", "true")],
                "sensitive_file_read": [run_host("cat", "/etc/shadow"),
                                        run_in(a, alias(scratch, "sshd", "cat"), "/etc/shadow")],
                "service_account_token_read": [run_host("cat", str(token_file)),
                                               run_in(a, alias(scratch, "kubectl", "cat"), str(token_file))],
                "write_below_etc_or_bin": [run_in(a, alias(scratch, "dpkg", "touch"), etc_file)],
                "setuid_setgid_chmod": [run_host("chmod", "u+s", str(setuid_target))],
                "ptrace_attach_or_poke": [run_host(sys.executable, "-c", PTRACE)],
                "egress_outside_allowed_cidrs": [run_in(a, sys.executable, "-c",
                                                        "import socket; s=socket.socket(); s.settimeout(0.5);"
                                                        "s.connect_ex(('127.0.0.1', 9))")],
            }
            os.unlink(etc_file)
            # The ring buffer is in order: once an exec started after every quiet
            # action is printed, whatever those actions made is printed too.
            marker = run_in(a, "sh", "-c", ": after the quiet actions")
            for rule in pod_actions:
                agent.wait_events(lambda e, r=rule: e["rule"] == r, timeout=5, what=f"rule {rule}")
            agent.wait_events(lambda e: e["process"]["pid"] == marker, timeout=5, what=f"the marker exec (pid {marker})")
            events = agent.events()
    finally:
        server.kill()
        shutil.rmtree(tmpdir, ignore_errors=True)
        if os.path.exists(etc_file):
            os.unlink(etc_file)

    schema = json.loads(Path(SCHEMA_PATH).read_text())
    by_rule: dict[str, list[dict]] = {}
    for e in events:
        jsonschema.validate(e, schema)  # every event kind, not only exec
        by_rule.setdefault(e["rule"], []).append(e)
    for rule, pid in pod_actions.items():
        hits = by_rule.get(rule, [])
        mine = [e for e in hits if e["process"]["pid"] == pid or e["parent"]["pid"] == pid]
        assert mine, f"{rule}: no event from the pod's process {pid}: {hits}"
        for e in mine:
            # Without an API server the pod is identified by its cgroup.
            assert e["in_pod"] and e["pod_uid"] == a.uid and e["container_id"] == a.container_id, e
    for rule, pids in quiet.items():
        for pid in pids:
            noisy = [e for e in by_rule.get(rule, []) if pid in (e["process"]["pid"], e["parent"]["pid"])]
            assert not noisy, f"{rule} fired for allowed/host process {pid}: {noisy}"
    # Syscall results travel with the event.
    chmod = next(e for e in by_rule["setuid_setgid_chmod"] if e["process"]["pid"] == pod_actions["setuid_setgid_chmod"])
    assert chmod["syscall"]["return_code"] == 0, chmod  # the schema's name, nothing else


# Not root: the agent must exit before it touches the kernel (a libbpf that cannot load proves it).
def test_bad_rule_file_exits_before_attaching(tmp_path):
    bad = tmp_path / "rules.yaml"
    bad.write_text("rules:\n  - name: x\n    event: exex\n    condition: {in_pod: true}\n    severity: warning\n")
    cfg = tmp_path / "podsight.yaml"
    cfg.write_text(f"security:\n  enabled: true\n  rules_files: [{bad}]\n")
    env = {**os.environ, "PODSIGHT_LIBBPF": "/nonexistent/libbpf.so"}
    r = subprocess.run([sys.executable, "-m", "podsight.cli", "run", "--config", str(cfg), "--listen", "127.0.0.1:0"],
                       capture_output=True, text=True, env=env, timeout=30)
    assert r.returncode != 0
    assert f"{bad}:3" in r.stderr and "exex" in r.stderr, r.stderr
    assert "attached" not in r.stderr


@pytest.mark.root
def test_exec_storm_is_rate_limited_and_every_event_accounted(node):
    """One pod execs as fast as it can for 10 s under a low rate limit: the agent
    stays up, another pod's events still arrive, and delivered + dropped equals
    the execs made."""
    storm, calm = node.pod("storm"), node.pod("calm")
    cfg = "security:\n  enabled: true\n  rate_limit: {events_per_second: 20, burst: 20}\n"
    counter = (
        "import os, time\n"
        "n = 0; end = time.monotonic() + 10\n"
        "while time.monotonic() < end:\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        os.execv('/bin/sh', ['sh', '-c', ':'])\n"
        "    os.waitpid(pid, 0); n += 1\n"
        "print(n)\n"
    )
    with AgentProcess(config=cfg) as agent:
        p = storm.run(sys.executable, "-c", counter, text=True)
        # The calm pod's exec comes while the storm is being limited.
        agent.wait_for(lambda s: s.value("podsight_events_dropped_total", reason="rate_limited", event="exec") > 0,
                       what="the storm's execs to be rate limited")
        calm_pid = run_in(calm, "sh", "-c", "true")
        out, _ = p.communicate(timeout=30)
        execs = int(out)
        assert p.returncode == 0, "the storm did not end cleanly"

        def storm_delivered() -> int:
            """Execs the storm's lines stand for: repeats of one detection are its first line
            plus, once the aggregation window (10 s) closes, a summary whose count includes it."""
            return sum(e["count"] - 1 if "count" in e else 1 for e in agent.events()
                       if e["rule"] == "shell_in_container" and e["pod_uid"] == storm.uid)

        # Every exec ends up delivered or dropped: wait until the totals reach the execs made.
        s = agent.wait_for(lambda s: storm_delivered() + s.value("podsight_events_dropped_total", event="exec")
                           >= execs, timeout=30, what=f"delivered + dropped to reach the {execs} execs made")
        assert agent.proc.poll() is None, "agent died under the storm"
        delivered, dropped = storm_delivered(), s.value("podsight_events_dropped_total", event="exec")
        # The calm pod stays within its own bucket, so every exec dropped is the storm's.
        assert delivered + dropped == execs, (delivered, dropped, execs)
        agent.wait_events(lambda e: e["process"]["pid"] == calm_pid, timeout=5, what="the calm pod's exec")
        assert execs > 200, execs  # a real storm, not a trickle
        cpu = _cpu_seconds(agent.proc.pid)
        assert cpu < 20, f"agent used {cpu:.1f} s of CPU for a 10 s storm"


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.root
def test_events_are_json_lines_with_the_schema(node):
    a = node.pod("a")
    with AgentProcess(config="security:\n  enabled: true\n") as agent:
        run_in(a, "sh", "-c", "mysql --password=hunter2secret -e 'select 1' 2>/dev/null; true")
        events = agent.wait_events(lambda e: e["rule"] == "shell_in_container", what="rule shell_in_container")
    schema = json.loads(Path(SCHEMA_PATH).read_text())
    for e in agent.events():
        jsonschema.validate(e, schema)
    # The shell's argv really travelled (so redaction had something to do) ...
    shell = next(e for e in events if e["process"]["name"] == "sh")
    assert shell["process"]["args"][:2] == ["sh", "-c"] and "mysql" in shell["process"]["args"][2], shell
    # ... and the password did not.
    assert all("hunter2secret" not in line for line in agent.stdout)


@pytest.mark.parametrize("text,needle", [
    ("security:\n  enabled: true\n  output:\n    file: /nonexistent/dir/events.jsonl\n", "security.output.file"),
    ("security:\n  enabled: true\n  rules_files: [/nonexistent/rules.yaml]\n", "/nonexistent/rules.yaml"),
])
def test_unusable_security_setup_exits_before_attaching(tmp_path, text, needle):
    cfg = tmp_path / "podsight.yaml"
    cfg.write_text(text)
    env = {**os.environ, "PODSIGHT_LIBBPF": "/nonexistent/libbpf.so"}
    r = subprocess.run([sys.executable, "-m", "podsight.cli", "run", "--config", str(cfg), "--listen", "127.0.0.1:0"],
                       capture_output=True, text=True, env=env, timeout=30)
    assert r.returncode != 0 and needle in r.stderr, r.stderr


CHILD_AND_PARENT = r"""
import os, subprocess, sys, time
child = (
    "import sys\n"
    "print(open('/proc/self/stat').read().rpartition(')')[2].split()[19], flush=True)\n"
    "try:\n    open('/etc/shadow').close()\nexcept OSError:\n    pass\n"
)
out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True).stdout.strip()
print(out, flush=True)
time.sleep(float(sys.argv[1]))  # the parent stays: its exe is read (and checked) from /proc
"""


@pytest.mark.root
def test_events_name_the_process_start_and_the_real_parent_exe(node):
    """process.start is the kernel's start of the process (checked against
    its own /proc/self/stat), exec_id is built from it, and parent.exe is the
    executable of the process that really is the parent (its start time
    checked), read while it runs."""
    import base64
    from datetime import datetime, timezone

    a = node.pod("a")
    tick = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
    with AgentProcess(config="security:\n  enabled: true\n") as agent:
        p = a.run(sys.executable, "-c", CHILD_AND_PARENT, "10", text=True)
        ticks = int(p.stdout.readline())
        events = agent.wait_events(lambda e: e["rule"] == "sensitive_file_read" and e["process"]["pid"] != p.pid,
                                   what="the child's read of /etc/shadow")
        p.kill()
        p.wait()
    e = events[0]
    boot = time.time_ns() - time.clock_gettime_ns(time.CLOCK_BOOTTIME)

    def ns(rfc3339: str) -> int:
        head, frac = rfc3339.rstrip("Z").split(".")
        return int(datetime.strptime(head, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc).timestamp()) * 10**9 + int(frac)

    assert abs(ns(e["process"]["start"]) - (boot + ticks * tick)) <= 2 * tick, (e["process"], ticks)
    node_name, start, pid = base64.b64decode(e["process"]["exec_id"]).decode().rsplit(":", 2)
    assert (int(start), int(pid)) == (ns(e["process"]["start"]), e["process"]["pid"]) and node_name == e["node"]
    assert e["parent"]["pid"] == p.pid
    # The exec it was started by names it (a venv's symlink), or /proc does (the file itself).
    assert os.path.realpath(e["parent"]["exe"]) == os.path.realpath(sys.executable), e["parent"]
    assert e["parent"]["start"] and e["parent"]["start"] < e["process"]["start"]


@pytest.mark.root
@pytest.mark.parametrize("fmt", ["falco", "ecs"])
def test_siem_formats_from_the_real_agent_validate(node, fmt):
    """security.output.format: every line the real agent writes for a real
    match is its format's JSON (schema-checked) and names podsight and the pod."""
    from podsight.security.formats import SCHEMA_PATHS

    a = node.pod("a")
    with AgentProcess(config=f"security:\n  enabled: true\n  output:\n    format: {fmt}\n") as agent:
        run_in(a, "sh", "-c", "true")
        rule_of = (lambda e: e["rule"]) if fmt == "falco" else (lambda e: e["rule"]["name"])
        agent.wait_events(lambda e: rule_of(e) == "shell_in_container", what=f"a {fmt} shell_in_container line")
    schema = json.loads(Path(SCHEMA_PATHS[fmt]).read_text())
    lines = agent.events()
    for e in lines:
        jsonschema.validate(e, schema)
    e = next(e for e in lines if rule_of(e) == "shell_in_container")
    if fmt == "falco":
        assert a.container_id.startswith(e["output_fields"]["container.id"]), e["output_fields"]
        assert "podsight" in e["tags"] and e["output_fields"]["proc.name"] == "sh" and e["output_fields"]["podsight.uuid"]
    else:
        assert e["event"]["module"] == "podsight" and e["process"]["name"] == "sh" and e["event"]["id"]
        assert a.container_id.startswith(e["container"]["id"]), e["container"]
