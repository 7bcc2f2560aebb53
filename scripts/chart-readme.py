#!/usr/bin/env python3
"""Generate a chart's README.md from README.md.gotmpl, Chart.yaml and the
`# --` comments of values.yaml, the helm-docs convention.

    scripts/chart-readme.py [CHART_DIR] [--output FILE] [--check]

CHART_DIR defaults to deploy/helm/podsight. --check writes nothing and exits 1
when the README is not what this script would write (CI, and
tests/deploy/test_chart_readme.py, which regenerates it in a temporary directory).

values.yaml, as helm-docs reads it:

* A comment block directly above a key (no blank line between) documents the
  key from its `# --` line on: the text after `# --` plus the comment lines
  that follow it. Comment lines before the `# --` line are notes for readers of
  values.yaml only. `# @default -- TEXT` replaces the Default column;
  `# @ignored` leaves the key (and everything below it) out.
* A documented key is one row whose default is its whole value, as JSON; the
  keys below it get rows only when documented themselves. An undocumented
  mapping or list is walked; its leaves (and empty maps and lists) get rows
  with no description.
* Rows come in values.yaml order (helm-docs --sort-values-order file).

The template may use these helm-docs templates, nothing else:
chart.name, chart.description, chart.version, chart.appVersion, chart.type,
chart.kubeVersion, chart.homepage, chart.valuesTable.

Needs PyYAML only (a dependency of the project already).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CHART = REPO / "deploy" / "helm" / "podsight"
TEMPLATE = "README.md.gotmpl"

_KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_./-]+|\"[^\"]*\"|'[^']*'):(?:[ \t]+(?P<rest>.*))?$")
_TEMPLATE_CALL = re.compile(r"\{\{-?\s*template\s+\"([^\"]+)\"\s+\.\s*-?\}\}")
_BLOCK_SCALAR = re.compile(r"^[|>][-+0-9]*\s*(#.*)?$")


@dataclass
class Doc:
    description: str = ""
    default: str | None = None  # @default override
    ignored: bool = False


def _comment_doc(block: list[str]) -> Doc | None:
    """The Doc of a comment block (lines without their '#'), or None if it has no `--` line."""
    start = None
    for i, line in enumerate(block):
        if line.strip() == "@ignored" or line.strip().startswith("-- @ignored"):
            return Doc(ignored=True)
        if line.lstrip().startswith("--"):
            start = i
    if start is None:
        return None
    doc = Doc()
    parts = [block[start].lstrip()[2:].strip()]
    for line in block[start + 1:]:
        text = line.strip()
        m = re.match(r"@default\s+--\s*(.*)$", text)
        if m:
            doc.default = m.group(1)
        elif text:
            parts.append(text)
    doc.description = " ".join(p for p in parts if p)
    return doc


def _unquote(key: str) -> str:
    if len(key) >= 2 and key[0] == key[-1] and key[0] in "\"'":
        return key[1:-1]
    return key


def parse_docs(text: str) -> dict[tuple[str, ...], Doc]:
    """values.yaml text → {key path: Doc} for the keys with a `# --` comment."""
    docs: dict[tuple[str, ...], Doc] = {}
    stack: list[tuple[int, str]] = []  # (indent, key) of the mapping keys above this line
    block: list[str] = []
    skip_deeper_than: int | None = None  # inside a block scalar or a list item
    for raw in text.splitlines():
        line = raw.rstrip()
        stripped = line.lstrip()
        indent = len(line) - len(stripped)
        if skip_deeper_than is not None:
            if not stripped or indent > skip_deeper_than or (stripped.startswith("#") and indent > skip_deeper_than):
                continue
            skip_deeper_than = None
        if not stripped:
            block = []
            continue
        if stripped.startswith("#"):
            block.append(stripped[1:])
            continue
        if stripped.startswith("- ") or stripped == "-":
            # A list item: its keys belong to the list, documented (or not) as a whole.
            block = []
            skip_deeper_than = indent
            continue
        m = _KEY.match(line)
        if not m:
            block = []
            continue
        key = _unquote(m.group("key"))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = tuple(k for _, k in stack) + (key,)
        doc = _comment_doc(block)
        if doc is not None:
            docs[path] = doc
        block = []
        rest = (m.group("rest") or "").strip()
        if _BLOCK_SCALAR.match(rest):
            skip_deeper_than = indent
        stack.append((indent, key))
    return docs


_TYPES = ((bool, "bool"), (int, "int"), (float, "float"), (str, "string"), (list, "list"), (dict, "object"))


def _type_name(value) -> str:
    """helm-docs' type name (bool before int: a bool is an int in Python)."""
    return next((name for t, name in _TYPES if isinstance(value, t)), "string")
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "object"
    return "string"


