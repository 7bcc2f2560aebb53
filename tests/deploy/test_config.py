"""The ConfigMap's podsight.yaml is accepted by podsight's own validator
(render → extract → load_config), for the defaults and every scenario."""
from __future__ import annotations

import dataclasses
import typing

import pytest
import yaml

from podsight.config import Config, ConfigError, Flows, load_config, parse_listen
from tests.deploy.chart import (
    CHART,
    SCENARIOS,
    agent_container,
    chart_defaults,
    helm,
    one,
    render,
    render_scenario,
    values_schema,
)

CASES = [None, *SCENARIOS]


def rendered_config(objs) -> str:
    return one(objs, "ConfigMap", "podsight")["data"]["podsight.yaml"]


def pod_env(objs) -> dict[str, str]:
    """The container's literal env values (downward-API ones have no value)."""
    return {e["name"]: e["value"] for e in agent_container(objs).get("env", []) if "value" in e}


@pytest.mark.parametrize("scenario", CASES, ids=lambda s: s or "defaults")
def test_rendered_config_is_accepted_by_load_config(scenario, tmp_path):
    objs = render_scenario(scenario)
    path = tmp_path / "podsight.yaml"
    path.write_text(rendered_config(objs))
    # The same inputs the agent sees: the file, its PODSIGHT_* env, its flags.
    cfg = load_config(path, env=pod_env(objs), overrides={"node_name": "node-a"})
    port = agent_container(objs)["ports"][0]["containerPort"]
    assert parse_listen(cfg.listen)[1] == port
    assert cfg.node_name == "node-a"


def test_security_scenario_points_rules_files_at_the_mounted_rules(tmp_path):
    objs = render_scenario("security-values.yaml")
    path = tmp_path / "podsight.yaml"
    path.write_text(rendered_config(objs))
    cfg = load_config(path, env={})
    assert cfg.security.enabled is True
    rules_cm = one(objs, "ConfigMap", "podsight-rules")
    mount = next(m for m in agent_container(objs)["volumeMounts"] if m["name"] == "rules")
    assert cfg.security.rules_files == ["builtin:default",
                                        *(f"{mount['mountPath']}/{name}" for name in sorted(rules_cm["data"]))]
    values = yaml.safe_load((CHART / "ci" / "security-values.yaml").read_text())
    assert rules_cm["data"] == values["securityRules"]
    assert cfg.security.egress.allowed_cidrs == values["config"]["security"]["egress"]["allowed_cidrs"]


def test_rules_files_are_not_listed_when_security_is_off():
    objs = render(sets=["securityRules.a\\.yaml=rules: []"])
    cfg = yaml.safe_load(rendered_config(objs))
    assert cfg["security"]["enabled"] is False and cfg["security"]["rules_files"] == ["builtin:default"]


def test_user_rules_files_are_kept_before_the_chart_ones():
    objs = render(sets=["config.security.enabled=true", "config.security.rules_files={/opt/site.yaml}",
                        "securityRules.b\\.yaml=rules: []", "securityRules.a\\.yaml=rules: []"])
    cfg = yaml.safe_load(rendered_config(objs))
    assert cfg["security"]["rules_files"] == ["/opt/site.yaml", "/etc/podsight/rules/a.yaml",
                                              "/etc/podsight/rules/b.yaml"]


def test_listen_follows_listen_host_and_port(tmp_path):
    objs = render(sets=["listenHost=[::]", "service.port=9970"])
    path = tmp_path / "podsight.yaml"
    path.write_text(rendered_config(objs))
    assert load_config(path, env={}).listen == "[::]:9970"


@pytest.mark.parametrize("key", ["listen", "node_name"])
def test_chart_owned_keys_are_refused_with_a_reason(key):
    out = helm("template", "x", str(CHART), "--set", f"config.{key}=x", check=False)
    assert out.returncode != 0
    assert f"config.{key}" in out.stderr


def test_the_validator_catches_a_bad_value_the_schema_cannot_see(tmp_path):
    """Guards the guard: a rendered config with a wrong value is rejected by
    load_config with file, line and key (so the test above can fail)."""
    objs = render(sets=["config.security.ringbuf_size_kb=100"])
    path = tmp_path / "podsight.yaml"
    path.write_text(rendered_config(objs))
    with pytest.raises(ConfigError, match=r"podsight.yaml.*security.ringbuf_size_kb.*power of two"):
        load_config(path, env={})


def loaded(objs, tmp_path):
    path = tmp_path / "podsight.yaml"
    path.write_text(rendered_config(objs))
    return load_config(path, env={})


def test_chart_flows_defaults_are_the_agents(tmp_path):
    """values.yaml spells out config.flows: exactly the agent's own defaults."""
    assert loaded(render_scenario(None), tmp_path).flows == Flows()
    assert chart_defaults()["config"]["flows"]["external"]["cidr_sets"] == Flows().external.cidr_sets


