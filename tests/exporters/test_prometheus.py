"""/metrics rendered from hand-built snapshots, no kernel: checked by
prometheus_client's own parser, by `promtool check metrics`, against the
renderer it replaced (tests/exporters/legacy_renderer.py) on the same
snapshot, and scrape after scrape while values, label sets and pods change
(the cache may never show a stale value)."""
from __future__ import annotations

import gzip
from dataclasses import replace
import random
import subprocess
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from podsight.exporters.prometheus import MetricsRenderer
from podsight.exporters.snapshot import SecurityCounts, Snapshot
from podsight.kernel.families import COUNTER_FAMILIES
from podsight.kernel.layouts import HIST_CONNECT, HIST_SLOTS, HIST_SRTT, TLS_ROLES
from podsight.kernel.probes import ProgramStats
from tests.exporters.legacy_renderer import legacy_render
from tests.rules import prom_tools

NAMES = ("node", "namespace", "pod", "container", "host_cgroup", "workload", "workload_kind")
DROP_NAMES = {2: "NOT_SPECIFIED", 5: "TCP_CSUM", 77: 'ODD"NAME'}
TLS_ROLE_NAMES = dict(enumerate(TLS_ROLES))


def pod(i: int, container: str = "app") -> tuple[str, ...]:
    return ("node-a", f"ns{i % 3}", f"web-{i}", container, "", f"web-{i // 2}", "Deployment")


HOST = ("node-a", "", "", "", "system.slice/kubelet.service", "", "")
ODD = ("node-a", 'sh"op', "back\\slash", "new\nline", "", "", "")


def hist(rng: random.Random) -> list[int]:
    slots = [rng.choice((0, 0, 1, 7, 300)) for _ in range(HIST_SLOTS)]
    return slots + [sum(s * 2**i for i, s in enumerate(slots))]


def snapshot(labelsets, rng: random.Random, **extra) -> Snapshot:
    series = {
        "network_traffic": {ls: [rng.randrange(10**12) for _ in range(4)] for ls in labelsets},
        "tcp_stats": {ls: [rng.randrange(50) for _ in range(9)] for ls in labelsets},
        "tcp_histograms": {ls + (kind,): hist(rng) for ls in labelsets for kind in (HIST_SRTT, HIST_CONNECT)},
        "network_drops": {ls + (reason,): [rng.randrange(1, 9)] for ls in labelsets[:3] for reason in (2, 77, 91)},
        "tls_stats": {ls + (role,): [rng.randrange(50) for _ in range(3)] for ls in labelsets[:4] for role in (1, 2, 7)},
        "tls_histograms": {ls + (role,): hist(rng) for ls in labelsets[:4] for role in (0, 1, 2)},
    }
    fields = dict(node="node-a", label_names=NAMES, series=series,
                  key_names={"network_drops": DROP_NAMES, "tls_stats": TLS_ROLE_NAMES, "tls_histograms": TLS_ROLE_NAMES},
                  map_entries={"network_traffic": len(labelsets)}, probe_states={"network": "up", "tcp": "up", "tcp_rtt": "failed"},
                  programs={"network_egress": ProgramStats(10, 2500)}, kubernetes_api_up=True,
                  gauges={"podsight_tls_libraries_attached": {"libssl.so.3": 2}},
                  workload_gauges={"podsight_tls_library_processes": {ls: i % 3 for i, ls in enumerate(labelsets)}},
                  security=SecurityCounts({("shell_in_container", "warning", 'sh"op'): 3},
                                          {("ringbuf_full", "open"): 2, ("output_limited", "exec"): 1}))
    fields.update(extra)
    return Snapshot(**fields)


def renderer() -> MetricsRenderer:
    return MetricsRenderer(NAMES, COUNTER_FAMILIES)


def parse(text: str) -> tuple[dict, dict]:
    """(families: name → (type, help), samples: (name, labels) → value), process_* left out (they move)."""
    families, samples = {}, {}
    for fam in text_string_to_metric_families(text):
        if fam.name.startswith(("process_", "python_")):
            continue
        families[fam.name] = (fam.type, fam.documentation)
        for s in fam.samples:
            key = (s.name, frozenset(s.labels.items()))
            assert key not in samples, f"duplicate series {key}"
            samples[key] = s.value
    return families, samples


def page(r: MetricsRenderer, snap: Snapshot, gz: bool = False) -> str:
    body = b"".join(r.render(snap, gzip=gz))
    return (gzip.decompress(body) if gz else body).decode()


# Families added since the old renderer (issues 18 and 17), and help texts it changed.
ADDED = {"podsight_probe_state", "podsight_bpf_map_max_entries", "podsight_tls_handshakes",
         "podsight_tls_handshakes_untracked", "podsight_tls_handshake_duration_seconds",
         "podsight_tls_libraries_attached", "podsight_tls_library_processes"}
