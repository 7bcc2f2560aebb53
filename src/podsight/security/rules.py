"""Rule files: parse, validate and compile them into a ``RuleSet``.

Pure apart from reading the named files.  Every problem becomes a
``RuleError`` naming the file, line, rule and field, so a broken rule file
stops the agent before anything is attached.  The format is described in
docs/security.md; in short::

    lists:
      shell_binaries: [sh, bash, dash]
    rules:
      - name: shell_in_container
        description: A shell started inside a container.
        event: exec
        condition:
          in_pod: true
          process.name: {in: [$shell_binaries]}
        exceptions:
          - name: allowed_images
            condition: {image: {prefix: [$shell_allowed_images]}}
        severity: warning
        tags: [T1059.004]

Later files may extend lists (``name: {append: [...]}`` / ``{replace: [...]}``)
and adjust earlier rules (``- name: x`` with ``override: true``).
"""
from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import yaml

from .conditions import CompileError, Compiler, Node
from .fields import FIELDS, EventView
from .model import EVENT_KINDS, RawEvent

__all__ = [
    "BUILTIN_DEFAULT",
    "DEFAULT_RULES_PATH",
    "EXTERNAL_LISTS",
    "Rule",
    "RuleError",
    "RuleSet",
    "SEVERITIES",
    "check_files",
    "config_lists",
    "load_rules",
    "main_rules_check",
]

DEFAULT_RULES_PATH = Path(__file__).with_name("default_rules.yaml")
# How a rules_files entry names the shipped rules next to the user's own.
BUILTIN_DEFAULT = "builtin:default"

# Most to least urgent; a subset of syslog levels, lower-case as Falco prints them.
SEVERITIES = ("critical", "error", "warning", "notice", "info")

# Lists the agent fills from its configuration; a file's definition is the default.
EXTERNAL_LISTS = {
    "allowed_egress_cidrs": "security.egress.allowed_cidrs",
    "kubernetes_api_cidrs": "security.egress.kubernetes_api_cidrs",
}

_RULE_KEYS = ("name", "description", "event", "condition", "exceptions", "severity", "tags",
              "enabled", "requires", "summary", "override")
_OVERRIDE_KEYS = ("name", "override", "enabled", "severity", "exceptions", "tags")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_LIST_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_PLACEHOLDER_RE = re.compile(r"\{([A-Za-z0-9_.]+)\}")


class RuleError(ValueError):
    """``file:line: rule 'x': field: problem``; ``others`` holds further errors."""

    def __init__(self, file: str, line: int | None, problem: str, rule: str = "", field: str = ""):
        self.file, self.line, self.rule, self.field, self.problem = file, line, rule, field, problem
        self.others: list[RuleError] = []
        super().__init__(self.one_line())

    def one_line(self) -> str:
        parts = [f"{self.file}:{self.line}" if self.line else self.file]
        if self.rule:
            parts.append(f"rule '{self.rule}'")
        if self.field:
            parts.append(self.field)
        parts.append(self.problem)
        return ": ".join(parts)

    def __str__(self) -> str:
        return "\n".join([self.one_line()] + [e.one_line() for e in self.others])


@dataclass(slots=True)
class Rule:
    name: str
    description: str
    event: str
    severity: str
    tags: tuple[str, ...]
    enabled: bool
    source: str                       # file:line of the definition
    condition: Node | None = None
    exceptions: tuple[tuple[str, Node], ...] = ()
    requires: tuple[str, ...] = ()
    summary: str = ""                 # template with {field} placeholders, "" = generated
    active: bool = False              # enabled and every required list non-empty
    inactive_reason: str = ""
    matches: Callable[[EventView], bool] = field(default=lambda v: False, repr=False)


