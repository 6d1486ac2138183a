import json

import numpy as np
import pytest
from helpers import run_cli, tree

from benchmark.train.config import RUN_DEFAULTS
from datasets import DatasetError, ModalitySpec, PreparedDataset, write_prepared
from datasets.loader import Loader, frame_positions, make_augment


def write_by_hand(root, n=48, classes=3, audio_shape=(1, 12, 20), frames=(3, 10, 14, 3)):
    """A prepared directory written with plain numpy + json, as an outside tool would."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    labels = np.arange(n, dtype=np.int64) % classes
    np.save(root / "labels.npy", labels)
    audio = rng.normal(size=(n, *audio_shape)) + labels[:, None, None, None]
    np.save(root / "sound.npy", audio.astype(np.float16))
    np.save(root / "camera.npy", rng.integers(0, 256, size=(n, *frames), dtype=np.uint8))
    (root / "ids.txt").write_text("".join(f"clip{i}\n" for i in range(n)))
    rows = np.arange(n, dtype=np.int64)
    splits = {"train": rows[: n // 2], "val": rows[n // 2 : 3 * n // 4], "test": rows[3 * n // 4 :]}
    for split, idx in splits.items():
        np.save(root / f"split_{split}.npy", idx)
    meta = {
        "name": "handmade",
        "version": 1,
        "classes": [f"c{i}" for i in range(classes)],
        "modalities": {
            "sound": {
                "kind": "audio",
                "shape": list(audio_shape),
                "dtype": "float16",
                "preprocessing": {},
            },
            "camera": {
                "kind": "visual",
                "shape": list(frames),
                "dtype": "uint8",
                "preprocessing": {},
            },
        },
        "splits": {k: len(v) for k, v in splits.items()},
        "source": "by hand",
        "created": "2026-11-27",
    }
    (root / "meta.json").write_text(json.dumps(meta))
    return root


def test_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    audio = rng.normal(size=(10, 1, 4, 6)).astype(np.float16)
    visual = rng.integers(0, 255, size=(10, 2, 5, 5, 3), dtype=np.uint8)
    labels = np.array([0, 1] * 5)
    splits = {"train": np.arange(6), "val": np.arange(6, 8), "test": np.arange(8, 10)}
    ds = write_prepared(
        tmp_path / "rt",
        "rt",
        ["a", "b"],
        {
            "audio": (ModalitySpec("audio", (1, 4, 6), "float16", {"n_fft": 4}), audio),
            "visual": (ModalitySpec("visual", (2, 5, 5, 3), "uint8"), visual),
        },
        labels,
        [f"s{i}" for i in range(10)],
        splits,
        "test",
    )
    again = PreparedDataset.open(tmp_path / "rt")
    np.testing.assert_array_equal(again.arrays["audio"], audio)
    np.testing.assert_array_equal(again.arrays["visual"], visual)
    np.testing.assert_array_equal(again.labels, labels)
    assert again.ids == [f"s{i}" for i in range(10)]
    assert again.modalities["audio"].preprocessing == {"n_fft": 4}
    assert isinstance(again.arrays["audio"], np.memmap)
    assert ds.meta["splits"] == {"train": 6, "val": 2, "test": 2}
    assert {k: v.tolist() for k, v in again.splits.items()} == {
        k: v.tolist() for k, v in splits.items()
    }


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda r: (r / "camera.npy").unlink(), "camera.npy is missing"),
        (
            lambda r: np.save(r / "sound.npy", np.zeros((48, 1, 12, 21), np.float16)),
            "sound.npy has shape",
        ),
        (
            lambda r: np.save(r / "sound.npy", np.zeros((48, 1, 12, 20), np.float64)),
            "dtype float64",
        ),
        (
            lambda r: np.save(r / "split_val.npy", np.array([0, 99])),
            "split_val.npy has row indices",
        ),
        (lambda r: (r / "ids.txt").write_text("a\n"), "ids.txt has 1 lines"),
        (lambda r: (r / "meta.json").unlink(), "meta.json is missing"),
    ],
)
def test_validation_names_the_problem(tmp_path, damage, message):
    root = write_by_hand(tmp_path / "d")
    damage(root)
    with pytest.raises(DatasetError, match=message):
        PreparedDataset.open(root)


def test_loader_batches_and_frame_sampling(tmp_path):
    ds = PreparedDataset.open(write_by_hand(tmp_path / "d"))
    settings = {**RUN_DEFAULTS, "crop_size": 8}
    loader = Loader(
        ds,
        ds.splits["train"],
        10,
        train=True,
        augment=make_augment(settings),
        seed=0,
        frames=2,
        drop_last=True,
    )
    batches = list(loader.epoch(0))
    assert len(batches) == len(loader) == 2
    b = batches[0]
    assert b["sound"].shape == (10, 1, 12, 20) and b["sound"].dtype.is_floating_point
    assert b["camera"].shape == (10, 2, 3, 8, 8)
    assert b["label"].tolist() == ds.labels[b["index"].numpy()].tolist()
    # same (seed, epoch) -> same batches; another epoch -> another order
    again = next(iter(loader.epoch(0)))
    assert (again["camera"] == b["camera"]).all()
    assert next(iter(loader.epoch(1)))["index"].tolist() != b["index"].tolist()


def test_frame_positions_segments():
    rng = np.random.default_rng(0)
    assert frame_positions(3, 1, False, rng, 2).tolist() == [[1], [1]]
    assert frame_positions(6, 3, False, rng, 1).tolist() == [[0, 2, 4]]
    pos = frame_positions(6, 3, True, rng, 500)
    for s in range(3):  # each random frame stays inside its segment
        assert set(np.unique(pos[:, s])) == {2 * s, 2 * s + 1}


def test_hand_written_directory_trains(tmp_path):
    root = write_by_hand(tmp_path / "handmade")
    results = tmp_path / "results"
    proc = run_cli(
        "run",
        "--method",
        "joint",
        "--dataset",
        str(root),
        "--epochs",
        "1",
        "--set",
        "encoder=small",
        "crop_size=8",
        "batch_size=8",
        "--results",
        str(results),
        "--data-root",
        str(tmp_path / "data"),
    )
    assert proc.returncode == 0, proc.stderr
    files = tree(results / "runs" / "handmade" / "joint")
    assert any(f.endswith("summary.json") for f in files)
    summary = json.loads(
        next((results / "runs" / "handmade" / "joint").glob("*/summary.json")).read_text()
    )
    assert {"test/fused/acc", "test/sound/acc", "test/camera/acc"} <= set(summary)
