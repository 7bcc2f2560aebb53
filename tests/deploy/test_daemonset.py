"""Assertions on the rendered DaemonSet: privileges, mounts, identity, rollout."""
from __future__ import annotations

import json
import re

import pytest
import yaml

from tests.deploy.chart import CHART, REPO, agent_container, helm, one, render, render_scenario

LEAST_PRIVILEGE_CAPS = ["BPF", "PERFMON", "NET_ADMIN", "SYS_RESOURCE"]
# The tls probe (on by default) reads other users' processes: ptrace read access.
DEFAULT_CAPS = [*LEAST_PRIVILEGE_CAPS, "SYS_PTRACE"]


def pod_spec(objs):
    return one(objs, "DaemonSet")["spec"]["template"]["spec"]


def mounts(objs) -> dict[str, dict]:
    """mountPath → {mount, volume}."""
    spec = pod_spec(objs)
    volumes = {v["name"]: v for v in spec["volumes"]}
    return {
        m["mountPath"]: {"mount": m, "volume": volumes[m["name"]]}
        for m in agent_container(objs)["volumeMounts"]
    }


def test_default_capabilities_are_exactly_the_least_privilege_set():
    sc = agent_container(render_scenario(None))["securityContext"]
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sc["capabilities"]["add"] == DEFAULT_CAPS
    assert "privileged" not in sc
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    # Capabilities only apply to uid 0 in the container.
    assert sc["runAsUser"] == 0


def test_extra_capabilities_are_appended_once():
    sc = agent_container(render(sets=["extraCapabilities={SYS_ADMIN,BPF}"]))["securityContext"]
    assert sc["capabilities"]["add"] == [*DEFAULT_CAPS, "SYS_ADMIN"]


def test_sys_ptrace_only_when_tls_or_security_reads_processes():
    """The tls probe opens libssl through /proc/<pid>/root, security events
    read /proc/<pid>/exe and cwd, of other users' processes: ptrace read access
    (tests/deploy/test_capabilities.py and test_security_capabilities.py)."""
    def caps(objs):
        return agent_container(objs)["securityContext"]["capabilities"]

    no_tls = "config.probes.tls.enabled=false"
    for sets in ([], ["config.security.enabled=true"], [no_tls, "config.security.enabled=true"]):
        assert caps(render(sets=sets))["add"] == DEFAULT_CAPS, sets
    assert caps(render_scenario("security-values.yaml"))["add"] == DEFAULT_CAPS
    assert caps(render(sets=[no_tls]))["add"] == LEAST_PRIVILEGE_CAPS
    assert caps(render(sets=[no_tls, "config.security.enabled=false"]))["add"] == LEAST_PRIVILEGE_CAPS
    # Listed by the user as well: still once, before the user's other additions.
    both = render(sets=["config.security.enabled=true", "extraCapabilities={SYS_PTRACE,SYS_ADMIN}"])
    assert caps(both) == {"drop": ["ALL"], "add": [*DEFAULT_CAPS, "SYS_ADMIN"]}
    # Neither on, SYS_PTRACE asked for: the user's choice stands.
    assert caps(render(sets=[no_tls, "extraCapabilities={SYS_PTRACE}"]))["add"] == DEFAULT_CAPS
    # Privileged has every capability anyway: no list to add to.
    sc = agent_container(render(sets=["privileged=true", "config.security.enabled=true"]))["securityContext"]
    assert sc == {"privileged": True, "runAsUser": 0, **UNCONFINED}


# The chart's default profiles (values.yaml says why), set in both modes.
UNCONFINED = {"seccompProfile": {"type": "Unconfined"}, "appArmorProfile": {"type": "Unconfined"}}


def test_privileged_is_opt_in_and_replaces_the_capability_list():
    objs = render_scenario("privileged-values.yaml")
    sc = agent_container(objs)["securityContext"]
    assert sc == {"privileged": True, "runAsUser": 0, **UNCONFINED}
    assert pod_spec(objs)["hostPID"] is True


def test_host_namespaces_are_not_shared_by_default():
    spec = pod_spec(render_scenario(None))
    assert spec["hostNetwork"] is False
    assert spec["hostPID"] is False
    assert spec["dnsPolicy"] == "ClusterFirst"
    assert pod_spec(render(sets=["hostNetwork=true"]))["dnsPolicy"] == "ClusterFirstWithHostNet"


def host_mounts(objs) -> dict[str, tuple[str, bool, str | None]]:
    """mountPath → (hostPath, readOnly, recursiveReadOnly) of every hostPath mount."""
    return {p: (x["volume"]["hostPath"]["path"], x["mount"].get("readOnly", False),
                x["mount"].get("recursiveReadOnly"))
            for p, x in mounts(objs).items() if "hostPath" in x["volume"]}


