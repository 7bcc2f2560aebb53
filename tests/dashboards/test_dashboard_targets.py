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
