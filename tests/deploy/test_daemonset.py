"""Assertions on the rendered DaemonSet: privileges, mounts, identity, rollout."""
from __future__ import annotations

import json
import re

import pytest
import yaml

from tests.deploy.chart import CHART, REPO, agent_container, helm, one, render, render_fails, render_scenario

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


def test_net_admin_for_conntrack_is_added_once_and_only_for_it():
    """conntrack's netlink requests need CAP_NET_ADMIN (test_capabilities.py);
    the base list has it for the cgroup_skb links, so the default is unchanged.
    A list of the user's without it gets it while conntrack is on."""
    def caps(*sets):
        return agent_container(render(sets=list(sets)))["securityContext"]["capabilities"]["add"]

    assert caps() == DEFAULT_CAPS
    assert caps("config.flows.conntrack=false") == DEFAULT_CAPS  # still needed for cgroup_skb
    assert caps("config.flows.enabled=false") == DEFAULT_CAPS
    own = "securityContext.capabilities.add={BPF,PERFMON}"
    assert caps(own) == ["BPF", "PERFMON", "SYS_PTRACE", "NET_ADMIN"]
    assert caps(own, "extraCapabilities={NET_ADMIN,SYS_ADMIN}") == ["BPF", "PERFMON", "SYS_PTRACE", "NET_ADMIN",
                                                                   "SYS_ADMIN"]
    assert caps(own, "config.flows.conntrack=false") == ["BPF", "PERFMON", "SYS_PTRACE"]
    assert caps(own, "config.flows.enabled=false") == ["BPF", "PERFMON", "SYS_PTRACE"]
    assert caps(own, "config.probes.tcp.enabled=false") == ["BPF", "PERFMON", "SYS_PTRACE"]
    # hostNetwork forced on with conntrack off adds no capability: the namespace alone.
    assert caps(own, "config.flows.conntrack=false", "hostNetwork=true") == ["BPF", "PERFMON", "SYS_PTRACE"]


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
    # Privileged has every capability, not the node's network namespace: conntrack still asks for it.
    assert pod_spec(objs)["hostNetwork"] is True


def test_host_pid_is_not_shared_by_default():
    assert pod_spec(render_scenario(None))["hostPID"] is False


NO_CONNTRACK = "config.flows.conntrack=false"


def host_network(objs) -> tuple[bool, str, list[dict]]:
    spec = pod_spec(objs)
    return spec["hostNetwork"], spec["dnsPolicy"], agent_container(objs)["ports"]


PORT = {"name": "metrics", "containerPort": 9963, "protocol": "TCP"}
ON_NODE = (True, "ClusterFirstWithHostNet", [{**PORT, "hostPort": 9963}])
IN_POD = (False, "ClusterFirst", [PORT])


@pytest.mark.parametrize("sets,expected", [
    # flows and their conntrack are on by default: the node's conntrack table.
    ([], ON_NODE),
    ([NO_CONNTRACK], IN_POD),
    (["config.flows.enabled=false"], IN_POD),
    # Without the tcp probe there are no flows to name: no reason to share it.
    (["config.probes.tcp.enabled=false"], IN_POD),
    (["hostNetwork=auto"], ON_NODE),
    (["hostNetwork=auto", NO_CONNTRACK], IN_POD),
    # An explicit true stays true; false is taken when conntrack is off.
    (["hostNetwork=true", NO_CONNTRACK], ON_NODE),
    (["hostNetwork=true", "config.flows.enabled=false"], ON_NODE),
    (["hostNetwork=false", NO_CONNTRACK], IN_POD),
    (["hostNetwork=false", "config.flows.enabled=false"], IN_POD),
    (["hostNetwork=false", "config.probes.tcp.enabled=false"], IN_POD),
    (["service.port=9970"], (True, "ClusterFirstWithHostNet",
                             [{**PORT, "containerPort": 9970, "hostPort": 9970}])),
])
def test_host_network_follows_conntrack(sets, expected):
    """config.flows.conntrack reads the node's conntrack table (Service NAT
    tuples), which only a socket in the node's network namespace sees
    (test_capabilities.py measures it): hostNetwork auto turns on with it."""
    assert host_network(render(sets=sets)) == expected