def test_host_mounts_default():
    m = mounts(render_scenario(None))
    assert host_mounts(render_scenario(None)) == {
        # mountPath: (hostPath, readOnly, recursiveReadOnly)
        "/sys/kernel/tracing": ("/sys/kernel/tracing", True, "IfPossible"),
        "/host/sys/fs/cgroup": ("/sys/fs/cgroup", True, "IfPossible"),
        "/host/proc": ("/proc", True, "IfPossible"),  # the tls probe's process scan
    }
    # Not mounted unless needed: bpffs (nothing is pinned), debugfs (old
    # kernels), host /proc with neither tls nor security on.
    assert not {"/sys/fs/bpf", "/sys/kernel/debug"} & set(m)
    assert "/host/proc" not in mounts(render(sets=["config.probes.tls.enabled=false"]))
    assert m["/etc/podsight/podsight.yaml"]["mount"]["readOnly"] is True
    assert m["/tmp"]["volume"]["emptyDir"]["medium"] == "Memory"


def test_every_host_mount_is_read_only_and_recursively_so_where_possible():
    """bpffs, debugfs and /proc on as well: no host path is writable."""
    objs = render(sets=["hostMounts.bpffs=true", "hostMounts.debugfs=true", "hostMounts.proc=true"])
    got = host_mounts(objs)
    assert set(got) == {"/sys/fs/bpf", "/sys/kernel/tracing", "/sys/kernel/debug", "/host/sys/fs/cgroup", "/host/proc"}
    assert {ro for _, ro, _ in got.values()} == {True}
    assert {rro for _, _, rro in got.values()} == {"IfPossible"}
    # bpffs is read, never created: /sys/fs/bpf is the kernel's own directory in sysfs.
    assert mounts(objs)["/sys/fs/bpf"]["volume"]["hostPath"]["type"] == "Directory"
    enabled = host_mounts(render(sets=["hostMounts.recursiveReadOnly=Enabled"]))
    assert {rro for _, _, rro in enabled.values()} == {"Enabled"}
    left_out = host_mounts(render(sets=["hostMounts.recursiveReadOnly="]))
    assert {rro for _, _, rro in left_out.values()} == {None}
    assert {ro for _, ro, _ in left_out.values()} == {True}


def test_recursive_read_only_only_where_the_api_has_it():
    """volumeMounts[].recursiveReadOnly is new in Kubernetes 1.30: left out
    before (test_chart validates each release's rendering against its API)."""
    for version, expected in (("1.29.0", {None}), ("1.30.0", {"IfPossible"}), ("1.37.0", {"IfPossible"})):
        got = host_mounts(render_scenario(None, kube_version=version))
        assert {rro for _, _, rro in got.values()} == expected, version


def test_schema_rejects_an_unknown_recursive_read_only_mode():
    out = helm("template", "x", str(CHART), "--set", "hostMounts.recursiveReadOnly=Always", check=False)
    assert out.returncode != 0 and "recursiveReadOnly" in out.stderr


def test_host_proc_is_mounted_read_only_when_security_is_on():
    m = mounts(render_scenario("security-values.yaml"))
    assert m["/host/proc"]["volume"]["hostPath"]["path"] == "/proc"
    assert m["/host/proc"]["mount"]["readOnly"] is True
    assert m["/host/proc"]["mount"]["recursiveReadOnly"] == "IfPossible"
    assert m["/etc/podsight/rules"]["mount"]["readOnly"] is True


# libbpf/bpf() ways to pin an object to bpffs, and the path itself.
PINNING = re.compile(r"/sys/fs/bpf|bpffs|__pin\b|_pin\(|pin_root_path|LIBBPF_PIN|BPF_OBJ_PIN|\bpinning\b")


def test_nothing_in_the_agent_uses_bpffs():
    """Why hostMounts.bpffs is off: no source of the agent pins an object or
    opens bpffs (tests/test_fresh_host.py runs the agent with no bpffs at all)."""
    sources = [*(REPO / "src").rglob("*.py"), *(REPO / "bpf").rglob("*.[ch]")]
    assert len(sources) > 10
    hits = [f"{path.relative_to(REPO)}:{n}: {line.strip()}"
            for path in sources for n, line in enumerate(path.read_text().splitlines(), 1)
            if PINNING.search(line)]
    assert not hits, "the agent now uses bpffs: revisit hostMounts.bpffs (values.yaml, deploy/README.md)\n" + \
        "\n".join(hits)


def test_cgroup_root_in_config_matches_the_cgroup_mount():
    import yaml

    objs = render_scenario(None)
    cfg = yaml.safe_load(one(objs, "ConfigMap", "podsight")["data"]["podsight.yaml"])
    assert cfg["cgroup_root"] in mounts(objs)


