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
    "podsight-tls-handshakes",
    "podsight-service-map",
}
# Values used to turn a dashboard expr into plain PromQL for promtool.
CHECK_VARIABLES = {
    "datasource": "prometheus", "cluster": ".*", "node": ".*", "namespace": ".*", "pod": ".*", "workload": ".*",
    "price_per_gb": "0.01",
    "__rate_interval": "1m", "__interval": "30s", "__range": "1h",
}

FILES = dt.dashboard_files()


def _ids(paths):
    return [p.name for p in paths]


def test_the_dashboards_exist_with_stable_unique_uids():
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
def test_variables_datasource_cluster_node_then_namespace_pod(path: Path):
    dash = dt.load_dashboard(path)
    variables = dash.get("templating", {}).get("list", [])
    # Free-text settings (the service map's price per GB) come last; they
    # select no series.
    settings = [v for v in variables if v.get("type") == "textbox"]
    assert variables[len(variables) - len(settings):] == settings, f"{path.name}: textbox variables must come last"
    for v in settings:
        assert (v.get("query") or "").strip() and v.get("current", {}).get("value") == v["query"], \
            f"{path.name}: variable {v.get('name')}: a textbox's current value is its default (query)"
    variables = variables[:len(variables) - len(settings)]
    names = [v.get("name") for v in variables]
    assert names[:3] == ["datasource", "cluster", "node"], f"{path.name}: variables {names}"
    assert names[3:] in ([], ["namespace"], ["namespace", "pod"], ["namespace", "workload"]), \
        f"{path.name}: variables {names}"
    ds = variables[0]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus", f"{path.name}: datasource variable {ds}"
    for i, v in enumerate(variables[1:], start=1):
        where = f"{path.name}: variable {v['name']}"
        assert v["type"] == "query", where
        assert v["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, where
        lv = dt.label_values_query(v)
        assert lv and lv[1] == v["name"], f"{where}: query {v['query']!r} is not label_values(..., {v['name']})"
        assert v.get("current") in ({}, None), f"{where}: a saved 'current' value pins one installation's data"
        # "All" must match series that lack the label entirely (no cluster
        # label on a single Prometheus, no pod on host series).
        assert v.get("includeAll") is True and v.get("allValue") == ".*", f"{where}: needs includeAll with allValue '.*'"
        # Later variables are scoped by the earlier ones.
        for earlier in names[1:i]:
            assert f"${earlier}" in v["query"], f"{where}: query {v['query']!r} ignores ${earlier}"
    cluster_query = variables[1]["query"]
    assert cluster_query == "label_values(podsight_build_info, cluster)", f"{path.name}: cluster query {cluster_query!r}"


@pytest.mark.parametrize("path", FILES, ids=_ids(FILES))
def test_every_board_has_a_multi_value_node_variable(path: Path):
    """Every agent series carries `node`; podsight_build_info lists every agent."""
    variables = {v.get("name"): v for v in dt.query_variables(dt.load_dashboard(path))}
    node = variables.get("node")
    assert node, f"{path.name}: no node variable (variables {sorted(variables)})"
    assert node["query"] == 'label_values(podsight_build_info{cluster=~"$cluster"}, node)', \
        f"{path.name}: node query {node['query']!r}"
    assert node.get("multi") is True and node.get("includeAll") is True and node.get("allValue") == ".*", \
        f"{path.name}: the node variable must be multi-value with All (.*)"


def _variable_problems(path: Path, recorded) -> list[str]:
    """Variables on labels their metric lacks, matchers on labels a metric
    lacks, variables no panel uses, and panel targets that read a metric
    carrying a variable's label without filtering on it."""
    dash = dt.load_dashboard(path)
    bad = []
    variables = {}
    for v in dt.query_variables(dash):
        where = f"{path.name}: variable {v['name']}"
        lv = dt.label_values_query(v)
        if not lv:
            bad.append(f"{where}: not a label_values() query")
            continue
        selector, label = lv
        sels = dt.selectors(selector) or [(selector, [])]
        for metric, matchers in sels:
            have = dt.series_labels(metric, recorded)
            if have is None:
                bad.append(f"{where}: {metric} has no label catalog entry (dashboard_targets.METRIC_LABELS)")
                continue
            for lab in [label] + [m.label for m in matchers]:
                if lab not in have:
                    bad.append(f"{where}: {metric} has no label {lab!r} (it has {sorted(have)}): "
                               "the variable can never have values")
        variables[v["name"]] = label
    used = set()
    for panel in dt.iter_panels(dash):
        desc = panel.get("description") or ""
        for t in panel.get("targets", []):
            where = f"{path.name}: panel {panel.get('id')} {panel.get('title')!r} target {t.get('refId')}"
            expr = t.get("expr", "")
            filtered = set()
            carried = set()
            for metric, matchers in dt.selectors(expr):
                have = dt.series_labels(metric, recorded)
                if have is None:
                    bad.append(f"{where}: {metric} has no label catalog entry (dashboard_targets.METRIC_LABELS)")
                    continue
                carried |= have
                for m in matchers:
                    if m.label not in have:
                        bad.append(f"{where}: {metric} has no label {m.label!r} (it has {sorted(have)})")
                    for name in re.findall(r"\$\{?(\w+)", m.value):
                        if name in variables:
                            used.add(name)
                            filtered.add(variables[name])
                            if variables[name] != m.label:
                                bad.append(f"{where}: {m.label}{m.op}{m.value!r} filters {m.label} by ${name}")
            for name, label in variables.items():
                if label in carried and label not in filtered and \
                        not re.search(rf"ignores the [^.]*\b{name}\b[^.]*selection", desc):
                    bad.append(f"{where}: reads a metric with label {label!r} but ignores ${name} "
                               f"(filter on it, or say 'ignores the {name} selection' in the description)")
    bad += [f"{path.name}: variable ${name} is used by no panel" for name in variables if name not in used]
    return bad


@pytest.mark.parametrize("path", FILES, ids=_ids(FILES))
def test_variables_and_filters_only_use_labels_the_metrics_carry(path: Path):
    bad = _variable_problems(path, dt.recorded_labels())
    assert not bad, "\n".join(bad)


def test_severity_selectors_match_a_severity_the_default_rules_have():
    """A panel on severity="critical" alone stays empty with the shipped rules."""
    from podsight.security import SEVERITIES
    shipped = dt.default_rule_severities()
    assert shipped and shipped <= set(SEVERITIES), shipped
    bad = []
    for t in dt.all_targets():
        for metric, matchers in dt.selectors(t.expr):
            for m in matchers:
                if m.label != "severity":
                    continue
                chosen = m.matches(SEVERITIES)
                if not chosen & shipped:
                    bad.append(f"{t.where()}: severity{m.op}{m.value!r} selects {sorted(chosen)}, "
                               f"no default rule has it (they have {sorted(shipped)})")
    assert not bad, "\n".join(bad)


# The reasons the agent's source emits, and which are budgets (by design) and
# which real loss: one classification, shared with the rules' tests.
def _drop_reasons() -> tuple[set[str], set[str], set[str]]:
    import rule_files as rf
    return rf.emitted_drop_reasons(), set(rf.BUDGET_DROP_REASONS), set(rf.LOSS_DROP_REASONS)


def test_drop_reasons_are_the_emitted_ones_explained_once_and_never_mixed():
    emitted, budget, loss = _drop_reasons()
    assert emitted <= budget | loss and not budget & loss, \
        f"the code emits drop reasons {sorted(emitted)}: classify each as budget or loss in tests/rules/rule_files.py"
    assert {"rate_limited", "guard_limited", "output_limited"} <= budget and {"ringbuf_full", "pending_full"} <= loss
    bad = []
    for f in FILES:
        dash = dt.load_dashboard(f)
        panels = [p for p in dt.iter_panels(dash)
                  if any("podsight_events_dropped_total" in t.get("expr", "") for t in p.get("targets", []))]
        text = " ".join(p.get("description", "") for p in panels)
        for word in set(re.findall(r"\b[a-z]+(?:_[a-z]+)*_(?:full|limited|failed)\b", text)) - emitted:
            bad.append(f"{f.name}: drop reason {word!r} is explained but never emitted")
        if not panels:
            continue
        for reason in emitted:
            n = sum(len(re.findall(rf"\b{reason}\b", p.get("description", ""))) for p in panels)
            if n != 1:
                bad.append(f"{f.name}: drop reason {reason!r} explained {n} times in panel descriptions (want once)")
        shown = set()
        for p in panels:
            for t in p.get("targets", []):
                for metric, matchers in dt.selectors(t.get("expr", "")):
                    if metric != "podsight_events_dropped_total":
                        continue
                    reasons = set(emitted)
                    for m in matchers:
                        if m.label == "reason":
                            reasons = m.matches(reasons)
                            if m.op in ("=", "=~") and not m.matches(emitted):
                                bad.append(f"{f.name}: panel {p['title']!r}: reason{m.op}{m.value!r} "
                                           "matches no emitted reason")
                    shown |= reasons
                    if reasons & budget and reasons & loss:
                        bad.append(f"{f.name}: panel {p['title']!r} target {t.get('refId')} mixes budget drops "
                                   f"{sorted(reasons & budget)} with loss {sorted(reasons & loss)}")
        if emitted - shown:
            bad.append(f"{f.name}: no panel shows drop reasons {sorted(emitted - shown)}")
    assert not bad, "\n".join(bad)


# Settings a panel's data depends on (off by default), and how to spot such a panel.
OPT_IN = {
    "bpf_stats: true": lambda expr: "podsight_bpf_program_" in expr,
    "security.enabled: true": lambda expr: bool(
        {"podsight_security_events_total", "podsight_events_dropped_total"} & dt.metric_names(expr)),
    # The raw series' workload label (the recording rules fall back to the pod).
    # Flow series always carry workload (podsight_flow_*): not opt-in.
    "labels.workload: true": lambda expr: bool(re.search(r"by \([^)]*\bworkload\b", expr))
    and any((n in dt.AGENT_METRICS or n.endswith(("_bucket", "_sum", "_count"))) and not n.startswith("podsight_flow_")
            for n in dt.metric_names(expr)),
}


def test_panels_that_need_an_opt_in_setting_say_so():
    bad = []
    for f in FILES:
        for p in dt.iter_panels(dt.load_dashboard(f)):
            exprs = [t.get("expr", "") for t in p.get("targets", [])]
            for setting, needs in OPT_IN.items():
                if any(needs(e) for e in exprs) and setting not in (p.get("description") or ""):
                    bad.append(f"{f.name}: panel {p.get('id')} {p.get('title')!r} needs {setting!r}; "
                               "its description does not say so")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("path", FILES, ids=_ids(FILES))
def test_every_panel_is_a_described_timeseries_or_heatmap_with_unit(path: Path):
    dash = dt.load_dashboard(path)
    panels = list(dt.iter_panels(dash))
    assert panels, f"{path.name}: no panels"
    ids = [p.get("id") for p in panels]
    assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids {ids}"
    for p in panels:
        where = f"{path.name}: panel {p.get('id')} {p.get('title')!r}"
        assert p.get("type") in ("timeseries", "heatmap", "table"), f"{where}: type {p.get('type')!r}"
        assert (p.get("description") or "").strip(), f"{where}: no description"
        unit = p.get("fieldConfig", {}).get("defaults", {}).get("unit")
        assert unit, f"{where}: no unit in fieldConfig.defaults"
        if p["type"] == "heatmap":
            _check_heatmap(where, p)
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
        # issue 17: p50/p95/p99 per workload and role, handshakes by result,
        # failure ratio per workload, workloads whose TLS is not seen, files probed.
        "podsight-tls-handshakes": [
            "podsight_tls_handshakes_total", 'result="success"', 'result="failure"',
            "histogram_quantile(0.5, sum by (cluster, namespace, workload, role, le)",
            "histogram_quantile(0.95, sum by (cluster, namespace, workload, role, le)",
            "histogram_quantile(0.99, sum by (cluster, namespace, workload, role, le)",
            "namespace_workload_role_le:podsight_tls_handshake_duration_seconds_bucket:rate5m",
            "podsight_tls_handshake_duration_seconds_bucket",
            "namespace_workload_role:podsight_tls_handshake_failure:ratio_rate5m",
            "namespace_workload:podsight_tls_library_processes:sum{", "== 0)",
            "podsight_tls_library_processes", "podsight_tls_libraries_attached", "by (node, library)",
            "podsight_tls_handshakes_untracked_total"],
        # issue 16: edges (bytes, connects, failures, retransmits, p95 RTT),
        # top talkers, cross-zone bytes and their cost, the series budget.
        "podsight-service-map": [
            'podsight_flow_bytes_total', 'direction="sent"', "podsight_flow_connections_opened_total",
            "podsight_flow_connections_failed_total", "podsight_flow_retransmits_total",
            "podsight_flow_segments_total", "histogram_quantile(0.95,", "podsight_flow_srtt_seconds_bucket",
            "topk(10,", "by (zone, peer_zone)", 'zone!="", peer_zone!=""', "unless on (zone, peer_zone)",
            "$price_per_gb", "podsight_flow_peers_folded", "podsight_flow_untracked_total"],
    }
    missing = [f"{uid}: {w}" for uid, ws in wanted.items() for w in ws if w not in by_uid.get(uid, "")]
    assert not missing, "\n".join(missing)


