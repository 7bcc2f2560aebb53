"""What the kernel may drop before the ring buffer, derived from the rules.
Pure; no I/O.

Each active rule's condition is put in disjunctive normal form over the
tests the kernel can decide cheaply, and each conjunction becomes a
*clause*: the kernel passes an event as a candidate match when it satisfies
some clause of its kind.  A test the kernel cannot decide (a suffix, a CIDR,
an identity field, a negation) is left out of its clause, which only widens
it; an exception is used only when it is a plain list of process names
(``comm_out``): an event from one of them cannot match that rule.  So an
event that satisfies no clause cannot match any rule, and dropping it in the
kernel changes no output.

The kernel decides these, per clause:

- ``paths``: the normalized path equals (``exact``) or starts with one of
  these (``path``, and ``process.exe`` of exec events, which is the path);
  globs become the prefix before their first wildcard;
- ``comms``: the task comm is one of these (``process.name`` eq/in);
- ``comm_out``: the task comm is none of these (a rule's exceptions);
- ``read``/``write``: open flags (``open.read``/``open.write: true``);
- ``mode_any``: a chmod or creation mode with one of these bits.

and, per kind, ``ptrace.request`` values and ``dst.family`` families.

Paths the kernel cannot judge (relative, ``//``, ``/./``, ``/../``, a
trailing ``/.`` or ``/..``, or cut at 255 bytes) are passed for user space
to normalize and judge; they spend a separate per-pod guard budget
(security.bpf.c), not a clause's.
"""
from __future__ import annotations

import socket
from dataclasses import dataclass

from .conditions import AllOf, AnyOf, Node, Not, Test
from .rules import Rule, RuleSet

__all__ = ["Clause", "kernel_filter"]

_WILDCARDS = "*?["
MAX_DNF = 16  # conjunctions per rule; a larger rule becomes one widened clause
COMM_LEN = 15  # the task comm, without its NUL


@dataclass(frozen=True)
class Clause:
    kind: str
    rule: str
    paths: frozenset[tuple[str, bool]] | None = None  # (path, exact); None: any path
    comms: frozenset[str] | None = None
    comm_out: frozenset[str] = frozenset()
    read: bool = False
    write: bool = False
    mode_any: int = 0  # 0: any mode


@dataclass
class _Conj:
    """One conjunction of kernel-decidable tests (None: unconstrained)."""

    paths: set[tuple[str, bool]] | None = None
    comms: set[str] | None = None
    read: bool = False
    write: bool = False
    mode_any: int = 0

    def both(self, o: "_Conj") -> "_Conj":
        """The conjunction of two: each constraint kept (a necessary condition either way)."""
        paths = self.paths if o.paths is None else o.paths if self.paths is None else (
            self.paths if len(self.paths) <= len(o.paths) else o.paths)  # prefix sets do not intersect element-wise
        comms = self.comms if o.comms is None else o.comms if self.comms is None else self.comms & o.comms
        mode = self.mode_any if not o.mode_any else o.mode_any if not self.mode_any else self.mode_any & o.mode_any
        return _Conj(paths, comms, self.read or o.read, self.write or o.write, mode)


def _atom(t: Test, kind: str) -> _Conj:
    path_field = t.field == "path" or (t.field == "process.exe" and kind == "exec")
    if path_field and t.op in ("eq", "in"):
        return _Conj(paths={(v, True) for v in t.values})
    if path_field and t.op == "prefix":
        return _Conj(paths={(v, False) for v in t.values})
    if path_field and t.op == "glob":
        return _Conj(paths={(g[: min((g.find(c) for c in _WILDCARDS if c in g), default=len(g))],
                             not any(c in g for c in _WILDCARDS)) for g in t.values})
    if t.field == "process.name" and t.op in ("eq", "in"):
        return _Conj(comms={v for v in t.values if len(v.encode()) <= COMM_LEN})  # longer: never a comm
    if t.field == "open.read" and t.op == "eq" and t.values == (True,):
        return _Conj(read=True)
    if t.field == "open.write" and t.op == "eq" and t.values == (True,):
        return _Conj(write=True)
    if t.field == "mode" and t.op in ("any_bits", "all_bits"):
        mask = 0
        for v in t.values:
            mask |= v
        return _Conj(mode_any=mask)
    return _Conj()