def test_node_name_comes_from_the_downward_api():
    c = agent_container(render_scenario(None))
    env = {e["name"]: e for e in c["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert "--node-name=$(NODE_NAME)" in c["args"]
    assert c["args"][:2] == ["run", "--config=/etc/podsight/podsight.yaml"]


def test_extra_args_and_env_are_appended():
    c = agent_container(render(sets=["extraArgs={--log-level=debug}",
                                     "extraEnv[0].name=PODSIGHT_LABELS__IMAGE",
                                     "extraEnv[0].value=yes"]))
    assert c["args"][-1] == "--log-level=debug"
    assert c["env"][-1] == {"name": "PODSIGHT_LABELS__IMAGE", "value": "yes"}


def test_schema_rejects_a_non_string_env_value():
    # --set turns "true" into a boolean, which the API server would reject.
    out = helm("template", "x", str(CHART), "--set", "extraEnv[0].name=A,extraEnv[0].value=true", check=False)
    assert out.returncode != 0 and "extraEnv" in out.stderr


def checksum(objs) -> str:
    return one(objs, "DaemonSet")["spec"]["template"]["metadata"]["annotations"]["checksum/config"]


def test_config_checksum_follows_config_and_rules_only():
    base = checksum(render())
    assert len(base) == 64
    assert checksum(render(sets=["config.log_level=debug"])) != base
    assert checksum(render(sets=["service.port=9964"])) != base  # listen is in the config
    assert checksum(render(sets=["securityRules.a\\.yaml=rules: []"])) != base
    # Unrelated values do not roll every node.
    assert checksum(render(sets=["resources.requests.cpu=100m"])) == base
    assert checksum(render(sets=["podAnnotations.team=x"])) == base


def test_pod_template_has_no_chart_version_label():
    ds = one(render_scenario(None), "DaemonSet")
    labels = ds["spec"]["template"]["metadata"]["labels"]
    assert "helm.sh/chart" not in labels
    assert ds["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/name": "podsight",
        "app.kubernetes.io/instance": "podsight",
    }
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert ds["metadata"]["labels"]["helm.sh/chart"] == f"podsight-{chart['version']}"


def test_scheduling_and_rollout():
    objs = render_scenario(None)
    ds = one(objs, "DaemonSet")
    spec = pod_spec(objs)
    assert ds["spec"]["updateStrategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}}
    assert spec["tolerations"] == [{"operator": "Exists"}]
    assert spec["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert spec["terminationGracePeriodSeconds"] == 30
    assert "priorityClassName" not in spec
    objs = render(sets=["priorityClassName=system-node-critical"])
    assert pod_spec(objs)["priorityClassName"] == "system-node-critical"


def test_resources_have_requests_and_a_memory_limit():
    res = agent_container(render_scenario(None))["resources"]
    assert set(res["requests"]) == {"cpu", "memory"}
    assert "memory" in res["limits"] and "cpu" not in res["limits"]


def test_metrics_port_and_probes():
    c = agent_container(render_scenario(None))
    assert c["ports"] == [{"name": "metrics", "containerPort": 9963, "protocol": "TCP"}]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}


def test_image_reference():
    assert agent_container(render())["image"] == "ghcr.io/podsight/podsight:0.1.0"
    digest = "sha256:" + "a" * 64
    assert agent_container(render(sets=[f"image.digest={digest}"]))["image"] == f"ghcr.io/podsight/podsight@{digest}"


def test_headless_service_names_the_metrics_port():
    svc = one(render_scenario(None), "Service")
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["ports"] == [{"name": "metrics", "port": 9963, "targetPort": "metrics", "protocol": "TCP"}]


def test_rbac_grants_only_get_list_watch_on_pods():
    objs = render_scenario(None)
    role = one(objs, "ClusterRole")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]
    binding = one(objs, "ClusterRoleBinding")
    sa = one(objs, "ServiceAccount")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"],
                                    "namespace": "podsight"}]
    assert pod_spec(objs)["serviceAccountName"] == sa["metadata"]["name"]
    # No other RBAC object anywhere.
    for scenario in (None, "monitoring-values.yaml", "security-values.yaml", "privileged-values.yaml"):
        kinds = [o["kind"] for o in render_scenario(scenario)]
        assert kinds.count("ClusterRole") == 1 and "Role" not in kinds and "RoleBinding" not in kinds


def test_minimal_scenario_has_no_rbac_and_no_token():
    objs = render_scenario("minimal-values.yaml")
    kinds = {o["kind"] for o in objs}
    assert not kinds & {"ClusterRole", "ClusterRoleBinding", "ServiceAccount", "Service", "Pod"}
    assert pod_spec(objs)["automountServiceAccountToken"] is False


