"""What `list` prints, read from the sources without importing them (so without torch).

The registries fill when `methods` and `datasets` are imported, which imports torch and
takes seconds before `list` can print a line. The names and descriptions are all written
as literals in the registering decorators, so this module reads them with `ast`: the
modules named in `_METHOD_MODULES` / `_DATASET_MODULES`, their `@register_method("name")`
classes with their docstrings, their `@register_dataset("name", description=...,
generated=...)` functions, and the `@register_encoder` / `@register_fusion` names of
methods/. A decorator this reader cannot evaluate raises `NotLiteral`, and the CLI then
asks the real registries; tests/test_cli.py checks that both give the same catalog.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class NotLiteral(Exception):
    """A registration this reader cannot evaluate without running the module."""


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    description: str
    generated: bool


@dataclass(frozen=True)
class Catalog:
    methods: dict[str, str]  # name -> the class docstring's first paragraph, on one line
    datasets: dict[str, DatasetEntry]
    encoders: list[str]
    fusions: list[str]


def first_paragraph(doc: str | None) -> str:
    """The first paragraph of a docstring on one line, without RST double backticks."""
    paragraph = (doc or "").strip().split("\n\n")[0]
    return " ".join(paragraph.split()).replace("``", "")


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), str(path))


def _module_list(package: Path, variable: str) -> list[str]:
    for node in _tree(package / "__init__.py").body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == variable for t in node.targets
        ):
            return list(ast.literal_eval(node.value))
    raise NotLiteral(f"{package.name}/__init__.py has no literal {variable}")


def _registrations(tree: ast.Module, decorator: str) -> list[tuple[ast.AST, ast.Call]]:
    """(decorated node, decorator call) for every `@decorator(...)` in `tree`."""
    found = []
    for node in ast.walk(tree):
        for dec in getattr(node, "decorator_list", []):
            if isinstance(dec, ast.Call) and getattr(dec.func, "id", None) == decorator:
                found.append((node, dec))
    return found


def _literal(node: ast.AST, where: str) -> object:
    try:
        return ast.literal_eval(node)
    except ValueError as exc:
        raise NotLiteral(f"{where}: not a literal") from exc


def read_catalog(root: Path = ROOT) -> Catalog:
    """The catalog of the checkout at `root`; NotLiteral where the sources need running."""
    methods: dict[str, str] = {}
    encoders: list[str] = []
    fusions: list[str] = []
    method_files = [root / "methods" / "parts" / f"{p}.py" for p in ("encoders", "fusion")]
    method_files += [
        root / "methods" / f"{m}.py" for m in _module_list(root / "methods", "_METHOD_MODULES")
    ]
    for path in method_files:
        tree = _tree(path)
        for node, call in _registrations(tree, "register_method"):
            name = _literal(call.args[0], f"{path.name}: register_method")
            methods[str(name)] = first_paragraph(ast.get_docstring(node, clean=True))
        encoders += [
            str(_literal(c.args[0], path.name)) for _, c in _registrations(tree, "register_encoder")
        ]
        fusions += [
            str(_literal(c.args[0], path.name)) for _, c in _registrations(tree, "register_fusion")
        ]
    datasets: dict[str, DatasetEntry] = {}
    for module in _module_list(root / "datasets", "_DATASET_MODULES"):
        path = root / "datasets" / f"{module}.py"
        for _, call in _registrations(_tree(path), "register_dataset"):
            name = str(_literal(call.args[0], f"{path.name}: register_dataset"))
            keywords = {k.arg: k.value for k in call.keywords}
            if "description" not in keywords:
                raise NotLiteral(f"{path.name}: register_dataset without description=")
            generated = keywords.get("generated")
            datasets[name] = DatasetEntry(
                name,
                str(_literal(keywords["description"], f"{path.name}: description")),
                bool(_literal(generated, path.name)) if generated is not None else False,
            )
    return Catalog(
        dict(sorted(methods.items())),
        dict(sorted(datasets.items())),
        sorted(encoders),
        sorted(fusions),
    )


def registry_catalog() -> Catalog:
    """The same catalog from the real registries (imports methods, datasets and torch)."""
    from datasets import get_dataset_spec, list_datasets
    from methods import get_method_class, list_encoders, list_fusions, list_methods

    specs = [get_dataset_spec(n) for n in list_datasets()]
    return Catalog(
        {n: first_paragraph(get_method_class(n).__doc__) for n in sorted(list_methods())},
        {
            s.name: DatasetEntry(s.name, s.description, bool(s.generated))
            for s in sorted(specs, key=lambda s: s.name)
        },
        sorted(list_encoders()),
        sorted(list_fusions()),
    )


def catalog() -> Catalog:
    """The catalog read from the sources, or from the registries where it cannot be."""
    try:
        return read_catalog()
    except NotLiteral:
        return registry_catalog()