def test_histogram_quantiles_keep_le():
    bad = [t.where() for t in dt.all_targets()
           if "histogram_quantile" in t.expr and "_bucket" in t.expr and not re.search(r"by \([^)]*\ble\b", t.expr)]
    assert not bad, "histogram_quantile without `le` in the by clause:\n" + "\n".join(bad)


_HEATMAP_EXPR = re.compile(r"sum by \(le\) \(rate\((\w+_bucket)\{[^}]*\}\[\$__rate_interval\]\)\)")


def _check_heatmap(where: str, p: dict) -> None:
    """A Prometheus histogram as Grafana's heatmap: buckets as they are
    (no re-bucketing), le-labelled series per bucket, seconds on the y axis."""
    opts = p.get("options", {})
    assert opts.get("calculate") is False, f"{where}: heatmap must show the histogram's own buckets (calculate: false)"
    assert opts.get("yAxis", {}).get("unit"), f"{where}: heatmap y axis has no unit"
    for t in p.get("targets", []):
        assert t.get("format") == "heatmap", f"{where}: target {t.get('refId')} format {t.get('format')!r}"
        assert t.get("legendFormat") == "{{le}}", f"{where}: target {t.get('refId')} legend {t.get('legendFormat')!r}"
        assert _HEATMAP_EXPR.fullmatch(t.get("expr", "")), \
            f"{where}: target {t.get('refId')} is not sum by (le) (rate(<histogram>_bucket{{...}}[$__rate_interval]))"


