"""The human table and the JSON file.  Pure formatting, plus one file write."""
from __future__ import annotations

import json
from pathlib import Path

__all__ = ["table", "write_json", "verdicts", "budgets", "LATEST"]

# Where bench/run.py writes its result unless told otherwise (git-ignored).
LATEST = Path(__file__).resolve().parents[1] / "results" / "latest.json"


def _fmt(v, digits: int = 1) -> str:
    if v is None:
        return "-"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.{digits}f}"


def _mmm(s: dict | None, digits: int = 1) -> str:
    if not s or s.get("median") is None:
        return "-"
    return f"{_fmt(s['median'], digits)} [{_fmt(s['min'], digits)}..{_fmt(s['max'], digits)}]"


def _verdict(b: dict | None) -> str:
    if not b:
        return ""
    out = f"{b['verdict'] or 'n/a'} ({b['op']} {_limit(b['limit'])}{b['unit']})"
    if b.get("ci"):
        out += f"; {_ci(b['ci'])}: " + ("settled" if b["settled"] else "the rounds cannot tell")
    return out


def _limit(v: float) -> str:
    s = f"{v:g}"
    return f"{v:,.0f}" if "e" in s else s  # 1048576, not 1.04858e+06


def _ci(ci: dict | None) -> str:
    return f"{ci['level']:.0%} CI of the median {ci['low']:.4f}..{ci['high']:.4f}" if ci else ""


def _bytes(s: dict | None) -> str:
    if not s or s.get("median") is None:
        return "-"
    return f"{s['median']:,.0f} [{s['min']:,.0f}..{s['max']:,.0f}]"


def _scale_rows(s: dict) -> list[tuple[str, str, str]]:
    """Figure 4: the scrape figures are gzip scrapes, as Prometheus makes them;
    the plain ones are for comparison."""
    g, check = s["gzip_bytes"], s["gzip_plain_check"]
    same = {True: "yes", False: "NO"}[s["gzip_plain_identical"]] + f" ({check['series']:,} series compared"
    same += ")" if check["compressed"] else "; the agent did not compress it)"
    if max(check.get("attempts") or [1]) > 1:  # a host gauge that moved and came back, if identical in the end
        same += f"; attempts per repeat {check['attempts']}, first saw {check['failed_attempts_saw'][0]}"
    if not s["gzip_plain_identical"] and check["examples"]:
        same += f"; {check['examples'][0]}"
    return [
        ("scale: pods / series", f"{s['pods']} ({s['pods_labelled']} with k8s names) / {s['series']:,}", ""),
        ("scrape p50 ms (gzip)", _mmm(s["scrape_p50_ms"]), ""),
        ("scrape p99 ms (gzip)", _mmm(s["scrape_p99_ms"]), _verdict(s["scrape_p99_ms"]["budget"])),
        ("agent CPU ms per scrape (gzip)", _mmm(s["cpu_ms_per_scrape"]), _verdict(s["cpu_ms_per_scrape"]["budget"])),
        ("plain scrape p50 / p99 ms", f"{_mmm(s['plain_scrape_p50_ms'])} / {_mmm(s['plain_scrape_p99_ms'])}", ""),
        ("plain agent CPU ms per scrape", _mmm(s["plain_cpu_ms_per_scrape"]), ""),
        ("page bytes, plain / gzip", f"{s['body_bytes']:,} / " + (
            _bytes(g) if g["median"] is not None else f"none: {g.get('note', 'not measured')}"),
         _verdict(g["budget"])),
        ("gzip page = plain page", same, ""),
        ("agent RSS MB", _mmm(s["rss_mb"]), _verdict(s["rss_mb"]["budget"])),
        ("agent peak RSS MB (VmHWM)", _fmt(s["peak_rss_mb"]["median"]), _verdict(s["peak_rss_mb"]["budget"])),
        ("agent CPU % idle", _mmm(s["idle_cpu_percent"], 2), _verdict(s["idle_cpu_percent"]["budget"])),
        ("agent CPU % at 15 s scrapes",
         f"{s['interval_15s_cpu_percent']['simulated']:.2f} simulated over "
         f"{s['interval_15s_cpu_percent']['simulated_seconds']:g} s; "
         f"{s['interval_15s_cpu_percent']['extrapolated']:.2f} extrapolated", ""),
    ]


def _tls_rows(x: dict) -> list[tuple[str, str, str]]:
    """Figure 7's own rows: CPU per handshake and whether the agent counted them all."""
    d, c = x.get("details", {}), x["agent_counted"]
    cpu = " / ".join(_mmm(d.get(side, {}).get("cpu_us_per_handshake"), 0) for side in ("off", "on", "empty_programs"))
    return [("tls client+server CPU us/handshake, off / on / empty", cpu, ""),
            ("tls handshakes counted by the agent", f"{'all' if c['all_matched'] else 'NOT all'} of "
             f"{sum(r['made'] for r in c['per_on_run']):,} in {c['runs']} on-run(s), both sides, no failure", "")]