class RuleSet:
    """Compiled rules indexed by event kind; ``match`` returns every rule that fires."""

    def __init__(self, rules: Sequence[Rule], lists: Mapping[str, tuple[str, ...]], files: Sequence[str]):
        self.rules = tuple(rules)
        self.lists = dict(lists)
        self.files = tuple(files)
        self.by_kind: dict[str, tuple[Rule, ...]] = {
            k: tuple(r for r in self.rules if r.active and r.event == k) for k in EVENT_KINDS
        }

    @property
    def active_rules(self) -> tuple[Rule, ...]:
        return tuple(r for r in self.rules if r.active)

    def kinds(self) -> list[str]:
        """Event kinds at least one active rule needs."""
        return [k for k in EVENT_KINDS if self.by_kind[k]]

    def match(self, ev: RawEvent, identity: Mapping[str, object]) -> list[Rule]:
        rules = self.by_kind.get(ev.kind)
        if not rules:
            return []
        view = EventView(ev, identity)
        return [r for r in rules if r.matches(view)]

    def match_view(self, view: EventView) -> list[Rule]:
        """``match`` on a view the caller built, so rendering the matches can reuse it."""
        rules = self.by_kind.get(view.ev.kind)
        if not rules:
            return []
        return [r for r in rules if r.matches(view)]


# --------------------------------------------------------------------------
# Loading


@dataclass
class _ListDef:
    name: str
    items: list[tuple[str, yaml.Node, str]]  # (text, node, file)
    where: str


@dataclass
class _RawRule:
    file: str
    node: yaml.MappingNode
    fields: dict[str, yaml.Node]
    extra_exceptions: list[tuple[str, yaml.Node]] = field(default_factory=list)  # (file, node)