@pytest.mark.parametrize("board, bucket", [
    ("podsight-tcp-health", "podsight_tcp_srtt_seconds_bucket"),
    ("podsight-tcp-health", "podsight_tcp_connect_duration_seconds_bucket"),
    ("podsight-tls-handshakes", "podsight_tls_handshake_duration_seconds_bucket"),
])
def test_latency_heatmaps_beside_their_quantile_lines(board: str, bucket: str):
    """Each latency histogram of the selected pods: one heatmap, beside the
    one panel of its p50/p95/p99 lines (the histogram read directly, not
    through a recording rule)."""
    panels = list(dt.iter_panels(dt.load_dashboard(dt.DASHBOARD_DIR / f"{board}.json")))
    heat = [p for p in panels if p["type"] == "heatmap"
            and any(bucket in dt.metric_names(t["expr"]) for t in p["targets"])]
    lines = [p for p in panels if p["type"] == "timeseries"
             and any(bucket in dt.metric_names(t["expr"]) and "histogram_quantile" in t["expr"] for t in p["targets"])]
    assert len(heat) == 1 and len(lines) == 1, f"{bucket}: heatmaps {heat and heat[0]['title']}, quantile panels {len(lines)}"
    h, q = heat[0]["gridPos"], lines[0]["gridPos"]
    assert h["y"] == q["y"] and h["h"] == q["h"] and abs(h["x"] - q["x"]) == q["w"], \
        f"{bucket}: heatmap {h} is not beside the quantile lines {q}"
