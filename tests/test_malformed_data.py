"""Property: malformed prepared data never ends in a traceback (issue 14).

Hypothesis mutates a valid prepared directory (written as an outside tool would, see
test_prepared.write_by_hand): meta.json keys removed, extra modalities, values of the
wrong type, negative or huge sizes, wrong dtypes, shapes that disagree with the arrays,
split indices out of range or shared between splits, truncated files. Every case must
end as `run` ends on bad input: one line, exit status 2, nothing under results/.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import tree
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_prepared import write_by_hand

from benchmark.cli import main

N = 48  # rows of the valid directory
SPLIT_SIZES = {"train": 24, "val": 12, "test": 12}
ARRAYS = {"labels.npy": np.int64, "split_train.npy": np.int64, "sound.npy": np.float16}

Mutation = Callable[[Path], Any]


@pytest.fixture(scope="module")
def valid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_by_hand(tmp_path_factory.mktemp("valid") / "handmade", n=N)


def _edit_meta(root: Path, change: Callable[[dict], None]) -> None:
    meta = json.loads((root / "meta.json").read_text())
    change(meta)
    (root / "meta.json").write_text(json.dumps(meta))


def _set(path: tuple, value: Any) -> Mutation:
    def apply(root: Path) -> None:
        def change(meta: dict) -> None:
            node = meta
            for key in path[:-1]:
                node = node[key]
            node[path[-1]] = value

        _edit_meta(root, change)

    apply.__name__ = f"set {path}={value!r}"
    return apply


def _delete(path: tuple) -> Mutation:
    def apply(root: Path) -> None:
        def change(meta: dict) -> None:
            node = meta
            for key in path[:-1]:
                node = node[key]
            del node[path[-1]]

        _edit_meta(root, change)

    apply.__name__ = f"delete {path}"
    return apply


def _save(name: str, array: np.ndarray) -> Mutation:
    def apply(root: Path) -> None:
        np.save(root / name, array)

    apply.__name__ = f"save {name} {array.dtype} {list(array.shape)}"
    return apply


def _truncate(name: str, fraction: float) -> Mutation:
    def apply(root: Path) -> None:
        data = (root / name).read_bytes()
        (root / name).write_bytes(data[: int(len(data) * fraction)])

    apply.__name__ = f"truncate {name} to {fraction:.2f}"
    return apply


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=6,
)
NOT_STR = JSON_VALUES.filter(lambda v: not isinstance(v, str))
NOT_LIST = JSON_VALUES.filter(lambda v: not isinstance(v, list))
NOT_DICT = JSON_VALUES.filter(lambda v: not isinstance(v, dict))
BAD_COUNT = st.integers(max_value=-1) | st.integers(min_value=10**6, max_value=10**18)
MODALITIES = ("sound", "camera")

missing_keys = st.sampled_from(
    [
        ("name",), ("classes",), ("modalities",), ("splits",), ("splits", "train"),
        ("splits", "test"), ("modalities", "sound", "kind"), ("modalities", "camera", "shape"),
        ("modalities", "sound", "dtype"),
    ]
).map(_delete)  # fmt: skip

extra_modality = (
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=8)
    .filter(lambda m: m not in MODALITIES)
    .map(
        lambda m: _set(
            ("modalities", m), {"kind": "audio", "shape": [1, 12, 20], "dtype": "float16"}
        )
    )
)

wrong_types = st.one_of(
    NOT_STR.map(lambda v: _set(("name",), v)),
    st.sampled_from(["", ".", "..", "a/b", "../escape"]).map(lambda v: _set(("name",), v)),
    NOT_LIST.map(lambda v: _set(("classes",), v)),
    st.lists(NOT_STR, min_size=1, max_size=3).map(lambda v: _set(("classes",), v)),
    NOT_DICT.map(lambda v: _set(("modalities",), v)),
    NOT_DICT.map(lambda v: _set(("splits",), v)),
    NOT_DICT.map(lambda v: _set(("modalities", "sound"), v)),
    st.tuples(st.sampled_from(MODALITIES), st.sampled_from(["kind", "dtype"]), NOT_STR).map(
        lambda t: _set(("modalities", t[0], t[1]), t[2])
    ),
    st.tuples(st.sampled_from(MODALITIES), NOT_LIST).map(
        lambda t: _set(("modalities", t[0], "shape"), t[1])
    ),
    st.tuples(st.sampled_from(MODALITIES), st.text(max_size=8))
    .filter(lambda t: t[1] not in ("audio", "visual"))
    .map(lambda t: _set(("modalities", t[0], "kind"), t[1])),
    st.sampled_from(["float32", "uint8", "int64", "float64", "complex64", "banana"]).map(
        lambda d: _set(("modalities", "sound", "dtype"), d)
    ),
    st.sampled_from(["float16", "float32", "int64", "bool"]).map(
        lambda d: _set(("modalities", "camera", "dtype"), d)
    ),
    st.tuples(st.sampled_from(("train", "val", "test")), NOT_STR)
    .filter(lambda t: not (isinstance(t[1], int) and t[1] == SPLIT_SIZES[t[0]]))
    .map(lambda t: _set(("splits", t[0]), t[1])),
)

bad_sizes = st.one_of(
    st.tuples(st.sampled_from(("train", "val", "test")), BAD_COUNT).map(
        lambda t: _set(("splits", t[0]), t[1])
    ),
    st.tuples(st.integers(0, 2), BAD_COUNT | st.just(0)).map(
        lambda t: _set(("modalities", "sound", "shape", t[0]), t[1])
    ),
    st.lists(st.integers(1, 30), min_size=0, max_size=5)
    .filter(lambda s: s != [1, 12, 20])
    .map(lambda s: _set(("modalities", "sound", "shape"), s)),
)

wrong_dtypes = st.one_of(
    st.sampled_from([np.int32, np.float64, np.uint8, np.bool_]).map(
        lambda d: _save("labels.npy", (np.arange(N) % 3).astype(d))
    ),
    st.sampled_from([np.int32, np.float32, np.uint64]).map(
        lambda d: _save("split_val.npy", np.arange(24, 36).astype(d))
    ),
    st.sampled_from([np.float32, np.float64, np.uint8, np.int16]).map(
        lambda d: _save("sound.npy", np.zeros((N, 1, 12, 20), d))
    ),
    st.sampled_from([np.int8, np.float16, np.uint16]).map(
        lambda d: _save("camera.npy", np.zeros((N, 3, 10, 14, 3), d))
    ),
)

disagreeing_shapes = st.one_of(
    st.integers(0, 2 * N)
    .filter(lambda n: n != N)
    .map(lambda n: _save("sound.npy", np.zeros((n, 1, 12, 20), np.float16))),
    st.lists(st.integers(1, 6), min_size=1, max_size=4).map(
        lambda s: _save("camera.npy", np.zeros((N, *s), np.uint8))
    ),
    st.integers(1, 2 * N)
    .filter(lambda n: n != N)
    .map(lambda n: _save("labels.npy", np.arange(n, dtype=np.int64) % 3)),
    st.just(_save("labels.npy", np.zeros((N, 2), np.int64))),
)


def _index_change(split: str, position: int, value: int) -> Mutation:
    def apply(root: Path) -> None:
        idx = np.load(root / f"split_{split}.npy")
        idx[position % len(idx)] = value
        np.save(root / f"split_{split}.npy", idx)

    apply.__name__ = f"split_{split}[{position}] = {value}"
    return apply


bad_indices = st.one_of(
    st.tuples(
        st.sampled_from(("train", "val", "test")),
        st.integers(0, 100),
        st.integers(N, 2**62) | st.integers(-(2**62), -1),
    ).map(lambda t: _index_change(*t)),
    # a row of another split (overlap) or a repeated row of the same split
    st.tuples(st.sampled_from(("val", "test")), st.integers(0, 100), st.integers(0, 23)).map(
        lambda t: _index_change(*t)
    ),
    st.tuples(st.integers(0, 100), st.integers(24, 35)).map(
        lambda t: _index_change("test", t[0], t[1])
    ),
    st.integers(1, 23).map(lambda p: _index_change("train", p, 0)),  # row 0 twice
)

broken_files = st.one_of(
    st.tuples(
        st.sampled_from(["labels.npy", "split_test.npy", "sound.npy", "camera.npy"]),
        st.floats(0.0, 0.99),
    ).map(lambda t: _truncate(*t)),
    st.floats(0.0, 0.99).map(lambda f: _truncate("meta.json", f)),
    st.binary(max_size=40).map(lambda b: lambda root: (root / "meta.json").write_bytes(b)),
    st.sampled_from(["labels.npy", "ids.txt", "split_val.npy", "camera.npy"]).map(
        lambda name: lambda root: (root / name).unlink()
    ),
    st.integers(0, 2 * N)
    .filter(lambda n: n != N)
    .map(lambda n: lambda root: (root / "ids.txt").write_text("x\n" * n)),
)

MUTATIONS = st.one_of(
    missing_keys,
    extra_modality,
    wrong_types,
    bad_sizes,
    wrong_dtypes,
    disagreeing_shapes,
    bad_indices,
    broken_files,
)


@settings(
    max_examples=400,
    deadline=None,
    database=None,  # nothing written into the checkout
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(mutations=st.lists(MUTATIONS, min_size=1, max_size=3))
def test_malformed_prepared_data_is_one_line_exit_2(valid: Path, mutations: list) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        shutil.copytree(valid, root)
        for mutate in mutations:
            with contextlib.suppress(OSError, KeyError, TypeError, IndexError, ValueError):
                mutate(root)  # a later mutation may find what an earlier one removed
        results = Path(tmp) / "results"
        err, out = io.StringIO(), io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            code = main(
                ["run", "--method", "joint", "--dataset", str(root), "--epochs", "1",
                 "--results", str(results), "--data-root", str(Path(tmp) / "root")]
            )  # fmt: skip
        lines = err.getvalue().strip().splitlines()
        assert code == 2, (mutations, err.getvalue(), out.getvalue())
        assert len(lines) == 1 and lines[0].startswith("error: "), lines
        assert tree(results) == []
