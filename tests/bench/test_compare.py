"""bench/compare.py: which budgets moved between two runs, and by more than
the runs' own spread.  The runs are built with the budgets' own as_dict, so
the JSON shape is the one bench/run.py writes."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

from benchlib import compare  # noqa: E402
from benchlib.stats import Budget, median_ci, summary  # noqa: E402
CHURN, P99 = Budget(">=", 0.97), Budget("<=", 100, " ms")


def run(churn: list[float], p99: list[float], **params) -> dict:
    c, p = summary(churn), summary(p99)
    return {"machine": {"date": "d", "kernel": "6.18", "cpu_count": 2}, "quick": False,
            "params": {"rounds": len(churn), **params},
            "figures": {"churn": {"ratio": c, "budget": CHURN.as_dict(c["median"], median_ci(churn), c)},
                        "scale": {"scrape_p99_ms": {**p, "budget": P99.as_dict(p["median"], spread=p)}}}}


def rows(old, new) -> dict[str, compare.Row]:
    return {r.name: r for r in compare.compare(old, new)}


def test_a_budget_that_goes_from_pass_to_miss_beyond_the_spread_is_a_regression():
    old = run([0.98] * 6 + [0.99] * 3, [60, 61, 62])
    new = run([0.95] * 6 + [0.96] * 3, [60, 61, 62])
    r = rows(old, new)["churn"]
    assert (r.old["verdict"], r.new["verdict"]) == ("PASS", "MISS")
    assert r.direction == "worse" and r.beyond_noise
    assert r.change == new["figures"]["churn"]["budget"]["value"] / old["figures"]["churn"]["budget"]["value"] - 1
    assert compare.regressions(compare.compare(old, new), tolerance=0.02) == [
        "churn: worse by 3.1%, beyond both runs' spread (PASS -> MISS)"]
    # Between runs a shared machine drifts more than within one: below the
    # tolerance (10 % by default) no change is a regression.
    assert compare.regressions(compare.compare(old, new)) == []


def test_direction_follows_the_side_of_the_line():
    """Lower is better for a "<=" budget, higher for a ">=" one."""
    base = run([0.95] * 9, [60, 61, 62])
    faster = run([0.96] * 9, [40, 41, 42])
    r = rows(base, faster)
    assert r["churn"].direction == "better" and r["scale.scrape_p99_ms"].direction == "better"
    assert rows(faster, base)["scale.scrape_p99_ms"].direction == "worse"
    assert {r.direction for r in compare.compare(base, base)} == {"same"}


def test_a_worse_figure_inside_the_spread_is_noise_not_a_regression():
    """Even when the median crosses the line: the rounds cannot tell."""
    old = run([0.96, 0.97, 0.98] * 3, [50, 70, 90])
    new = run([0.95, 0.965, 0.98] * 3, [55, 75, 95])
    r = rows(old, new)
    assert (r["churn"].old["verdict"], r["churn"].new["verdict"]) == ("PASS", "MISS")
    assert r["churn"].direction == "worse" and r["churn"].beyond_noise is False
    assert r["scale.scrape_p99_ms"].direction == "worse" and r["scale.scrape_p99_ms"].beyond_noise is False
    assert compare.regressions(compare.compare(old, new)) == []


def test_beyond_the_spread_while_passing_is_still_a_regression():
    old = run([0.99] * 9, [20, 21, 22])
    new = run([0.99] * 9, [40, 41, 42])
    assert compare.regressions(compare.compare(old, new)) == [
        "scale.scrape_p99_ms: worse by 95.2%, beyond both runs' spread"]


def test_without_a_spread_a_verdict_flip_is_all_there_is_to_judge():
    old, new = run([0.98] * 9, [60]), run([0.98] * 9, [60])
    for res, v in ((old, 99), (new, 101)):
        res["figures"]["scale"]["scrape_p99_ms"]["budget"] = P99.as_dict(v)
    assert compare.regressions(compare.compare(old, new), tolerance=0.01) == [
        "scale.scrape_p99_ms: PASS -> MISS (no spread to judge noise by)"]
    assert compare.regressions(compare.compare(old, new)) == []  # 2 %: within the tolerance


def test_a_budget_in_one_run_only_is_listed_without_a_change():
    old = run([0.98] * 9, [60])
    new = run([0.98] * 9, [60])
    del new["figures"]["scale"]
    r = rows(old, new)["scale.scrape_p99_ms"]
    assert r.new is None and r.change is None and r.direction == "n/a"


def test_the_table_says_how_the_runs_differ():
    old = run([0.98] * 9, [60])
    new = run([0.98] * 5, [60])
    new["quick"] = True
    text = compare.table(old, new, compare.compare(old, new))
    assert "the runs differ: quick False -> True; rounds 9 -> 5" in text
    assert "no regressions" in text


def test_cli_exit_codes(tmp_path):
    a, b, bad = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "bad.json"
    a.write_text(json.dumps(run([0.98] * 9, [60])))
    b.write_text(json.dumps(run([0.90] * 9, [60])))
    bad.write_text('{"figures": {}\n,,')

    def cli(*args):
        return subprocess.run([sys.executable, str(REPO / "bench" / "compare.py"), *map(str, args)],
                              capture_output=True, text=True)

    assert cli(a, b).returncode == 0  # reports, does not judge, unless asked
    assert cli(a, b, "--fail-on-regression").returncode == 0  # 8.2 %: within the default 10 %
    r = cli(a, b, "--fail-on-regression", "--tolerance", "0.05")
    assert r.returncode == 1 and "churn: worse by 8.2%, beyond both runs' spread (PASS -> MISS)" in r.stdout
    assert cli(a, a, "--fail-on-regression").returncode == 0
    r = cli(a, bad)
    assert r.returncode == 2 and f"{bad}:2: not JSON" in r.stderr
    r = cli(a, tmp_path / "missing.json")
    assert r.returncode == 2 and "no such file" in r.stderr
