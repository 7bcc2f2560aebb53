import sys
from pathlib import Path

# The dashboard, rule and e2e tests share small helper modules that live next
# to them (tests/dashboards, tests/rules); make them importable by name.
_TESTS = Path(__file__).resolve().parents[1]
for _d in ("dashboards", "rules"):
    if str(_TESTS / _d) not in sys.path:
        sys.path.insert(0, str(_TESTS / _d))