def _within(b: dict | None) -> str:
    """A verdict, and for the within-noise rule what the interval says."""
    if not b or "rule" not in b or not b.get("rule", "").startswith("equal within noise") or not b.get("ci"):
        return _verdict(b)
    below = b["ci"]["high"] < b["limit"]
    return (f"{b['verdict']} (= {_limit(b['limit'])} within noise); {_ci(b['ci'])}: "
            + ("wholly below" if below else "includes or lies above the line"))


def _flows_rows(x: dict) -> list[tuple[str, str, str]]:
    """Figure 8: flows on against flows off."""
    rows: list[tuple[str, str, str]] = []
    for key, name, digits in (("throughput", "iperf3", 2), ("churn", "churn", 0)):
        t = x.get(key)
        if not t:
            continue
        rows.append((f"flows {name} {t['unit']} off / flows on / flows off / empty",
                     " / ".join(_mmm(t[a], digits) for a in ("off", "flows_on", "flows_off", "empty_programs")), ""))
        rows.append((f"flows {name} on/off, flows on | off",
                     f"{_mmm(t['flows_on_vs_off'], 4)} | {_mmm(t['flows_off_vs_off'], 4)}", ""))
        rows.append((f"flows {name} on/empty, flows on | off",
                     f"{_mmm(t['flows_on_vs_empty'], 4)} | {_mmm(t['flows_off_vs_empty'], 4)}",
                     f"empty/off {_mmm(t['empty_programs_vs_off'], 4)}"))
        rows.append((f"flows {name} flows on / flows off (paired)", _mmm(t["flows_on_vs_flows_off"], 4),
                     _within(t["budget"])))
    k = x.get("kernel")
    if k:
        for prog in ("tcp_state", "tcp_rtt_sample"):
            p = k["programs"].get(prog, {})
            if not p:
                continue
            cells = [f"{side} {_fmt((p[side]['ns_per_run'] or {}).get('median'))}"
                     for side in ("flows_on", "flows_off", "empty_programs") if side in p]
            per_conn = " / ".join(_fmt(p[side]["ns_per_connection"].get("median"))
                                  for side in ("flows_on", "flows_off", "empty_programs") if side in p)
            rows.append((f"flows {prog} ns/run (BPF stats)", ", ".join(cells), f"ns per connection {per_conn}"))
    sc = x.get("scrape")
    if sc:
        for key, name in (("replicas", "100 workloads x 10"), ("per_pod", "one workload per pod"),
                          ("flows_off", "flows off, 100 x 10")):
            r = sc.get(key)
            if not r:
                continue
            e = r.get("edges") or {}
            what = f"{r['pods']} pods x {r['peers_per_pod']} peers: {r['series']:,} series"
            if e:
                what += f", {e['rows']:,} edge rows ({int(e['folded'] or 0):,} folded)"
            rows.append((f"flows scrape, {name}", what, ""))
            rows.append(("  scrape p50 / p99 ms (gzip)", f"{_mmm(r['scrape_p50_ms'])} / {_mmm(r['scrape_p99_ms'])}",
                         _verdict(r["scrape_p99_ms"].get("budget"))))
            rows.append(("  agent CPU ms per scrape (gzip); page bytes plain / gzip",
                         f"{_mmm(r['cpu_ms_per_scrape'])}; {r['body_bytes']:,} / {_bytes(r['gzip_bytes'])}", ""))
            st = r["rss_stages_mb"]
            rows.append(("  agent RSS MB (peak)", f"{_mmm(r['rss_mb'])} ({_fmt(r['peak_rss_mb'])}); synced "
                         f"{_fmt(st['synced'])}, edges read {_fmt(st['edges_read'])}, first pages "
                         f"{_fmt(st['first_pages'])}, scraped {_fmt(st['scraped'])}, idle {_fmt(st['idle'])}",
                         _verdict(r["rss_mb"].get("budget"))))
            cw = r.get("cluster_watch_rss_mb") or {}
            rows.append(("  agent RSS MB, watches synced, before traffic", _fmt(cw.get("value")),
                         _verdict(cw.get("budget"))))
            if r.get("idle_cpu_percent") is not None:
                rows.append(("  agent CPU % idle (no scrapes)", f"{r['idle_cpu_percent']:.2f}", ""))
    return rows