class _Loader:
    def __init__(self, external: Mapping[str, Sequence[str]] | None):
        self.errors: list[RuleError] = []
        self.lists: dict[str, _ListDef] = {}
        self.rules: dict[str, _RawRule] = {}
        self.external = dict(external or {})
        self.files: list[str] = []
        self._resolved: dict[str, list[tuple[str, yaml.Node]]] = {}
        self._resolving: list[str] = []

    def error(self, file: str, node: yaml.Node | None, problem: str, rule: str = "", field: str = "") -> None:
        line = node.start_mark.line + 1 if node is not None and node.start_mark else None
        self.errors.append(RuleError(file, line, problem, rule, field))

    # -- files -------------------------------------------------------------
    def read(self, path: str) -> None:
        real = str(DEFAULT_RULES_PATH) if path == BUILTIN_DEFAULT else str(path)
        self.files.append(real)
        try:
            text = Path(real).read_text()
        except OSError as e:
            self.errors.append(RuleError(real, None, f"cannot read: {e.strerror or e}"))
            return
        except UnicodeDecodeError as e:
            self.errors.append(RuleError(real, None, f"not UTF-8 text: {e.reason}"))
            return
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            problem = getattr(e, "problem", None) or str(e)
            self.errors.append(RuleError(real, mark.line + 1 if mark else None, f"not valid YAML: {problem}"))
            return
        if root is None or (isinstance(root, yaml.ScalarNode) and root.value == ""):
            return
        if not isinstance(root, yaml.MappingNode):
            self.error(real, root, "expected a mapping with 'lists' and/or 'rules'")
            return
        seen: set[str] = set()
        for knode, vnode in root.value:
            key = knode.value
            if key in seen:
                self.error(real, knode, f"'{key}' appears twice")
                continue
            seen.add(key)
            if key == "lists":
                self.read_lists(real, vnode)
            elif key == "rules":
                self.read_rules(real, vnode)
            else:
                self.error(real, knode, f"unknown top-level key '{key}' (expected lists, rules)")

    def read_lists(self, file: str, node: yaml.Node) -> None:
        if not isinstance(node, yaml.MappingNode):
            self.error(file, node, "expected a mapping of list name: [items]", field="lists")
            return
        for knode, vnode in node.value:
            name = knode.value
            label = f"list '{name}'"
            if not _LIST_RE.match(name):
                self.error(file, knode, "a list name is letters, digits and _", field=label)
                continue
            mode = "define"
            if isinstance(vnode, yaml.MappingNode):
                if len(vnode.value) != 1 or vnode.value[0][0].value not in ("append", "replace"):
                    self.error(file, vnode, "expected [items], {append: [items]} or {replace: [items]}",
                               field=label)
                    continue
                mode = vnode.value[0][0].value
                vnode = vnode.value[0][1]
            if not isinstance(vnode, yaml.SequenceNode) or not all(
                isinstance(i, yaml.ScalarNode) for i in vnode.value
            ):
                self.error(file, vnode, "expected a list of scalars", field=label)
                continue
            items = [(i.value, i, file) for i in vnode.value]
            where = f"{file}:{knode.start_mark.line + 1}"
            old = self.lists.get(name)
            if mode == "define":
                if old is not None:
                    self.error(file, knode, f"already defined at {old.where}; use {{append: [...]}} "
                               "or {replace: [...]} to change it", field=label)
                    continue
                self.lists[name] = _ListDef(name, items, where)
            elif old is None:
                self.error(file, knode, f"cannot {mode}: no earlier file defines this list", field=label)
            elif mode == "append":
                old.items.extend(items)
            else:
                old.items = items

    def read_rules(self, file: str, node: yaml.Node) -> None:
        if not isinstance(node, yaml.SequenceNode):
            self.error(file, node, "expected a list of rules", field="rules")
            return
        for item in node.value:
            if not isinstance(item, yaml.MappingNode):
                self.error(file, item, "expected a mapping (name, event, condition, ...)", field="rules")
                continue
            fields: dict[str, yaml.Node] = {}
            name_node = next((v for k, v in item.value if k.value == "name"), None)
            name = name_node.value if isinstance(name_node, yaml.ScalarNode) else ""
            bad = False
            for knode, vnode in item.value:
                key = knode.value
                if key not in _RULE_KEYS:
                    self.error(file, knode, f"unknown field (expected one of: {', '.join(_RULE_KEYS)})",
                               rule=name, field=key)
                    bad = True
                elif key in fields:
                    self.error(file, knode, "appears twice", rule=name, field=key)
                    bad = True
                fields[key] = vnode
            if bad:
                continue
            if not name or not _NAME_RE.match(name):
                self.error(file, name_node or item, "expected a name of letters, digits, '_', '-', '.' "
                           "(it becomes a metric label)", rule=name, field="name")
                continue
            if "override" in fields:
                self.apply_override(file, name, item, fields)
                continue
            old = self.rules.get(name)
            if old is not None:
                line = old.node.start_mark.line + 1
                self.error(file, name_node, f"duplicate rule name (first defined at {old.file}:{line}; "
                           "use 'override: true' to change it)", rule=name, field="name")
                continue
            missing = [k for k in ("event", "condition", "severity") if k not in fields]
            if missing:
                self.error(file, item, f"missing required field(s): {', '.join(missing)}", rule=name)
                continue
            self.rules[name] = _RawRule(file, item, fields)

    def apply_override(self, file: str, name: str, item: yaml.Node, fields: dict[str, yaml.Node]) -> None:
        flag = fields["override"]
        if not (isinstance(flag, yaml.ScalarNode) and flag.value.lower() == "true"):
            self.error(file, flag, "expected true", rule=name, field="override")
            return
        for key, vnode in fields.items():
            if key not in _OVERRIDE_KEYS:
                self.error(file, vnode, f"cannot be overridden (only {', '.join(_OVERRIDE_KEYS[2:])})",
                           rule=name, field=key)
                return
        old = self.rules.get(name)
        if old is None:
            self.error(file, item, "override of a rule no earlier file defines (list the defining "
                       f"file first, e.g. {BUILTIN_DEFAULT})", rule=name, field="override")
            return
        for key in ("enabled", "severity", "tags"):
            if key in fields:
                old.fields[key] = fields[key]
        if "exceptions" in fields:
            old.extra_exceptions.append((file, fields["exceptions"]))

    # -- lists -------------------------------------------------------------
    def resolve_list(self, name: str, node: yaml.Node) -> list[tuple[str, yaml.Node]]:
        if name in self._resolved:
            return self._resolved[name]
        if name not in self.lists:
            raise CompileError(node, "", f"unknown list '${name}'")
        if name in self._resolving:
            raise CompileError(node, "", "lists refer to each other in a loop: "
                               + " -> ".join(self._resolving + [name]))
        self._resolving.append(name)
        try:
            out: list[tuple[str, yaml.Node]] = []
            for text, item, _file in self.lists[name].items:
                if item.style is None and text.startswith("$") and not text.startswith("$$"):
                    out.extend(self.resolve_list(text[1:], item))
                else:
                    out.append((text[1:] if text.startswith("$$") else text, item))
        finally:
            self._resolving.pop()
        self._resolved[name] = out
        return out

    def apply_external(self) -> None:
        for name, values in self.external.items():
            if values is None:
                continue
            origin = EXTERNAL_LISTS.get(name, "agent configuration")
            node = yaml.ScalarNode("tag:yaml.org,2002:str", "")
            self.lists[name] = _ListDef(name, [(str(v), node, origin) for v in values], origin)

    def file_of(self, node: yaml.Node, default: str) -> str:
        """Errors in list items belong to the file that wrote the item."""
        for ldef in self.lists.values():
            for _text, item, file in ldef.items:
                if item is node:
                    return file
        return default

    # -- compiling -----------------------------------------------------------
    def compile_all(self) -> list[Rule]:
        self.apply_external()
        out = []
        for name, raw in self.rules.items():
            try:
                out.append(self.compile_rule(name, raw))
            except CompileError as e:
                file = self.file_of(e.node, raw.file) if e.node is not None else raw.file
                self.error(file, e.node if e.node is not None else raw.node, e.message, rule=name,
                           field=e.field)
        return out

    def scalar(self, file: str, name: str, key: str, node: yaml.Node) -> str:
        if not isinstance(node, yaml.ScalarNode):
            raise CompileError(node, key, "expected a string")
        return node.value

    def compile_rule(self, name: str, raw: _RawRule) -> Rule:
        f = raw.fields
        event = self.scalar(raw.file, name, "event", f["event"])
        if event not in EVENT_KINDS:
            raise CompileError(f["event"], "event", f"unknown event type {event!r} (expected one of: "
                               + ", ".join(EVENT_KINDS) + ")")
        severity = self.scalar(raw.file, name, "severity", f["severity"]).lower()
        if severity not in SEVERITIES:
            raise CompileError(f["severity"], "severity", f"unknown severity {severity!r} (expected one "
                               "of: " + ", ".join(SEVERITIES) + ")")
        description = self.scalar(raw.file, name, "description", f["description"]) if "description" in f else ""
        enabled = True
        if "enabled" in f:
            text = self.scalar(raw.file, name, "enabled", f["enabled"]).lower()
            if text not in ("true", "false"):
                raise CompileError(f["enabled"], "enabled", f"expected true or false, got {text!r}")
            enabled = text == "true"
        tags = self.string_list(f.get("tags"), "tags")
        requires = self.string_list(f.get("requires"), "requires")
        for i, req in enumerate(requires):
            if req not in self.lists:
                node = f["requires"].value[i]
                raise CompileError(node, "requires", f"unknown list {req!r}")
        summary = self.scalar(raw.file, name, "summary", f["summary"]) if "summary" in f else ""
        for placeholder in _PLACEHOLDER_RE.findall(summary):
            fld = FIELDS.get(placeholder)
            if placeholder not in ("rule", "severity") and (fld is None or event not in fld.kinds):
                raise CompileError(f["summary"], "summary", f"unknown placeholder {{{placeholder}}} for "
                                   f"event '{event}'")
        compiler = Compiler(event, self.resolve_list)
        condition = compiler.condition(f["condition"])
        exceptions: list[tuple[str, Node]] = []
        groups = ([f["exceptions"]] if "exceptions" in f else []) + [n for _file, n in raw.extra_exceptions]
        for group in groups:
            exceptions.extend(self.compile_exceptions(compiler, group))
        names = [n for n, _ in exceptions if n]
        dup = next((n for n in names if names.count(n) > 1), None)
        if dup:
            raise CompileError(f.get("exceptions") or raw.node, "exceptions", f"exception name {dup!r} "
                               "used twice")
        empty = [r for r in requires if not self.resolve_list(r, raw.node)]
        active = enabled and not empty
        reason = "" if active else ("disabled" if not enabled else
                                    "list(s) empty: " + ", ".join(empty))
        cond_fn = condition.fn
        exc_fns = tuple(node.fn for _n, node in exceptions)
        if exc_fns:
            def matches(v, cond_fn=cond_fn, exc_fns=exc_fns):
                if not cond_fn(v):
                    return False
                for exc in exc_fns:
                    if exc(v):
                        return False
                return True
        else:
            matches = cond_fn
        line = raw.node.start_mark.line + 1
        return Rule(name, description, event, severity, tuple(tags), enabled, f"{raw.file}:{line}",
                    condition, tuple(exceptions), tuple(requires), summary, active, reason, matches)

    def string_list(self, node: yaml.Node | None, key: str) -> list[str]:
        if node is None:
            return []
        if not isinstance(node, yaml.SequenceNode) or not all(isinstance(i, yaml.ScalarNode) for i in node.value):
            raise CompileError(node, key, "expected a list of strings")
        return [i.value for i in node.value]

    def compile_exceptions(self, compiler: Compiler, node: yaml.Node) -> list[tuple[str, Node]]:
        if not isinstance(node, yaml.SequenceNode):
            raise CompileError(node, "exceptions", "expected a list")
        out = []
        for i, item in enumerate(node.value):
            label = f"exceptions[{i}]"
            if isinstance(item, yaml.MappingNode) and any(k.value == "condition" for k, _ in item.value):
                keys = {k.value: v for k, v in item.value}
                unknown = [k for k in keys if k not in ("name", "condition")]
                if unknown:
                    raise CompileError(item, label, f"unknown key {unknown[0]!r} (expected name, condition)")
                name_node = keys.get("name")
                name = name_node.value if isinstance(name_node, yaml.ScalarNode) else ""
                out.append((name, compiler.condition(keys["condition"], label)))
            else:
                out.append(("", compiler.condition(item, label)))
        return out


