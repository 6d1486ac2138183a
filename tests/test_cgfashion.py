"""cgfashion (datasets/cgfashion.py): built from the Debian package's real Fashion-MNIST
files; color is a label shortcut in train only; deterministic; bad input is one line."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from helpers import run_cli, tree

from datasets import PreparedDataset
from datasets.cgfashion import CLASS_COLORS, FILES, PACKAGE_DIR, prepare, read_idx
from datasets.registry import DatasetError

SMALL = {"train_size": 1500, "val_size": 500, "test_size": 500}


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cgf") / "cgfashion"
    prepare(out, None, SMALL)
    return out


def nearest_color_accuracy(ds, split: str) -> float:
    idx = ds.splits[split]
    color = np.asarray(ds.arrays["color"][idx])
    rgb = color[:, 0].astype(np.float64).reshape(len(idx), -1, 3)
    # the tint c: each pixel is intensity x c, so c is proportional to the RGB sums; the
    # brightest channel of c is recovered from the gray view's intensities
    gray = np.asarray(ds.arrays["gray"][idx])[:, 0, :, :, 0].astype(np.float64)
    c = rgb.sum(axis=1) / np.maximum(gray.reshape(len(idx), -1).sum(axis=1), 1e-9)[:, None]
    guess = ((c[:, None, :] - CLASS_COLORS[None]) ** 2).sum(-1).argmin(axis=1)
    return float((guess == ds.labels[idx]).mean())


def test_color_is_a_shortcut_in_train_only(small):
    ds = PreparedDataset.open(small)
    assert nearest_color_accuracy(ds, "train") > 0.9
    for split in ("val", "test"):
        assert nearest_color_accuracy(ds, split) < 0.2  # chance is 0.1


def test_gray_view_is_the_package_pixels(small):
    ds = PreparedDataset.open(small)
    ids = ds.ids
    train = read_idx(PACKAGE_DIR / f"{FILES['train_images']}.gz")
    test = read_idx(PACKAGE_DIR / f"{FILES['test_images']}.gz")
    labels = {
        "train": read_idx(PACKAGE_DIR / f"{FILES['train_labels']}.gz"),
        "t10k": read_idx(PACKAGE_DIR / f"{FILES['test_labels']}.gz"),
    }
    gray = np.asarray(ds.arrays["gray"])
    for row in range(0, len(ids), 97):
        origin, number = ids[row][:-5], int(ids[row][-5:])
        source = train if origin == "train" else test
        for channel in range(3):
            assert np.array_equal(gray[row, 0, :, :, channel], source[number])
        assert ds.labels[row] == labels[origin][number]
    # the splits: sizes as asked, stratified, disjoint source images
    sizes = {s: len(ds.splits[s]) for s in ("train", "val", "test")}
    assert sizes == {"train": 1500, "val": 500, "test": 500}
    assert np.bincount(ds.labels[ds.splits["val"]], minlength=10).tolist() == [50] * 10
    train_ids = {ids[i] for i in ds.splits["train"]}
    assert not train_ids & {ids[i] for i in ds.splits["val"]}
    assert all(ids[i].startswith("t10k") for i in ds.splits["test"])


def test_preparing_twice_gives_identical_arrays(small, tmp_path):
    again = tmp_path / "cgfashion"
    prepare(again, None, SMALL)
    for name in ("gray.npy", "color.npy", "labels.npy", "split_train.npy", "split_test.npy"):
        assert np.array_equal(np.load(small / name), np.load(again / name)), name
    assert (small / "ids.txt").read_text() == (again / "ids.txt").read_text()


def write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)


def test_raw_directory_of_idx_files(tmp_path):
    """`--raw DIR` reads the standard idx files, plain or gzip-compressed."""
    rng = np.random.default_rng(0)
    raw = tmp_path / "raw"
    raw.mkdir()
    for split, n in (("train", 200), ("test", 50)):
        images = rng.integers(0, 256, (n, 28, 28))
        labels = np.arange(n) % 10
        write_idx(raw / FILES[f"{split}_images"], images, compress=split == "train")
        write_idx(raw / FILES[f"{split}_labels"], labels, compress=False)
    root = tmp_path / "data"
    opts = ["--set", "train_size=100", "val_size=50", "test_size=20"]
    done = run_cli("prepare", "cgfashion", "--raw", str(raw), "--data-root", str(root), *opts)
    assert done.returncode == 0, done.stderr
    ds = PreparedDataset.open(root / "cgfashion")
    assert len(ds.splits["train"]) == 100 and len(ds.splits["test"]) == 20
    meta = json.loads((root / "cgfashion" / "meta.json").read_text())
    assert meta["raw"] == str(raw)


@pytest.mark.parametrize("damage", ["empty", "truncated", "not_idx"])
def test_bad_raw_is_one_line(tmp_path, damage):
    raw = tmp_path / "raw"
    raw.mkdir()
    if damage != "empty":
        for key, stem in FILES.items():
            shape = (10, 28, 28) if "images" in key else (10,)
            write_idx(raw / stem, np.zeros(shape), compress=False)
        target = raw / FILES["train_images"]
        if damage == "truncated":
            target.write_bytes(target.read_bytes()[:-100])
        else:
            target.write_bytes(b"P5 28 28 255\n" + bytes(784))
    root = tmp_path / "data"
    done = run_cli("prepare", "cgfashion", "--raw", str(raw), "--data-root", str(root))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "cgfashion" in lines[0], done.stderr
    assert [f for f in tree(root) if not f.endswith(".lock")] == []  # the prepare lock only


def test_missing_package_names_the_fix(tmp_path, monkeypatch):
    import datasets.cgfashion as cgfashion

    monkeypatch.setattr(cgfashion, "PACKAGE_DIR", tmp_path / "nowhere")
    with pytest.raises(DatasetError, match="make install.*dataset-fashion-mnist"):
        cgfashion.prepare(tmp_path / "out", None, SMALL)
    assert not (tmp_path / "out").exists()