def _dnf(node: Node | None, kind: str) -> list[_Conj]:
    if node is None or isinstance(node, Not):
        return [_Conj()]  # a negation constrains nothing we can use
    if isinstance(node, Test):
        return [_atom(node, kind)]
    if isinstance(node, AnyOf):
        out = [c for child in node.children for c in _dnf(child, kind)]
        return out if len(out) <= MAX_DNF else [_widen(out)]
    if isinstance(node, AllOf):
        out = [_Conj()]
        for child in node.children:
            out = [a.both(b) for a in out for b in _dnf(child, kind)]
            if len(out) > MAX_DNF:
                out = [_widen(out)]
        return out
    return [_Conj()]


def _widen(conjs: list[_Conj]) -> _Conj:
    """One conjunction that every one of ``conjs`` implies."""
    def union(sets):
        return None if any(s is None for s in sets) else set().union(*sets)
    modes = [c.mode_any for c in conjs]
    return _Conj(union([c.paths for c in conjs]), union([c.comms for c in conjs]),
                 all(c.read for c in conjs), all(c.write for c in conjs),
                 0 if 0 in modes else _or(modes))


def _or(values) -> int:
    out = 0
    for v in values:
        out |= v
    return out


def _comm_out(rule: Rule) -> frozenset[str]:
    """Names from exceptions that are nothing but a process-name list."""
    out: set[str] = set()
    for _, cond in rule.exceptions:
        if isinstance(cond, Test) and cond.field == "process.name" and cond.op in ("eq", "in"):
            out |= {v for v in cond.values if len(v.encode()) <= COMM_LEN}  # a cut name would exclude others
    return frozenset(out)


def _clauses(rule: Rule) -> list[Clause]:
    out = []
    for c in _dnf(rule.condition, rule.event):
        if c.comms is not None and not c.comms:
            continue  # no comm can satisfy it
        out.append(Clause(rule.event, rule.name, None if c.paths is None else frozenset(c.paths),
                          None if c.comms is None else frozenset(c.comms), _comm_out(rule),
                          c.read, c.write, c.mode_any))
    return list(dict.fromkeys(out))


def _union(rules, extract):
    out: set = set()
    for rule in rules:
        got = _kind_values(rule.condition, extract)
        if got is None:
            return None
        out |= got
    return out


def _kind_values(node: Node | None, extract):
    """A set the field must fall in for ``node`` to hold, or None if unconstrained."""
    if isinstance(node, Test):
        return extract(node)
    if isinstance(node, AllOf):
        found = None
        for child in node.children:
            got = _kind_values(child, extract)
            if got is not None:
                found = got if found is None else found & got
        return found
    if isinstance(node, AnyOf):
        union: set = set()
        for child in node.children:
            got = _kind_values(child, extract)
            if got is None:
                return None
            union |= got
        return union
    return None


def _requests(t: Test):
    return set(t.values) if t.field == "ptrace.request" and t.op in ("eq", "in") else None


def _families(t: Test):
    if t.field == "dst.family" and t.op in ("eq", "in"):
        return set(t.values)
    if t.field == "dst.ip":  # every dst.ip test is false without an IP destination
        return {socket.AF_INET, socket.AF_INET6}
    return None


def _in_pod(node: Node | None) -> bool:
    return _kind_values(node, lambda t: {True} if t.field == "in_pod" and t.op == "eq" and t.values == (True,)
                        else None) is not None


def _sorted(values) -> list | None:
    return None if values is None else sorted(values)


def kernel_filter(ruleset: RuleSet) -> dict:
    """Clauses and per-kind knobs that cannot hide a match (see module doc).

    {"kinds": [...], "pods_only": bool, "clauses": [Clause, ...],
     "ptrace": {"requests": [...] | None}, "connect": {"families": [...] | None}}
    """
    active = ruleset.active_rules
    out: dict = {
        "kinds": ruleset.kinds(),
        "pods_only": bool(active) and all(_in_pod(r.condition) for r in active),
        "clauses": [c for r in active for c in _clauses(r)],
    }
    if "ptrace" in out["kinds"]:
        out["ptrace"] = {"requests": _sorted(_union(ruleset.by_kind["ptrace"], _requests))}
    if "connect" in out["kinds"]:
        out["connect"] = {"families": _sorted(_union(ruleset.by_kind["connect"], _families))}
    return out