def _load(paths: Iterable[str | os.PathLike], lists: Mapping[str, Sequence[str]] | None):
    loader = _Loader(lists)
    paths = [str(p) for p in paths]
    if not paths:
        loader.errors.append(RuleError("(rules)", None, "no rule files given"))
    for p in paths:
        loader.read(p)
    rules = loader.compile_all() if not loader.errors else []
    resolved = {}
    if not loader.errors:
        for name in loader.lists:
            try:
                resolved[name] = tuple(t for t, _ in loader.resolve_list(name, None))
            except CompileError as e:
                loader.error(loader.lists[name].where.rsplit(":", 1)[0], e.node, e.message,
                             field=f"list '{name}'")
    return loader, rules, resolved


def check_files(paths: Iterable[str | os.PathLike],
                lists: Mapping[str, Sequence[str]] | None = None) -> list[RuleError]:
    """All problems in these rule files (read in order, as one set); [] if none."""
    loader, _rules, _lists = _load(paths, lists)
    return loader.errors


def load_rules(paths: Iterable[str | os.PathLike],
               lists: Mapping[str, Sequence[str]] | None = None) -> RuleSet:
    """Compile rule files (``builtin:default`` names the shipped ones).

    ``lists`` replaces named lists with values from the agent configuration
    (see ``config_lists``).  Raises RuleError carrying every problem found.
    """
    loader, rules, resolved = _load(paths, lists)
    if loader.errors:
        first = loader.errors[0]
        first.others = loader.errors[1:]
        raise first
    return RuleSet(rules, resolved, loader.files)


