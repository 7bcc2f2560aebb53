"""Figure 8, peer flows (issue 16): the four-arm rounds, the verdicts, the
peer plan and the table without root; then `bench/run.py --quick --only
flows` end to end (one round of 1 s per arm, 20 pods with 3 peers each in a
cluster of 200 pods).  Not a timed test: it checks that each arm was what
it says (flows on counted the load on edges, flows off exported none) and
that the figure measured what it reports, not how fast anything was."""
from __future__ import annotations

import contextlib
import os
from types import SimpleNamespace

import pytest

from tests.bench.quick import assert_nothing_left, quick_run, sane
from benchlib import ab, compare, flows, report
from benchlib.stats import summary


def test_rotate_runs_every_arm_every_round_in_a_rotating_order():
    order, checked = [], []
    agent = SimpleNamespace(proc=SimpleNamespace(pid=os.getpid()))
    now = {"arm": None}

    def arm(name, value=None):
        @contextlib.contextmanager
        def cm():
            now["arm"] = name
            try:
                yield value
            finally:
                now["arm"] = None
        return cm

    value = {"off": 10.0, "flows_on": 9.9, "flows_off": 9.8, "empty_programs": 10.1}

    def measure():
        order.append(now["arm"])
        return value[now["arm"]]

    arms = {"off": arm("off"), "flows_on": arm("flows_on", agent), "flows_off": arm("flows_off", agent),
            "empty_programs": arm("empty_programs")}
    out = ab.rotate(measure, 4, arms, lambda _: None, after=lambda a, ag, v: checked.append((a, ag is agent, v)))
    assert order[:4] == ["off", "flows_on", "flows_off", "empty_programs"]
    assert order[4:8] == ["flows_on", "flows_off", "empty_programs", "off"]
    assert [order[4 * i] for i in range(4)] == list(arms)  # each arm first once in 4 rounds
    assert out["runs"] == {a: [v] * 4 for a, v in value.items()}
    assert set(out["agent_cpu_percent"]) == {"flows_on", "flows_off"} and out["agent_cpu_percent"]["flows_on"]["n"] == 4
    assert ("flows_on", True, 9.9) in checked and ("off", False, 10.0) in checked and len(checked) == 16


def test_ratios_pair_the_arms_by_round():
    runs = {"off": [10.0, 20.0], "flows_on": [9.0, 19.0], "flows_off": [9.5, 19.0], "empty_programs": [9.8, 20.0]}
    r = flows._ratios(runs)
    assert r["flows_on_vs_off"]["values"] == pytest.approx([0.9, 0.95])
    assert r["flows_on_vs_flows_off"]["values"] == pytest.approx([9 / 9.5, 1.0])
    assert r["flows_off_vs_empty"]["values"] == pytest.approx([9.5 / 9.8, 0.95])
    assert r["flows_on_vs_flows_off_ci"] is None  # two rounds give no interval


def test_equal_within_noise_passes_unless_the_interval_lies_below_the_line():
    s = summary([0.99] * 15)
    assert flows.within_noise(s, {"low": 0.97, "high": 1.01, "level": 0.96})["verdict"] == "PASS"
    assert flows.within_noise(s, {"low": 0.97, "high": 0.995, "level": 0.96})["verdict"] == "MISS"
    assert flows.within_noise(summary([1.02]), None)["verdict"] == "PASS"  # no interval: on the median
    assert flows.within_noise(summary([0.98]), None)["verdict"] == "MISS"


def test_peers_of_a_replicas_workload_are_many_workloads_and_each_pod_has_its_own_peers():
    peers, local, remote = 10, 1000, 9000
    workloads = remote // flows.REPLICAS
    addr = {(i, k): flows.peer_address(i, k, peers, remote) for i in range(local) for k in range(peers)}
    assert all(a in flows.PEER_NET and a != flows.PEER_SOURCE for a in addr.values())
    for i in range(local):  # 10 different peer addresses and workloads per pod
        rs = {(int(addr[i, k]) - int(flows.PEER_FIRST)) % workloads for k in range(peers)}
        assert len({addr[i, k] for k in range(peers)}) == peers and len(rs) == peers
    by_workload: dict = {}
    for (i, k), a in addr.items():
        by_workload.setdefault(flows.workload_of(i, "replicas"), set()).add((int(a) - int(flows.PEER_FIRST)) % workloads)
    assert len(by_workload) == 100 and {len(v) for v in by_workload.values()} == {100}  # > max_peers_per_workload
    assert len({flows.workload_of(i, "per_pod") for i in range(local)}) == local