NEW_HELP = {"podsight_bpf_map_entries"}


def known_to_the_old(samples: dict) -> dict:
    return {k: v for k, v in samples.items() if k[0] not in ADDED and not k[0].startswith("podsight_tls_")}


def test_same_series_and_values_as_the_renderer_it_replaced():
    rng = random.Random(1)
    snap = snapshot([pod(i) for i in range(12)] + [HOST, ODD], rng, probe_states={"tcp": "up", "tcp_rtt": "unsupported"},
                    map_max_entries={"network_traffic": 16384})
    new_families, new = parse(page(renderer(), snap))
    old_families, old = parse(legacy_render(snap).decode())
    assert known_to_the_old(new) == old
    assert {n for n in new_families if n not in ADDED} == set(old_families)
    assert all(new_families[n] == old_families[n] for n in old_families if n not in NEW_HELP)
    assert len(new) > 12 * 60  # the snapshot really was rendered


def test_values_read_where_the_declarations_say():
    """Independent of the legacy oracle: a few values checked by name."""
    snap = Snapshot(node="n", label_names=NAMES, series={
        "network_traffic": {HOST: [1, 2, 3, 4]},
        "tcp_stats": {HOST: [10, 20, 1, 2, 25, 7, 8, 9, 0]},
        "tcp_histograms": {HOST + (HIST_CONNECT,): [0] * 10 + [3] + [0] * 21 + [1500]},
        "network_drops": {HOST + (5,): [4], HOST + (6,): [1]}}, key_names={"network_drops": {5: "TCP_CSUM"}})
    _, s = parse(page(renderer(), snap))
    ls = dict(zip(NAMES, HOST))

    def value(name, **more):
        return s[(name, frozenset({**ls, **more}.items()))]

    assert value("podsight_network_bytes_total", direction="ingress") == 1
    assert value("podsight_network_bytes_total", direction="egress") == 3
    assert value("podsight_network_packets_total", direction="egress") == 4
    assert value("podsight_tcp_connections_opened_total", direction="inbound") == 20
    assert value("podsight_tcp_connections_failed_total", direction="outbound") == 1
    assert value("podsight_tcp_connections_active") == 5  # 10 + 20 - 25
    assert value("podsight_tcp_retransmits_total") == 7
    assert value("podsight_tcp_resets_total", direction="received") == 9
    assert value("podsight_network_drops_total", reason="TCP_CSUM") == 4
    assert value("podsight_network_drops_total", reason="reason_6") == 1
    # slot 10 is [512, 1024) us: in the 1.024 ms bucket, not the 0.512 ms one
    assert value("podsight_tcp_connect_duration_seconds_bucket", le="0.000512") == 0
    assert value("podsight_tcp_connect_duration_seconds_bucket", le="0.001024") == 3
    assert value("podsight_tcp_connect_duration_seconds_count") == 3
    assert value("podsight_tcp_connect_duration_seconds_sum") == 1500e-6


def test_tls_roles_results_and_the_probes_gauges():
    """A paired map's second key as a label on split counters and on a
    histogram (no ``select``); a node gauge by label; a workload gauge."""
    pod0 = pod(0)
    snap = Snapshot(node="n", label_names=NAMES, series={
        "tls_stats": {pod0 + (1,): [5, 2, 1], pod0 + (2,): [7, 0, 0], pod0 + (9,): [1, 0, 0]},
        "tls_histograms": {pod0 + (1,): [0] * 19 + [5] + [0] * 12 + [1_600_000]}},
        key_names={"tls_stats": TLS_ROLE_NAMES, "tls_histograms": TLS_ROLE_NAMES},
        gauges={"podsight_tls_libraries_attached": {"libssl.so.3": 2, 'odd"name': 1}},
        workload_gauges={"podsight_tls_library_processes": {pod0: 3, HOST: 0}})
    _, s = parse(page(renderer(), snap))
    ls = dict(zip(NAMES, pod0))

    def value(name, **more):
        return s[(name, frozenset({**ls, **more}.items()))]

    assert value("podsight_tls_handshakes_total", role="client", result="success") == 5
    assert value("podsight_tls_handshakes_total", role="client", result="failure") == 2
    assert value("podsight_tls_handshakes_total", role="server", result="success") == 7
    assert value("podsight_tls_handshakes_total", role="role_9", result="success") == 1  # a role this agent lacks
    assert value("podsight_tls_handshakes_untracked_total", role="client") == 1
    # slot 19 is [262144, 524288) us
    assert value("podsight_tls_handshake_duration_seconds_bucket", role="client", le="0.262144") == 0
    assert value("podsight_tls_handshake_duration_seconds_bucket", role="client", le="0.524288") == 5
    assert value("podsight_tls_handshake_duration_seconds_sum", role="client") == pytest.approx(1.6)
    assert ("podsight_tls_handshake_duration_seconds_count", frozenset({**ls, "role": "server"}.items())) not in s
    assert s[("podsight_tls_libraries_attached", frozenset({"library": "libssl.so.3", "node": "n"}.items()))] == 2
    assert s[("podsight_tls_libraries_attached", frozenset({"library": 'odd"name', "node": "n"}.items()))] == 1
    assert value("podsight_tls_library_processes") == 3
    assert s[("podsight_tls_library_processes", frozenset(dict(zip(NAMES, HOST)).items()))] == 0