def _key_name(path: tuple) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
            continue
        name = f'"{part}"' if ("." in part or " " in part) else part
        out += f".{name}" if out else name
    return out


def _code(text: str) -> str:
    fence = "``" if "`" in text else "`"
    pad = " " if fence == "``" else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _prose(text: str) -> str:
    """A description for a table cell: `<` and `>` outside code spans escaped,
    so that <release> or <pid> are shown and not taken for HTML tags."""
    parts = re.split(r"(`+[^`]*`+)", text)
    for i in range(0, len(parts), 2):
        parts[i] = parts[i].replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _cell("".join(parts))


@dataclass
class Row:
    key: str
    type: str
    default: str
    description: str


def _row(path: tuple, value, doc: Doc | None) -> Row:
    if doc is not None and doc.default is not None:
        default = doc.default
    elif value is None:
        default = _code("nil")
    else:
        default = _code(json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False))
    return Row(_key_name(path), _type_name(value), default, doc.description if doc else "")


def value_rows(values: dict, docs: dict[tuple[str, ...], Doc]) -> list[Row]:
    rows: list[Row] = []

    def walk(path: tuple, value, leaves: bool) -> None:
        doc = docs.get(tuple(p for p in path if isinstance(p, str))) if path and isinstance(path[-1], str) else None
        if doc is not None and doc.ignored:
            return
        if isinstance(value, dict) and value:
            if doc is not None:
                rows.append(_row(path, value, doc))
                leaves = False
            for k, v in value.items():
                walk(path + (str(k),), v, leaves)
        elif isinstance(value, list) and value:
            if doc is not None:
                rows.append(_row(path, value, doc))
                leaves = False
            for i, v in enumerate(value):
                walk(path + (i,), v, leaves)
        elif doc is not None or leaves:
            rows.append(_row(path, value, doc))

    for k, v in (values or {}).items():
        walk((str(k),), v, True)
    return rows


def values_table(values_text: str) -> str:
    rows = value_rows(yaml.safe_load(values_text), parse_docs(values_text))
    lines = ["| Key | Type | Default | Description |", "|-----|------|---------|-------------|"]
    for r in rows:
        lines.append(f"| {_cell(r.key)} | {r.type} | {_cell(r.default)} | {_prose(r.description)} |")
    return "\n".join(lines)


def render(chart_dir: Path) -> str:
    chart = yaml.safe_load((chart_dir / "Chart.yaml").read_text())
    template = (chart_dir / TEMPLATE).read_text()
    values_text = (chart_dir / "values.yaml").read_text()
    fields = {
        "chart.name": chart.get("name", ""),
        "chart.description": chart.get("description", ""),
        "chart.version": chart.get("version", ""),
        "chart.appVersion": chart.get("appVersion", ""),
        "chart.type": chart.get("type", ""),
        "chart.kubeVersion": chart.get("kubeVersion", ""),
        "chart.homepage": chart.get("home", ""),
    }

    def substitute(m: re.Match) -> str:
        name = m.group(1)
        if name == "chart.valuesTable":
            return values_table(values_text)
        if name not in fields:
            raise SystemExit(f"{chart_dir / TEMPLATE}: template {name!r} is not one this script knows")
        return str(fields[name])

    out = _TEMPLATE_CALL.sub(substitute, template)
    leftover = re.search(r"\{\{.*?\}\}", out)
    if leftover:
        raise SystemExit(f"{chart_dir / TEMPLATE}: cannot render {leftover.group(0)!r}")
    return out if out.endswith("\n") else out + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("chart", nargs="?", type=Path, default=DEFAULT_CHART)
    ap.add_argument("--output", type=Path, help="write here instead of CHART/README.md")
    ap.add_argument("--check", action="store_true", help="exit 1 if CHART/README.md is out of date")
    args = ap.parse_args(argv)
    text = render(args.chart)
    target = args.output or args.chart / "README.md"
    if args.check:
        if not target.is_file() or target.read_text() != text:
            print(f"{target} is out of date: run scripts/chart-readme.py", file=sys.stderr)
            return 1
        return 0
    target.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
