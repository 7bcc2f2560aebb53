"""Two benchmark runs side by side: each budget's figure, its change, and
whether the change is larger than the runs' own spread.  Pure, but for
load()."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .report import budgets

__all__ = ["Row", "compare", "load", "previous_path", "setup_differences", "budget_changes", "regressions", "table"]

# Absolute figures (ms, MB, events/s) depend on the machine; ratios against a
# baseline from the same run are meant to carry over.
MACHINE_KEYS = ("kernel", "cpu_model", "cpu_count", "python")


def previous_path(output: Path) -> Path:
    """Where a run keeps the result it replaces: latest.json -> latest.previous.json."""
    return output.with_name(output.stem + ".previous.json")


def load(path: Path) -> dict:
    """A result file, or ValueError saying what is wrong with it."""
    try:
        res = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: not JSON: {e.msg}") from None
    if not isinstance(res, dict) or "figures" not in res:
        raise ValueError(f"{path}: not a benchmark result (no 'figures')")
    return res


@dataclass(frozen=True)
class Row:
    name: str
    old: dict | None  # the budget dict of each run (value, verdict, ci or min/max)
    new: dict | None

    @staticmethod
    def _interval(b: dict | None) -> tuple[float, float] | None:
        """The confidence interval of the median when the run has one, else min..max."""
        if not b:
            return None
        if b.get("ci"):
            return b["ci"]["low"], b["ci"]["high"]
        if b.get("min") is not None:
            return b["min"], b["max"]
        return None

    @property
    def change(self) -> float | None:
        """new/old - 1 of the judged values."""
        a, b = (self.old or {}).get("value"), (self.new or {}).get("value")
        if a is None or b is None or a == 0:
            return None
        return b / a - 1

    @property
    def direction(self) -> str:
        """better / worse / same, by the budget's side of the line."""
        c = self.change
        if c is None:
            return "n/a"
        if abs(c) < 0.0005:  # what the table prints as +0.0%
            return "same"
        higher_is_better = (self.new or self.old)["op"] == ">="
        return "better" if (c > 0) == higher_is_better else "worse"

    @property
    def budget_changed(self) -> bool:
        """The line moved between the runs (issue 15 halved scrape p99's): a
        verdict that flips with it says nothing about the code."""
        if not self.old or not self.new:
            return False
        return (self.old["op"], self.old["limit"]) != (self.new["op"], self.new["limit"])

    @property
    def beyond_noise(self) -> bool | None:
        """True when the two runs' intervals do not overlap; None without both intervals."""
        a, b = self._interval(self.old), self._interval(self.new)
        if a is None or b is None:
            return None
        return a[1] < b[0] or b[1] < a[0]


def compare(old: dict, new: dict) -> list[Row]:
    """One row per budget in either run, in the newer run's order."""
    a, b = budgets(old), budgets(new)
    names = list(b) + [n for n in a if n not in b]
    return [Row(n, a.get(n), b.get(n)) for n in names]


def setup_differences(old: dict, new: dict) -> list[str]:
    """What differs between the two runs besides the code: the machine, the
    parameters (a --quick run is no yardstick for a full one), the agent's
    environment."""
    ma, mb = old.get("machine", {}), new.get("machine", {})
    out = [f"{k} {ma.get(k)!r} -> {mb.get(k)!r}" for k in MACHINE_KEYS if ma.get(k) != mb.get(k)]
    pa, pb = {"quick": old.get("quick"), **old.get("params", {})}, {"quick": new.get("quick"), **new.get("params", {})}
    out += [f"{k} {pa.get(k)!r} -> {pb.get(k)!r}" for k in sorted(pa.keys() | pb.keys()) if pa.get(k) != pb.get(k)]
    if old.get("agent_env", {}) != new.get("agent_env", {}):
        out.append(f"agent_env {old.get('agent_env', {})!r} -> {new.get('agent_env', {})!r}")
    sa, sb = old.get("figures", {}).get("scale"), new.get("figures", {}).get("scale")
    if sa and sb:
        # Runs before scale.py asked for gzip scraped with urllib's "identity".
        ea, eb = (s.get("scrape_accept_encoding", "identity") for s in (sa, sb))
        if ea != eb:
            out.append(f"scale scrapes with Accept-Encoding {ea!r} -> {eb!r}")
    return out


def budget_changes(rows: list[Row]) -> list[str]:
    """Budgets whose line moved between the two runs."""
    def line(b: dict) -> str:
        return f"{b['op']} {b['limit']:,.10g}{b['unit']}"

    return [f"{r.name} {line(r.old)} -> {line(r.new)}" for r in rows if r.budget_changed]


def regressions(rows: list[Row], tolerance: float = 0.10) -> list[str]:
    """Figures that got worse by more than both runs' spread and by more than
    ``tolerance`` (a run's own spread understates the drift between runs
    on a shared machine), and budgets with no spread to judge by that went
    from PASS to MISS.  A verdict that flips inside the spread is noise."""
    out = []
    for r in rows:
        flipped = ((r.old or {}).get("verdict") == "PASS" and (r.new or {}).get("verdict") == "MISS"
                   and not r.budget_changed)
        big = r.change is None or abs(r.change) > tolerance
        if r.direction == "worse" and r.beyond_noise and big:
            out.append(f"{r.name}: worse by {abs(r.change):.1%}, beyond both runs' spread"
                       + (" (PASS -> MISS)" if flipped else ""))
        elif flipped and r.beyond_noise is None and big:
            out.append(f"{r.name}: PASS -> MISS (no spread to judge noise by)")
    return out


def _value(b: dict | None) -> str:
    if not b or b.get("value") is None:
        return "-"
    v = b["value"]
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"


def table(old: dict, new: dict, rows: list[Row], tolerance: float = 0.10) -> str:
    lines = [f"old: {old.get('machine', {}).get('date', '?')}   new: {new.get('machine', {}).get('date', '?')}"]
    diff = setup_differences(old, new)
    if diff:
        lines.append("the runs differ: " + "; ".join(diff))
    moved = budget_changes(rows)
    if moved:
        lines.append("budgets changed: " + "; ".join(moved))
    lines.append("")
    cells = [("budget", "old", "new", "change", "verdict", "")]
    for r in rows:
        c = r.change
        noise = {True: "beyond noise", False: "within noise", None: "no spread to judge"}[r.beyond_noise]
        cells.append((r.name, _value(r.old), _value(r.new),
                      "-" if c is None else f"{c:+.1%} {r.direction}",
                      f"{(r.old or {}).get('verdict') or '-'} -> {(r.new or {}).get('verdict') or '-'}",
                      noise if c is not None else ""))
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    lines += ["  ".join(f"{x:<{w}}" for x, w in zip(row, widths)).rstrip() for row in cells]
    worse = regressions(rows, tolerance)
    lines += ["", f"regressions (worse beyond noise and by more than {tolerance:.0%}):"] + [f"  {w}" for w in worse] if worse else ["", f"no regressions (worse beyond noise and by more than {tolerance:.0%})"]
    return "\n".join(lines)
