"""Text exposition and histogram buckets (pure)."""
from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from podsight.exporters.textformat import LabelCache, Writer, escape
from podsight.exporters.histograms import Buckets


def test_escaping_and_parse_back():
    cache = LabelCache(("pod", "container"))
    w = Writer()
    w.family("podsight_x", "counter", "help")
    w.sample("podsight_x_total", cache(('we"ird\\pod', "line\nbreak")), 3)
    (fam,) = text_string_to_metric_families(w.text())
    (s,) = fam.samples
    assert s.labels == {"pod": 'we"ird\\pod', "container": "line\nbreak"} and s.value == 3
    assert escape("plain") == "plain"


def test_label_cache_is_bounded():
    cache = LabelCache(("a",))
    cache.MAX = 10
    for i in range(25):
        cache((str(i),))
    assert len(cache._rendered) <= 10


def test_buckets_fold_the_edges_and_count_everything():
    b = Buckets(1e-6, 4, 22)
    slots = [0] * 32
    slots[0], slots[3], slots[4], slots[10], slots[23], slots[31] = 1, 2, 3, 4, 5, 6
    cum = list(zip(b.les, b.cumulative_counts(slots)))
    assert cum[0] == ("1.6e-05", 1 + 2 + 3)  # slots 0..4 are all <= 16 us
    assert cum[-2][1] == 1 + 2 + 3 + 4 and cum[-1] == ("+Inf", sum(slots))
    assert [c for _, c in cum] == sorted(c for _, c in cum)
    assert len(cum) == 22 - 4 + 2
