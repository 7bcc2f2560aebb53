"""Heartbeats: what /healthz reads to tell a stuck agent from a quiet one."""
from __future__ import annotations

from podsight.heartbeat import Heartbeat, late
from tests.support.clock import Clock


def test_due_late_and_done():
    clock = Clock()
    hb = Heartbeat("sampler", clock=clock)
    assert late([hb]) == []  # nothing promised before the thread runs
    hb.beat(10)
    clock.now += 9.5
    assert late([hb]) == []
    clock.now += 3
    assert late([hb]) == ["sampler (2 s overdue)"]
    hb.beat(10)
    assert late([hb]) == []
    clock.now += 100
    hb.done()  # ended on purpose: never late
    assert late([hb]) == []