def test_probe_states_and_map_capacity():
    snap = Snapshot(node="n", label_names=NAMES, probe_states={"tcp": "up", "tcp_rtt": "unsupported"},
                    map_entries={"tcp_socks": 12}, map_max_entries={"tcp_socks": 65536})
    _, s = parse(page(renderer(), snap))
    states = {(dict(k[1])["probe"], dict(k[1])["state"]): v for k, v in s.items() if k[0] == "podsight_probe_state"}
    assert states == {("tcp", "up"): 1, ("tcp", "unsupported"): 0, ("tcp", "failed"): 0,
                      ("tcp_rtt", "up"): 0, ("tcp_rtt", "unsupported"): 1, ("tcp_rtt", "failed"): 0}
    assert s[("podsight_bpf_map_max_entries", frozenset({"map": "tcp_socks", "node": "n"}.items()))] == 65536
    assert s[("podsight_bpf_map_entries", frozenset({"map": "tcp_socks", "node": "n"}.items()))] == 12


def test_promtool_accepts_the_page():
    snap = snapshot([pod(i) for i in range(5)] + [HOST, ODD], random.Random(2))
    text = page(renderer(), snap)
    lint = subprocess.run(
        [prom_tools.require("promtool"), "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert lint.returncode == 0, f"promtool check metrics:\n{lint.stdout}{lint.stderr}"


def test_gzip_page_is_the_plain_page():
    r = renderer()
    rng = random.Random(3)
    snap = snapshot([pod(i) for i in range(40)], rng)
    assert parse(page(r, snap, gz=True)) == parse(page(r, snap))
    body = b"".join(r.render(snap, gzip=True))
    assert len(body) * 5 < len(page(r, snap).encode())  # it does compress
    # one member, nothing after it (a gzip reader that stops after the first member reads it all)
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    d.decompress(body)
    assert d.eof and d.unused_data == b""


labelset = st.sampled_from([pod(i) for i in range(6)] + [pod(1, "sidecar"), HOST, ODD])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(st.tuples(st.lists(labelset, unique=True, max_size=9), st.integers(0, 2**16)),
                      min_size=2, max_size=6))
def test_every_scrape_is_right_however_series_change(steps):
    """One renderer kept across scrapes (as in the agent) while label sets
    come and go and values change or stay: each page equals the oracle's."""
    r = renderer()
    for labelsets, seed in steps:
        rng = random.Random(seed % 4)  # few seeds: values often repeat, so the cache is hit
        snap = snapshot(labelsets, rng)
        want = parse(legacy_render(snap).decode())
        assert known_to_the_old(parse(page(r, snap))[1]) == want[1]
        assert known_to_the_old(parse(page(r, snap, gz=True))[1]) == want[1]


def test_an_unchanged_scrape_reuses_what_it_rendered():
    r = renderer()
    rng = random.Random(4)
    snap = snapshot([pod(i) for i in range(50)], rng)
    first = list(r.render(snap, gzip=True))
    again = list(r.render(snap, gzip=True))
    # gzip header, the agent's own families, ..., the process metrics, final block, CRC:
    # every piece in between is the very same (compressed) object.
    assert len(first) == len(again) > 20
    assert all(a is b for a, b in zip(first[2:-3], again[2:-3]))


def test_busy_workloads_cost_their_own_pieces_only():
    """Five of fifty pods change every scrape: once they gathered in the hot
    bucket, a scrape makes new pieces for it alone, and the values are right."""
    r = renderer()
    labelsets = [pod(i) for i in range(50)]
    base = snapshot(labelsets, random.Random(5))
    busy = labelsets[:5]
    last = None
    for step in range(6):
        series = {m: dict(rows) for m, rows in base.series.items()}
        for ls in busy:
            series["network_traffic"][ls] = (step, step, step, step)
        snap = replace(base, series=series)
        chunks = list(r.render(snap, gzip=True))
        assert known_to_the_old(parse(gzip.decompress(b"".join(chunks)).decode())[1]) == \
            parse(legacy_render(snap).decode())[1]
        if last is not None and step >= 2:
            new = [c for c in chunks[2:-3] if not any(c is o for o in last)]
            # network_traffic feeds two families: bytes and packets, one hot piece each
            assert len(new) == 2, len(new)
        last = chunks
