"""The benchmark helper (bench/benchlib/match.py) runs the real match + JSON path and reports its figures."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from benchlib.match import bench_decode_match, main, sample_events  # noqa: E402


def test_bench_counts_events_and_matches():
    r = bench_decode_match(2_000)
    assert r["events"] == 2_000
    assert r["matches"] == 200          # one template in ten is a shell exec in a pod
    assert r["events_per_second"] > 0 and r["json_bytes"] > 200 * 300


def test_bench_runs_a_decode_step():
    raw = [(e.pid, e, idn) for e, idn in sample_events(100)]
    calls = []

    def decode(item):
        calls.append(item[0])
        return item[1], item[2]

    r = bench_decode_match(items=raw, decode=decode)
    assert len(calls) == 100 and r["matches"] == 10


def test_bench_main_prints_figures(capsys):
    assert main(["500"]) == 0
    assert "events/s on one core" in capsys.readouterr().out
