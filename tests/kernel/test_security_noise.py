"""The noise test: one pod makes a load of benign file opens and execs (at
least 5,000 events/s for 10 s) and, in the middle of it, one malicious action
per second, each default rule in turn.  Every attack must be reported, the
agent's CPU stays bounded, and whatever was dropped is counted by a known
reason.

The test only drives real load and real attacks and reads what the agent
writes (JSON lines, /metrics) and what the kernel says about the agent's CPU
(/proc/<pid>/stat): it does not know how the kernel filter or the rate
limiting work inside.  Run with ``-s`` to see the figures.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.agent import AgentProcess
from tests.support.programs import PTRACE
from tests.support.traffic import NETPROG

pytestmark = pytest.mark.root

# The interpreter itself, not the venv's link to it: a checkout (CI's clone) may
# sit below /tmp, and running a program from there is exec_from_temp_dir. Not
# `python3` either: on this machine that is a pyenv shim, a bash script (a shell
# in the pod). The workers need only the standard library.
PY = os.path.realpath(sys.executable)
LOAD_SECONDS = 10.0
MIN_BENIGN_RATE = 5_000  # benign events/s the issue asks for
OPEN_WORKERS, OPENS_PER_SECOND = 3, 7_000  # paced, summed over the workers: margin above 5,000
SPAWNS_PER_SECOND = 100  # posix_spawn()s; half run `env true`, so about 150 execs/s
# The agent's CPU (user space, all threads) over the load, in cores.  On the
# 2-core VM half a core is a quarter of the node: an agent that needs that
# much to watch ~7,000 benign syscalls/s is broken whatever its filters do.
# For scale: its user-space path matches about 95,000 events per CPU-second
# (docs/security.md); measured here (2026-11, commit cd40e47) 2.5 % of a core
# with the default rate limit, 15.5 % with the limit lifted so that every
# event the old pre-filter passed (~5,000/s) reached user space.  The BPF
# programs' own time runs in the workers' context and is reported, not bounded.
MAX_AGENT_CORES = 0.5
KNOWN_DROP_REASONS = {"rate_limited", "ringbuf_full", "pending_full", "output_limited", "guard_limited"}
KINDS = {"exec", "open", "chmod", "ptrace", "connect"}
API_PORT = 6443


# A long-lived worker opening ordinary files, paced to its share of the rate.
# It counts its own open calls: each one is an openat(2) that enters the
# kernel's syscall tracepoints whatever its result.  The mix: reads of /etc
# files no rule watches (the pre-filter used to pass every /etc path), of
# /usr/lib and /usr/share, of the app's own data dir; config files that do not
# exist; write opens of the app's own logs (outside every watched dir); and a
# few relative opens (in the app dir, the cwd).
OPEN_WORKER = r"""
import json, os, sys, time
rate, seconds, app = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
R, W = os.O_RDONLY | os.O_CLOEXEC, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
reads = ["/etc/hostname", "/etc/hosts", "/etc/passwd", "/etc/group", "/etc/nsswitch.conf", "/etc/ld.so.cache",
         "/etc/resolv.conf", "/etc/localtime", "/etc/os-release", "/etc/services", "/etc/protocols",
         "/etc/gai.conf", "/etc/mime.types", "/etc/ssl/certs/ca-certificates.crt", "/etc/ssl/openssl.cnf",
         "/usr/lib/os-release", "/usr/share/zoneinfo/UTC", "/usr/lib/x86_64-linux-gnu/libc.so.6",
         "/usr/lib/aarch64-linux-gnu/libc.so.6", "/usr/lib/locale/locale-archive",
         os.path.join(sys.prefix, "lib", "python%d.%d" % sys.version_info[:2], "os.py")]
reads = [p for p in reads if os.path.isfile(p)]
assert len(reads) >= 10, reads
data = [os.path.join(app, "data-%d" % i) for i in range(4)]
ops = [(p, R) for p in reads] + [(p, R) for p in data]
ops += [("/etc/podsight-noise/app.conf", R), ("/usr/lib/podsight-noise/plugin.so", R)]  # ENOENT: search paths
ops += [(os.path.join(app, "out-%d.log" % os.getpid()), W), ("data-0", R)]              # a log write; relative
print("ready", flush=True)
sys.stdin.readline()
t0 = time.monotonic(); end = t0 + seconds
n = errors = 0; i = 0; L = len(ops)
while True:
    now = time.monotonic()
    if now >= end:
        break
    due = int((now - t0) * rate) - n
    if due <= 0:
        time.sleep(0.001)
        continue
    for _ in range(min(due, 200)):
        path, flags = ops[i % L]; i += 1
        try:
            os.close(os.open(path, flags, 0o644))
        except OSError:
            errors += 1
        n += 1
