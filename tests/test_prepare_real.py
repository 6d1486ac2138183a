"""`prepare` for the real datasets, on fake releases in their real layouts (real WAV,
FLV/MP4 and JPEG files; tests/fake_releases.py), then one training epoch on each."""

from __future__ import annotations

import json
from pathlib import Path

import librosa
import numpy as np
import pytest
from fake_releases import (
    corrupt,
    cremad_ids,
    make_ave,
    make_cremad,
    make_ks,
    make_vggsound,
)
from helpers import run_cli

from benchmark.cli import main
from datasets import PreparedDataset
from datasets.cremad import CLASSES
from datasets.ks import aliases
from datasets.listfiles import read_rows, shipped_lists

SHIPPED_TEST = [r[0] for r in read_rows(shipped_lists("cremad") / "test.csv")]
SHIPPED_TRAIN = {r[0] for r in read_rows(shipped_lists("cremad") / "train.csv")}
TRAIN_FAST = ["--set", "encoder=small", "crop_size=32", "batch_size=8"]


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("real")


@pytest.fixture(scope="module")
def cremad_release(work: Path) -> dict:
    """12 train clips (2 per emotion, ids not in the shipped test list) and 6 test clips
    (one per emotion, ids from the shipped test.csv); 3 clips as JPEG folders; one train
    video corrupt, one test WAV missing."""
    test = [next(c for c in SHIPPED_TEST if c.split("_")[2] == e) for e in CLASSES]
    train = cremad_ids(2, set(SHIPPED_TEST))
    root = make_cremad(work / "CREMA-D", train, test, frame_folders=3)
    corrupt(root / "VideoFlash" / f"{train[-1]}.flv")
    (root / "AudioWAV" / f"{test[0]}.wav").unlink()
    return {"root": root, "train": train, "test": test, "corrupt": train[-1], "missing": test[0]}