def config_lists(cfg: object, environ: Mapping[str, str] | None = None) -> dict[str, list[str]]:
    """Lists the default rules take from the agent configuration.

    ``kubernetes_api_cidrs``: the config key when present and non-empty, else
    the in-cluster API service address from ``KUBERNETES_SERVICE_HOST`` (what
    pods actually connect to, before any NAT), else left to the rule file.
    """
    env = os.environ if environ is None else environ
    egress = getattr(getattr(cfg, "security", None), "egress", None)
    out: dict[str, list[str]] = {}
    allowed = getattr(egress, "allowed_cidrs", None)
    if allowed is not None:
        out["allowed_egress_cidrs"] = list(allowed)
    api = list(getattr(egress, "kubernetes_api_cidrs", None) or [])
    host = env.get("KUBERNETES_SERVICE_HOST", "")
    if not api and host:
        api = [host]
    if api:
        out["kubernetes_api_cidrs"] = api
    return out


def main_rules_check(paths: list[str], out=None, err=None) -> int:
    """``podsight rules check FILE...``: 0 and a summary if valid, else 1 and the errors."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        ruleset = load_rules(paths)
    except RuleError as e:
        print(str(e), file=err)
        count = 1 + len(e.others)
        print(f"{count} error{'s' if count > 1 else ''}; nothing would be attached", file=err)
        return 1
    active = len(ruleset.active_rules)
    print(f"OK: {len(ruleset.rules)} rules ({active} active) in {len(ruleset.files)} file(s)", file=out)
    for rule in ruleset.rules:
        if not rule.active:
            print(f"  inactive: {rule.name} ({rule.inactive_reason})", file=out)
    return 0
