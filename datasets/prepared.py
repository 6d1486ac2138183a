"""The prepared on-disk format (docs/design.md, "Prepared dataset format"): writer, reader, checks.

A prepared directory holds ``meta.json``, ``labels.npy``, ``ids.txt``,
``split_{train,val,test}.npy`` and one ``<modality>.npy`` per modality (opened
memory-mapped). ``meta.json`` is written last: a directory without it is unfinished.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from datasets import atomic
from datasets.registry import DatasetError

FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")
# Per-sample rank and dtypes the loader understands, per modality kind.
KIND_RANK = {"audio": 3, "visual": 4}
ALLOWED_DTYPES = {"audio": ("float16", "float32"), "visual": ("uint8",)}


@dataclass(frozen=True)
class ModalitySpec:
    kind: str  # "audio" | "visual"
    shape: tuple[int, ...]  # per-sample shape: audio [C, F, T], visual [K, H, W, 3]
    dtype: str  # "float16" | "uint8"
    preprocessing: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "preprocessing": self.preprocessing,
        }


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file (DiskFullError on a full disk)."""
    atomic.write_text(path, text)


def atomic_save_npy(path: Path, array: np.ndarray) -> None:
    """`np.save` to `path` through a temporary file (DiskFullError on a full disk)."""
    atomic.save_npy(path, array)


def open_array(path: Path, shape: tuple[int, ...], dtype: str) -> np.memmap:
    """A new memory-mapped .npy array whose disk space is reserved now (DiskFullError
    when it is not there, rather than a crash while it is filled)."""
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    try:
        atomic.reserve(path, path.stat().st_size)
    except atomic.DiskFullError:
        del arr
        raise
    return arr


def check_space(out_dir: Path, arrays: Mapping[str, tuple[tuple[int, ...], str]]) -> None:
    """DiskFullError before anything is written when the arrays `{name: (shape, dtype)}`
    cannot fit in `out_dir` (existing files of those names count as free: they are
    replaced)."""
    needed = 0
    for name, (shape, dtype) in arrays.items():
        path = out_dir / f"{name}.npy"
        size = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        needed += size - (path.stat().st_blocks * 512 if path.exists() else 0)
    if needed > atomic.free_bytes(out_dir):
        raise atomic.disk_full(out_dir, needed)


def check_spec(name: str, spec: ModalitySpec) -> None:
    if spec.kind not in KIND_RANK:
        raise DatasetError(
            f"modality {name!r} has kind {spec.kind!r}; kinds the loader reads: "
            f"{', '.join(KIND_RANK)}"
        )
    if len(spec.shape) != KIND_RANK[spec.kind]:
        want = "[C, F, T]" if spec.kind == "audio" else "[K, H, W, 3]"
        raise DatasetError(
            f"modality {name!r} ({spec.kind}) has per-sample shape {list(spec.shape)}; "
            f"expected {want}"
        )
    if spec.kind == "visual" and spec.shape[-1] != 3:
        raise DatasetError(
            f"visual modality {name!r} must be [K, H, W, 3] RGB, got {list(spec.shape)}"
        )
    if spec.dtype not in ALLOWED_DTYPES[spec.kind]:
        raise DatasetError(
            f"modality {name!r} ({spec.kind}) has dtype {spec.dtype}; expected "
            f"{' or '.join(ALLOWED_DTYPES[spec.kind])}"
        )