def table(res: dict) -> str:
    m = res["machine"]
    lines = [f"podsight benchmark: {m['date']}  {m['hostname']}  kernel {m['kernel']}  "
             f"{m['cpu_count']} x {m['cpu_model']}",
             "figures: median [min..max] over repeats", ""]
    rows: list[tuple[str, str, str]] = []
    f = res["figures"]
    for key, name, unit, digits in (("throughput", "iperf3", "Gbit/s", 1), ("churn", "churn", "conn/s", 0),
                                    ("tls", "tls", "handshakes/s", 0)):
        if key not in f:
            continue
        x = f[key]
        rows.append((f"{name} {unit} off -> on", f"{_mmm(x['off'], digits)} -> {_mmm(x['on'], digits)}", ""))
        rows.append((f"{name} on/off", _mmm(x["ratio"], 4), _verdict(x["budget"])))
        if "empty_programs_ratio" in x:
            rows.append((f"{name} empty programs/off", _mmm(x["empty_programs_ratio"], 4),
                         _ci(x.get("empty_programs_ratio_ci"))))
            rows.append((f"{name} on/empty programs", _mmm(x["on_vs_empty_ratio"], 4),
                         _ci(x.get("on_vs_empty_ratio_ci"))))
        if x.get("agent_cpu_percent", {}).get("n"):
            rows.append((f"{name} agent process CPU %", _mmm(x["agent_cpu_percent"], 2), ""))
        if key == "tls":
            rows += _tls_rows(x)
    if "kernel_cost" in f:
        for prog, p in f["kernel_cost"]["programs"].items():
            if not p.get("runs_per_repeat") or not p["ns_per_run"]["n"]:
                rows.append((f"{prog} ns/run", "not run under this load", ""))
                continue
            cc = p["connect_close_ns_per_run"]["median"]
            rows.append((f"{prog} ns/run vs empty",
                         f"{_fmt(p['ns_per_run']['median'])} vs {_fmt(p['floor_ns_per_run']['median'])} = "
                         f"{_mmm(p['ratio'], 2)}x" + (f"; {_fmt(cc)} ns/event in connect/close loop" if cc else ""),
                         _verdict(p.get("budget"))))
        for prog, p in f["kernel_cost"].get("samplers", {}).items():
            if p["ns_per_run"]["n"]:
                rows.append((f"{prog} ns per run (a walk of every tracked socket)", _mmm(p["ns_per_run"], 1), ""))
    if "scale" in f:
        rows += _scale_rows(f["scale"])
    if "events" in f:
        e = f["events"]
        if e.get("status") == "measured":
            rows.append(("events/s decode+match (1 core)", _mmm(e["decode_match"], 0), _verdict(e["decode_match"]["budget"])))
            rows.append(("events/s match only", _mmm(e["match_only"], 0), ""))
        else:
            rows.append(("events path", f"{e.get('status')}: {e.get('reason')}", ""))
        k = e.get("kernel", {})
        if k.get("status") == "measured":
            d = k["dropped"]
            rows.append(("events via kernel, all matching",
                         f"{_fmt(k['delivered_per_cpu_second'], 0)}/agent-CPU-s, {_fmt(k['delivered_per_second'], 0)}/s "
                         f"delivered of {_fmt(k['generated'] / k['generator_seconds'], 0)}/s generated",
                         _verdict(k.get("budget"))))
            rows.append(("  drops (accounted: %s)" % ("yes" if k["accounted"] else "NO"),
                         ", ".join(f"{r} {int(n):,}" for r, n in d.items() if n) or "none", ""))
        else:
            rows.append(("events path through the kernel", f"{k.get('status')}: {k.get('reason', '')}", ""))
    if "render" in f:
        rd = f["render"]
        rows.append((f"render in-process, {rd['pods']} pods: old renderer ms", _mmm(rd["legacy_ms"], 1), ""))
        for key in sorted((k for k in rd if k.startswith("changed_")), key=lambda k: int(k[8:-3])):
            x = rd[key]
            rows.append((f"  {key.split('_')[1]} changed: plain / gzip ms",
                         f"{_mmm(x['plain_ms'], 1)} / {_mmm(x['gzip_ms'], 1)}", ""))
            rows.append((f"  {key.split('_')[1]} changed: vs old, plain / gzip",
                         f"{_mmm(x['plain_vs_legacy'], 3)} / {_mmm(x['gzip_vs_legacy'], 3)}", ""))
    if "flows" in f:
        rows += _flows_rows(f["flows"])
    w = max(len(r[0]) for r in rows) if rows else 0
    v = max(len(r[1]) for r in rows) if rows else 0
    lines += [f"{a:<{w}}  {b:<{v}}  {c}".rstrip() for a, b, c in rows]
    if res.get("errors"):
        lines += ["", "errors:"] + [f"  {k}: {msg}" for k, msg in res["errors"].items()]
    return "\n".join(lines)


def budgets(res: dict) -> dict[str, dict]:
    """Every budget judged in a run, by figure path (``throughput``,
    ``kernel_cost.programs.network_egress``, ``scale.rss_mb``, ...)."""
    out = {}

    def walk(prefix: str, d):
        if isinstance(d, dict):
            b = d.get("budget")
            if isinstance(b, dict) and "verdict" in b:
                out[prefix] = b
            for k, v in d.items():
                if k != "budget":
                    walk(f"{prefix}.{k}" if prefix else k, v)

    walk("", res.get("figures", {}))
    return out


def verdicts(res: dict) -> dict[str, str]:
    """Every budget judged in this run: name → PASS/MISS."""
    return {name: b["verdict"] for name, b in budgets(res).items() if b.get("verdict")}


def write_json(res: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(res, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)
