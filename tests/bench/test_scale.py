"""Figure 4's pure parts: the exposition parser and the gzip-vs-plain page
comparison, the verdicts of its budgets, and how the table and
bench/compare.py show them.  No root, no agent."""
from __future__ import annotations

import gzip

import pytest

from benchlib import compare, report, scale
from benchlib.scale import compare_pages, parse_exposition

PAGE = """\
# HELP podsight_network_bytes_total Bytes.
# TYPE podsight_network_bytes_total counter
podsight_network_bytes_total{namespace="psb-ns1",pod="web-1",direction="ingress"} 1200
podsight_network_bytes_total{namespace="",pod="",host_cgroup="/system.slice",direction="ingress"} 500
podsight_tcp_srtt_seconds_bucket{pod="web-1",le="+Inf"} 3
podsight_tcp_srtt_seconds_sum{pod="web-1"} 0.0125
podsight_bpf_map_entries{map="tcp_socks"} 40
process_resident_memory_bytes 5.1e+07
python_gc_objects_collected_total{generation="0"} 812
"""


def moved(page: str, values: dict) -> str:
    """The page with some lines' values replaced (keyed by a unique fragment of the line)."""
    out = []
    for line in page.splitlines(keepends=True):
        for frag, v in values.items():
            if frag in line:
                line = line.rsplit(" ", 1)[0] + f" {v}\n"
        out.append(line)
    return "".join(out)


def test_parse_reads_names_labels_and_values_and_skips_comments():
    s = parse_exposition(PAGE + "\n# a comment\nup 1 1700000000000\nweird{a=\"x\\\"}, y\",b=\"\\\\\",} NaN\n")
    assert s[("podsight_network_bytes_total",
              (("direction", "ingress"), ("namespace", "psb-ns1"), ("pod", "web-1")))] == 1200
    assert s[("podsight_tcp_srtt_seconds_bucket", (("le", "+Inf"), ("pod", "web-1")))] == 3
    assert s[("process_resident_memory_bytes", ())] == 5.1e7
    assert s[("up", ())] == 1  # the timestamp is not the value
    # Quotes, commas and braces inside a label value; a trailing comma.
    (key, v), = [(k, v) for k, v in s.items() if k[0] == "weird"]
    assert key[1] == (("a", 'x\\"}, y'), ("b", "\\\\")) and v != v
    assert len(s) == 9


def test_labels_in_another_order_are_the_same_series():
    a = parse_exposition('m{a="1",b="2"} 3\n')
    assert a == parse_exposition('m{b="2", a="1"} 3\n')


@pytest.mark.parametrize("bad", ['m{a="1"b="2"} 1', 'm{a=1} 1', 'm{a="1",a="2"} 1', 'm{a="1"}', "m 1\nm 2",
                                 'm{a="1"} one', 'm{a="1} 1'])
def test_parse_refuses_what_is_not_a_sample(bad):
    with pytest.raises(ValueError, match="line "):
        parse_exposition(bad)


def test_the_same_page_is_identical():
    r = compare_pages(PAGE, PAGE, PAGE)
    assert r == {"identical": True, "series": 4, "moved": 0, "mismatches": 0, "examples": []}


def test_process_python_and_map_fill_levels_may_differ():
    other = moved(PAGE, {"tcp_socks": 41, "process_resident": 5.2e7, "generation": 900})
    assert compare_pages(other, PAGE)["identical"] is True
    assert compare_pages(other, PAGE, ignore=lambda name: False)["mismatches"] == 3


def test_a_value_between_the_plain_pages_before_and_after_is_the_same_page():
    """The host's counters move with every scrape: plain, gzip, plain."""
    after = moved(PAGE, {"system.slice": 900})
    between = moved(PAGE, {"system.slice": 700})
    r = compare_pages(between, PAGE, after)
    assert r["identical"] is True and r["moved"] == 1
    # Outside the two, or a pod's value that did not move, is a different page.
    r = compare_pages(moved(PAGE, {"system.slice": 901}), PAGE, after)
    assert r["identical"] is False and r["examples"] == [
        'value podsight_network_bytes_total{direction="ingress",host_cgroup="/system.slice",namespace="",pod=""} '
        "901.0, plain 500.0 then 900.0"]
    assert compare_pages(moved(between, {"psb-ns1": 1201}), PAGE, after)["mismatches"] == 1
    # Without a page after, every value must be the one before.
    assert compare_pages(between, PAGE)["identical"] is False


def test_missing_and_extra_series():
    extra = PAGE + 'podsight_network_bytes_total{namespace="psb-ns2",pod="web-2",direction="ingress"} 1\n'
    missing = "".join(l for l in PAGE.splitlines(keepends=True) if "srtt_seconds_sum" not in l)
    r = compare_pages(extra, PAGE, PAGE)
    assert r["mismatches"] == 1 and r["examples"][0].startswith("extra podsight_network_bytes_total{")
    r = compare_pages(missing, PAGE, PAGE)
    assert r["examples"] == ['missing podsight_tcp_srtt_seconds_sum{pod="web-1"}']
    # A series that appears (or goes) between the two plain pages may be in the page or not.
    assert compare_pages(PAGE, missing, PAGE)["identical"] is True
    assert compare_pages(missing, missing, PAGE)["identical"] is True


