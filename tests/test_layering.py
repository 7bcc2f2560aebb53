"""Import layering of src/podsight and bench/, read with ``ast`` (nothing is imported).

Every import counts, at module level or inside a function: a function-local
import hides a cycle from Python's import machinery, not from this test.

* src/podsight: no module imports from a layer above its own (LAYERS), and
  every module has a layer;
* no import cycles among src modules, nor among bench modules (bench/*.py
  and bench/benchlib/*.py);
* product code imports neither the bench nor the tests.

The checks take the tree as a parameter; the ``test_checker_*`` cases run
them on small synthetic trees so the failure paths stay tested too.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

# Lowest first: data flows kernel → reader → identity → exporters → agent → cli, so imports only point down.
LAYERS: list[tuple[str, ...]] = [
    ("podsight", "podsight.config", "podsight.heartbeat"),  # 0: "podsight" is the bare package (__init__) only
    ("podsight.kernel",),                    # 1
    ("podsight.security",),                  # 2: rule language and event model, pure
    ("podsight.reader",),                    # 3
    ("podsight.identity",),                  # 4
    ("podsight.exporters",),                 # 5
    ("podsight.agent", "podsight.runtime"),  # 6
    ("podsight.cli", "podsight.__main__"),   # 7
]
ROOT_PACKAGE = "podsight"
# Top-level names product code must never import.
NOT_FROM_PRODUCT = ("tests", "benchlib", "bench")

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Module:
    name: str
    path: Path
    shown: str  # the path as messages print it

    @property
    def is_package(self) -> bool:
        return self.path.name == "__init__.py"


@dataclass(frozen=True)
class Import:
    target: str  # absolute dotted name, resolved against the tree
    shown: str
    line: int


def src_modules(src: Path) -> dict[str, Module]:
    """Every .py under ``src`` (the directory holding the top-level packages), by dotted name."""
    out = {}
    for path in sorted(src.rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        name = ".".join(parts)
        out[name] = Module(name, path, str(path.relative_to(src.parent)))
    return out


def bench_modules(bench: Path) -> dict[str, Module]:
    """bench/*.py as top-level modules (run.py puts bench/ on sys.path) and bench/benchlib/*.py as benchlib.*."""
    out = {}
    for path in sorted(bench.glob("*.py")):
        out[path.stem] = Module(path.stem, path, str(path.relative_to(bench.parent)))
    for path in sorted((bench / "benchlib").glob("*.py")):
        name = "benchlib" if path.stem == "__init__" else f"benchlib.{path.stem}"
        out[name] = Module(name, path, str(path.relative_to(bench.parent)))
    return out


def _known(name: str, modules: dict[str, Module]) -> str:
    """``name``, or the longest dotted prefix of it that is a module of the tree (``a.b.attr`` → ``a.b``)."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in modules:
            return ".".join(parts[:i])
    return name


def imports_of(mod: Module, modules: dict[str, Module]) -> list[Import]:
    """Every import in ``mod`` (any depth), relative ones resolved.

    ``from pkg import name`` imports ``pkg.name`` when that is a module of the
    tree, else ``pkg``.
    """
    tree = ast.parse(mod.path.read_text(), filename=str(mod.path))
    package = mod.name if mod.is_package else mod.name.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [Import(_known(a.name, modules), mod.shown, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".") if package else []
                if node.level > len(parts):  # level 1 is the package itself, 2 its parent, ...
                    raise ValueError(f"{mod.shown}:{node.lineno}: relative import beyond the top-level package")
                base = ".".join(parts[: len(parts) - node.level + 1])
                pkg = f"{base}.{node.module}" if node.module else base
            else:
                pkg = node.module or ""
            for a in node.names:
                sub = f"{pkg}.{a.name}"
                target = sub if a.name != "*" and sub in modules else _known(pkg, modules)
                out.append(Import(target, mod.shown, node.lineno))
    return out


def import_graph(modules: dict[str, Module]) -> dict[str, list[Import]]:
    return {name: imports_of(mod, modules) for name, mod in modules.items()}


def layer_of(name: str, layers=LAYERS) -> int | None:
    """The first layer with a prefix equal to ``name`` or a package above it.

    The bare root package matches only itself (else it would hold everything).
    """
    for i, prefixes in enumerate(layers):
        for p in prefixes:
            if name == p or (p != ROOT_PACKAGE and name.startswith(p + ".")):
                return i
    return None


def _layer_name(i: int, layers) -> str:
    return f"layer {i} ({', '.join(layers[i])})"


def layering_violations(graph: dict[str, list[Import]], layers=LAYERS, root=ROOT_PACKAGE) -> list[str]:
    out = []
    for name, imports in sorted(graph.items()):
        mine = layer_of(name, layers)
        if mine is None:
            out.append(f"{name} is in no layer: add it to LAYERS in tests/test_layering.py")
            continue
        for imp in imports:
            if imp.target != root and not imp.target.startswith(root + "."):
                continue
            theirs = layer_of(imp.target, layers)
            if theirs is None:
                out.append(f"{imp.shown}:{imp.line}: {name} imports {imp.target}, which is in no layer")
            elif theirs > mine:
                out.append(f"{imp.shown}:{imp.line}: {name} in {_layer_name(mine, layers)} imports "
                           f"{imp.target} in {_layer_name(theirs, layers)}, a layer above")
    return out


def cycles(graph: dict[str, list[Import]]) -> list[list[str]]:
    """One cycle per strongly connected component of the tree's modules, as ``[a, b, ..., a]``."""
    edges = {m: sorted({i.target for i in imps if i.target in graph and i.target != m})
             for m, imps in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    comps: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan; the trees are small enough for recursion
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(comp)

    for v in sorted(edges):
        if v not in index:
            visit(v)

    out = []
    for comp in comps:
        members, start = set(comp), min(comp)
        # Shortest way back to start inside the component: a concrete cycle to read.
        prev: dict[str, str] = {}
        frontier, seen, end = [start], {start}, None
        while frontier and end is None:
            nxt = []
            for v in frontier:
                for w in edges[v]:
                    if w == start:
                        end = v
                        break
                    if w in members and w not in seen:
                        seen.add(w)
                        prev[w] = v
                        nxt.append(w)
                if end is not None:
                    break
            frontier = nxt
        path = [end]
        while path[-1] != start:
            path.append(prev[path[-1]])
        out.append(path[::-1] + [start])
    return sorted(out)


def _cycle_message(graph: dict[str, list[Import]], cycle: list[str]) -> str:
    hops = []
    for a, b in zip(cycle, cycle[1:]):
        where = next(i for i in graph[a] if i.target == b)
        hops.append(f"    {a} -> {b}  ({where.shown}:{where.line})")
    return "import cycle " + " -> ".join(cycle) + "\n" + "\n".join(hops)


def forbidden_imports(graph: dict[str, list[Import]], names=NOT_FROM_PRODUCT) -> list[str]:
    out = []
    for name, imports in sorted(graph.items()):
        for imp in imports:
            top = imp.target.split(".")[0]
            if top in names:
                out.append(f"{imp.shown}:{imp.line}: {name} imports {imp.target} (product code must not import {top})")
    return out


# --- the real trees ---

@pytest.fixture(scope="module")
def src_graph():
    return import_graph(src_modules(REPO / "src"))


@pytest.fixture(scope="module")
def bench_graph():
    return import_graph(bench_modules(REPO / "bench"))


def test_src_imports_only_its_own_or_lower_layers(src_graph):
    assert "podsight" in src_graph and len(src_graph) > 20  # the scan found the package
    bad = layering_violations(src_graph)
    assert not bad, "layering violations:\n" + "\n".join(bad)


def test_src_has_no_import_cycles(src_graph):
    found = cycles(src_graph)
    assert not found, "\n".join(_cycle_message(src_graph, c) for c in found)


def test_bench_has_no_import_cycles(bench_graph):
    assert "benchlib.ab" in bench_graph and "run" in bench_graph
    found = cycles(bench_graph)
    assert not found, "\n".join(_cycle_message(bench_graph, c) for c in found)


def test_product_imports_neither_bench_nor_tests(src_graph):
    bad = forbidden_imports(src_graph)
    assert not bad, "\n".join(bad)


# --- the checker itself, on synthetic trees ---

def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


def test_checker_prefix_rule_takes_packages_and_modules_alike():
    assert layer_of("podsight") == 0
    assert layer_of("podsight.config") == 0
    assert layer_of("podsight.kernel") == 1                     # a package's __init__
    assert layer_of("podsight.kernel.families.tcp") == 1        # a module deep inside it
    assert layer_of("podsight.agent") == 6                      # agent.py today ...
    assert layer_of("podsight.agent.loop") == 6                 # ... or a package tomorrow
    assert layer_of("podsight.__main__") == 7
    assert layer_of("podsight.kernelx") is None                 # a prefix, not a package above
    assert layer_of("podsight.newthing") is None                # the bare package is no catch-all
    assert layer_of("podsightx.kernel") is None


def test_checker_reports_an_upward_import_with_file_line_and_layers(tmp_path):
    src = _write(tmp_path / "src", {
        "podsight/__init__.py": '__version__ = "0"\n',
        "podsight/config.py": "",
        "podsight/kernel/__init__.py": "",
        "podsight/kernel/loader.py": "import os\n\n\ndef f():\n    from ..reader import counters\n",
        "podsight/reader/__init__.py": "",
        "podsight/reader/counters.py": "from ..kernel import loader\nfrom .. import __version__\n",
        "podsight/cli.py": "from . import config\nfrom .reader.counters import x\n",
    })
    graph = import_graph(src_modules(src))
    bad = layering_violations(graph)
    assert bad == ["src/podsight/kernel/loader.py:5: podsight.kernel.loader in layer 1 (podsight.kernel) "
                   "imports podsight.reader.counters in layer 3 (podsight.reader), a layer above"]


def test_checker_wants_every_module_in_a_layer(tmp_path):
    src = _write(tmp_path / "src", {"podsight/__init__.py": "", "podsight/extra.py": "import podsight.cli\n"})
    bad = layering_violations(import_graph(src_modules(src)))
    assert any("podsight.extra is in no layer" in b for b in bad)


def test_checker_resolves_relative_and_from_imports(tmp_path):
    src = _write(tmp_path / "src", {
        "podsight/__init__.py": "",
        "podsight/kernel/__init__.py": "from . import loader\nfrom .loader import BpfObject\n",
        "podsight/kernel/loader.py": "",
        "podsight/kernel/fam/__init__.py": "",
        "podsight/kernel/fam/tcp.py": "from ...kernel import fam\nfrom .. import loader\nfrom ... import __version__\n"
                                      "import podsight.kernel.loader\nfrom podsight.kernel import *\n",
    })
    graph = import_graph(src_modules(src))
    assert [i.target for i in graph["podsight.kernel"]] == ["podsight.kernel.loader"] * 2
    assert [i.target for i in graph["podsight.kernel.fam.tcp"]] == [
        "podsight.kernel.fam", "podsight.kernel.loader", "podsight", "podsight.kernel.loader", "podsight.kernel"]


def test_checker_finds_a_cycle_through_a_function_local_import(tmp_path):
    # The circle bench/benchlib had: ab -(in a function)-> kernel_cost -> churn -> ab.
    bench = _write(tmp_path / "bench", {
        "run.py": "from benchlib import churn, kernel_cost\n",
        "benchlib/__init__.py": "",
        "benchlib/env.py": "",
        "benchlib/ab.py": "from . import env\n\n\ndef _floor():\n    from .kernel_cost import floor_programs\n",
        "benchlib/churn.py": "from . import env\nfrom .ab import alternate\n",
        "benchlib/kernel_cost.py": "from . import churn, env\n",
    })
    graph = import_graph(bench_modules(bench))
    found = cycles(graph)
    assert found == [["benchlib.ab", "benchlib.kernel_cost", "benchlib.churn", "benchlib.ab"]]
    msg = _cycle_message(graph, found[0])
    assert "benchlib.ab -> benchlib.kernel_cost  (bench/benchlib/ab.py:5)" in msg


def test_checker_finds_a_cycle_among_src_modules(tmp_path):
    src = _write(tmp_path / "src", {
        "podsight/__init__.py": "",
        "podsight/reader/__init__.py": "",
        "podsight/reader/a.py": "from .b import x\n",
        "podsight/reader/b.py": "from podsight.reader import c\n",
        "podsight/reader/c.py": "import podsight.reader.a\n",
        "podsight/reader/d.py": "from . import a\n",  # into the cycle, not on it
    })
    assert cycles(import_graph(src_modules(src))) == [
        ["podsight.reader.a", "podsight.reader.b", "podsight.reader.c", "podsight.reader.a"]]


def test_checker_catches_product_code_importing_bench_or_tests(tmp_path):
    src = _write(tmp_path / "src", {
        "podsight/__init__.py": "",
        "podsight/agent.py": "def f():\n    from tests.support import pods\n",
        "podsight/cli.py": "import benchlib.stats\nimport benchmark_tools\n",
    })
    bad = forbidden_imports(import_graph(src_modules(src)))
    assert bad == [
        "src/podsight/agent.py:2: podsight.agent imports tests.support (product code must not import tests)",
        "src/podsight/cli.py:1: podsight.cli imports benchlib.stats (product code must not import benchlib)",
    ]
