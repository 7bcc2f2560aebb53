"""Seccomp: why the chart's default is Unconfined, and that the Localhost
profile it ships (files/seccomp/podsight.json) lets the agent work.

Each profile is applied the way runc applies a pod's seccompProfile
(tests/deploy/seccomp_exec.py, libseccomp), under exactly the chart's
capabilities (setpriv), to the agent's kind of bpf()/perf_event_open() calls
(bpf_caps_probe.py) and to the real agent."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from podsight.kernel.mounts import tracefs_root  # the agent's own code mounts it where missing
from tests.deploy.chart import CHART, agent_container, render_scenario
from tests.deploy.test_capabilities import CORE_OPS, chart_caps
from tests.deploy.test_security_capabilities import setpriv_prefix
from tests.support.agent import AgentProcess

pytestmark = pytest.mark.root

HERE = Path(__file__).resolve().parent
SECCOMP_EXEC = HERE / "seccomp_exec.py"
PROBE = HERE / "bpf_caps_probe.py"
PROFILE = CHART / "files" / "seccomp" / "podsight.json"
AGENT_RULE = ["bpf", "perf_event_open"]


def shipped() -> dict:
    return json.loads(PROFILE.read_text())


def without_agent_rule(profile: dict) -> list[dict]:
    rules = [r for r in profile["syscalls"] if r["names"] != AGENT_RULE]
    assert len(rules) == len(profile["syscalls"]) - 1, "the profile's bpf/perf_event_open rule is gone"
    return rules


def containers_common_default() -> dict:
    """RuntimeDefault as CRI-O and Podman have it (containers/common
    pkg/seccomp/seccomp.json): bpf and perf_event_open only with CAP_SYS_ADMIN,
    EPERM otherwise. Older containerd releases likewise had no CAP_BPF rule."""
    p = shipped()
    p["syscalls"] = [*without_agent_rule(p),
                     {"names": AGENT_RULE, "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
                     {"names": AGENT_RULE, "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
                      "excludes": {"caps": ["CAP_SYS_ADMIN"]}}]
    return p


def moby_default() -> dict:
    """RuntimeDefault as Docker and current containerd have it (moby
    profiles/seccomp/default.json): bpf with CAP_BPF, perf_event_open with CAP_PERFMON."""
    p = shipped()
    p["syscalls"] = [*without_agent_rule(p),
                     {"names": ["bpf"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_BPF"]}},
                     {"names": ["perf_event_open"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_PERFMON"]}}]
    return p


@pytest.fixture
def profile_file(tmp_path):
    def write(profile: dict) -> Path:
        path = tmp_path / f"profile-{len(list(tmp_path.iterdir()))}.json"
        path.write_text(json.dumps(profile))
        return path
    return write


def under(profile: Path, caps: list[str]) -> list[str]:
    """The command prefix: the chart's capabilities, then the profile, then exec."""
    return [*setpriv_prefix(caps), sys.executable, str(SECCOMP_EXEC), str(profile), "--"]


def probe(profile: Path, caps: list[str], cgroup_dir: Path, other_pid: int) -> dict[str, str]:
    cmd = [*under(profile, caps), sys.executable, str(PROBE), str(cgroup_dir), tracefs_root(), str(other_pid)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_shipped_profile_lets_the_chart_capabilities_do_the_agents_calls(cgroup_dir, other_user):
    """CORE_OPS include flows' conntrack dump and event subscription: the
    profile's socket() rule refuses AF_VSOCK only, so AF_NETLINK passes."""
    res = probe(PROFILE, chart_caps(render_scenario(None)), cgroup_dir, other_user)
    assert {op: res[op] for op in CORE_OPS} == {op: "ok" for op in CORE_OPS}


def test_runtime_default_of_cri_o_and_podman_refuses_the_agent(profile_file, cgroup_dir, other_user):
    """Why seccompProfile defaults to Unconfined: with the chart's capabilities
    (no CAP_SYS_ADMIN) that RuntimeDefault refuses every bpf() and perf_event_open()."""
    res = probe(profile_file(containers_common_default()), chart_caps(render_scenario(None)), cgroup_dir, other_user)
    assert res["map_create_ringbuf"] == "EPERM"
    assert res["prog_load_cgroup_skb"] == "EPERM"
    assert res["perf_event_open_tracepoint"] == "EPERM"


def test_runtime_default_of_docker_and_containerd_allows_the_agent(profile_file, cgroup_dir, other_user):
    """Where RuntimeDefault comes from Moby's profile (CAP_BPF / CAP_PERFMON
    rules) it works: the README says `{type: RuntimeDefault}` is fine there."""
    res = probe(profile_file(moby_default()), chart_caps(render_scenario(None)), cgroup_dir, other_user)
    assert {op: res[op] for op in CORE_OPS} == {op: "ok" for op in CORE_OPS}


# keyctl(KEYCTL_GET_KEYRING_ID, KEY_SPEC_USER_KEYRING, 0): any process may ask
# the kernel for its user keyring, but Moby's default profile (and so ours) has
# no rule for keyctl. (x86_64, aarch64 syscall numbers.)
KEYCTL = {"x86_64": 250, "aarch64": 219}[os.uname().machine]
KEYCTL_PROBE = (f"import ctypes; libc = ctypes.CDLL(None, use_errno=True); "
                f"r = libc.syscall({KEYCTL}, 0, -4, 0); print('ok' if r >= 0 else ctypes.get_errno())")


def test_shipped_profile_still_confines():
    """The profile is not Unconfined in disguise: a syscall the kernel grants
    this process (keyctl) is refused by the profile, as by the runtime default."""
    caps = chart_caps(render_scenario(None))
    bare = subprocess.run([*setpriv_prefix(caps), sys.executable, "-c", KEYCTL_PROBE],
                          capture_output=True, text=True, timeout=60)
    assert bare.stdout.strip() == "ok", bare.stdout + bare.stderr  # the kernel allows it...
    out = subprocess.run([*under(PROFILE, caps), sys.executable, "-c", KEYCTL_PROBE],
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "1", out.stdout + out.stderr  # ...the profile answers EPERM


def _probes_up(scrape) -> dict[str, float]:
    return {labels["probe"]: v for labels, v in scrape.series("podsight_probe_up")}


def test_agent_runs_every_probe_under_the_shipped_profile():
    """The real agent, security events on (every tracepoint it has), with the
    capabilities and the Localhost profile of the hardened scenario."""
    tracefs_root()
    objs = render_scenario("hardened-values.yaml", sets=["config.security.enabled=true"])
    sc = agent_container(objs)["securityContext"]
    assert sc["seccompProfile"]["localhostProfile"] == PROFILE.name
    caps = sc["capabilities"]["add"]
    with AgentProcess(config="security:\n  enabled: true\n", prefix=under(PROFILE, caps)) as agent:
        s = agent.wait_for(lambda s: {"network", "tcp", "security"} <= set(_probes_up(s)),
                           what="podsight_probe_up for network, tcp and security")
        up = _probes_up(s)
        assert {p: up[p] for p in ("network", "tcp", "tcp_rtt", "network_drops", "security")} == \
            {p: 1 for p in ("network", "tcp", "tcp_rtt", "network_drops", "security")}, \
            f"{up}\n" + "\n".join(agent.log[-20:])
        # The scrape itself is a TCP connection: the probes count, not only attach.
        agent.wait_for(lambda s: s.value("podsight_tcp_connections_opened_total") > 0)