def test_a_page_that_does_not_parse_is_not_identical():
    r = compare_pages(PAGE + "garbage{\n", PAGE, PAGE)
    assert r["identical"] is False and "unparsable page: line 10" in r["examples"][0]


def test_gzip_answers_are_read_uncompressed_also_in_several_members():
    body = PAGE.encode()
    two = gzip.compress(body[:100]) + gzip.compress(body[100:])
    assert scale.Response(0.01, two, "gzip").body == body
    assert scale.Response(0.01, body, "").body == body
    with pytest.raises(Exception, match="br"):
        scale.Response(0.01, body, "br").body


def figure(gzip_sizes: list[float], note: str | None = None) -> dict:
    """A scale figure as scale.run() returns it, made of invented values."""
    s = scale.summary
    out = {"pods": 1000, "pods_labelled": 1000, "series": 57034, "body_bytes": 8_100_000,
           "scrape_p50_ms": s([20, 21, 22]), "scrape_p99_ms": s([40, 45, 60]),
           "cpu_ms_per_scrape": s([24, 25, 26]),
           "plain_scrape_p50_ms": s([15, 16, 17]), "plain_scrape_p99_ms": s([30, 31, 32]),
           "plain_cpu_ms_per_scrape": s([14, 15, 16]), "gzip_bytes": s(gzip_sizes),
           "scrape_accept_encoding": "gzip",
           "gzip_responses": {"requested": 300, "compressed": 300 if gzip_sizes else 0},
           "gzip_plain_identical": True,
           "gzip_plain_check": {"method": "", "compressed": bool(gzip_sizes), "series": 57000, "moved": [12],
                                "mismatches": [0], "examples": []},
           "rss_mb": s([50, 52, 58]), "peak_rss_mb": s([81.5]), "idle_cpu_percent": s([0.5, 0.6, 0.7]),
           "interval_15s_cpu_percent": {"simulated": 0.8, "simulated_seconds": 60.0, "scrapes": 4,
                                        "extrapolated": 0.75}}
    if note:
        out["gzip_bytes"]["note"] = note
    scale._judge(out)
    return out


def test_budgets_of_issue_15():
    assert {k: (b.op, b.limit) for k, b in scale.BUDGETS.items()} == {
        "scrape_p99_ms": ("<=", 50), "cpu_ms_per_scrape": ("<=", 25), "gzip_bytes": ("<=", 1_048_576),
        "rss_mb": ("<=", 60), "peak_rss_mb": ("<=", 80), "idle_cpu_percent": ("<=", 1.0)}
    f = figure([800_000, 810_000, 790_000])
    assert {k: f[k]["budget"]["verdict"] for k in scale.BUDGETS} == {
        "scrape_p99_ms": "PASS", "cpu_ms_per_scrape": "PASS", "gzip_bytes": "PASS", "rss_mb": "PASS",
        "peak_rss_mb": "MISS", "idle_cpu_percent": "PASS"}
    # The peak is one reading: no spread for compare.py to weigh.
    assert "min" not in f["peak_rss_mb"]["budget"] and f["scrape_p99_ms"]["budget"]["min"] == 40


def test_an_agent_that_ignores_gzip_misses_the_size_budget_and_the_run_goes_on():
    f = figure([], note="the agent ignored Accept-Encoding: gzip")
    b = f["gzip_bytes"]["budget"]
    assert f["gzip_bytes"]["median"] is None
    assert (b["value"], b["verdict"], b["note"]) == (None, "MISS", "the agent ignored Accept-Encoding: gzip")
    rows = table_rows(f)
    assert rows["page bytes, plain / gzip"] == (
        "8,100,000 / none: the agent ignored Accept-Encoding: gzip  MISS (<= 1,048,576 bytes)")
    assert rows["gzip page = plain page"] == "yes (57,000 series compared; the agent did not compress it)"


def table_rows(fig: dict) -> dict[str, str]:
    res = {"machine": {"date": "d", "hostname": "h", "kernel": "k", "cpu_count": 2, "cpu_model": "c"},
           "figures": {"scale": fig}}
    lines = report.table(res).splitlines()[3:]
    width = len("agent CPU ms per scrape (gzip)")  # the longest name
    return {line[:width].rstrip(): " ".join(line[width:].split(" " * 2)).strip() for line in lines}


def test_the_table_names_every_scale_budget_with_its_verdict():
    text = report.table({"machine": {"date": "d", "hostname": "h", "kernel": "k", "cpu_count": 2, "cpu_model": "c"},
                         "figures": {"scale": figure([800_000, 810_000, 790_000])}})
    for row, verdict in (("scrape p99 ms (gzip)", "PASS (<= 50 ms)"),
                         ("agent CPU ms per scrape (gzip)", "PASS (<= 25 ms)"),
                         ("page bytes, plain / gzip", "PASS (<= 1,048,576 bytes)"),
                         ("agent RSS MB", "PASS (<= 60 MB)"),
                         ("agent peak RSS MB (VmHWM)", "MISS (<= 80 MB)"),
                         ("agent CPU % idle", "PASS (<= 1%)")):
        line = next(l for l in text.splitlines() if l.startswith(row))
        assert line.endswith(verdict), line
    assert "800,000 [790,000..810,000]" in text
    assert "plain scrape p50 / p99 ms" in text and "plain agent CPU ms per scrape" in text


