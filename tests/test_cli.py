"""The command line as a user types it: make bench, list, bad input (exit 2, nothing written)."""

import json
import os
import subprocess

import pytest
from helpers import ROOT, run_cli, tree
from test_prepared import write_by_hand

DESIGN_SUMMARY_KEYS = {"method", "dataset", "seed", "run_id", "status", "best_epoch", "epochs"}


def test_make_bench_synth_writes_summary(tmp_path, synth, data_root):
    results = tmp_path / "results"
    env = {**os.environ, "BENCH_RESULTS": str(results), "BENCH_DATA_ROOT": str(data_root)}
    proc = subprocess.run(
        ["make", "bench", "METHOD=joint", "DATASET=synth", "EPOCHS=2"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (path,) = results.glob("runs/synth/joint/*/summary.json")
    summary = json.loads(path.read_text())
    assert set(summary) >= DESIGN_SUMMARY_KEYS
    assert summary["status"] == "done" and summary["epochs"] == 2
    for head in ("fused", "audio", "visual"):
        for metric in ("acc", "f1", "map"):
            assert 0.0 <= summary[f"test/{head}/{metric}"] <= 1.0
    rows = [json.loads(line) for line in (path.parent / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]
    assert "val/audio/acc" in rows[0] and "test/visual/f1" in rows[1]
    assert "fused" in proc.stdout and "audio" in proc.stdout


def test_list_shows_the_registries():
    proc = run_cli("list")
    assert proc.returncode == 0
    for name in ("joint", "ogm_ge", "pmr", "agm", "mie", "synth", "avdigits", "resnet18", "gated"):
        assert name in proc.stdout


def _bad_dataset_dir(tmp_path):
    root = write_by_hand(tmp_path / "broken")
    (root / "camera.npy").unlink()
    return str(root)


def _wrong_shape_dir(tmp_path):
    import numpy as np

    root = write_by_hand(tmp_path / "wrong")
    np.save(root / "sound.npy", np.zeros((48, 12, 20), np.float16))
    return str(root)


BAD = {
    "unknown method": (["--method", "mei", "--dataset", "synth"], "unknown method 'mei'"),
    "unknown dataset": (["--method", "joint", "--dataset", "cifar"], "unknown dataset 'cifar'"),
    "unknown encoder": (
        ["--method", "joint", "--dataset", "synth", "--set", "encoder=vit"],
        "unknown encoder",
    ),
    "unknown key": (
        ["--method", "mie", "--dataset", "synth", "--set", "temperature=2"],
        "unknown key 'temperature'",
    ),
    "not prepared": (["--method", "joint", "--dataset", "cremad"], "make prepare DATASET=cremad"),
    "missing file": (["--method", "joint", "--dataset", _bad_dataset_dir], "camera.npy is missing"),
    "wrong shape": (["--method", "joint", "--dataset", _wrong_shape_dir], "sound.npy has shape"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_exits_2_with_one_line_and_writes_nothing(case, tmp_path, synth, data_root):
    args, message = BAD[case]
    args = [a(tmp_path) if callable(a) else a for a in args]
    results = tmp_path / "results"
    proc = run_cli("run", *args, "--results", str(results), "--data-root", str(data_root))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert message in lines[0]
    assert tree(results) == []


def test_missing_espeak_ng_is_one_line_with_the_fix(tmp_path):
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    results = tmp_path / "results"
    proc = run_cli(
        "run",
        "--method",
        "joint",
        "--dataset",
        "avdigits",
        "--results",
        str(results),
        "--data-root",
        str(tmp_path / "data"),
        env={"PATH": str(empty_bin)},
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "espeak-ng" in lines[0] and "install" in lines[0]
    assert tree(results) == []
    assert not (tmp_path / "data" / "avdigits" / "meta.json").exists()
