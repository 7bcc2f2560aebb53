"""Figure 7, TLS handshakes per second with the agent off and on: the
rounds' plumbing and the table without root, then `bench/run.py --quick
--only tls` end to end (one round of 1 s per arm).  Not a timed test: it
checks that the figure measured full handshakes that the agent really saw,
not how fast they were."""
from __future__ import annotations

import contextlib
import os
from types import SimpleNamespace

import pytest

from tests.bench.quick import assert_nothing_left, quick_run, sane
from benchlib import ab, compare, report


def test_alternate_with_its_own_arms_and_numbers_per_side():
    """The TLS figure's arms: its own agent and floor, a check after each
    "on" run, and a second number per run summarised per side."""
    now, seen = {"side": "off"}, []
    agent = SimpleNamespace(proc=SimpleNamespace(pid=os.getpid()))

    @contextlib.contextmanager
    def arm(name, value=None):
        now["side"] = name
        try:
            yield value
        finally:
            now["side"] = "off"

    rate = {"off": 100.0, "on": 98.0, "floor": 99.0}
    cpu = {"off": 10.0, "on": 11.0, "floor": 10.5}
    out = ab.alternate(lambda: (rate[now["side"]], {"cpu_us": cpu[now["side"]]}), 6, lambda _: None,
                       on=lambda: arm("on", agent), floor=lambda: arm("floor"),
                       after_on=lambda a: seen.append((a, now["side"])))
    assert seen == [(agent, "on")] * 6  # after each "on" run, the agent still running
    assert out["off"]["values"] == [100.0] * 6 and out["on"]["values"] == [98.0] * 6
    assert out["ratio"]["median"] == pytest.approx(0.98)
    assert out["ratio_ci"] == {"low": pytest.approx(0.98), "high": pytest.approx(0.98), "level": pytest.approx(0.96875)}
    assert out["empty_programs_ratio"]["median"] == pytest.approx(0.99)
    assert {side: d["cpu_us"]["median"] for side, d in out["details"].items()} == {
        "off": 10.0, "on": 11.0, "empty_programs": 10.5}
    assert out["agent_cpu_percent"]["n"] == 6


def test_plain_measurements_have_no_details():
    @contextlib.contextmanager
    def arm(value=None):
        yield value

    agent = SimpleNamespace(proc=SimpleNamespace(pid=os.getpid()))
    out = ab.alternate(lambda: 1.0, 1, lambda _: None, on=lambda: arm(agent), floor=arm)
    assert "details" not in out and out["ratio"]["median"] == 1.0


FIGURE = {
    "unit": "handshakes/s", "off": {"median": 2000.0, "min": 1900.0, "max": 2100.0, "n": 15},
    "on": {"median": 1970.0, "min": 1850.0, "max": 2080.0, "n": 15},
    "ratio": {"median": 0.985, "min": 0.95, "max": 1.01, "n": 15},
    "ratio_ci": {"low": 0.975, "high": 0.99, "level": 0.96},
    "agent_cpu_percent": {"median": 0.3, "min": 0.0, "max": 1.0, "n": 15},
    "details": {side: {"cpu_us_per_handshake": {"median": v, "min": v, "max": v, "n": 15}}
                for side, v in (("off", 1000.0), ("on", 1020.0), ("empty_programs", 1010.0))},
    "agent_counted": {"runs": 15, "all_matched": True, "per_on_run": [{"made": 6000}] * 15},
}


def test_table_and_compare_show_the_tls_budget():
    from benchlib.stats import Budget

    fig = {**FIGURE, "budget": Budget(">=", 0.98).judge(FIGURE["ratio"], FIGURE["ratio_ci"])}
    res = {"machine": {"date": "d", "hostname": "h", "kernel": "k", "cpu_count": 2, "cpu_model": "c"},
           "figures": {"tls": fig}}
    assert report.verdicts(res) == {"tls": "PASS"}
    lines = report.table(res).splitlines()
    row = next(line for line in lines if line.startswith("tls on/off"))
    assert "PASS (>= 0.98)" in row and "the rounds cannot tell" in row  # 0.975..0.99 straddles the line
    assert any(line.startswith("tls client+server CPU us/handshake") and "1,000" in line and "1,020" in line
               for line in lines)
    assert any("all of 90,000 in 15 on-run(s)" in line for line in lines)
    rows = compare.compare(res, res)
    assert [r.name for r in rows] == ["tls"] and rows[0].direction == "same"


# -- end to end, as root ------------------------------------------------------


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    return quick_run(tmp_path_factory.mktemp("bench-tls") / "tls.json", "--only", "tls", timeout=300)


@pytest.mark.root
def test_quick_run_measures_full_handshakes_the_agent_counted(result):
    res, stdout = result
    assert res["errors"] == {} and set(res["figures"]) == {"tls"}
    t = res["figures"]["tls"]
    for side in ("off", "on", "empty_programs"):
        sane(t[side], 10, 1_000_000)  # handshakes/s
        # Client and server pods' CPU per handshake, kernel time (uprobe traps) included.
        sane(t["details"][side]["cpu_us_per_handshake"], 10, 100_000)
    assert t["ratio"]["median"] == pytest.approx(t["on"]["median"] / t["off"]["median"])
    sane(t["ratio"], 0.2, 5)
    assert t["empty_programs_ratio"]["median"] == pytest.approx(t["empty_programs"]["median"] / t["off"]["median"])
    sane(t["agent_cpu_percent"], 0, 100)
    # Every handshake full, over TLS 1.3, through the one libssl the probe attached to.
    assert t["tls"]["protocol"] == "TLSv1.3"
    assert len(t["library_files"]) == 1 and t["library_files"][0].endswith("/libssl.so.3")
    # The probe was on the path: the agent counted exactly the handshakes made, on both sides.
    c = t["agent_counted"]
    assert c["runs"] == 1 and c["all_matched"] is True
    run = c["per_on_run"][0]
    assert run["made"] > 0
    assert run["client_success"] == run["server_success"] == run["client_timed"] == run["made"]
    assert run["failure"] == run["untracked"] == 0
    assert t["handshakes_made"] > run["made"]  # the other arms ran too
    # One round gives no interval, and the verdict says so by omission.
    assert t["ratio_ci"] is None and "ci" not in t["budget"]
    assert res["verdicts"].keys() == {"tls"}
    line = next(line for line in stdout.splitlines() if line.startswith("tls on/off"))
    assert "PASS" in line or "MISS" in line, line
    assert any(line.startswith("tls handshakes counted by the agent  ") and " all of " in line
               for line in stdout.splitlines())


@pytest.mark.root
def test_quick_run_leaves_nothing_behind(result):
    assert_nothing_left(("tlsbench",))
