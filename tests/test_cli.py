"""The command line as a user types it: make bench, list, bad input (exit 2, nothing written)."""

import json
import os
import subprocess
import sys

import pytest
import torch
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
    assert lines[0].startswith("avdigits: first use, generating")  # the progress note
    assert len(lines) == 2 and "espeak-ng" in lines[1] and "install" in lines[1]
    assert tree(results) == []
    assert not (tmp_path / "data" / "avdigits" / "meta.json").exists()


NO_GPU = ["--device", "cuda:64"]  # no machine here has 65 GPUs
MORE_BAD = {
    "cuda without that gpu": ([*NO_GPU], "--device cuda:64: this machine has"),
    "cuda set without that gpu": (["--set", "device=cuda:64"], "this machine has"),
    "profile inline": (["--profile", "local"], "--profile local applies to --launcher slurm"),
}


@pytest.mark.parametrize("case", list(MORE_BAD))
def test_bad_run_options_exit_2_and_write_nothing(case, tmp_path, synth, data_root):
    extra, message = MORE_BAD[case]
    results = tmp_path / "results"
    proc = run_cli(
        "run", "--method", "joint", "--dataset", "synth", *extra,
        "--results", str(results), "--data-root", str(data_root),
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert tree(results) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_device_cuda_without_a_gpu_is_one_line(tmp_path, synth, data_root):
    results = tmp_path / "results"
    proc = run_cli(
        "run", "--method", "joint", "--dataset", "synth", "--device", "cuda",
        "--results", str(results), "--data-root", str(data_root),
    )  # fmt: skip
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "no CUDA GPU visible" in lines[0] and "--device cpu" in lines[0]
    assert tree(results) == []


def test_prepare_generated_dataset_with_raw_is_one_line(tmp_path):
    proc = run_cli(
        "prepare", "avdigits", "--raw", str(tmp_path), "--data-root", str(tmp_path / "d")
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "generated" in lines[0] and "drop --raw" in lines[0]
    assert tree(tmp_path / "d") == []


def test_make_prepare_without_raw_names_the_make_variable(tmp_path):
    """`make prepare DATASET=cremad` (the install step taken as done) names RAW=."""
    proc = subprocess.run(
        ["make", "-o", "install", f"PY={sys.executable}", "prepare", "DATASET=cremad"],
        cwd=ROOT,
        env={**os.environ, "BENCH_DATA_ROOT": str(tmp_path / "d")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    ours = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(ours) == 1 and "RAW=/path/to/release" in ours[0], proc.stderr
    assert "make prepare DATASET=cremad RAW=" in ours[0] and "--raw" not in ours[0]
    assert tree(tmp_path / "d") == []


LFS_POINTER = (
    "version https://git-lfs.github.com/spec/v1\n"
    "oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\n"
    "size 61240\n"
)


def test_release_of_git_lfs_pointers_is_one_line(tmp_path):
    """A CREMA-D clone without `git lfs pull`: its media are pointer files."""
    from fake_releases import cremad_ids

    raw = tmp_path / "CREMA-D"
    ids = cremad_ids(1, set())
    for cid in ids:
        for folder, ext in (("AudioWAV", ".wav"), ("VideoFlash", ".flv")):
            (raw / folder).mkdir(parents=True, exist_ok=True)
            (raw / folder / f"{cid}{ext}").write_text(LFS_POINTER)
    (raw / "lists").mkdir()
    (raw / "lists" / "train.csv").write_text("".join(f"{c},{c.split('_')[2]}\n" for c in ids[:4]))
    (raw / "lists" / "test.csv").write_text("".join(f"{c},{c.split('_')[2]}\n" for c in ids[4:]))
    out = tmp_path / "data" / "cremad"
    proc = run_cli(
        "prepare", "cremad", "--raw", str(raw), "--out", str(out),
        "--set", f"lists={raw / 'lists'}",
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "git-lfs pointer" in lines[0] and "git lfs pull" in lines[0]
    assert not (out / "meta.json").exists() and tree(out) == []


def test_speed_on_a_missing_gpu_is_one_line(synth, data_root):
    proc = run_cli("speed", "--device", "cuda:64", "--data-root", str(data_root))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--device cuda:64: this machine has" in lines[0]


def cli_output_without_torch(*args: str) -> str:
    """stdout of `main(args)` run in a fresh interpreter, which fails if torch got imported
    (--help's SystemExit(0) counts as success)."""
    code = (
        "import sys\n"
        "from benchmark.cli import main\n"
        "try:\n"
        f"    status = main({list(args)!r})\n"
        "except SystemExit as exc:\n"
        "    status = exc.code\n"
        "assert status == 0, status\n"
        f"assert 'torch' not in sys.modules, 'torch imported by {' '.join(args)}'\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_help_prints_without_importing_torch():
    """`python -m benchmark --help` answers at once: the CLI imports torch (via methods,
    datasets and the error types) only in the commands that need it."""
    assert cli_output_without_torch("--help").startswith("usage: python -m benchmark")


def test_list_reads_the_registries_from_the_sources_without_torch(tmp_path):
    """`list` reads names and descriptions with ast (benchmark.catalog): the same catalog
    as the imported registries, printed without importing torch."""
    from benchmark.catalog import read_catalog, registry_catalog
    from benchmark.cli import listing_data_root
    from benchmark.train.data import data_root

    assert read_catalog() == registry_catalog()
    assert listing_data_root(None) == data_root(None)
    assert listing_data_root(str(tmp_path)) == data_root(str(tmp_path))
    out = cli_output_without_torch("list")
    assert "  mmpareto " in out and "fusion heads:" in out


def test_the_catalog_reader_falls_back_on_registrations_it_cannot_read(tmp_path):
    """A non-literal registration (a name built at import time) is refused, not guessed."""
    import shutil

    from benchmark.catalog import NotLiteral, read_catalog

    for package in ("methods", "datasets"):
        shutil.copytree(ROOT / package, tmp_path / package)
    joint = tmp_path / "methods" / "joint.py"
    source = joint.read_text().replace('@register_method("joint")', "@register_method(NAME)")
    joint.write_text(source)
    with pytest.raises(NotLiteral):
        read_catalog(tmp_path)


def test_run_does_not_generate_a_dataset_when_every_run_is_done(tmp_path):
    """Issue 13: with the built-in not generated here, `run` reports runs the store already
    has (matched through the data fingerprints they recorded) and says it did not generate
    the data; one run missing, and it generates the data and trains as usual."""
    data, results = tmp_path / "data", tmp_path / "results"
    common = ["--dataset", "synth", "--results", str(results), "--set", "epochs=1", "workers=0"]
    first = run_cli("run", "--method", "joint", "--seeds", "0", "--data-root", str(data), *common)
    assert first.returncode == 0, first.stderr
    assert (data / "synth" / "meta.json").is_file()

    elsewhere = tmp_path / "fresh-data"  # as on a fresh clone: results, but no data
    again = run_cli(
        "run", "--method", "joint", "--seeds", "0", "--data-root", str(elsewhere), *common
    )
    assert again.returncode == 0, again.stderr
    assert not elsewhere.exists()  # nothing generated
    assert "every requested run is done; not generating synth" in again.stderr
    row = [line for line in first.stdout.splitlines() if line.startswith("joint ")]
    assert row and row == [line for line in again.stdout.splitlines() if line.startswith("joint ")]

    more = run_cli(
        "run", "--method", "joint", "--seeds", "0", "1", "--data-root", str(elsewhere), *common
    )
    assert more.returncode == 0, more.stderr
    assert (elsewhere / "synth" / "meta.json").is_file()  # seed 1 was not done: generated
    assert "not generating" not in more.stderr
    assert len(list(results.glob("runs/synth/joint/*/summary.json"))) == 2


def test_a_method_that_fails_to_build_leaves_no_run_directory(tmp_path, synth, data_root):
    """InfoReg's gamma names modalities; one that the dataset lacks fails when the method is
    built, after the run's directory and lock were made: one line with the fix, exit 2,
    and the run directory is gone with the lock."""
    results = tmp_path / "results"
    proc = run_cli(
        "run", "--method", "inforeg", "--dataset", "synth", "--set", 'gamma={"depth": 1}',
        "--results", str(results), "--data-root", str(data_root),
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "gamma names depth" in lines[0], lines
    assert """--set 'gamma={"audio": G1, "visual": G2}'""" in lines[0]
    assert list(results.glob("runs/*/*/*")) == []