PAGE = """\
# TYPE podsight_flow_connections_opened_total counter
podsight_flow_connections_opened_total{node="n",namespace="psb-ns1",workload="web-1",role="client",port="8080",\
peer_kind="pod",peer_workload="api-3"} 10
podsight_flow_connections_opened_total{node="n",namespace="psb-ns1",workload="web-1",role="",port="",peer_kind="",\
peer_workload="~other"} 80
podsight_flow_connections_opened_total{node="n",namespace="",workload="/user.slice",role="server",port="8080",\
peer_kind="external",peer_workload="internet"} 90
podsight_flow_edges{node="n"} 3
podsight_bpf_map_entries{map="tcp_flows",node="n"} 91
"""


def test_flow_rows_count_the_local_workloads_edges_and_their_connections():
    r = flows.flow_rows(PAGE)
    assert r == {"rows": 2, "opened": 90.0, "by_peer_kind": {"pod": 1, "~other": 1}}
    assert flows._gauge(PAGE, "podsight_flow_edges") == 3
    assert flows._map_entries(PAGE, "tcp_flows") == 91


def _arms_fig(ratio: float, ci: dict | None) -> dict:
    fig = {a: summary([100.0]) for a in flows.ARMS}
    for name in ("flows_on_vs_off", "flows_off_vs_off", "empty_programs_vs_off", "flows_on_vs_empty",
                 "flows_off_vs_empty"):
        fig[name] = summary([1.0])
    fig["flows_on_vs_flows_off"] = summary([ratio])
    fig["unit"] = "x"
    return fig


def test_table_and_compare_show_the_flows_budgets():
    t = _arms_fig(0.995, None)
    t["budget"] = flows.within_noise(t["flows_on_vs_flows_off"], {"low": 0.98, "high": 1.01, "level": 0.96})
    c = _arms_fig(0.99, None)
    c["budget"] = flows.BUDGETS["churn"].judge(c["flows_on_vs_flows_off"])
    shape = {"pods": 1000, "peers_per_pod": 10, "series": 120_000, "body_bytes": 9_000_000,
             "edges": {"rows": 2100, "folded": 8000}, "scrape_p50_ms": summary([40.0]),
             "scrape_p99_ms": {**summary([60.0]), "budget": flows.BUDGETS["scrape_p99_ms"].judge(summary([60.0]))},
             "cpu_ms_per_scrape": summary([30.0]), "gzip_bytes": summary([500_000.0]),
             "rss_mb": {**summary([90.0, 95.0]), "budget": flows.BUDGETS["rss_mb"].judge(summary([90.0, 95.0]))},
             "rss_stages_mb": {"synced": 80.0, "edges_read": 85.0, "first_pages": 90.0, "scraped": 95.0, "idle": 95.0},
             "peak_rss_mb": 120.0, "idle_cpu_percent": 0.5,
             "cluster_watch_rss_mb": {"value": 80.0, "budget": flows.BUDGETS["rss_mb"].as_dict(80.0)}}
    res = {"machine": {"date": "d", "hostname": "h", "kernel": "k", "cpu_count": 2, "cpu_model": "c"},
           "figures": {"flows": {"throughput": t, "churn": c, "scrape": {"replicas": shape}}}}
    assert report.verdicts(res) == {"flows.throughput": "PASS", "flows.churn": "MISS",
                                    "flows.scrape.replicas.scrape_p99_ms": "PASS",
                                    "flows.scrape.replicas.rss_mb": "PASS",
                                    "flows.scrape.replicas.cluster_watch_rss_mb": "PASS"}
    lines = report.table(res).splitlines()
    row = next(line for line in lines if line.startswith("flows iperf3 flows on / flows off"))
    assert "PASS (= 1 within noise)" in row and "includes or lies above the line" in row
    row = next(line for line in lines if line.startswith("flows churn flows on / flows off"))
    assert "MISS (>= 1)" in row
    assert any("2,100 edge rows (8,000 folded)" in line for line in lines)
    assert any(line.lstrip().startswith("agent RSS MB (peak)") and "PASS (<= 100 MB)" in line for line in lines)
    assert [r.direction for r in compare.compare(res, res)] == ["same"] * 5