# ------------------------------------------------------- seccomp and AppArmor

def test_default_profiles_are_unconfined_on_the_agent_container():
    """Unconfined seccomp: RuntimeDefault refuses bpf() without CAP_SYS_ADMIN
    on CRI-O/Podman/older containerd (tests/deploy/test_seccomp.py measures it)."""
    objs = render_scenario(None)
    sc = agent_container(objs)["securityContext"]
    assert {k: sc[k] for k in UNCONFINED} == UNCONFINED
    # Container level only: the pod's own securityContext is the user's.
    assert "securityContext" not in pod_spec(objs)


def test_localhost_and_runtime_default_profiles():
    objs = render_scenario("hardened-values.yaml")
    sc = agent_container(objs)["securityContext"]
    assert sc["seccompProfile"] == {"type": "Localhost", "localhostProfile": "podsight.json"}
    assert sc["appArmorProfile"] == {"type": "RuntimeDefault"}
    assert sc["capabilities"]["add"] == DEFAULT_CAPS  # a profile takes no capability away
    # The profile the scenario names is the one the chart ships.
    assert (CHART / "files" / "seccomp" / sc["seccompProfile"]["localhostProfile"]).is_file()


def test_empty_profiles_leave_the_fields_out():
    objs = render(sets=["seccompProfile=null", "appArmorProfile=null"])
    sc = agent_container(objs)["securityContext"]
    assert "seccompProfile" not in sc and "appArmorProfile" not in sc
    ds = one(render(sets=["appArmorProfile=null"], kube_version="1.29.0"), "DaemonSet")
    assert not [a for a in ds["spec"]["template"]["metadata"]["annotations"] if "apparmor" in a]


@pytest.mark.parametrize("profile,annotation", [
    ({}, "unconfined"),
    ({"appArmorProfile.type": "RuntimeDefault"}, "runtime/default"),
    ({"appArmorProfile.type": "Localhost", "appArmorProfile.localhostProfile": "podsight"}, "localhost/podsight"),
])
def test_app_armor_before_1_30_is_the_beta_annotation(profile, annotation):
    """securityContext.appArmorProfile is GA in 1.30; 1.25-1.29 read the annotation."""
    sets = [f"{k}={v}" for k, v in profile.items()]
    old = render(sets=sets, kube_version="1.29.0")
    pod = one(old, "DaemonSet")["spec"]["template"]
    assert pod["metadata"]["annotations"]["container.apparmor.security.beta.kubernetes.io/podsight"] == annotation
    assert "appArmorProfile" not in agent_container(old)["securityContext"]
    new = render(sets=sets, kube_version="1.30.0")
    assert not [a for a in one(new, "DaemonSet")["spec"]["template"]["metadata"]["annotations"] if "apparmor" in a]
    assert agent_container(new)["securityContext"]["appArmorProfile"]["type"] == profile.get(
        "appArmorProfile.type", "Unconfined")


@pytest.mark.parametrize("sets,where", [
    (["seccompProfile.type=Localhost"], "localhostProfile"),
    (["seccompProfile.type=Unconfined", "seccompProfile.localhostProfile=x.json"], "seccompProfile"),
    (["appArmorProfile.type=Permissive"], "appArmorProfile"),
    (["securityContext.seccompProfile.type=RuntimeDefault"], "securityContext"),
])
def test_schema_rejects_bad_profiles(sets, where):
    out = helm("template", "x", str(CHART), *[a for s in sets for a in ("--set", s)], check=False)
    assert out.returncode != 0 and where in out.stderr, out.stderr


def test_seccomp_profile_in_the_chart_allows_the_agents_syscalls():
    """The Localhost profile is a runtime default plus bpf and perf_event_open,
    allowed outright (test_seccomp.py runs the agent under it)."""
    profile = json.loads((CHART / "files" / "seccomp" / "podsight.json").read_text())
    assert profile["defaultAction"] == "SCMP_ACT_ERRNO"
    unconditional = [r for r in profile["syscalls"]
                     if r["action"] == "SCMP_ACT_ALLOW" and not r.get("args") and not r.get("includes")
                     and not r.get("excludes")]
    allowed = {n for r in unconditional for n in r["names"]}
    assert {"bpf", "perf_event_open", "openat", "mmap", "epoll_wait", "ioctl"} <= allowed
    # Nowhere else, so no runtime can see a conflicting rule for them.
    elsewhere = [r for r in profile["syscalls"] if r not in unconditional
                 and {"bpf", "perf_event_open"} & set(r["names"])]
    assert not elsewhere, elsewhere