class PreparedWriter:
    """Fills a prepared directory row by row (memory-mapped), then `finish` writes the
    labels, ids, splits and, last, meta.json after validating everything."""

    def __init__(
        self,
        out_dir: Path | str,
        name: str,
        classes: Sequence[str],
        modalities: Mapping[str, ModalitySpec],
        num_samples: int,
        source: str,
        resume: bool = False,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.name, self.classes, self.source = name, list(classes), source
        self.modalities = dict(modalities)
        self.num_samples = num_samples
        self.arrays: dict[str, np.memmap] = {}
        new: dict[str, tuple[tuple[int, ...], str]] = {}
        for m, spec in self.modalities.items():
            check_spec(m, spec)
            path = self.out_dir / f"{m}.npy"
            shape = (num_samples, *spec.shape)
            if resume and path.exists():
                arr = np.load(path, mmap_mode="r+")
                if arr.shape == shape and arr.dtype == np.dtype(spec.dtype):
                    self.arrays[m] = arr
                    continue
            new[m] = (shape, spec.dtype)
        check_space(self.out_dir, new)  # before the previous dataset is touched
        (self.out_dir / "meta.json").unlink(missing_ok=True)
        for m, (shape, dtype) in new.items():
            self.arrays[m] = open_array(self.out_dir / f"{m}.npy", shape, dtype)

    def write(self, modality: str, rows: np.ndarray | slice | int, values: np.ndarray) -> None:
        self.arrays[modality][rows] = values

    def finish(
        self,
        labels: np.ndarray,
        ids: Sequence[str],
        splits: Mapping[str, np.ndarray],
        extra: Mapping[str, Any] | None = None,
    ) -> PreparedDataset:
        for arr in self.arrays.values():
            arr.flush()
        atomic_save_npy(self.out_dir / "labels.npy", np.asarray(labels, dtype=np.int64))
        atomic_write_text(self.out_dir / "ids.txt", "".join(f"{i}\n" for i in ids))
        for split in SPLITS:
            atomic_save_npy(
                self.out_dir / f"split_{split}.npy", np.asarray(splits[split], dtype=np.int64)
            )
        meta = {
            "name": self.name,
            "version": FORMAT_VERSION,
            "classes": self.classes,
            "modalities": {m: s.to_json() for m, s in self.modalities.items()},
            "splits": {s: int(len(splits[s])) for s in SPLITS},
            "source": self.source,
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            **dict(extra or {}),
        }
        self.arrays.clear()
        validate(self.out_dir, meta, check_values=True)
        atomic_write_text(self.out_dir / "meta.json", json.dumps(meta, indent=1) + "\n")
        return PreparedDataset.open(self.out_dir)


def write_prepared(
    out_dir: Path | str,
    name: str,
    classes: Sequence[str],
    arrays: Mapping[str, tuple[ModalitySpec, np.ndarray]],
    labels: np.ndarray,
    ids: Sequence[str],
    splits: Mapping[str, np.ndarray],
    source: str,
    extra: Mapping[str, Any] | None = None,
) -> PreparedDataset:
    """Write a whole in-memory dataset in the prepared format."""
    writer = PreparedWriter(
        out_dir, name, classes, {m: s for m, (s, _) in arrays.items()}, len(labels), source
    )
    for m, (_, values) in arrays.items():
        writer.write(m, slice(None), values)
    return writer.finish(labels, ids, splits, extra)


def _fail(root: Path, problem: str) -> DatasetError:
    return DatasetError(f"prepared dataset {root}: {problem}")


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _safe_name(value: Any) -> bool:
    """A non-empty string usable as one path component (a directory or file name)."""
    return (
        isinstance(value, str)
        and value.strip() == value
        and value not in ("", ".", "..")
        and not any(c in value for c in "/\\\0")
    )


def check_meta(root: Path, meta: Any) -> None:
    """meta.json's structure and types (docs/design.md, "Prepared dataset format"); raise
    DatasetError naming the first problem. Extra top-level keys are allowed."""
    if not isinstance(meta, dict):
        raise _fail(root, "meta.json must hold a JSON object; re-run prepare")
    for key in ("name", "classes", "modalities", "splits"):
        if key not in meta:
            raise _fail(root, f"meta.json has no {key!r} key; re-run prepare")
    if not _safe_name(meta["name"]):
        raise _fail(root, f"meta.json name must be a plain name (no '/'), got {meta['name']!r}")
    classes = meta["classes"]
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise _fail(root, "meta.json classes must be a non-empty list of class names")
    splits = meta["splits"]
    if not isinstance(splits, dict) or not all(_is_count(splits.get(s)) for s in SPLITS):
        raise _fail(root, f"meta.json splits must give a row count for each of {', '.join(SPLITS)}")
    modalities = meta["modalities"]
    if not isinstance(modalities, dict) or not modalities:
        raise _fail(root, "meta.json lists no modality")
    for m, info in modalities.items():
        if not _safe_name(m):
            raise _fail(root, f"meta.json modality name {m!r} is not a plain file name")
        if (
            not isinstance(info, dict)
            or not isinstance(info.get("kind"), str)
            or not isinstance(info.get("dtype"), str)
            or not isinstance(info.get("shape"), list)
        ):
            raise _fail(root, f"meta.json modality {m!r} needs kind, shape and dtype")
        if not all(_is_count(d) and d > 0 for d in info["shape"]):
            raise _fail(
                root, f"meta.json modality {m!r} shape must be positive integers: {info['shape']}"
            )
        if not isinstance(info.get("preprocessing", {}), dict):
            raise _fail(root, f"meta.json modality {m!r} preprocessing must be an object")
        try:
            check_spec(m, ModalitySpec(info["kind"], tuple(info["shape"]), info["dtype"]))
        except DatasetError as exc:
            raise _fail(root, str(exc)) from None


def _load(root: Path, name: str) -> np.ndarray:
    """A .npy file memory-mapped; DatasetError when it is not a readable array."""
    try:
        return np.load(root / name, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
        raise _fail(
            root, f"{name} is not a readable .npy array ({reason}); re-run prepare"
        ) from None


def validate(root: Path, meta: Mapping[str, Any], check_values: bool = False) -> None:
    """Check meta.json and the arrays against it; raise DatasetError naming the first
    problem (never another exception, whatever the files hold)."""
    check_meta(root, meta)
    for f in ["labels.npy", "ids.txt", *(f"split_{s}.npy" for s in SPLITS)]:
        if not (root / f).is_file():
            raise _fail(root, f"{f} is missing; re-run prepare or add the file")
    labels = _load(root, "labels.npy")
    if labels.ndim != 1 or labels.dtype != np.int64:
        raise _fail(root, f"labels.npy must be int64 [N], got {labels.dtype} {list(labels.shape)}")
    n = len(labels)
    num_classes = len(meta["classes"])
    if n and (labels.min() < 0 or labels.max() >= num_classes):
        raise _fail(root, f"labels.npy has labels outside 0..{num_classes - 1} (meta.json classes)")
    with open(root / "ids.txt", "rb") as fh:
        n_ids = sum(1 for _ in fh)
    if n_ids != n:
        raise _fail(root, f"ids.txt has {n_ids} lines, labels.npy has {n} rows")
    seen: dict[str, np.ndarray] = {}
    for split in SPLITS:
        idx = _load(root, f"split_{split}.npy")
        if idx.ndim != 1 or idx.dtype != np.int64:
            raise _fail(root, f"split_{split}.npy must be int64 [n], got {idx.dtype}")
        if len(idx) and (idx.min() < 0 or idx.max() >= n):
            raise _fail(root, f"split_{split}.npy has row indices outside 0..{n - 1}")
        if meta["splits"][split] != len(idx):
            raise _fail(
                root,
                f"meta.json says {meta['splits'][split]} {split} rows, "
                f"split_{split}.npy has {len(idx)}",
            )
        if not len(idx):
            raise _fail(root, f"split_{split}.npy is empty; every split needs rows")
        unique = np.unique(idx)
        if len(unique) != len(idx):
            raise _fail(root, f"split_{split}.npy lists some rows twice")
        for other, rows in seen.items():
            if np.intersect1d(rows, unique, assume_unique=True).size:
                raise _fail(root, f"split_{other}.npy and split_{split}.npy share rows")
        seen[split] = unique
    for m, info in meta["modalities"].items():
        spec = ModalitySpec(info["kind"], tuple(info["shape"]), info["dtype"])
        path = root / f"{m}.npy"
        if not path.is_file():
            raise _fail(root, f"{m}.npy is missing (meta.json lists modality {m!r})")
        arr = _load(root, f"{m}.npy")
        if arr.shape != (n, *spec.shape):
            raise _fail(
                root,
                f"{m}.npy has shape {list(arr.shape)}, meta.json and labels.npy say "
                f"{[n, *spec.shape]}; re-run prepare",
            )
        if arr.dtype != np.dtype(spec.dtype):
            raise _fail(root, f"{m}.npy has dtype {arr.dtype}, meta.json says {spec.dtype}")
        if check_values and arr.dtype.kind == "f":
            for start in range(0, n, 4096):
                if not np.isfinite(arr[start : start + 4096]).all():
                    raise _fail(root, f"{m}.npy has non-finite values near row {start}")


class PreparedDataset:
    """A validated prepared directory, arrays opened memory-mapped."""

    def __init__(self, root: Path, meta: dict[str, Any]) -> None:
        self.root = root
        self.meta = meta
        self.name: str = meta["name"]
        self.classes: list[str] = list(meta["classes"])
        self.modalities: dict[str, ModalitySpec] = {
            m: ModalitySpec(i["kind"], tuple(i["shape"]), i["dtype"], i.get("preprocessing", {}))
            for m, i in meta["modalities"].items()
        }
        self.labels = np.load(root / "labels.npy")
        self.arrays = {m: np.load(root / f"{m}.npy", mmap_mode="r") for m in self.modalities}
        self.splits = {s: np.load(root / f"split_{s}.npy") for s in SPLITS}

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def ids(self) -> list[str]:
        return (self.root / "ids.txt").read_text().splitlines()

    @classmethod
    def open(cls, root: Path | str) -> PreparedDataset:
        root = Path(root)
        if not root.is_dir():
            raise DatasetError(f"dataset directory {root} does not exist; run prepare first")
        meta_path = root / "meta.json"
        if not meta_path.is_file():
            raise _fail(root, "meta.json is missing (unfinished prepare?); re-run prepare")
        try:
            meta = json.loads(meta_path.read_text())
        except (ValueError, OSError) as exc:  # JSONDecodeError, UnicodeDecodeError, ...
            raise _fail(root, f"meta.json is not valid JSON ({exc})") from None
        validate(root, meta)
        return cls(root, meta)
