"""Fingerprints of what shapes a run's numbers besides its config: the data and the code.

`data_fingerprint` identifies a prepared directory by what it holds, not by its name:
meta.json's content (modalities, shapes, dtypes, recipe and options, split sizes, class
names; minus the fields that change when the same data is prepared again: the creation
time, the registered name prepare adds, and the plan hash that names the release's
paths), every file's size, the whole of the small index files (labels, ids, splits) and
the first and last MiB of each modality array. It reads a few MiB whatever the dataset's
size, so a 6 GB dataset costs what a small one does. The run id hashes it (config.py).

`code_fingerprint` identifies the sources that shape a run's numbers (the engine,
config, data plumbing and metrics of benchmark/, the shared parts of methods/ and the
run's own method with its base classes, and the loader,
augmentation and format reader of datasets/; what converters and generators write is
covered by the data fingerprint). Each file is parsed and
unparsed without its docstrings and comments, so a comment or docstring edit keeps the
fingerprint; any change of code changes it. It is recorded in config.json and
summary.json; a finished run with another fingerprint was "done with older code".
"""

from __future__ import annotations

import ast
import hashlib
import json
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
# meta.json fields that do not describe the data (they change on every identical prepare).
VOLATILE_META = frozenset({"created", "registered", "plan"})
INDEX_FILES = ("labels.npy", "ids.txt", "split_train.npy", "split_val.npy", "split_test.npy")
EDGE_BYTES = 1 << 20
# The sources whose changes can change any run's numbers (relative to the checkout); a
# run's own method adds the modules its class is built from (`method_files`).
CODE_GLOBS = (
    "methods/parts/base.py",
    "methods/parts/registry.py",
    "methods/parts/encoders.py",
    "methods/parts/fusion.py",
    "methods/parts/optim.py",
    "benchmark/train/engine.py",
    "benchmark/train/config.py",
    "benchmark/train/data.py",
    "benchmark/train/metrics.py",
    "benchmark/train/probes.py",
    "benchmark/train/contribution.py",
    "datasets/loader.py",
    "datasets/augment.py",
    "datasets/prepared.py",
)


def _sha(parts: Iterable[bytes]) -> str:
    h = hashlib.sha1()
    for part in parts:
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()[:16]


def _edges(path: Path) -> bytes:
    """The first and last EDGE_BYTES of a file (all of it when it is smaller)."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        if size <= 2 * EDGE_BYTES:
            return fh.read()
        head = fh.read(EDGE_BYTES)
        fh.seek(size - EDGE_BYTES)
        return head + fh.read()


def data_fingerprint(root: Path, meta: dict[str, Any]) -> str:
    """A short hash of a validated prepared directory's content (see the module docstring)."""
    stable = {k: v for k, v in meta.items() if k not in VOLATILE_META}
    parts = [json.dumps(stable, sort_keys=True, default=str).encode()]
    for name in INDEX_FILES:
        parts.append((root / name).read_bytes())
    for modality in sorted(meta["modalities"]):
        path = root / f"{modality}.npy"
        parts.append(f"{modality} {path.stat().st_size}".encode())
        parts.append(_edges(path))
    return _sha(parts)


def _normalised_source(path: Path) -> bytes:
    """The file's code without comments, docstrings or formatting (ast round trip)."""
    text = path.read_text()
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return text.encode()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            node.body = body[1:] or [ast.Pass()]
    return ast.unparse(tree).encode()


def method_files(method: str, root: Path = ROOT) -> set[Path]:
    """The modules of methods/ that the registered `method`'s class is built from (its own
    file and those of its base classes, e.g. joint.py for AGM); empty for an unknown name."""
    from methods import get_method_class
    from methods.parts.registry import MethodConfigError

    try:
        cls = get_method_class(method)
    except (MethodConfigError, KeyError, ValueError):
        return set()
    modules = {k.__module__ for k in cls.__mro__}
    return {
        root / "methods" / f"{m.split('.', 1)[1]}.py"
        for m in modules
        if m.startswith("methods.") and m.count(".") == 1
    }


def code_files(method: str | None = None, root: Path = ROOT) -> list[Path]:
    """The files `code_fingerprint` reads, in a fixed order: the shared sources, and the
    modules of `method` (all of methods/ when no method is named)."""
    files = {p for pattern in CODE_GLOBS for p in root.glob(pattern) if p.is_file()}
    if method is None:
        files |= {p for p in root.glob("methods/*.py") if p.name != "__init__.py"}
    else:
        files |= method_files(method, root)
    return sorted(files)


@cache
def code_fingerprint(method: str | None = None, root: Path = ROOT) -> str:
    """A short hash of the sources that shape a run of `method` (see the module docstring):
    adding or changing another method's file leaves it unchanged."""
    parts = []
    for path in code_files(method, root):
        parts.append(str(path.relative_to(root)).encode())
        parts.append(_normalised_source(path))
    return _sha(parts)
