"""The pod-template → podman run translation (tests/image/podspec.py), on the
chart's own rendered DaemonSet: no root, no podman."""
from __future__ import annotations

import json

import pytest

from tests.deploy.chart import CHART, one, render, render_scenario
from tests.image.podspec import Untranslatable, expand, metrics_port, podman_run_args, quantity_bytes


def template(objs=None) -> dict:
    return one(objs or render(), "DaemonSet")["spec"]["template"]


def args_of(t, **kw) -> list[str]:
    kw.setdefault("configmap_dirs", {"podsight": "/cm"})
    return podman_run_args(t, image="IMG", node_name="node-1", name="agent", **kw)


def pairs(args: list[str], flag: str) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args) if a == flag]


def test_chart_default_pod_spec():
    a = args_of(template())
    i = a.index("IMG")
    assert a[i + 1:] == ["run", "--config=/etc/podsight/podsight.yaml", "--node-name=node-1"]  # $(NODE_NAME)
    assert pairs(a, "--env") == ["NODE_NAME=node-1"]  # fieldRef spec.nodeName
    assert pairs(a, "--cap-drop") == ["all"]
    # SYS_PTRACE: the tls probe (on by default) opens libssl through other users' /proc/<pid>/root.
    assert pairs(a, "--cap-add") == ["CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN", "CAP_SYS_RESOURCE", "CAP_SYS_PTRACE"]
    assert "--read-only" in a and "--privileged" not in a
    assert set(pairs(a, "--security-opt")) == {"no-new-privileges", "seccomp=unconfined", "apparmor=unconfined"}
    # hostNetwork: flows read the node's conntrack (deploy/README.md, "Flows"); no hostPID.
    assert pairs(a, "--network") == ["host"] and "--pid" not in a
    assert set(pairs(a, "--volume")) == {
        "/cm/podsight.yaml:/etc/podsight/podsight.yaml:ro",
        "/sys/kernel/tracing:/sys/kernel/tracing:ro,rbind",
        "/sys/fs/cgroup:/host/sys/fs/cgroup:ro,rbind",
        "/proc:/host/proc:ro,rbind",
    }
    assert pairs(a, "--tmpfs") == ["/tmp:rw,nosuid,nodev,size=16777216"]
    assert pairs(a, "--memory") == [str(512 * 2**20)]
    assert pairs(a, "--stop-timeout") == ["30"]
    assert metrics_port(template()) == 9963
    assert "--publish" not in a  # the host's network: the port is the node's already


def test_seccomp_choices(tmp_path):
    t = template()
    sc = t["spec"]["containers"][0]["securityContext"]
    sc["seccompProfile"] = {"type": "RuntimeDefault"}
    assert not [o for o in pairs(args_of(t), "--security-opt") if o.startswith("seccomp")]
    (tmp_path / "podsight.json").write_text("{}")
    sc["seccompProfile"] = {"type": "Localhost", "localhostProfile": "podsight.json"}
    assert f"seccomp={tmp_path}/podsight.json" in pairs(args_of(t, seccomp_dir=tmp_path), "--security-opt")
    with pytest.raises(Untranslatable, match="not on this node"):
        args_of(t, seccomp_dir=tmp_path / "none")


def test_localhost_profile_from_the_chart(tmp_path):
    """The chart renders Localhost; the caller says where the node keeps
    profiles (the kubelet: /var/lib/kubelet/seccomp; tests/image: the
    chart's own files/seccomp, the file deploy/README.md says to install)."""
    t = template(render(sets=("seccompProfile.type=Localhost", "seccompProfile.localhostProfile=podsight.json")))
    assert t["spec"]["containers"][0]["securityContext"]["seccompProfile"] == {
        "type": "Localhost", "localhostProfile": "podsight.json"}
    opts = pairs(args_of(t, seccomp_dir=CHART / "files" / "seccomp"), "--security-opt")
    assert [o for o in opts if o.startswith("seccomp")] == [f"seccomp={CHART}/files/seccomp/podsight.json"]
    # podman reads the file as given: it must be the profile, not a stub.
    profile = json.loads((CHART / "files" / "seccomp" / "podsight.json").read_text())
    assert any({"bpf", "perf_event_open"} <= set(r["names"]) and r["action"] == "SCMP_ACT_ALLOW"
               and not r.get("includes") for r in profile["syscalls"])
    sc = t["spec"]["containers"][0]["securityContext"]
    for bad in ("/etc/podsight.json", "../podsight.json", "a/../../podsight.json", ""):
        sc["seccompProfile"] = {"type": "Localhost", "localhostProfile": bad}
        with pytest.raises(Untranslatable, match="relative path"):
            args_of(t, seccomp_dir=tmp_path)


def test_hardened_scenario_translates(tmp_path):
    (tmp_path / "podsight.json").write_text("{}")
    t = template(render_scenario("hardened-values.yaml"))
    assert f"seccomp={tmp_path}/podsight.json" in pairs(args_of(t, seccomp_dir=tmp_path), "--security-opt")


def test_host_network_pid_and_ports():
    t = template()
    t["spec"]["hostNetwork"] = True
    t["spec"]["hostPID"] = True
    a = args_of(t)
    assert pairs(a, "--network") == ["host"] and pairs(a, "--pid") == ["host"]
    t["spec"]["hostNetwork"] = False
    assert pairs(args_of(t, network="slirp4netns"), "--publish") == ["127.0.0.1::9963/tcp"]


def test_never_the_bridge():
    with pytest.raises(ValueError, match="bridge"):
        args_of(template(), network="bridge")


def test_unknown_fields_are_refused():
    t = template()
    t["spec"]["initContainers"] = [{"name": "x"}]
    with pytest.raises(Untranslatable):
        args_of(t)
    t = template()
    t["spec"]["containers"][0]["lifecycle"] = {}
    with pytest.raises(Untranslatable, match="lifecycle"):
        args_of(t)
    t = template()
    t["spec"]["containers"][0]["env"].append(
        {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}})
    with pytest.raises(Untranslatable, match="status.podIP"):
        args_of(t)


def test_missing_host_directory_is_refused():
    t = template()
    t["spec"]["volumes"] = [v if v["name"] != "cgroup" else {"name": "cgroup", "hostPath": {
        "path": "/nonexistent/cgroup", "type": "Directory"}} for v in t["spec"]["volumes"]]
    with pytest.raises(Untranslatable, match="not a directory"):
        args_of(t)


def test_expand_and_quantities():
    assert expand("--n=$(A) $$(A) $(B)", {"A": "x"}) == "--n=x $(A) $(B)"
    assert quantity_bytes("16Mi") == 16 * 2**20 and quantity_bytes("1G") == 10**9 and quantity_bytes(5) == 5
