"""The helpers the dashboard tests rely on must themselves be right."""
import pytest

import dashboard_targets as dt


def test_metric_names_skip_functions_labels_keywords_and_durations():
    expr = ('sum by (namespace, le) (rate(podsight_tcp_srtt_seconds_bucket{pod=~"$pod", le!="x"}[$__rate_interval]))'
            ' / on () group_left () podsight:tcp_connect_slo_error_budget:ratio'
            ' and on (job, instance) up offset 5m'
            ' or label_replace(foo_total{a="b"}, "workload", "$1", "pod", "(.+)") > 1e3')
    assert dt.metric_names(expr) == {
        "podsight_tcp_srtt_seconds_bucket", "podsight:tcp_connect_slo_error_budget:ratio", "up", "foo_total"}


def test_metric_names_sees_a_misspelt_metric():
    assert dt.metric_names("rate(podsight_tcp_retransmit_total[1m])") == {"podsight_tcp_retransmit_total"}


def test_substitute_all_variable_syntaxes_and_refuses_unknown():
    v = {"pod": "p.*", "__rate_interval": "15s"}
    assert dt.substitute('x{pod=~"$pod", a="${pod}", b="[[pod]]"}[$__rate_interval]', v) == \
        'x{pod=~"p.*", a="p.*", b="p.*"}[15s]'
    with pytest.raises(KeyError, match=r"\$node"):
        dt.substitute('x{node=~"$node"}', v)


def test_range_windows_names_the_enclosing_function():
    expr = 'topk(10, sum by (a) (increase(x{y="[1m]"}[15m]))) + rate(z[$__rate_interval])'
    assert dt.range_windows(expr) == [("increase", "15m"), ("rate", "$__rate_interval")]


def test_selectors_and_matchers():
    expr = ('sum by (le) (rate(a_bucket{x="1", y=~"p|q"}[1m])) / on () group_left () b:c{z!~"q\\\\.x"}'
            ' and d offset 5m or label_replace(e{}, "w", "$1", "pod", "(.+)")')
    got = [(m, [(x.label, x.op, x.value) for x in ms]) for m, ms in dt.selectors(expr)]
    assert got == [("a_bucket", [("x", "=", "1"), ("y", "=~", "p|q")]), ("b:c", [("z", "!~", r"q\.x")]), ("e", [])]
    levels = ("critical", "error", "warning")
    assert dt.Matcher("severity", "=", "critical").matches(levels) == {"critical"}
    assert dt.Matcher("severity", "=~", "critical|error").matches(levels) == {"critical", "error"}
    assert dt.Matcher("severity", "!~", "crit.*").matches(levels) == {"error", "warning"}
    assert dt.Matcher("severity", "!=", "error").matches(levels) == {"critical", "warning"}


def test_recorded_labels_follow_by_clauses_operands_and_histogram_quantile(tmp_path):
    (tmp_path / "r.yaml").write_text("""
groups:
  - name: g
    rules:
      - record: ns:x:rate5m
        expr: sum by (cluster, namespace) (rate(podsight_tcp_retransmits_total[5m]))
      - record: ns:x:ratio
        expr: ns:x:rate5m / ignoring (foo) ns:x:rate5m
      - record: ns_le:h:rate5m
        expr: sum by (namespace, le) (rate(podsight_tcp_srtt_seconds_bucket[5m]))
      - record: ns:h:q
        expr: histogram_quantile(0.9, ns_le:h:rate5m)
        labels: {quantile: "0.9"}
      - record: objective
        expr: vector(0.99)
      - record: raw
        expr: podsight_probe_up == 0
""")
    got = dt.recorded_labels(tmp_path)
    assert got["ns:x:rate5m"] == got["ns:x:ratio"] == {"cluster", "namespace"}
    assert got["ns:h:q"] == {"namespace", "quantile"}
    assert got["objective"] == set()
    assert got["raw"] == {"probe", "node"} | dt.TARGET_LABELS
    assert dt.series_labels("podsight_build_info", got) >= {"node", "job", "instance", "cluster"}
    assert dt.series_labels("no_such_metric", got) is None
