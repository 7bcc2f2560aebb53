"""Static checks of dashboards/*.json: Grafana conventions, valid PromQL
(checked by promtool), and metric names that exist."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

import dashboard_targets as dt
import prom_tools

EXPECTED_UIDS = {
    "podsight-pod-network",
    "podsight-tcp-health",
    "podsight-security-events",
    "podsight-agent-health",
}
# Values used to turn a dashboard expr into plain PromQL for promtool.
CHECK_VARIABLES = {
    "datasource": "prometheus", "cluster": ".*", "namespace": ".*", "pod": ".*",
    "__rate_interval": "1m", "__interval": "30s", "__range": "1h",
}

FILES = dt.dashboard_files()


def _ids(paths):
    return [p.name for p in paths]


def test_the_four_dashboards_exist_with_stable_unique_uids():
    uids = [dt.load_dashboard(f).get("uid") for f in FILES]
    assert len(uids) == len(set(uids)), f"duplicate uid among {uids}"
    assert EXPECTED_UIDS <= set(uids), f"missing dashboards: {EXPECTED_UIDS - set(uids)}"
    for f, uid in zip(FILES, uids):
        # Grafana caps uids at 40 characters; a readable fixed uid keeps links stable.
        assert uid and re.fullmatch(r"podsight-[a-z0-9-]{1,31}", uid), f"{f.name}: uid {uid!r}"
        assert f.stem == uid, f"{f.name}: file name should be the uid {uid}.json"


@pytest.mark.parametrize("path", FILES, ids=_ids(FILES))
def test_dashboard_is_portable(path: Path):
    dash = dt.load_dashboard(path)
    assert dash.get("title", "").startswith("podsight / "), f"{path.name}: title {dash.get('title')!r}"
    assert "podsight" in dash.get("tags", []), f"{path.name}: tag 'podsight' missing"
    assert dash.get("editable") is False, f"{path.name}: shipped dashboards are read-only"
    for key in ("__inputs", "__requires", "id"):
        assert key not in dash, f"{path.name}: '{key}' makes the dashboard instance-specific"
    assert "pluginVersion" not in path.read_text(), f"{path.name}: pluginVersion present"


@pytest.mark.parametrize("path", FILES, ids=_ids(FILES))
def test_variables_datasource_cluster_namespace_pod(path: Path):
    dash = dt.load_dashboard(path)
    variables = dash.get("templating", {}).get("list", [])
    names = [v.get("name") for v in variables]
    assert names[:4] == ["datasource", "cluster", "namespace", "pod"], f"{path.name}: variables {names}"
    ds = variables[0]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus", f"{path.name}: datasource variable {ds}"
    for v in variables[1:4]:
        where = f"{path.name}: variable {v['name']}"
        assert v["type"] == "query", where
        assert v["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, where
        m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", v["query"])
        assert m and m.group(2) == v["name"], f"{where}: query {v['query']!r} is not label_values(..., {v['name']})"
        assert v.get("current") in ({}, None), f"{where}: a saved 'current' value pins one installation's data"
        # "All" must match series that lack the label entirely (no cluster
        # label on a single Prometheus, no pod on host series).
        assert v.get("includeAll") is True and v.get("allValue") == ".*", f"{where}: needs includeAll with allValue '.*'"
    cluster_query = variables[1]["query"]
    assert cluster_query == "label_values(podsight_build_info, cluster)", f"{path.name}: cluster query {cluster_query!r}"
    # Later variables are scoped by the earlier ones.
    assert '$cluster' in variables[2]["query"], f"{path.name}: namespace variable ignores $cluster"
    assert '$cluster' in variables[3]["query"] and '$namespace' in variables[3]["query"], \
        f"{path.name}: pod variable ignores $cluster/$namespace"


@pytest.mark.parametrize("path", FILES, ids=_ids(FILES))
def test_every_panel_is_a_described_timeseries_with_unit(path: Path):
    dash = dt.load_dashboard(path)
    panels = list(dt.iter_panels(dash))
    assert panels, f"{path.name}: no panels"
    ids = [p.get("id") for p in panels]
    assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids {ids}"
    for p in panels:
        where = f"{path.name}: panel {p.get('id')} {p.get('title')!r}"
        assert p.get("type") == "timeseries", f"{where}: type {p.get('type')!r}"
        assert (p.get("description") or "").strip(), f"{where}: no description"
        unit = p.get("fieldConfig", {}).get("defaults", {}).get("unit")
        assert unit, f"{where}: no unit in fieldConfig.defaults"
        assert p.get("datasource") == {"type": "prometheus", "uid": "${datasource}"}, f"{where}: datasource"
        targets = p.get("targets") or []
        assert targets, f"{where}: no targets"
        refs = [t.get("refId") for t in targets]
        assert len(refs) == len(set(refs)), f"{where}: duplicate refIds {refs}"
        for t in targets:
            assert t.get("datasource") == {"type": "prometheus", "uid": "${datasource}"}, f"{where}: target datasource"
            assert (t.get("expr") or "").strip(), f"{where}: target {t.get('refId')} has no expr"
            assert "legendFormat" in t, f"{where}: target {t.get('refId')} has no legendFormat"


def test_rates_use_rate_interval():
    bad = []
    for t in dt.all_targets():
        for fn, window in dt.range_windows(t.expr):
            # increase() over a fixed window is a deliberate "last N minutes".
            if fn in ("rate", "irate") and window != "$__rate_interval":
                bad.append(f"{t.where()}: {fn}(...[{window}])")
            elif fn not in ("rate", "irate", "increase"):
                bad.append(f"{t.where()}: range [{window}] inside {fn or 'no function'}()")
    assert not bad, "\n".join(bad)


def test_every_expr_is_valid_promql(tmp_path: Path):
    """Each target, variables substituted, loaded as a recording rule by promtool."""
    groups = []
    for i, t in enumerate(dt.all_targets()):
        groups.append({"name": t.where(), "rules": [
            {"record": f"dashboard_check:expr_{i}", "expr": dt.substitute(t.expr, CHECK_VARIABLES)}]})
    assert groups, "no dashboard targets found"
    f = tmp_path / "dashboard-exprs.yaml"
    f.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False, width=1000))
    result = prom_tools.run("promtool", "check", "rules", str(f))
    assert result.returncode == 0, f"promtool rejected dashboard expressions:\n{result.stdout}{result.stderr}"
    assert f"SUCCESS: {len(groups)} rules found" in result.stdout, result.stdout + result.stderr


def test_only_catalog_and_recorded_metric_names_are_used():
    known = dt.catalog_metric_names() | dt.recorded_names()
    bad = [f"{t.where()}: unknown metric {sorted(dt.metric_names(t.expr) - known)}"
           for t in dt.all_targets() if dt.metric_names(t.expr) - known]
    assert not bad, "\n".join(bad)


def test_dashboards_cover_the_issue_panels():
    """The panels the issue asks for, found by metric and function."""
    by_uid = {dt.load_dashboard(f)["uid"]: " ".join(t.expr for t in dt.targets(f)) for f in FILES}
    wanted = {
        "podsight-pod-network": ["podsight_network_bytes_total", "podsight_network_packets_total",
                                 "topk(", "podsight_network_drops_total", "by (reason)", "workload"],
        "podsight-tcp-health": ["podsight_tcp_connections_opened_total", "podsight_tcp_connections_failed_total",
                                "podsight_tcp_connections_active", "podsight_tcp_retransmits_total",
                                "podsight_tcp_resets_total", "histogram_quantile(0.5,", "histogram_quantile(0.95,",
                                "histogram_quantile(0.99,", "podsight_tcp_srtt_seconds_bucket",
                                "podsight_tcp_connect_duration_seconds_bucket",
                                "namespace_workload:podsight_tcp_connect_failure:ratio_rate5m",
                                "namespace_workload:podsight_tcp_retransmit:ratio_rate5m"],
        "podsight-security-events": ["by (rule)", "by (severity)", "by (namespace)", "topk("],
        "podsight-agent-health": ["podsight_probe_up", "podsight_events_dropped_total",
                                  "podsight_bpf_program_run_seconds_total", "scrape_duration_seconds",
                                  "process_resident_memory_bytes", "process_cpu_seconds_total"],
    }
    missing = [f"{uid}: {w}" for uid, ws in wanted.items() for w in ws if w not in by_uid.get(uid, "")]
    assert not missing, "\n".join(missing)


def test_histogram_quantiles_keep_le():
    bad = [t.where() for t in dt.all_targets()
           if "histogram_quantile" in t.expr and "_bucket" in t.expr and not re.search(r"by \([^)]*\ble\b", t.expr)]
    assert not bad, "histogram_quantile without `le` in the by clause:\n" + "\n".join(bad)
