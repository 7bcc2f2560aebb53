"""Assertions on the rendered DaemonSet: privileges, mounts, identity, rollout."""
from __future__ import annotations

from tests.deploy.chart import CHART, agent_container, helm, one, render, render_scenario

LEAST_PRIVILEGE_CAPS = ["BPF", "PERFMON", "NET_ADMIN", "SYS_RESOURCE"]


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
    assert sc["capabilities"]["add"] == LEAST_PRIVILEGE_CAPS
    assert "privileged" not in sc
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    # Capabilities only apply to uid 0 in the container.
    assert sc["runAsUser"] == 0


def test_extra_capabilities_are_appended_once():
    sc = agent_container(render(sets=["extraCapabilities={SYS_ADMIN,BPF}"]))["securityContext"]
    assert sc["capabilities"]["add"] == [*LEAST_PRIVILEGE_CAPS, "SYS_ADMIN"]


def test_security_adds_sys_ptrace_and_only_then():
    """exe and cwd of other users' processes (/proc/<pid>/exe, cwd) need ptrace
    read access: tests/deploy/test_security_capabilities.py runs the agent with it."""
    def caps(objs):
        return agent_container(objs)["securityContext"]["capabilities"]

    assert caps(render_scenario("security-values.yaml"))["add"] == [*LEAST_PRIVILEGE_CAPS, "SYS_PTRACE"]
    assert caps(render(sets=["config.security.enabled=true"]))["add"] == [*LEAST_PRIVILEGE_CAPS, "SYS_PTRACE"]
    for scenario in (None, "minimal-values.yaml", "monitoring-values.yaml"):
        assert "SYS_PTRACE" not in caps(render_scenario(scenario))["add"], scenario
    assert "SYS_PTRACE" not in caps(render(sets=["config.security.enabled=false"]))["add"]
    # Listed by the user as well: still once, before the user's other additions.
    both = render(sets=["config.security.enabled=true", "extraCapabilities={SYS_PTRACE,SYS_ADMIN}"])
    assert caps(both) == {"drop": ["ALL"], "add": [*LEAST_PRIVILEGE_CAPS, "SYS_PTRACE", "SYS_ADMIN"]}
    # Security off, SYS_PTRACE asked for: the user's choice stands.
    assert caps(render(sets=["extraCapabilities={SYS_PTRACE}"]))["add"] == [*LEAST_PRIVILEGE_CAPS, "SYS_PTRACE"]
    # Privileged has every capability anyway: no list to add to.
    sc = agent_container(render(sets=["privileged=true", "config.security.enabled=true"]))["securityContext"]
    assert sc == {"privileged": True, "runAsUser": 0}


def test_privileged_is_opt_in_and_replaces_the_capability_list():
    objs = render_scenario("privileged-values.yaml")
    sc = agent_container(objs)["securityContext"]
    assert sc == {"privileged": True, "runAsUser": 0}
    assert pod_spec(objs)["hostPID"] is True


def test_host_namespaces_are_not_shared_by_default():
    spec = pod_spec(render_scenario(None))
    assert spec["hostNetwork"] is False
    assert spec["hostPID"] is False
    assert spec["dnsPolicy"] == "ClusterFirst"
    assert pod_spec(render(sets=["hostNetwork=true"]))["dnsPolicy"] == "ClusterFirstWithHostNet"


def test_host_mounts_default():
    m = mounts(render_scenario(None))
    expected = {
        # mountPath: (hostPath, readOnly)
        "/sys/fs/bpf": ("/sys/fs/bpf", False),
        "/sys/kernel/tracing": ("/sys/kernel/tracing", True),
        "/host/sys/fs/cgroup": ("/sys/fs/cgroup", True),
    }
    host = {p: (x["volume"]["hostPath"]["path"], x["mount"].get("readOnly", False))
            for p, x in m.items() if "hostPath" in x["volume"]}
    assert host == expected
    assert m["/sys/fs/bpf"]["volume"]["hostPath"]["type"] == "DirectoryOrCreate"
    # Not mounted unless needed: host /proc (security only), debugfs (old kernels).
    assert "/host/proc" not in m and "/sys/kernel/debug" not in m
    assert m["/etc/podsight/podsight.yaml"]["mount"]["readOnly"] is True
    assert m["/tmp"]["volume"]["emptyDir"]["medium"] == "Memory"


def test_host_proc_is_mounted_read_only_when_security_is_on():
    m = mounts(render_scenario("security-values.yaml"))
    assert m["/host/proc"]["volume"]["hostPath"]["path"] == "/proc"
    assert m["/host/proc"]["mount"]["readOnly"] is True
    assert m["/etc/podsight/rules"]["mount"]["readOnly"] is True


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
    assert ds["metadata"]["labels"]["helm.sh/chart"] == "podsight-0.1.0"


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
