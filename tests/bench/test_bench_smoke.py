"""`bench/run.py --quick` end to end: the plumbing works and the JSON holds
every figure with sane values.  Not a timed test: nothing here judges speed
or the budgets, only that the benchmark measured what it says it measured."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.bench.quick import assert_nothing_left, quick_run, sane

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "latest.json"
    out.write_text(json.dumps(EARLIER))  # the run this one replaces
    before = Path("/proc/sys/kernel/bpf_stats_enabled").read_text().strip()
    got = quick_run(out)
    assert Path("/proc/sys/kernel/bpf_stats_enabled").read_text().strip() == before
    return got


# An earlier run, as bench/run.py writes it, with one budget.
EARLIER = {"machine": {"date": "earlier", "kernel": "k"}, "quick": True, "params": {},
           "figures": {"churn": {"budget": {"op": ">=", "limit": 0.97, "unit": "", "value": 0.01, "verdict": "MISS"}}}}


def test_machine_and_table(result):
    res, stdout = result
    m = res["machine"]
    assert m["kernel"] and m["cpu_count"] >= 1 and m["date"].startswith("20")
    assert set(res["figures"]) == {"throughput", "churn", "tls", "kernel_cost", "scale", "events", "render", "flows"}
    assert res["errors"] == {}
    render = res["figures"]["render"]
    for share in ("changed_0pct", "changed_10pct", "changed_100pct"):
        assert render[share]["gzip_ms"]["median"] > 0 and render[share]["plain_vs_legacy"]["median"] > 0
    assert any(line.startswith("render in-process") for line in stdout.splitlines())
    # The human table names every budget with its verdict.
    for row in ("iperf3 on/off", "churn on/off", "tls on/off", "scrape p99 ms", "agent CPU ms per scrape", "page bytes",
                "agent RSS MB", "agent peak RSS MB", "agent CPU % idle",
                "network_ingress ns/run vs empty", "events/s decode+match"):
        line = next(l for l in stdout.splitlines() if l.startswith(row))
        assert "PASS" in line or "MISS" in line, line
    assert set(res["verdicts"].values()) <= {"PASS", "MISS"} and len(res["verdicts"]) >= 9
    # Figure 7's own checks are in test_tls.py; here: the agent saw every "on" handshake.
    assert res["figures"]["tls"]["agent_counted"]["all_matched"] is True


def test_the_run_before_is_kept_and_compared(result, tmp_path_factory):
    res, stdout = result
    kept = next(tmp_path_factory.getbasetemp().glob("bench*/latest.previous.json"))
    assert json.loads(kept.read_text()) == EARLIER
    after = stdout[stdout.index("against the run before"):]
    churn = next(l for l in after.splitlines() if l.startswith("churn "))
    ratio = res["figures"]["churn"]["budget"]["value"]
    assert f"{ratio / 0.01 - 1:+.1%} better" in churn and "MISS -> " in churn, churn
    # Every budget of this run has a row.
    assert all(any(l.startswith(name + " ") for l in after.splitlines()) for name in res["verdicts"])


def test_off_on_ratios(result):
    f = result[0]["figures"]
    t, c = f["throughput"], f["churn"]
    sane(t["off"], 0.05, 1000)  # Gbit/s
    sane(t["on"], 0.05, 1000)
    sane(c["off"], 50, 10_000_000)  # connections/s
    sane(c["on"], 50, 10_000_000)
    for fig in (t, c):
        assert fig["ratio"]["median"] == pytest.approx(fig["on"]["median"] / fig["off"]["median"])
        sane(fig["ratio"], 0.2, 5)
        # The third arm: only empty programs on the same hooks.
        assert fig["empty_programs_ratio"]["median"] == pytest.approx(
            fig["empty_programs"]["median"] / fig["off"]["median"])
        sane(fig["empty_programs_ratio"], 0.2, 5)
        assert fig["on_vs_empty_ratio"]["median"] == pytest.approx(
            fig["on"]["median"] / fig["empty_programs"]["median"])
        # The agent's own process during the "on" runs: measured, and nowhere near a core.
        sane(fig["agent_cpu_percent"], 0, 100)
        # One quick round gives no interval for the median, and the verdict says so by omission.
        assert fig["ratio_ci"] is None and "ci" not in fig["budget"]


def test_kernel_cost_has_podsight_and_floor_under_the_same_loads(result):
    fig = result[0]["figures"]["kernel_cost"]
    progs = fig["programs"]
    for name in ("network_ingress", "network_egress", "tcp_state", "tcp_send_reset",
                 "tcp_receive_reset", "skb_drop"):
        p = progs[name]
        runs, floor = p["runs_per_repeat"]["median"], p["floor_runs_per_repeat"]["median"]
        assert runs > 0 and floor > 0, name
        sane(p["ns_per_run"], 1, 100_000)
        sane(p["floor_ns_per_run"], 1, 100_000)
        assert p["ratio"]["median"] == pytest.approx(p["ns_per_run"]["median"] / p["floor_ns_per_run"]["median"])
    # 50 refused connects: each one a reset received by the client, on both sides' turns.
    for side in ("podsight", "floor"):
        refused = fig["turns"][side][0]["refused"]
        prog = "tcp_receive_reset" if side == "podsight" else "empty_recv_reset"
        assert refused[prog][0] >= 50, (side, refused[prog])
    # BPF stats were on for the measurement only.
    assert fig["bpf_stats_enabled_before"] == fig["bpf_stats_enabled_after"]
    assert all("budget" in progs[n] for n in ("network_ingress", "network_egress"))
    # The RTT sampler ran, as the agent's sampler thread runs it.
    for name in ("tcp_rtt_sample",):
        it = fig["samplers"][name]
        assert it["runs_per_repeat"]["median"] > 0, name
        # One run walks every bucket of tcp_socks (65,536 by default): about 1 ms here.
        sane(it["ns_per_run"], 1_000, 50_000_000)


def test_scale_labels_every_pod_and_measures_the_agent(result):
    s = result[0]["figures"]["scale"]
    assert s["pods"] == 20 and s["kubernetes_metadata"] is True
    assert s["pods_labelled"] == 20
    assert s["series"] > 20 * 10  # every pod has network + TCP + histogram series
    for pre in ("", "plain_"):  # gzip scrapes as Prometheus makes them, and plain ones
        sane(s[pre + "scrape_p50_ms"], 0.1, 30_000)
        assert s[pre + "scrape_p99_ms"]["median"] >= s[pre + "scrape_p50_ms"]["median"]
        sane(s[pre + "cpu_ms_per_scrape"], 0, 30_000)
    # Both pages carry the same series; gzip'd if the agent honours Accept-Encoding (null if not).
    assert s["gzip_plain_identical"] is True, s["gzip_plain_check"]
    assert s["gzip_plain_check"]["series"] > 20 * 10
    assert s["body_bytes"] > 20 * 10 * 50
    g = s["gzip_bytes"]
    if s["gzip_responses"]["compressed"]:
        sane(g, 100, s["body_bytes"] - 1)
    else:
        assert g["median"] is None and "ignored" in g["note"] and g["budget"]["verdict"] == "MISS"
    sane(s["rss_mb"], 5, 4096)
    assert s["peak_rss_mb"]["median"] >= s["rss_mb"]["max"]
    sane(s["idle_cpu_percent"], 0, 200)
    assert s["interval_15s_cpu_percent"]["scrapes"] >= 1


def test_events_path(result):
    e = result[0]["figures"]["events"]
    assert e["status"] == "measured"
    assert e["matches_per_run"] > 0
    sane(e["decode_match"], 100, 1e9)
    k = e["kernel"]
    # The security probe has landed (its object is built): "pending" or "failed" is a broken bench.
    assert k["status"] == "measured", k
    # Every opened file is an event: delivered or dropped with a reason, none lost silently.
    assert k["generated"] > 0 and k["delivered"] > 0
    assert k["delivered"] + sum(k["dropped"].values()) == k["generated"], k
    assert k["accounted"] is True, k
    assert k["delivered_per_second"] > 0 and k["agent_cpu_seconds"] > 0, k


def test_nothing_left_behind(result):
    assert_nothing_left(("tlsbench",))
