"""The layering of the packages (benchmark/__init__.py, docs/design.md "Layout"), read from
the sources with `ast`, so that every import counts, the lazy ones inside functions too.

- methods and datasets never import benchmark; methods/parts imports no method module;
- inside benchmark, each part imports only the parts below it: errors <- train <-
  {launch, report, speed} <- cli; launch, report and speed never import each other;
- and, whatever the allowed table says, the parts' import graph has no cycle.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest
from helpers import ROOT

PACKAGES = ("benchmark", "methods", "datasets")
# benchmark part -> the benchmark parts it may import
ALLOWED = {
    "errors": set(),
    "catalog": set(),
    "train": {"errors"},
    "launch": {"train", "errors"},
    "report": {"train", "errors"},
    "speed": {"train", "errors"},
    "cli": {"train", "launch", "report", "speed", "errors", "catalog"},
    "__main__": {"cli"},
    "__init__": set(),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """The modules `path` imports (absolute names; relative imports resolved)."""
    tree = ast.parse(path.read_text())
    package = (
        module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else module_name(path)
    )
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}  # `from pkg import mod`
    return {name for name in found if name.split(".")[0] in PACKAGES}


def sources() -> dict[str, set[str]]:
    return {
        module_name(path): imports_of(path)
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
    }


def part(module: str) -> str:
    """benchmark.train.engine -> train; benchmark.cli -> cli; benchmark -> __init__."""
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 1 else "__init__"


def test_methods_and_datasets_never_import_benchmark():
    bad = [
        f"{mod} imports {name}"
        for mod, names in sources().items()
        if mod.split(".")[0] in ("methods", "datasets")
        for name in names
        if name.split(".")[0] == "benchmark"
    ]
    assert bad == []


def test_the_shared_parts_of_methods_import_no_method():
    modules = set(sources())
    bad = [
        f"{mod} imports {name}"
        for mod, names in sources().items()
        if mod.startswith("methods.parts")
        for name in names
        if name in modules and name.startswith("methods.") and not name.startswith("methods.parts")
    ]
    assert bad == []


def benchmark_edges() -> dict[str, set[str]]:
    """part -> the parts it imports (only names that are modules or packages of the tree)."""
    modules = set(sources())
    edges: dict[str, set[str]] = defaultdict(set)
    for mod, names in sources().items():
        if mod.split(".")[0] != "benchmark":
            continue
        for name in names:
            inside = name.split(".")[0] == "benchmark" and name in modules
            if inside and name != "benchmark" and part(name) != part(mod):
                edges[part(mod)].add(part(name))
    return edges


def test_every_benchmark_module_belongs_to_a_known_part():
    assert {part(m) for m in sources() if m.split(".")[0] == "benchmark"} <= set(ALLOWED)


def test_benchmark_parts_import_only_downward():
    bad = [
        f"benchmark.{src} imports benchmark.{dst}"
        for src, dsts in benchmark_edges().items()
        for dst in dsts
        if dst not in ALLOWED[src]
    ]
    assert bad == []


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_cycle_between_benchmark_parts():
    assert find_cycle(benchmark_edges()) is None


@pytest.mark.parametrize(
    "edges, cycle",
    [
        ({"a": {"b"}, "b": {"c"}}, None),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
    ],
)
def test_the_cycle_finder_finds_cycles(edges, cycle):
    assert find_cycle(edges) == cycle


def test_the_import_walker_sees_lazy_and_from_package_imports(tmp_path, monkeypatch):
    """The walker counts an import inside a function and `from benchmark import runstore`
    (a module imported through its package), so neither hides an upward import."""
    source = tmp_path / "x.py"
    source.write_text(
        "def f():\n    from benchmark.report import frames\nfrom benchmark.train import runstore\n"
    )
    monkeypatch.setattr("test_layering.ROOT", tmp_path)
    assert {"benchmark.report.frames", "benchmark.train.runstore"} <= imports_of(source)
