"""Compile a rule's ``condition`` (a YAML node) into a fast matcher.  Pure.

A condition is a mapping; every entry must hold (AND):

    process.name: {in: [sh, bash]}     # field: {operator: operand, ...}
    path: /etc/shadow                  # shorthand for {eq: ...}; a list means {in: [...]}
    any_of: [ {...}, {...} ]           # at least one sub-condition holds
    all_of: [ {...}, {...} ]
    not: {...}

Operands are scalars or lists; an item ``$name`` splices in the named list
(``$$`` at the start escapes a literal ``$``).  Each operator is compiled once
into a closure over precomputed data (frozensets, prefix tuples, one regex for
all globs, CIDRs grouped by prefix length) so matching does no parsing.
"""
from __future__ import annotations

import difflib
import ipaddress
import re
from dataclasses import dataclass, field
from typing import Callable

import yaml

from .fields import FIELDS, EventView, Field
from .names import ADDRESS_FAMILIES, MODE_BITS, OPEN_FLAGS, PTRACE_REQUESTS

__all__ = ["AllOf", "AnyOf", "CompileError", "Compiler", "Node", "Not", "Test", "glob_to_regex"]

Pred = Callable[[EventView], bool]


class CompileError(Exception):
    """A problem in a condition; ``node`` locates it, ``field`` names it."""

    def __init__(self, node: yaml.Node | None, field: str, message: str):
        super().__init__(message)
        self.node = node
        self.field = field
        self.message = message


@dataclass(slots=True)
class Node:
    fn: Pred = field(repr=False)


@dataclass(slots=True)
class Test(Node):
    field: str = ""
    op: str = ""
    values: tuple = ()  # operand after conversion (strings, ints, networks ...)


@dataclass(slots=True)
class AllOf(Node):
    children: tuple[Node, ...] = ()


@dataclass(slots=True)
class AnyOf(Node):
    children: tuple[Node, ...] = ()


@dataclass(slots=True)
class Not(Node):
    child: Node | None = None


_OPS = {
    "str": ("eq", "in", "not_in", "prefix", "suffix", "contains", "glob"),
    "int": ("eq", "in", "not_in", "lt", "le", "gt", "ge"),
    "bool": ("eq",),
    "flags": ("any", "all", "none"),
    "mode": ("any_bits", "all_bits", "none_bits"),
    "ptrace_request": ("eq", "in", "not_in"),
    "family": ("eq", "in", "not_in"),
    "ip": ("eq", "in", "not_in", "in_cidrs", "not_in_cidrs"),
}
# What a bare list means for each type.
_LIST_OP = {"flags": "any", "mode": "any_bits", "ip": "in"}
_SINGLE_OPERAND = {"lt", "le", "gt", "ge"}
_BOOLS = {"true": True, "false": False}


