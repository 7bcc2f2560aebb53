"""What the kernel may drop before the ring buffer, derived from the rules.
Pure; no I/O.

For every field the kernel can test cheaply we compute, per rule, a
*necessary* condition (a superset of what the rule can match) and take the
union over the rules of a kind.  An event failing the union for any one field
cannot match any rule, so dropping it in the kernel changes no output.
Exceptions only remove matches and are ignored here; identity fields other
than ``in_pod`` are not known in the kernel and are ignored too.

Result (``None`` means "no restriction: send everything"):

    {"kinds": ["exec", "open", ...],        # attach only these
     "pods_only": True,                     # every active rule has in_pod: true
     "exec":    {"comms": [...] | None, "path_prefixes": [...] | None},
     "open":    {"write_only": bool, "comms": ..., "path_prefixes": ...},
     "chmod":   {"mode_bits_any": int | None, "comms": ..., "path_prefixes": ...},
     "ptrace":  {"requests": [int, ...] | None, "comms": ...},
     "connect": {"families": [int, ...] | None, "comms": ...}}

``path_prefixes`` are for absolute, normalized paths.  The kernel sees the raw
argument, so it must also pass any path that is relative or contains ``//``,
``/./`` or ``/../`` anywhere, or ends in ``/.`` or ``/..`` (user space
normalizes those before matching), and any path that fills its 256-byte read
(user space would see only a cut).  ``comms`` compare with the task comm (15
characters).
"""
from __future__ import annotations

import socket
from typing import Callable

from .conditions import AllOf, AnyOf, Node, Test
from .rules import RuleSet

__all__ = ["kernel_filter"]

_WILDCARDS = "*?["

Extract = Callable[[Test], "set | None"]


def _necessary(node: Node, extract: Extract):
    """A set the field must fall in for ``node`` to hold, or None if unconstrained."""
    if isinstance(node, Test):
        return extract(node)
    if isinstance(node, AllOf):
        found = None
        for child in node.children:
            c = _necessary(child, extract)
            if c is not None:
                found = c if found is None else _intersect(found, c)
        return found
    if isinstance(node, AnyOf):
        union: set = set()
        for child in node.children:
            c = _necessary(child, extract)
            if c is None:
                return None
            union |= c
        return union
    return None  # Not: the negation of a test constrains nothing we can use


def _intersect(a: set, b: set) -> set:
    # Sets of prefixes do not intersect element-wise; keep the smaller one (still necessary).
    return a if len(a) <= len(b) else b


def _path_prefixes(t: Test):
    if t.field != "path":
        return None
    if t.op in ("eq", "in", "prefix"):
        return set(t.values)
    if t.op == "glob":
        return {g[: min((g.find(c) for c in _WILDCARDS if c in g), default=len(g))] for g in t.values}
    return None


def _values(field: str, ops: tuple[str, ...]) -> Extract:
    def extract(t: Test):
        return set(t.values) if t.field == field and t.op in ops else None
    return extract


def _families(t: Test):
    if t.field == "dst.family" and t.op in ("eq", "in"):
        return set(t.values)
    if t.field == "dst.ip":  # every dst.ip test is false without an IP destination
        return {socket.AF_INET, socket.AF_INET6}
    return None


def _is_true(field: str) -> Extract:
    def extract(t: Test):
        return {True} if t.field == field and t.op == "eq" and t.values == (True,) else None
    return extract


def _mode_mask(t: Test):
    if t.field == "mode" and t.op in ("any_bits", "all_bits"):
        mask = 0
        for v in t.values:
            mask |= v
        return {mask} if t.op == "any_bits" else {v for v in t.values}
    return None


def _union(rules, extract: Extract):
    out: set = set()
    for rule in rules:
        c = _necessary(rule.condition, extract)
        if c is None:
            return None
        out |= c
    return out


def _minimal_prefixes(prefixes: set[str] | None) -> list[str] | None:
    if prefixes is None or "" in prefixes:
        return None
    kept: list[str] = []
    for p in sorted(prefixes):
        if not any(p.startswith(k) for k in kept):
            kept.append(p)
    return kept


def _sorted(values) -> list | None:
    return None if values is None else sorted(values)


def kernel_filter(ruleset: RuleSet) -> dict:
    """Cheap in-kernel filters that cannot hide a match (see module doc)."""
    active = ruleset.active_rules
    out: dict = {
        "kinds": ruleset.kinds(),
        "pods_only": bool(active) and all(_necessary(r.condition, _is_true("in_pod")) for r in active),
    }
    name_values = _values("process.name", ("eq", "in"))
    for kind in out["kinds"]:
        rules = ruleset.by_kind[kind]
        entry: dict = {"comms": _sorted(_union(rules, name_values))}
        if kind in ("exec", "open", "chmod"):
            entry["path_prefixes"] = _minimal_prefixes(_union(rules, _path_prefixes))
        if kind == "open":
            entry["write_only"] = _union(rules, _is_true("open.write")) is not None
        if kind == "chmod":
            masks = _union(rules, _mode_mask)
            mask = 0
            for m in masks or ():
                mask |= m
            entry["mode_bits_any"] = mask if masks is not None else None
        if kind == "ptrace":
            entry["requests"] = _sorted(_union(rules, _values("ptrace.request", ("eq", "in"))))
        if kind == "connect":
            entry["families"] = _sorted(_union(rules, _families))
        out[kind] = entry
    return out
