"""Repeats of one detection become one summary line; distinct detections past
the per-rule budget are dropped and counted.  Pure: a hand-moved clock."""
from __future__ import annotations

import io
import json

import jsonschema
import pytest

from podsight.agent.security import EventSink
from podsight.exporters.event_output import EventOutput
from podsight.identity.processes import ProcessInfo
from podsight.security import DEFAULT_RULES_PATH, load_rules
from podsight.security.aggregate import EMIT, LIMITED, REPEAT, Aggregator
from podsight.security.events import SCHEMA_PATH
from tests.security.helpers import POD, ev
from tests.support.clock import Clock

LISTS = {"allowed_egress_cidrs": [], "kubernetes_api_cidrs": ["10.96.0.1"]}
RULES = load_rules([DEFAULT_RULES_PATH], lists=LISTS)
VALIDATOR = jsonschema.Draft202012Validator(json.loads(SCHEMA_PATH.read_text()))
SECOND = 1_000_000_000


def test_first_is_written_repeats_counted_summary_when_the_window_closes():
    agg = Aggregator(window=10, max_lines=5)
    assert agg.offer("k", ("r", 1), 1 * SECOND, now=0.0, last="a") == EMIT
    assert [agg.offer("k", ("r", 1), t * SECOND, now=t, last=t) for t in (1, 2, 9)] == [REPEAT] * 3
    assert agg.closed(9.9) == []
    [rep] = agg.closed(10.0)
    assert (rep.count, rep.first_ns, rep.last_ns, rep.last) == (4, 1 * SECOND, 9 * SECOND, 9)
    assert agg.closed(100.0) == []  # each summary once
    assert agg.offer("k", ("r", 1), 11 * SECOND, now=11.0, last="b") == EMIT  # a new window


def test_a_detection_that_did_not_repeat_has_no_summary():
    agg = Aggregator(window=10, max_lines=5)
    agg.offer("k", ("r", 1), 0, now=0.0, last=None)
    assert agg.closed(10.0) == []


def test_distinct_detections_past_the_budget_are_limited_per_rule_and_cgroup():
    agg = Aggregator(window=10, max_lines=2)
    assert [agg.offer(f"path{i}", ("r", 1), 0, now=0.0, last=None) for i in range(3)] == [EMIT, EMIT, LIMITED]
    # Another rule, or another cgroup, has its own budget: a flood of one cannot hide the others.
    assert agg.offer("x", ("other", 1), 0, now=0.0, last=None) == EMIT
    assert agg.offer("y", ("r", 2), 0, now=0.0, last=None) == EMIT
    assert agg.offer("path9", ("r", 1), 0, now=10.0, last=None) == EMIT  # the next window


def test_window_zero_writes_every_occurrence():
    agg = Aggregator(window=0, max_lines=1)
    assert [agg.offer("k", ("r", 1), 0, now=0.0, last=None) for _ in range(3)] == [EMIT] * 3


def test_no_room_to_remember_writes_rather_than_loses():
    agg = Aggregator(window=10, max_lines=100, max_open=2)
    assert [agg.offer(k, ("r", 1), 0, now=0.0, last=None) for k in "abcc"] == [EMIT, EMIT, EMIT, EMIT]


def _sink(clock):
    out = io.StringIO()
    sink = EventSink(RULES, lambda cid: dict(POD), ProcessInfo("/nonexistent", clock=clock), EventOutput([out]),
                     clock=clock, aggregator=Aggregator(window=10, max_lines=3))
    return sink, out


def _lines(out) -> list[dict]:
    objs = [json.loads(line) for line in out.getvalue().splitlines()]
    for obj in objs:
        VALIDATOR.validate(obj)
    return objs


def api_connect(t: float, pid: int = 77):
    return ev("connect", ts_ns=int(t * SECOND), pid=pid, tid=pid, comm="kubectl", exe="/usr/local/bin/kubectl",
              family=2, dst_ip="10.96.0.1", dst_port=443, ret=-111)


def test_twenty_connection_retries_are_one_line_then_one_summary():
    clock = Clock(0.0)
    sink, out = _sink(clock)
    for i in range(20):
        clock.now = i * 0.1
        sink.handle(api_connect(1000 + i * 0.1))
        sink.flush()
    first = _lines(out)
    assert [o["rule"] for o in first] == ["kubernetes_api_from_unexpected_pod"]
    assert "count" not in first[0]
    clock.now = 10.0
    sink.flush()
    summary = _lines(out)[1:]
    assert len(summary) == 1
    assert (summary[0]["count"], summary[0]["first_time"] == first[0]["time"]) == (20, True)
    assert summary[0]["last_time"] == summary[0]["time"] > summary[0]["first_time"]
    # Every match is counted, whether written on its own line or summarised.
    assert sink.counts() == {("kubernetes_api_from_unexpected_pod", RULES_SEVERITY["kubernetes_api_from_unexpected_pod"],
                              "shop"): 20}


RULES_SEVERITY = {r.name: r.severity for r in RULES.active_rules}


def test_a_loop_of_new_processes_aggregates_by_program_parent_and_target():
    clock = Clock(0.0)
    sink, out = _sink(clock)
    for i in range(5):  # `while :; do cat /etc/shadow; done`: a new pid each time
        sink.handle(ev("open", pid=500 + i, tid=500 + i, ppid=400, comm="cat", exe="/usr/bin/cat",
                       path="/etc/shadow", flags=0, ret=-13, ts_ns=(1000 + i) * SECOND))
    sink.flush(now=10.0)
    objs = _lines(out)
    assert [(o["rule"], o.get("count")) for o in objs] == [("sensitive_file_read", None), ("sensitive_file_read", 5)]


def test_a_flood_of_distinct_targets_is_limited_counted_and_blinds_no_other_rule():
    clock = Clock(0.0)
    sink, out = _sink(clock)
    for i in range(10):
        sink.handle(ev("open", comm="cat", exe="/usr/bin/cat", path=f"/etc/ssh/ssh_host_{i}_key", flags=0, ret=-13))
    sink.handle(api_connect(1000))
    sink.flush()
    rules = [o["rule"] for o in _lines(out)]
    assert rules.count("sensitive_file_read") == 3 and "kubernetes_api_from_unexpected_pod" in rules
    assert sink.dropped() == {("output_limited", "open"): 7}
    assert sum(n for (rule, _, _), n in sink.counts().items() if rule == "sensitive_file_read") == 10


def test_close_writes_the_open_summaries():
    clock = Clock(0.0)
    sink, out = _sink(clock)
    for i in range(3):
        sink.handle(api_connect(1000 + i))
    sink.close()
    assert [o.get("count") for o in _lines(out)] == [None, 3]


@pytest.mark.parametrize("window", ["0s", "250ms", "1m"])
def test_config_keys(tmp_path, window):
    from podsight.config import load_config

    p = tmp_path / "c.yaml"
    p.write_text(f"security:\n  output:\n    aggregate: {{window: {window}, max_lines: 7}}\n")
    cfg = load_config(str(p))
    assert cfg.security.output.aggregate.max_lines == 7
    assert cfg.security.output.aggregate.window == {"0s": 0.0, "250ms": 0.25, "1m": 60.0}[window]