def test_host_network_false_refuses_conntrack_with_the_way_out():
    """Explicitly false while conntrack is on would read the pod's own, empty,
    conntrack table: no backend, silently. The render fails and says what to set."""
    err = render_fails(sets=["hostNetwork=false"])
    assert "hostNetwork is false but config.flows.conntrack is on" in err
    assert "config.flows.conntrack=false" in err and "hostNetwork=auto" in err
    err = render_fails(sets=["hostNetwork=false", "config.flows.conntrack=true", "config.flows.enabled=true"])
    assert "config.flows.conntrack" in err


@pytest.mark.parametrize("value", ["yes", "on", "\"\""])
def test_schema_rejects_an_unknown_host_network(value):
    out = helm("template", "x", str(CHART), "--set", f"hostNetwork={value}", check=False)
    assert out.returncode != 0 and "hostNetwork" in out.stderr, out.stderr


def test_dns_policy_follows_the_pods_host_network_unless_set():
    assert pod_spec(render(sets=["dnsPolicy=Default"]))["dnsPolicy"] == "Default"
    assert pod_spec(render(sets=["dnsPolicy=ClusterFirst", NO_CONNTRACK]))["dnsPolicy"] == "ClusterFirst"


def test_minimal_scenario_keeps_the_pod_network():
    """tcp probe off: no flows, so no conntrack and no hostNetwork."""
    assert host_network(render_scenario("minimal-values.yaml")) == IN_POD


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
    # hostNetwork by default (conntrack): the port is the node's as well.
    assert c["ports"] == [{"name": "metrics", "containerPort": 9963, "hostPort": 9963, "protocol": "TCP"}]
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


READ = ["get", "list", "watch"]


@pytest.mark.parametrize("sets,resources", [
    # flows (on by default) name peer addresses: every pod, services, nodes.
    ([], ["pods", "services", "nodes"]),
    (["config.flows.conntrack=false"], ["pods", "services", "nodes"]),
    (["config.flows.enabled=true"], ["pods", "services", "nodes"]),
    # Off: the pods of the agent's own node only.
    (["config.flows.enabled=false"], ["pods"]),
    # Flows do not run without the tcp probe, their source.
    (["config.probes.tcp.enabled=false"], ["pods"]),
    (["config.probes.tcp.enabled=false", "config.flows.enabled=true"], ["pods"]),
])
def test_rbac_rules_are_read_only_and_follow_flows(sets, resources):
    role = one(render(sets=sets), "ClusterRole")
    assert role["rules"] == [{"apiGroups": [""], "resources": resources, "verbs": READ}]


def test_rbac_grants_only_get_list_watch():
    objs = render_scenario(None)
    role = one(objs, "ClusterRole")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods", "services", "nodes"], "verbs": READ}]
    binding = one(objs, "ClusterRoleBinding")
    sa = one(objs, "ServiceAccount")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"],
                                    "namespace": "podsight"}]
    assert pod_spec(objs)["serviceAccountName"] == sa["metadata"]["name"]
    # No other RBAC object anywhere.
    for scenario in (None, "monitoring-values.yaml", "security-values.yaml", "privileged-values.yaml",
                     "flows-values.yaml"):
        kinds = [o["kind"] for o in render_scenario(scenario)]
        assert kinds.count("ClusterRole") == 1 and "Role" not in kinds and "RoleBinding" not in kinds
        (rule,) = one(render_scenario(scenario), "ClusterRole")["rules"]
        assert rule["apiGroups"] == [""] and rule["verbs"] == READ
        assert set(rule["resources"]) <= {"pods", "services", "nodes"}


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
