#!/usr/bin/env python3
"""Render test-only variants of the Prometheus rule files.

End-to-end tests cannot wait 10 minutes for a `for:` clause or produce a 5 %
retransmit ratio on demand, so they load rules derived from the shipped
files by a small, reviewed mapping (an overrides YAML file) instead of a
hand-copied second set that could drift.  The mapping may, per alert:

    alerts:
      PodsightTCPRetransmitRatioHigh:
        for: 0s                      # replace (or add) the alert's `for:`
        replace:                     # literal text edits of `expr`;
          - old: "ratio_rate5m > 0.05"   # each `old` must occur exactly once
            new: "ratio_rate5m > 0"

Anything not named stays as shipped.  A mapping that no longer matches the
rules (renamed alert, edited expression) is an error naming the overrides
file, its line and the rule file's line, so the test variants cannot
silently stop testing the real rules.

Optionally `--runbook-base-url` rewrites the documented placeholder base of
every `runbook_url` (see docs/runbooks/README.md).

Usage:
    scripts/render-test-rules.py [--overrides FILE] [--runbook-base-url URL] --out DIR RULE_FILE...
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

# The placeholder every shipped runbook_url starts with.
DEFAULT_RUNBOOK_BASE_URL = "https://github.com/podsight/podsight/blob/main/docs/runbooks/"


class RenderError(Exception):
    pass


class _LineLoader(yaml.SafeLoader):
    """SafeLoader that remembers, in every mapping, its own first line
    (`__line__`) and the line of each key (`__key_lines__`)."""


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> dict:
    mapping = loader.construct_mapping(node, deep=True)
    mapping["__line__"] = node.start_mark.line + 1
    mapping["__key_lines__"] = {loader.construct_object(k): k.start_mark.line + 1 for k, _ in node.value}
    return mapping


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _load(path: Path) -> dict:
    try:
        data = yaml.load(path.read_text(), Loader=_LineLoader)
    except yaml.YAMLError as exc:
        raise RenderError(f"{path}: not valid YAML: {exc}") from exc
    except OSError as exc:
        raise RenderError(f"{path}: cannot read: {exc.strerror}") from exc
    if not isinstance(data, dict):
        raise RenderError(f"{path}:1: expected a mapping at the top level")
    return data


def _strip_lines(value):
    if isinstance(value, dict):
        return {k: _strip_lines(v) for k, v in value.items() if k not in ("__line__", "__key_lines__")}
    if isinstance(value, list):
        return [_strip_lines(v) for v in value]
    return value


def load_overrides(path: Path) -> dict[str, dict]:
    data = _load(path)
    unknown = set(data) - {"alerts", "__line__", "__key_lines__"}
    if unknown:
        raise RenderError(f"{path}:{data['__line__']}: unknown key(s) {sorted(unknown)}; expected 'alerts'")
    alerts = data.get("alerts") or {}
    if not isinstance(alerts, dict):
        raise RenderError(f"{path}:{data['__line__']}: 'alerts' must map alert names to overrides")
    out = {}
    for name, spec in alerts.items():
        if name in ("__line__", "__key_lines__"):
            continue
        line = alerts["__key_lines__"][name]
        if not isinstance(spec, dict):
            raise RenderError(f"{path}:{line}: alert {name}: expected a mapping with 'for' and/or 'replace'")
        bad = set(spec) - {"for", "replace", "__line__", "__key_lines__"}
        if bad:
            raise RenderError(f"{path}:{line}: alert {name}: unknown key(s) {sorted(bad)}; expected 'for', 'replace'")
        for edit in spec.get("replace") or []:
            if not (isinstance(edit, dict) and isinstance(edit.get("old"), str) and isinstance(edit.get("new"), str)):
                raise RenderError(f"{path}:{line}: alert {name}: every 'replace' item needs string 'old' and 'new'")
        out[name] = {**spec, "_source": f"{path}:{line}"}
    return out


def render(rule_files: list[Path], overrides: dict[str, dict], runbook_base_url: str | None) -> dict[Path, dict]:
    """Return {rule file: rendered rule document}; raise RenderError on any mismatch."""
    used: set[str] = set()
    rendered = {}
    for path in rule_files:
        doc = _load(path)
        for group in doc.get("groups") or []:
            for rule in group.get("rules") or []:
                name = rule.get("alert")
                if runbook_base_url and "annotations" in rule and "runbook_url" in rule["annotations"]:
                    url = rule["annotations"]["runbook_url"]
                    if not url.startswith(DEFAULT_RUNBOOK_BASE_URL):
                        raise RenderError(f"{path}:{rule['__line__']}: {name}: runbook_url {url!r} does not start with {DEFAULT_RUNBOOK_BASE_URL!r}")
                    rule["annotations"]["runbook_url"] = runbook_base_url + url[len(DEFAULT_RUNBOOK_BASE_URL):]
                if name not in overrides:
                    continue
                if name in used:
                    raise RenderError(f"{path}:{rule['__line__']}: alert {name} is defined twice; an override must name one rule")
                used.add(name)
                spec = overrides[name]
                if "for" in spec:
                    rule["for"] = str(spec["for"])
                for edit in spec.get("replace") or []:
                    count = rule["expr"].count(edit["old"])
                    if count != 1:
                        raise RenderError(
                            f"{spec['_source']}: alert {name}: {edit['old']!r} occurs {count} times "
                            f"in the expr at {path}:{rule['__line__']} (must be exactly once)")
                    rule["expr"] = rule["expr"].replace(edit["old"], edit["new"])
        rendered[path] = _strip_lines(doc)
    missing = set(overrides) - used
    if missing:
        srcs = ", ".join(f"{n} ({overrides[n]['_source']})" for n in sorted(missing))
        raise RenderError(f"overrides name alerts that no rule file defines: {srcs}")
    return rendered


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--overrides", type=Path, help="YAML mapping of test-only changes (default: none)")
    parser.add_argument("--out", type=Path, required=True, help="directory for the rendered rule files")
    parser.add_argument("--runbook-base-url", help=f"replaces {DEFAULT_RUNBOOK_BASE_URL}")
    parser.add_argument("rule_files", type=Path, nargs="+")
    args = parser.parse_args(argv)
    try:
        overrides = load_overrides(args.overrides) if args.overrides else {}
        rendered = render(args.rule_files, overrides, args.runbook_base_url)
    except RenderError as exc:
        print(f"render-test-rules: {exc}", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    names = [p.name for p in rendered]
    if len(set(names)) != len(names):
        print("render-test-rules: two rule files share a file name; output would collide", file=sys.stderr)
        return 1
    for path, doc in rendered.items():
        how = f"with overrides {args.overrides}" if args.overrides else "without overrides"
        header = f"# Generated by scripts/render-test-rules.py from {path} {how}; do not edit.\n"
        (args.out / path.name).write_text(header + yaml.safe_dump(doc, sort_keys=False, width=1000))
    return 0


if __name__ == "__main__":
    sys.exit(main())