# -- end to end, as root ------------------------------------------------------


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    return quick_run(tmp_path_factory.mktemp("bench-flows") / "flows.json", "--only", "flows")


@pytest.mark.root
def test_quick_run_measures_flows_on_against_flows_off(result):
    res, stdout = result
    assert res["errors"] == {} and set(res["figures"]) == {"flows"}
    f = res["figures"]["flows"]
    for key, lo, hi in (("throughput", 0.05, 1000), ("churn", 50, 10_000_000)):
        x = f[key]
        for arm in flows.ARMS:
            sane(x[arm], lo, hi)
        assert x["flows_on_vs_flows_off"]["median"] == pytest.approx(x["flows_on"]["median"] / x["flows_off"]["median"])
        sane(x["flows_on_vs_empty"], 0.2, 5)
        assert x["budget"]["verdict"] in ("PASS", "MISS") and x["flows_on_vs_flows_off_ci"] is None
        assert set(x["agent_cpu_percent"]) == {"flows_on", "flows_off"}
    # Flows on counted the load on the client pod's edges (flows off exported none, or the run failed).
    assert f["throughput"]["edge_bytes_sent_per_flows_on_run"]["min"] > 0
    assert f["churn"]["edge_connections_opened_per_flows_on_run"]["min"] > 0
    # tcp_state from the agent's BPF stats, both ways, and the floor's empty program.
    st = f["kernel"]["programs"]["tcp_state"]
    for side in flows.STATS_SIDES:
        sane(st[side]["ns_per_run"], 1, 100_000)
        assert st[side]["runs_per_connection"]["median"] > 1  # several state changes per connection
    assert f["kernel"]["programs"]["tcp_rtt_sample"]["flows_on"]["runs"]["median"] >= 0
    # Scrape and RSS: every connection on an edge named as a pod, none external; the flows-off agent has no edges.
    sc = f["scrape"]
    assert sc["cluster"]["pods"] == 400
    for key in ("replicas", "per_pod"):
        r = sc[key]
        assert r["connections_counted"] == r["connections"] == 20 * 3  # the pods' TCP sums of their edges
        assert 0 < r["edges"]["opened"] <= r["connections"]  # the rows (an edge out of the top rows has none)
        assert r["edges"]["by_peer_kind"].get("pod", 0) > 0 and "external" not in r["edges"]["by_peer_kind"]
        assert r["flow_series"] > 0
        sane(r["scrape_p99_ms"], 0.1, 30_000)
        sane(r["rss_mb"], 5, 4096)
        assert r["scrape_p99_ms"]["budget"]["verdict"] in ("PASS", "MISS")
        assert r["rss_mb"]["budget"]["verdict"] in ("PASS", "MISS")
    # 2 Deployments of 10 pods, 3 peers each: 30 peer workloads each (of 38), 20 exported and one ~other row.
    assert sc["replicas"]["edges"]["rows"] == 2 * 21 and sc["replicas"]["edges"]["by_peer_kind"]["~other"] == 2
    assert sc["per_pod"]["edges"]["rows"] == 20 * 3
    assert sc["flows_off"]["flow_series"] == 0 and "budget" not in sc["flows_off"]["rss_mb"]
    assert sc["flows_off"]["connections_counted"] == 20 * 3
    assert set(res["verdicts"]) == {"flows.throughput", "flows.churn"} | {
        f"flows.scrape.{shape}.{budget}" for shape in ("replicas", "per_pod")
        for budget in ("scrape_p99_ms", "rss_mb", "cluster_watch_rss_mb")}
    for row in ("flows iperf3 flows on / flows off", "flows churn flows on / flows off"):
        line = next(line for line in stdout.splitlines() if line.startswith(row))
        assert "PASS" in line or "MISS" in line, line


@pytest.mark.root
def test_quick_run_leaves_nothing_behind(result):
    assert_nothing_left()