def glob_to_regex(pattern: str) -> str:
    """Glob → regex source: ``*`` and ``?`` stay within one path segment,
    ``**`` crosses segments, ``[abc]`` / ``[!abc]`` are character classes."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            if pattern.startswith("**", i):
                out.append(".*")
                i += 2
                continue
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = pattern.find("]", i + 2)
            if end == -1:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1:end]
                neg = body.startswith("!")
                body = body[1:] if neg else body
                body = body.replace("\\", "\\\\").replace("[", "\\[")
                out.append("[" + ("^" if neg else "") + body + "]")
                i = end + 1
                continue
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def _all(fns: list[Pred]) -> Pred:
    if not fns:
        return lambda v: True
    if len(fns) == 1:
        return fns[0]
    if len(fns) == 2:
        a, b = fns
        return lambda v: a(v) and b(v)

    def all_of(v: EventView) -> bool:
        for fn in fns:
            if not fn(v):
                return False
        return True

    return all_of


def _any(fns: list[Pred]) -> Pred:
    if not fns:
        return lambda v: False
    if len(fns) == 1:
        return fns[0]

    def any_of(v: EventView) -> bool:
        for fn in fns:
            if fn(v):
                return True
        return False

    return any_of


class _Networks:
    """CIDR membership as set look-ups, one set per (IP version, prefix length)."""

    def __init__(self, nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network]):
        table: dict[int, dict[int, set[int]]] = {4: {}, 6: {}}
        for net in nets:
            bits = net.max_prefixlen
            table[net.version].setdefault(net.prefixlen, set()).add(
                int(net.network_address) >> (bits - net.prefixlen)
            )
        self.v4 = [(32 - p, s) for p, s in sorted(table[4].items())]
        self.v6 = [(128 - p, s) for p, s in sorted(table[6].items())]

    def __contains__(self, ip: tuple[int, int]) -> bool:
        version, value = ip
        for shift, nets in self.v4 if version == 4 else self.v6:
            if value >> shift in nets:
                return True
        return False


class Compiler:
    """Compiles conditions for one event kind.

    ``resolve_list(name, node)`` returns the items of a named list as
    (text, node) pairs, or raises CompileError for an unknown name.
    """

    def __init__(self, kind: str, resolve_list: Callable[[str, yaml.Node], list[tuple[str, yaml.Node]]]):
        self.kind = kind
        self.resolve_list = resolve_list

    # -- structure ---------------------------------------------------------
    def condition(self, node: yaml.Node, where: str = "condition") -> Node:
        if not isinstance(node, yaml.MappingNode):
            raise CompileError(node, where, "expected a mapping of field: test")
        children: list[Node] = []
        seen: set[str] = set()
        for knode, vnode in node.value:
            key = knode.value if isinstance(knode, yaml.ScalarNode) else ""
            if key in seen:
                raise CompileError(knode, key, "appears twice in one condition")
            seen.add(key)
            if key in ("any_of", "all_of"):
                if not isinstance(vnode, yaml.SequenceNode) or not vnode.value:
                    raise CompileError(vnode, key, "expected a non-empty list of conditions")
                subs = [self.condition(item, key) for item in vnode.value]
                fns = [s.fn for s in subs]
                if key == "any_of":
                    children.append(AnyOf(_any(fns), tuple(subs)))
                else:
                    children.append(AllOf(_all(fns), tuple(subs)))
            elif key == "not":
                sub = self.condition(vnode, "not")
                inner = sub.fn
                children.append(Not(lambda v: not inner(v), sub))
            else:
                children.extend(self.field_tests(knode, key, vnode))
        if len(children) == 1:
            return children[0]
        return AllOf(_all([c.fn for c in children]), tuple(children))

    def field_tests(self, knode: yaml.Node, name: str, vnode: yaml.Node) -> list[Test]:
        fld = FIELDS.get(name)
        if fld is None:
            close = difflib.get_close_matches(name, list(FIELDS) + ["any_of", "all_of", "not"], n=1)
            hint = (f"did you mean '{close[0]}'?" if close else
                    "expected one of: any_of, all_of, not, " + ", ".join(FIELDS))
            raise CompileError(knode, name, f"unknown field ({hint})")
        if self.kind not in fld.kinds:
            raise CompileError(knode, name, f"not available for event '{self.kind}' "
                               f"(only {', '.join(sorted(fld.kinds))})")
        if isinstance(vnode, yaml.MappingNode):
            tests = []
            seen: set[str] = set()
            for onode, operand in vnode.value:
                op = onode.value if isinstance(onode, yaml.ScalarNode) else ""
                if op in seen:
                    raise CompileError(onode, name, f"operator '{op}' appears twice")
                seen.add(op)
                tests.append(self.test(fld, op, onode, operand))
            if not tests:
                raise CompileError(vnode, name, "expected at least one operator")
            return tests
        if isinstance(vnode, yaml.SequenceNode):
            return [self.test(fld, _LIST_OP.get(fld.type, "in"), vnode, vnode)]
        return [self.test(fld, "eq", vnode, vnode)]

    # -- operands ----------------------------------------------------------
    def items(self, fld: Field, node: yaml.Node) -> list[tuple[str, yaml.Node]]:
        """Flatten an operand (scalar or list, with $list references) to texts."""
        raw = node.value if isinstance(node, yaml.SequenceNode) else [node]
        out: list[tuple[str, yaml.Node]] = []
        for item in raw:
            if not isinstance(item, yaml.ScalarNode):
                raise CompileError(item, fld.name, "expected a scalar or a list of scalars")
            text = item.value
            if item.style is None and text.startswith("$") and not text.startswith("$$"):
                out.extend(self.resolve_list(text[1:], item))
            else:
                out.append((text[1:] if text.startswith("$$") else text, item))
        return out

    def test(self, fld: Field, op: str, onode: yaml.Node, operand: yaml.Node) -> Test:
        allowed = _OPS[fld.type]
        if op not in allowed:
            raise CompileError(onode, fld.name, f"unknown operator '{op}' for a {fld.type} field "
                               f"(expected one of: {', '.join(allowed)})")
        get = fld.get
        texts = self.items(fld, operand)
        if op == "eq" and len(texts) != 1 and not isinstance(operand, yaml.SequenceNode):
            raise CompileError(operand, fld.name, "'eq' takes one value")
        if op == "eq" and isinstance(operand, yaml.SequenceNode) and fld.type != "bool":
            op = "in"  # a list under eq is the same as in
        if op in _SINGLE_OPERAND and len(texts) != 1:
            raise CompileError(operand, fld.name, f"'{op}' takes exactly one number")
        convert = getattr(self, "_to_" + fld.type)
        values = tuple(convert(fld, text, node) for text, node in texts)
        fn = getattr(self, "_pred_" + fld.type)(op, values, get)
        return Test(fn, fld.name, op, values)

    @staticmethod
    def _to_str(fld, text, node):
        return text

    @staticmethod
    def _to_int(fld, text, node):
        try:
            return int(text, 0)
        except ValueError:
            raise CompileError(node, fld.name, f"expected an integer, got {text!r}") from None

    @staticmethod
    def _to_bool(fld, text, node):
        if text.lower() not in _BOOLS:
            raise CompileError(node, fld.name, f"expected true or false, got {text!r}")
        return _BOOLS[text.lower()]

    @staticmethod
    def _to_flags(fld, text, node):
        if text == "O_RDONLY":
            raise CompileError(node, fld.name, "O_RDONLY is 0 and cannot be tested as a bit; "
                               "use 'open.read: true' or 'open.write: false'")
        if text in OPEN_FLAGS:
            return OPEN_FLAGS[text]
        raise CompileError(node, fld.name, f"unknown open flag {text!r} (expected one of: "
                           + ", ".join(OPEN_FLAGS) + ")")

    @staticmethod
    def _to_mode(fld, text, node):
        if text in MODE_BITS:
            return MODE_BITS[text]
        digits = text[2:] if text.lower().startswith("0o") else text
        if digits and all(c in "01234567" for c in digits) and int(digits, 8) <= 0o7777:
            return int(digits, 8)  # modes are octal, as for chmod
        raise CompileError(node, fld.name, f"expected a mode bit name (S_ISUID, ...) or an octal "
                           f"mode up to 7777, got {text!r}")

    @staticmethod
    def _to_ptrace_request(fld, text, node):
        if text in PTRACE_REQUESTS:
            return PTRACE_REQUESTS[text]
        if text.isdigit():
            return int(text)
        raise CompileError(node, fld.name, f"unknown ptrace request {text!r} (expected e.g. "
                           "PTRACE_ATTACH, PTRACE_SEIZE, PTRACE_POKETEXT)")

    @staticmethod
    def _to_family(fld, text, node):
        if text in ADDRESS_FAMILIES:
            return ADDRESS_FAMILIES[text]
        raise CompileError(node, fld.name, f"unknown address family {text!r} (expected one of: "
                           + ", ".join(ADDRESS_FAMILIES) + ")")

    @staticmethod
    def _to_ip(fld, text, node):
        try:
            return ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise CompileError(node, fld.name, f"expected an IP address or CIDR, got {text!r}") from None

    # -- predicates (one closure per test) -----------------------------------
    @staticmethod
    def _membership(op, values, get):
        """eq/in/not_in, shared by every field type that has them; None for other operators."""
        s = frozenset(values)
        if op in ("eq", "in"):
            return lambda v: get(v) in s
        if op == "not_in":
            return lambda v: get(v) not in s
        return None

    @staticmethod
    def _pred_str(op, values, get):
        if (pred := Compiler._membership(op, values, get)) is not None:
            return pred
        if op == "prefix":
            t = tuple(values)
            return lambda v: get(v).startswith(t)
        if op == "suffix":
            t = tuple(values)
            return lambda v: get(v).endswith(t)
        if op == "contains":
            subs = tuple(values)
            return lambda v: any(s in get(v) for s in subs)
        if op == "glob":
            if not values:
                return lambda v: False
            try:
                match = re.compile("(?:" + "|".join(glob_to_regex(g) for g in values) + r")\Z", re.S).match
            except re.error as e:  # only reachable through odd character classes
                raise CompileError(None, "glob", f"bad pattern: {e}") from None
            return lambda v: match(get(v)) is not None
        raise AssertionError(op)

    @staticmethod
    def _pred_int(op, values, get):
        if (pred := Compiler._membership(op, values, get)) is not None:
            return pred
        x = values[0]
        return {
            "lt": lambda v: get(v) < x,
            "le": lambda v: get(v) <= x,
            "gt": lambda v: get(v) > x,
            "ge": lambda v: get(v) >= x,
        }[op]

    @staticmethod
    def _pred_bool(op, values, get):
        if len(values) != 1:
            raise CompileError(None, "", "expected true or false")
        want = values[0]
        return lambda v: get(v) is want

    @staticmethod
    def _pred_flags(op, values, get):
        mask = 0
        for bits in values:
            mask |= bits
        if op == "any":
            return lambda v: bool(get(v) & mask)
        if op == "none":
            return lambda v: not get(v) & mask
        # all: every named flag fully present (O_SYNC spans two bits)
        masks = tuple(values)
        return lambda v: all(get(v) & m == m for m in masks)

    _pred_mode = None  # set below: same bit logic, different operator names

    @staticmethod
    def _pred_enum(op, values, get):
        s = frozenset(values)
        if op == "not_in":
            return lambda v: get(v) not in s
        return lambda v: get(v) in s

    _pred_ptrace_request = _pred_enum
    _pred_family = _pred_enum

    @staticmethod
    def _pred_ip(op, values, get):
        nets = _Networks(list(values))
        if op in ("eq", "in", "in_cidrs"):
            def inside(v):
                ip = get(v)
                return ip is not None and ip in nets
            return inside

        # not_in: only for events that have an IP destination at all
        def outside(v):
            ip = get(v)
            return ip is not None and ip not in nets
        return outside


def _pred_mode(op, values, get):
    return Compiler._pred_flags({"any_bits": "any", "all_bits": "all", "none_bits": "none"}[op], values, get)


Compiler._pred_mode = staticmethod(_pred_mode)
