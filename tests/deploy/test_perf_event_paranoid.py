"""kernel.perf_event_paranoid on Debian/Ubuntu kernels (deploy/README.md).

Their kernels carry a patch (CONFIG_SECURITY_PERF_EVENTS_RESTRICT) under which
a high perf_event_paranoid (Ubuntu: 4, its default) makes perf_event_open()
fail with EACCES for any process without CAP_SYS_ADMIN: CAP_PERFMON, which the
chart grants, is not enough. This project's kernels are upstream ones, where
no value does that, so the test makes perf_event_open() return EACCES with a
seccomp filter (the same errno, from the same syscall, before anything else
runs) and checks what the agent then reports against what deploy/README.md says."""
from __future__ import annotations

import json
import re

import pytest

from podsight.kernel.mounts import tracefs_root
from tests.deploy.chart import REPO, render_scenario
from tests.deploy.test_capabilities import chart_caps
from tests.deploy.test_seccomp import AGENT_RULE, shipped, under, without_agent_rule
from tests.support.agent import AgentProcess

README = REPO / "deploy" / "README.md"
# What the agent reports when perf_event_open() is refused (measured below).
DOWN = {"tcp", "tcp_rtt", "network_drops", "security"}
UP = {"network", "tls"}  # uprobe_multi links are made with bpf(), not perf_event_open()


def readme_section() -> str:
    text = README.read_text()
    m = re.search(r"^#+ [^\n]*perf_event_paranoid[^\n]*\n(.*?)(?=^#{1,4} )", text, re.M | re.S)
    assert m, "deploy/README.md has no section on kernel.perf_event_paranoid"
    return m.group(0)


def test_readme_says_what_fails_what_the_agent_reports_and_what_to_do():
    section = readme_section()
    for needle in (
        "kernel.perf_event_paranoid",
        "CAP_SYS_ADMIN",                            # what the patch checks
        "CAP_PERFMON",                              # ... and why the chart's set is not enough
        "EACCES",
        "perf_event_open() failed: Permission denied",  # the log line (libbpf's)
        'podsight_probe_up',
        'state="failed"',
        "PodsightProbeDown",
        "sysctl",                                   # remedies
        "extraCapabilities: [SYS_ADMIN]",
        "privileged: true",
    ):
        assert needle in section, f"deploy/README.md's perf_event_paranoid section does not mention {needle!r}"
    for probe in DOWN | UP:
        assert f"`{probe}`" in section, f"the section does not say what happens to the {probe} probe"


@pytest.mark.root
def test_agent_reports_refused_perf_events(tmp_path):
    tracefs_root()
    profile = shipped()
    profile["syscalls"] = [*without_agent_rule(profile),
                           {"names": ["bpf"], "action": "SCMP_ACT_ALLOW"},
                           {"names": ["perf_event_open"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}]  # EACCES
    assert AGENT_RULE == ["bpf", "perf_event_open"]
    path = tmp_path / "paranoid.json"
    path.write_text(json.dumps(profile))
    caps = chart_caps(render_scenario("security-values.yaml"))
    assert "PERFMON" in caps and "SYS_ADMIN" not in caps
    with AgentProcess(config="security:\n  enabled: true\n", prefix=under(path, caps)) as agent:
        s = agent.wait_for(lambda s: DOWN | UP <= {labels["probe"] for labels, _ in s.series("podsight_probe_up")},
                           what="podsight_probe_up for every probe")
        up = {labels["probe"]: v for labels, v in s.series("podsight_probe_up")}
        state = {labels["probe"]: labels["state"] for labels, v in s.series("podsight_probe_state") if v}
        log = "\n".join(agent.log)
    assert {p for p, v in up.items() if v == 0} == DOWN, log
    assert {p for p, v in up.items() if v == 1} == UP, log
    # Failed, not unsupported: the probe-down alert fires, as it should.
    assert {p: state[p] for p in DOWN} == {p: "failed" for p in DOWN}
    assert "tracepoint 'tcp/tcp_retransmit_skb' perf_event_open() failed: Permission denied" in log
    assert re.search(r"probe security unavailable: .*EACCES", log), log


@pytest.mark.root
def test_podsight_check_names_the_refused_perf_event(tmp_path):
    """`podsight check` opens a tracepoint perf event as the attach would,
    and says why it cannot, with the sysctl's value."""
    import subprocess
    import sys

    tracefs_root()
    profile = shipped()
    profile["syscalls"] = [*without_agent_rule(profile),
                           {"names": ["bpf"], "action": "SCMP_ACT_ALLOW"},
                           {"names": ["perf_event_open"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}]
    path = tmp_path / "paranoid.json"
    path.write_text(json.dumps(profile))
    caps = chart_caps(render_scenario("security-values.yaml"))
    run = lambda prefix: subprocess.run([*prefix, sys.executable, "-m", "podsight.cli", "check"],  # noqa: E731
                                        capture_output=True, text=True, timeout=120, cwd=REPO)
    ok = next(line for line in run([]).stdout.splitlines() if "perf_event_open on a tracepoint" in line)
    refused = next(line for line in run(under(path, caps)).stdout.splitlines()
                   if "perf_event_open on a tracepoint" in line)
    assert "Permission denied" not in ok, ok
    assert "Permission denied" in refused and "kernel.perf_event_paranoid = " in refused, refused