print(json.dumps({"opens": n, "execs": 0, "errors": errors, "seconds": time.monotonic() - t0}), flush=True)
"""

# A long-lived worker starting benign programs (not shells, not from temp dirs)
# with posix_spawn, paced.  `env true` is two execs (env, then true).
EXEC_WORKER = r"""
import json, os, sys, time
rate, seconds = float(sys.argv[1]), float(sys.argv[2])
progs = [["/bin/true"], ["/usr/bin/env", "true"]]
print("ready", flush=True)
sys.stdin.readline()
t0 = time.monotonic(); end = t0 + seconds
n = execs = failed = 0
while True:
    now = time.monotonic()
    if now >= end:
        break
    if int((now - t0) * rate) <= n:
        time.sleep(0.001)
        continue
    argv = progs[n % 2]
    pid = os.posix_spawn(argv[0], argv, os.environ)
    _, status = os.waitpid(pid, 0)
    if status == 0:
        execs += len(argv)
    else:
        failed += 1
    n += 1
print(json.dumps({"opens": 0, "execs": execs, "errors": failed, "seconds": time.monotonic() - t0}), flush=True)
"""


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (all threads), from the kernel."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Attack:
    rule: str
    kind: str  # the syscall event that should carry it
    argv: list[str]
    expect_out: str | None = None  # what the program must print for the action to have really happened
    pid: int = 0
    at: float = 0.0  # seconds after the load started
    proc: object = field(default=None, repr=False)
    seen: list[dict] = field(default_factory=list, repr=False)

    def label(self) -> str:
        argv = ["<script>" if "\n" in a else a for a in self.argv]
        return f"{self.rule} (pid {self.pid} at +{self.at:.1f} s: {' '.join(argv)})"


@pytest.fixture
def dirs():
    """Scratch space: an app data dir (/srv), a temp dir for dropped payloads,
    a dir outside the temp dirs for the setuid targets, and the /etc names written."""
    tag = uuid.uuid4().hex[:8]
    app = Path("/srv") / f"podsight-noise-{tag}"
    app.mkdir()
    for i in range(4):
        (app / f"data-{i}").write_text("benign\n")
    tmp = Path(tempfile.mkdtemp(prefix="podsight-noise-"))  # below /tmp
    scratch = Path("/root") / f".podsight-noise-{tag}"
    scratch.mkdir()
    etc: list[str] = []
    try:
        yield {"app": app, "tmp": tmp, "scratch": scratch, "etc": etc, "tag": tag}
    finally:
        for d in (app, tmp, scratch):
            shutil.rmtree(d, ignore_errors=True)
        for p in etc:
            Path(p).unlink(missing_ok=True)


def attack_plan(i: int, d: dict, token: Path, target_ip: str) -> Attack:
    """The i-th attack: the default rules in turn, each occurrence a distinct
    detection (another target or argument), so none waits for aggregation."""
    rule = RULES[i % len(RULES)]
    if rule == "shell_in_container":
        return Attack(rule, "exec", ["sh", "-c", f"true noise-{i}"])
    if rule == "exec_from_temp_dir":
        payload = d["tmp"] / f"payload-{i}"
        shutil.copy("/bin/true", payload)
        return Attack(rule, "exec", [str(payload)])
    if rule == "sensitive_file_read":
        return Attack(rule, "open", ["cat", ["/etc/shadow", "/etc/gshadow"][(i // len(RULES)) % 2]])
    if rule == "service_account_token_read":
        return Attack(rule, "open", ["cat", str(token)])
    if rule == "write_below_etc_or_bin":
        name = f"/etc/podsight-noise-{d['tag']}-{i}"
        d["etc"].append(name)
        return Attack(rule, "open", ["touch", name])
    if rule == "setuid_setgid_chmod":
        target = d["scratch"] / f"suid-{i}"
        target.write_text("")
        return Attack(rule, "chmod", ["chmod", "u+s", str(target)])
    if rule == "ptrace_attach_or_poke":
        return Attack(rule, "ptrace", [PY, "-c", PTRACE], expect_out="0")
    if rule == "egress_outside_allowed_cidrs":  # a closed port of the other pod: refused, still an attempt
        return Attack(rule, "connect", [PY, NETPROG, "refused", target_ip, str(8000 + i), "1"], expect_out="1")
    if rule == "kubernetes_api_from_unexpected_pod":  # also outside the allowed egress: both rules fire
        return Attack(rule, "connect", [PY, NETPROG, "connect", target_ip, str(API_PORT), "1"], expect_out="1")
    raise AssertionError(rule)


RULES = ["shell_in_container", "exec_from_temp_dir", "sensitive_file_read", "service_account_token_read",
         "write_below_etc_or_bin", "setuid_setgid_chmod", "ptrace_attach_or_poke",
         "egress_outside_allowed_cidrs", "kubernetes_api_from_unexpected_pod"]


def config(api_ip: str) -> str:
    # Default rules, default rate limit, ring buffer and aggregation: only the
    # egress lists are filled (the two connect rules are inactive without
    # them).  bpf_stats: the kernel-side cost is reported too.
    return (
        "bpf_stats: true\n"
        "security:\n  enabled: true\n"
        "  egress:\n    allowed_cidrs: [10.244.0.0/30]\n"
        f"    kubernetes_api_cidrs: [{api_ip}/32]\n"
    )


def drops_by(scrape) -> dict[tuple[str, str], float]:
    return {(l["reason"], l["event"]): v for l, v in scrape.series("podsight_events_dropped_total")}


def bpf_cost(scrape) -> tuple[float, float]:
    """Runs and seconds of the security programs (kernel BPF stats), summed."""
    runs = sum(v for l, v in scrape.series("podsight_bpf_program_runs_total") if l["program"].startswith("sec"))
    secs = sum(v for l, v in scrape.series("podsight_bpf_program_run_seconds_total") if l["program"].startswith("sec"))
    return runs, secs


def test_attacks_are_reported_through_benign_noise(node, dirs, token_file):
    app_pod, target = node.pod("noisy"), node.pod("target")
    server = target.run(PY, NETPROG, "serve", target.ip, str(API_PORT), text=True)
    assert server.stdout.readline().strip() == "listening"
    attacks: list[Attack] = []
    with AgentProcess(config=config(target.ip)) as agent:
        up = agent.scrape().value("podsight_probe_up", probe="security")
        assert up == 1, "the security probe is not attached:\n" + "\n".join(agent.log)
        workers = [app_pod.run(PY, "-c", OPEN_WORKER, str(OPENS_PER_SECOND / OPEN_WORKERS), str(LOAD_SECONDS),
                               str(dirs["app"]), cwd=dirs["app"], stdin=subprocess.PIPE, text=True)
                   for _ in range(OPEN_WORKERS)]
        workers.append(app_pod.run(PY, "-c", EXEC_WORKER, str(SPAWNS_PER_SECOND), str(LOAD_SECONDS),
                                   stdin=subprocess.PIPE, text=True))
        for w in workers:
            assert w.stdout.readline().strip() == "ready", w.stderr.read()
        time.sleep(1.0)  # the workers' own start-up (imports, ld.so) has reached the agent and been dealt with
        before = agent.scrape()
        cpu0, t0 = cpu_seconds(agent.proc.pid), time.monotonic()
        for w in workers:
            w.stdin.write("go\n")
            w.stdin.flush()
        # One attack per second while the load runs, the first half a second in.
        for i in range(int(LOAD_SECONDS)):
            time.sleep(max(0.0, t0 + 0.5 + i - time.monotonic()))
            a = attack_plan(i, dirs, token_file, target.ip)
            a.at = time.monotonic() - t0
            a.proc = app_pod.run(*a.argv, text=True)
            a.pid = a.proc.pid
            attacks.append(a)
        results = []
        for w in workers:
            out, err = w.communicate(timeout=LOAD_SECONDS + 10)
            assert w.returncode == 0, err
            results.append(json.loads(out.strip().splitlines()[-1]))
        cpu1, t1 = cpu_seconds(agent.proc.pid), time.monotonic()
        for a in attacks:
            out, err = a.proc.communicate(timeout=20)
            assert a.proc.returncode == 0, f"{a.label()} did not run: {err}"
            if a.expect_out is not None:
                assert out.strip() == a.expect_out, f"{a.label()}: printed {out!r} {err!r}"

        # Every attack's event, by the attacking process's pid: one shared deadline,
        # then a failure naming every rule that is still missing.
        deadline = time.monotonic() + 5.0
        while True:
            events = agent.events()
            for a in attacks:
                a.seen = [e for e in events if e["rule"] == a.rule and e["process"]["pid"] == a.pid]
            if all(a.seen for a in attacks) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        cpu2, t2 = cpu_seconds(agent.proc.pid), time.monotonic()
        after = agent.scrape()
        assert agent.proc.poll() is None, "the agent died under the load"
        events = agent.events()

    server.kill()
    # -- the figures ------------------------------------------------------
    opens = sum(r["opens"] for r in results)
    execs = sum(r["execs"] for r in results)
    seconds = max(r["seconds"] for r in results)
    benign_rate = (opens + execs) / seconds
    load_cores = (cpu1 - cpu0) / (t1 - t0)
    total_cores = (cpu2 - cpu0) / (t2 - t0)
    drops0, drops1 = drops_by(before), drops_by(after)
    drops = {k: v - drops0.get(k, 0) for k, v in drops1.items() if v - drops0.get(k, 0) > 0}
    all_drops = {k: v for k, v in drops1.items() if v}
    runs0, secs0 = bpf_cost(before)
    runs1, secs1 = bpf_cost(after)
    missing = [a for a in attacks if not a.seen]
    matched = {}
    for l, v in after.series("podsight_security_events_total"):
        matched[l["rule"]] = matched.get(l["rule"], 0) + v
    report = "\n".join([
        f"benign load: {opens} opens + {execs} execs in {seconds:.2f} s = {benign_rate:,.0f} events/s "
        f"(worker errors, ENOENT included: {sum(r['errors'] for r in results)})",
        f"agent CPU: {load_cores * 100:.1f} % of one core over the load ({cpu1 - cpu0:.2f} s in {t1 - t0:.2f} s); "
        f"{total_cores * 100:.1f} % until the events were checked ({t2 - t0:.1f} s)",
        f"security BPF programs during the run: {runs1 - runs0:,.0f} runs, {secs1 - secs0:.3f} s "
        f"({(secs1 - secs0) / max(1, runs1 - runs0) * 1e9:.0f} ns/run)",
        "attacks: " + ", ".join(f"{a.rule}@+{a.at:.1f}s={'ok' if a.seen else 'MISSED'}" for a in attacks),
        "drops during the run by (reason, event): " + (", ".join(f"{r}/{k}={v:.0f}" for (r, k), v in sorted(drops.items())) or "none"),
        "drops since start: " + (", ".join(f"{r}/{k}={v:.0f}" for (r, k), v in sorted(all_drops.items())) or "none"),
        "rule matches (podsight_security_events_total): " + ", ".join(f"{r}={v:.0f}" for r, v in sorted(matched.items())),
    ])
    print("\n" + report)

    # -- the checks ---------------------------------------------------------
    assert benign_rate >= MIN_BENIGN_RATE, f"the benign load was too light\n{report}"
    # Every drop has a known reason and event kind.
    for reason, kind in drops1:
        assert reason in KNOWN_DROP_REASONS and kind in KINDS, f"unknown drop ({reason}, {kind})\n{report}"
    # Nothing vanishes silently: every attack not reported is covered by a drop
    # of its event kind counted during the run.
    for kind in KINDS:
        lost = [a for a in missing if a.kind == kind]
        counted = sum(v for (_, k), v in drops.items() if k == kind)
        assert len(lost) <= counted, (f"{len(lost)} {kind} attacks missing but only {counted:.0f} {kind} drops "
                                      f"counted: {[a.label() for a in lost]}\n{report}")
    # The attacks themselves.
    assert not missing, ("attacks not reported:\n  " + "\n  ".join(a.label() for a in missing) + f"\n{report}")
    for a in attacks:  # reported as the pod's
        for e in a.seen:
            assert e["in_pod"] and e["pod_uid"] == app_pod.uid, f"{a.label()}: {e}"
    # Benign noise matched no rule: every line from the pod is one of the attacks
    # (the API connect also fires the egress rule).
    pids = {a.pid for a in attacks}
    noise = [e for e in events if e["pod_uid"] == app_pod.uid and e["process"]["pid"] not in pids]
    assert not noise, f"benign load reported as attacks: {noise[:5]}\n{report}"
    # Delivered accounting: every match is one line here (each attack is a distinct
    # detection, so none waits for a summary), and the counter says the same.
    lines: dict[str, int] = {}
    for e in events:
        lines[e["rule"]] = lines.get(e["rule"], 0) + (e["count"] - 1 if "count" in e else 1)
    assert matched == {r: float(n) for r, n in lines.items()}, f"matches {matched} != lines {lines}\n{report}"
    assert load_cores < MAX_AGENT_CORES, f"the agent used {load_cores:.2f} cores under the load\n{report}"