def run_with(fig: dict | None, **scale_extra) -> dict:
    figures = {} if fig is None else {"scale": {**fig, **scale_extra}}
    return {"machine": {"date": "d"}, "quick": False, "params": {}, "figures": figures}


def test_compare_lists_the_new_budgets_and_a_moved_line_is_no_regression():
    new = run_with(figure([800_000] * 3))
    old = run_with({k: v for k, v in figure([800_000] * 3).items() if k != "scrape_accept_encoding"})
    # The run before issue 15: scrape p99 66 ms against <= 100 ms, plain scrapes.
    old["figures"]["scale"]["scrape_p99_ms"] = {**scale.summary([66, 66, 66]),
                                                "budget": {"op": "<=", "limit": 100, "unit": " ms", "value": 66,
                                                           "verdict": "PASS"}}
    new["figures"]["scale"]["scrape_p99_ms"]["budget"] = scale.BUDGETS["scrape_p99_ms"].as_dict(66)
    rows = {r.name: r for r in compare.compare(old, new)}
    assert {"scale.gzip_bytes", "scale.cpu_ms_per_scrape", "scale.peak_rss_mb"} <= rows.keys()
    p99 = rows["scale.scrape_p99_ms"]
    assert p99.budget_changed and (p99.old["verdict"], p99.new["verdict"]) == ("PASS", "MISS")
    assert compare.regressions(list(rows.values()), tolerance=0) == []
    text = compare.table(old, new, list(rows.values()))
    assert "budgets changed: scale.scrape_p99_ms <= 100 ms -> <= 50 ms" in text
    assert "scale scrapes with Accept-Encoding 'identity' -> 'gzip'" in text


def test_compare_flags_an_agent_that_stops_compressing():
    old, new = run_with(figure([800_000] * 3)), run_with(figure([], note="the agent ignored Accept-Encoding: gzip"))
    r = {r.name: r for r in compare.compare(old, new)}["scale.gzip_bytes"]
    assert r.change is None and not r.budget_changed
    assert compare.regressions([r]) == ["scale.gzip_bytes: PASS -> MISS (no spread to judge noise by)"]


class FakeAgent:
    """A local /metrics that serves PAGE, gzip'd in two members when asked and
    ``honours_gzip`` (the new agent), or plain whatever is asked (the old one)."""

    def __init__(self, honours_gzip: bool, gzip_page: str = PAGE):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.requests: list[dict[str, str]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                fake.requests.append(dict(self.headers))
                body = PAGE.encode()
                gz = honours_gzip and "gzip" in self.headers.get("Accept-Encoding", "")
                if gz:
                    body = gzip_page.encode()
                    body = gzip.compress(body[:50]) + gzip.compress(body[50:])
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                if gz:
                    self.send_header("Content-Encoding", "gzip")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.mark.parametrize("honours_gzip", [True, False])
def test_scrapes_ask_as_prometheus_does_and_read_either_agent(honours_gzip):
    import os

    fake = FakeAgent(honours_gzip)
    try:
        gz = scale._block(fake.url, os.getpid(), 3, True)
        plain = scale._block(fake.url, os.getpid(), 2, False)
        check, resp, page = scale._check(fake.url)
    finally:
        fake.close()
    headers = [{k.lower(): v for k, v in h.items()} for h in fake.requests]
    assert [h.get("accept-encoding") for h in headers] == ["gzip"] * 3 + [None] * 2 + [None, "gzip", None]
    assert {h["accept"] for h in headers} == {"text/plain;version=0.0.4"}
    assert gz["compressed"] == (3 if honours_gzip else 0) and plain["compressed"] == 0
    # The same page each time: a cache would look like this.
    assert (gz["repeated"], plain["repeated"]) == (2, 1)
    assert (gz["bytes"] < plain["bytes"]) is honours_gzip
    assert check["identical"] is True and check["series"] == 4 and check["attempts"] == 1
    assert resp.encoding == ("gzip" if honours_gzip else "") and page == PAGE.encode()


def test_a_gzip_page_that_differs_every_time_is_not_identical_after_every_attempt():
    fake = FakeAgent(True, gzip_page=moved(PAGE, {"psb-ns1": 1199}))
    try:
        check, resp, _ = scale._check(fake.url)
    finally:
        fake.close()
    assert resp.encoding == "gzip" and check["identical"] is False and check["attempts"] == 3
    assert check["examples"] == [
        'value podsight_network_bytes_total{direction="ingress",namespace="psb-ns1",pod="web-1"} 1199.0, '
        "plain 1200.0 then 1200.0"]
    assert len(check["failed_attempts_saw"]) == 3
