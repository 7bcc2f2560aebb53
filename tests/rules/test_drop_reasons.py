"""One name for each drop reason (issue 18): the reasons the agent's source
emits are each classified (budget or real loss), explained exactly once
(docs/runbooks/PodsightEventsDropped.md), and split the same way by the
rules; no other reason-like name appears in the rules or runbooks."""
from __future__ import annotations

import re

import rule_files as rf

REASONS_PAGE = rf.RUNBOOK_DIR / "PodsightEventsDropped.md"
# A runbook bullet that explains a reason: "- `ringbuf_full`: ..." or
# "- `http_failed` (HTTP output only): ...".
_DEFINITION = re.compile(r"^- `([a-z_]+)`(?: \([^)]*\))?:", re.M)
# Reason-like names anywhere: what a stale or invented reason looks like.
_REASON_LIKE = re.compile(r"\b[a-z]+(?:_[a-z]+)*_(?:full|limited)\b")


def _alert(name: str) -> dict:
    (rule,) = [r for r in rf.load_rules() if r.name == name]
    return rule.body


def _reason_regex(expr: str, op: str) -> set[str]:
    (m,) = re.findall(rf'reason\s*{re.escape(op)}\s*"([^"]*)"', expr)
    return set(m.split("|"))


def test_every_emitted_reason_is_classified():
    emitted = rf.emitted_drop_reasons()
    assert not rf.BUDGET_DROP_REASONS & rf.LOSS_DROP_REASONS
    unclassified = emitted - rf.BUDGET_DROP_REASONS - rf.LOSS_DROP_REASONS
    assert not unclassified, (f"the agent emits {sorted(unclassified)}: classify them in tests/rules/rule_files.py "
                              f"and explain them in {REASONS_PAGE.name}")
    # The five are among them, and the budgets are all real names.
    assert {"rate_limited", "guard_limited", "output_limited", "ringbuf_full", "pending_full"} <= emitted
    assert rf.BUDGET_DROP_REASONS <= emitted


def test_warning_excludes_exactly_the_budgets_and_info_selects_them():
    assert _reason_regex(_alert("PodsightEventsDropped")["expr"], "!~") == rf.BUDGET_DROP_REASONS
    assert _reason_regex(_alert("PodsightEventsThrottled")["expr"], "=~") == rf.BUDGET_DROP_REASONS


def test_each_reason_is_explained_exactly_once():
    defined = _DEFINITION.findall(REASONS_PAGE.read_text())
    twice = {r for r in defined if defined.count(r) > 1}
    assert not twice, f"{REASONS_PAGE.name} explains {sorted(twice)} more than once"
    missing = rf.emitted_drop_reasons() - set(defined)
    assert not missing, f"{REASONS_PAGE.name} does not explain {sorted(missing)}"
    unknown = set(defined) - rf.emitted_drop_reasons()
    assert not unknown, f"{REASONS_PAGE.name} explains reasons the agent never emits: {sorted(unknown)}"
    elsewhere = [f"{p.name}: {r}" for p in sorted(rf.RUNBOOK_DIR.glob("*.md")) if p != REASONS_PAGE
                 for r in _DEFINITION.findall(p.read_text()) if r in rf.emitted_drop_reasons()]
    assert not elsewhere, f"explain reasons only in {REASONS_PAGE.name}, link there instead:\n" + "\n".join(elsewhere)


def test_no_other_name_for_a_reason_in_rules_or_runbooks():
    known = rf.emitted_drop_reasons()
    files = sorted(rf.RUNBOOK_DIR.glob("*.md")) + rf.rule_files() + sorted(rf.RULE_TESTS_DIR.glob("*.yaml"))
    bad = [f"{f.relative_to(rf.REPO)}: {w}" for f in files for w in sorted(set(_REASON_LIKE.findall(f.read_text())))
           if w not in known]
    assert not bad, "not a reason the agent emits (see PodsightEventsDropped.md):\n" + "\n".join(bad)


def test_the_stale_name_is_caught():
    """The check above can fail: the name the issue found in the runbook."""
    assert _REASON_LIKE.findall("- `user_queue_full`: queue of user space") == ["user_queue_full"]
    assert "user_queue_full" not in rf.emitted_drop_reasons()