@pytest.fixture(scope="module")
def cremad(work: Path, cremad_release: dict) -> dict:
    """Prepared through the CLI with two worker processes and the release's own lists."""
    r = cremad_release
    proc = run_cli(
        "prepare", "cremad", "--raw", str(r["root"]), "--data-root", str(work / "data"),
        "--workers", "2", "--set", f"lists={r['root'] / 'lists'}",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return {"ds": PreparedDataset.open(work / "data" / "cremad"), "proc": proc, **r}


def test_cremad_prepared_format(cremad: dict) -> None:
    ds = cremad["ds"]
    n = 12 + 6 - 2
    assert ds.arrays["audio"].shape == (n, 1, 257, 188) and ds.arrays["audio"].dtype == np.float16
    assert (
        ds.arrays["visual"].shape == (n, 3, 256, 341, 3) and ds.arrays["visual"].dtype == np.uint8
    )
    assert ds.classes == ["NEU", "HAP", "SAD", "FEA", "DIS", "ANG"]
    ids = ds.ids
    assert [CLASSES[y] for y in ds.labels] == [i.split("_")[2] for i in ids]
    test_ids = {ids[i] for i in ds.splits["test"]}
    assert test_ids == set(cremad["test"]) - {cremad["missing"]}
    train_val = {ids[i] for i in np.concatenate([ds.splits["train"], ds.splits["val"]])}
    assert train_val == set(cremad["train"]) - {cremad["corrupt"]}
    # val: carved per class from train (each class keeps a train row), recorded
    assert set(ds.labels[ds.splits["val"]]) <= set(ds.labels[ds.splits["train"]])
    assert ds.meta["val_split"]["from"] == "train" and ds.meta["val_split"]["seed"] == 0
    assert ds.meta["modalities"]["audio"]["preprocessing"]["hop"] == 353
    assert ds.arrays["visual"].reshape(n, -1).max(axis=1).min() > 0  # every row has frames


def test_cremad_skips_are_listed_and_summarised(cremad: dict) -> None:
    skipped = {s["id"]: s["reason"] for s in cremad["ds"].meta["skipped"]}
    assert set(skipped) == {cremad["corrupt"], cremad["missing"]}
    assert "failed to decode" in skipped[cremad["corrupt"]]
    assert "missing" in skipped[cremad["missing"]]
    summary = [ln for ln in cremad["proc"].stderr.splitlines() if "skipped" in ln]
    assert len(summary) == 1
    assert "skipped 2 (1 missing from the release, 1 failed to decode)" in summary[0]


def test_cremad_spectrogram_matches_librosa(cremad: dict) -> None:
    """The reference recipe computed independently with librosa (load at 22,050 Hz, tile
    to 3 s, clip, STFT 512/353, log(|S| + 1e-7)). Tolerance: 0.01 (log units) on every
    bin with |S| > 1e-3, i.e. the clip's content (the float16 storage step is 0.004 at
    |x| ~ 4); the bins above the 16 kHz release's 8 kHz Nyquist hold resampler round-off
    near log(1e-7), where only the mean difference is bounded (< 0.1)."""
    ds = cremad["ds"]
    row = int(ds.splits["test"][0])
    y, _ = librosa.load(cremad["root"] / "AudioWAV" / f"{ds.ids[row]}.wav", sr=22050)
    y = np.clip(np.tile(y, 3)[: 22050 * 3], -1.0, 1.0)
    ref = np.log(np.abs(librosa.stft(y, n_fft=512, hop_length=353, pad_mode="reflect")) + 1e-7)
    got = ds.arrays["audio"][row, 0].astype(np.float32)
    assert got.shape == ref.shape == (257, 188)
    content = ref > np.log(1e-3)
    assert content.mean() > 0.5
    assert np.abs(got - ref)[content].max() < 0.01
    assert np.abs(got - ref).mean() < 0.1


def test_cremad_shipped_lists_and_pmr_recipe(
    work: Path, cremad_release: dict, capsys: pytest.CaptureFixture
) -> None:
    """Without lists=: the shipped test.csv (744 rows, 6 here) and train.csv (6,698 rows;
    the fake release's clips that it lists, the others are not used); the PMR recipe
    gives 257 x 1004 z-scored spectrograms."""
    r = cremad_release
    out = work / "cremad_pmr"
    args = ["prepare", "cremad", "--raw", str(r["root"]), "--out", str(out), "--recipe", "pmr"]
    assert main([*args, "--workers", "1"]) == 0
    ds = PreparedDataset.open(out)
    assert ds.arrays["audio"].shape[1:] == (1, 257, 1004)
    audio = ds.arrays["audio"][:].astype(np.float32)
    assert np.allclose(audio.mean(axis=(1, 2, 3)), 0, atol=0.01)
    listed = [c for c in r["train"] if c in SHIPPED_TRAIN]
    train_val = {ds.ids[i] for i in np.concatenate([ds.splits["train"], ds.splits["val"]])}
    assert ds.meta["splits"]["test"] == 5 and train_val == set(listed) - {r["corrupt"]}
    skipped = (744 - 5) + (6698 - len(listed)) + (r["corrupt"] in listed)
    assert len(ds.meta["skipped"]) == skipped
    assert f"skipped {skipped}" in capsys.readouterr().err


def test_shipped_lists() -> None:
    """The OGM-GE lists shipped in datasets/splits/: counts, unique ids, disjoint splits."""
    assert len(SHIPPED_TEST) == len(set(SHIPPED_TEST)) == 744 and len(SHIPPED_TRAIN) == 6698
    assert not SHIPPED_TRAIN & set(SHIPPED_TEST)
    ks = {s: read_rows(shipped_lists("ks") / f"my_{s}.txt") for s in ("train", "test")}
    counts = {s: len({r[0] for r in rows}) for s, rows in ks.items()}
    assert counts == {"train": 14799, "test": 2597}
    short = {s: [min(aliases(r[0]), key=len) for r in rows] for s, rows in ks.items()}
    videos = {s: {i.rsplit("_", 1)[0] for i in ids} for s, ids in short.items()}
    assert not videos["train"] & videos["test"]
    assert aliases("--4-0ihtnBU_000058_000068") == ["--4-0ihtnBU_000058_000068", "--4-0ihtnBU_58"]
    assert aliases("-3Mwkq-7TV4_2") == ["-3Mwkq-7TV4_2", "-3Mwkq-7TV4_000002_000012"]


def test_interrupted_prepare_resumes(
    work: Path, cremad: dict, capsys: pytest.CaptureFixture
) -> None:
    """limit=5 stops after five clips (no meta.json); the same command then decodes only
    the missing rows, and the result equals the one-shot prepare."""
    r, out = cremad, work / "cremad_resume"
    base = ["prepare", "cremad", "--raw", str(r["root"]), "--out", str(out), "--workers", "1"]
    lists = f"lists={r['root'] / 'lists'}"
    assert main([*base, "--set", lists, "limit=5"]) == 2
    assert "stopped after 5 clips" in capsys.readouterr().err
    assert not (out / "meta.json").exists()
    assert np.load(out / ".work" / "done.npy").sum() == 5
    assert main([*base, "--set", lists]) == 0
    err = capsys.readouterr().err
    assert "decoded 11 clips this run (5 done by an earlier run)" in err
    ds = PreparedDataset.open(out)
    assert ds.ids == r["ds"].ids and not (out / ".work").exists()
    for m in ("audio", "visual"):
        assert np.array_equal(ds.arrays[m], r["ds"].arrays[m])
    assert main([*base, "--set", lists]) == 0  # a finished dataset is not redone
    assert "nothing to do" in capsys.readouterr().err


def test_wrong_raw_path_is_one_line_exit_2(work: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["prepare", "cremad", "--raw", str(work / "nope"), "--out", str(work / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "raw directory" in err[0] and "--raw" in err[0]
    assert main(["prepare", "cremad", "--raw", str(work), "--out", str(work / "x")]) == 2
    assert "AudioWAV" in capsys.readouterr().err


MAKERS = {"ks": make_ks, "ave": make_ave, "vggsound": make_vggsound}


@pytest.fixture(scope="module")
def prepared(work: Path, cremad: dict) -> dict[str, PreparedDataset]:
    out = {"cremad": cremad["ds"]}
    for name, make in MAKERS.items():
        raw = make(work / f"raw_{name}")
        assert main(["prepare", name, "--raw", str(raw), "--data-root", str(work / "data"),
                     "--workers", "1"]) == 0  # fmt: skip
        out[name] = PreparedDataset.open(work / "data" / name)
    return out


EXPECTED = {  # name: (N, classes, audio shape, splits)
    "cremad": (16, 6, (1, 257, 188), None),
    "ks": (18, 3, (1, 128, 1024), {"test": 6}),
    "ave": (16, 4, (1, 257, 1004), {"train": 8, "val": 4, "test": 4}),
    "vggsound": (18, 3, (1, 129, 626), {"test": 6}),
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_prepare_and_train_one_epoch(
    name: str, prepared: dict[str, PreparedDataset], work: Path
) -> None:
    ds = prepared[name]
    n, classes, audio_shape, splits = EXPECTED[name]
    assert len(ds.labels) == n and ds.num_classes == classes
    assert ds.arrays["audio"].shape[1:] == audio_shape
    assert ds.arrays["visual"].shape[1:] == (3, 256, 341, 3)
    for split, count in (splits or {}).items():
        assert ds.meta["splits"][split] == count
    assert ds.meta["splits"]["val"] > 0
    assert len(ds.meta["skipped"]) == (2 if name == "cremad" else 0)
    if name == "vggsound":
        assert "playing violin, fiddle" in ds.classes
    if name == "ks":
        assert ds.classes == ["0", "1", "2"]
    results = work / "results"
    args = ["run", "--method", "joint", "--dataset", name, "--data-root", str(work / "data")]
    assert main([*args, "--results", str(results), "--epochs", "1", *TRAIN_FAST]) == 0
    summaries = list((results / "runs" / name / "joint").glob("*/summary.json"))
    assert len(summaries) == 1
    assert json.loads(summaries[0].read_text())["status"] == "done"