def test_flows_scenario_is_what_the_agent_reads(tmp_path):
    flows = loaded(render_scenario("flows-values.yaml"), tmp_path).flows
    assert (flows.enabled, flows.level, flows.conntrack, flows.max_peers_per_workload) == (True, "pod", False, 10)
    assert (flows.peer_window, flows.idle_timeout) == (120, 300)
    assert flows.service_cidrs == ["10.96.0.0/12", "fd00:10:96::/112"]
    # `private: null` removed the chart's default set (Helm's merge of maps).
    assert flows.external.cidr_sets == {"corp": ["172.16.0.0/12", "100.64.0.0/10"],
                                        "partners": ["203.0.113.0/24", "2001:db8::/32"]}
    assert (flows.external.raw_ips, flows.external.top_ips) == (True, 5)


@pytest.mark.parametrize("sets,where", [
    (["config.flows.level=node"], "/config/flows/level"),
    (["config.flows.enabled=yes"], "/config/flows/enabled"),
    (["config.flows.conntrack=1"], "/config/flows/conntrack"),
    (["config.flows.max_peers_per_workload=0"], "/config/flows/max_peers_per_workload"),
    (["config.flows.max_peers_per_workload=10001"], "/config/flows/max_peers_per_workload"),
    (["config.flows.max_flows=1023"], "/config/flows/max_flows"),
    (["config.flows.max_flows=1048577"], "/config/flows/max_flows"),
    (["config.flows.peer_window=5 minutes"], "/config/flows/peer_window"),
    (["config.flows.idle_timeout=5"], "/config/flows/idle_timeout"),  # seconds: below 10
    (["config.flows.zone_label="], "/config/flows/zone_label"),
    (["config.flows.service_cidrs={10.96.0.0/12,kube-svc}"], "/config/flows/service_cidrs/1"),
    (["config.flows.external.top_ips=1001"], "/config/flows/external/top_ips"),
    (["config.flows.external.default_set=the internet"], "/config/flows/external/default_set"),
    (["config.flows.external.cidr_sets.corp=10.0.0.0/8"], "/config/flows/external/cidr_sets/corp"),
    (["config.flows.external.cidr_sets.a\\.b={10.0.0.0/8}"], "a.b"),
    (["config.flows.peers=5"], "peers"),
])
def test_schema_rejects_bad_flows_values(sets, where):
    out = helm("template", "x", str(CHART), *[a for s in sets for a in ("--set", s)], check=False)
    assert out.returncode != 0 and where in out.stderr, out.stderr


@pytest.mark.parametrize("sets", [
    ["config.flows.max_peers_per_workload=1", "config.flows.max_flows=1024", "config.flows.external.top_ips=0"],
    ["config.flows.max_peers_per_workload=10000", "config.flows.max_flows=1048576",
     "config.flows.external.top_ips=1000"],
    ["config.flows.peer_window=10s", "config.flows.idle_timeout=1h", "config.flows.level=pod"],
])
def test_flows_bounds_pass_schema_and_agent(sets, tmp_path):
    """The schema's bounds are the agent's own (config._check_flows)."""
    loaded(render(sets=sets), tmp_path)


def _fields(cls) -> dict:
    out = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        out[f.name] = _fields(tp) if dataclasses.is_dataclass(tp) else None
    return out


def _schema_keys(schema) -> dict:
    return {k: (_schema_keys(v) if "properties" in v else None) for k, v in schema["properties"].items()}


def test_values_schema_config_keys_match_the_config_dataclasses():
    """values.schema.json rejects unknown config keys at `helm install` time;
    it must know exactly the keys podsight knows (listen and node_name are
    listed only so the chart can refuse them with the reason)."""
    expected = _fields(Config)
    assert _schema_keys(values_schema()["properties"]["config"]) == expected, \
        "update deploy/helm/podsight/values.schema.json (properties.config) to match src/podsight/config.py"


def test_security_rules_of_the_scenario_pass_podsight_rules_check(tmp_path):
    """The rendered rules_files (built-in rules, then the chart's files) are
    accepted by podsight's rule checker, read in the order the agent reads them."""
    rules = pytest.importorskip("podsight.security.rules", reason="podsight.security.rules not written yet")
    objs = render_scenario("security-values.yaml")
    cm = one(objs, "ConfigMap", "podsight-rules")
    cfg = yaml.safe_load(rendered_config(objs))
    files = []
    for entry in cfg["security"]["rules_files"]:
        if entry.startswith("/etc/podsight/rules/"):
            name = entry.rsplit("/", 1)[1]
            (tmp_path / name).write_text(cm["data"][name])
            entry = str(tmp_path / name)
        files.append(entry)
    assert files[0] == rules.BUILTIN_DEFAULT
    assert rules.check_files(files) == []
