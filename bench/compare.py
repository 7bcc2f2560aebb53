#!/usr/bin/env python3
"""Compare two benchmark runs: each budget's figure, its change, and whether
the change is beyond the runs' own spread (the median's confidence interval
where the run has one, else min..max).

    bench/compare.py                      # the run before the latest, and the latest
    bench/compare.py OLD.json NEW.json
    bench/compare.py --fail-on-regression # exit 1 if a figure got worse beyond noise
                                          # and by more than --tolerance (10 %)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from benchlib import compare  # noqa: E402
from benchlib.report import LATEST  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bench/compare.py", description=__doc__.split("\n\n")[0])
    p.add_argument("old", nargs="?", type=Path, default=compare.previous_path(LATEST))
    p.add_argument("new", nargs="?", type=Path, default=LATEST)
    p.add_argument("--fail-on-regression", action="store_true")
    p.add_argument("--tolerance", type=float, default=0.10, metavar="FRACTION",
                   help="a change smaller than this is never a regression (default 0.10)")
    a = p.parse_args(argv)
    try:
        old, new = compare.load(a.old), compare.load(a.new)
    except ValueError as e:
        print(f"bench/compare.py: {e}\n(make bench writes {LATEST} and keeps the run before it as "
              f"{compare.previous_path(LATEST).name})", file=sys.stderr)
        return 2
    rows = compare.compare(old, new)
    print(compare.table(old, new, rows, a.tolerance))
    return 1 if a.fail_on_regression and compare.regressions(rows, a.tolerance) else 0


if __name__ == "__main__":
    sys.exit(main())
