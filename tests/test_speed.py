"""`benchmark speed` (table and JSON), the device-side crops against torchvision's, and the
run settings the speed work added (workers=auto, compile)."""

import json
import math
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import ROOT, FixedSource, make_batch, run_cli
from scipy.stats import ks_2samp
from torchvision.transforms import RandomResizedCrop

from benchmark.cli import main
from benchmark.errors import UserError
from benchmark.speed.measure import MethodSpeed, SpeedReport, format_table
from benchmark.train.config import resolve
from benchmark.train.engine import build_method
from datasets.augment import sample_crop_boxes
from datasets.loader import resolve_workers
from methods import MethodConfigError, StepInfo, list_methods


def test_speed_prints_the_table_and_writes_the_json(tmp_path, synth, data_root):
    out = tmp_path / "speed.json"
    proc = run_cli(
        "speed", "--dataset", "synth", "--methods", "ogm_ge", "--steps", "2", "--warmup", "1",
        "--repeats", "3", "--batch-size", "32", "--device", "cpu", "--json", str(out),
        "--data-root", str(data_root),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    # progress on stderr when it is not a terminal: one line per round
    assert "speed: round 3/3 timed in" in proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("speed on synth: device cpu, batch 32, median of 3 rounds of 2")
    assert re.fullmatch(
        r"loader alone: [\d,]+ samples/s \([\d.]+x the fastest step; its reads alone "
        r"[\d,]+ samples/s\)",
        lines[1],
    ), lines[1]
    assert lines[2].split() == ["method", "step/s", "ratio", "end-to-end/s", "ratio", "spread"] + [
        "host", "sync", "in", "step"
    ]  # fmt: skip
    rows = [line.split() for line in lines[3:5]]
    assert [r[0] for r in rows] == ["joint", "ogm_ge"]  # joint is added, first
    assert rows[0][2] == "1.00" and rows[0][4] == "1.00"
    assert all(re.fullmatch(r"\d+%", r[5]) for r in rows)
    assert [r[6:] for r in rows] == [["none"], ["none"]]  # the CPU host-sync check passed

    record = json.loads(out.read_text())
    assert set(record) == {"device", "batch_size", "repeats", "loader_samples_per_s", "methods"}
    assert record["device"] == "cpu" and record["batch_size"] == 32 and record["repeats"] == 3
    assert isinstance(record["loader_samples_per_s"], float) and record["loader_samples_per_s"] > 0
    assert list(record["methods"]) == ["joint", "ogm_ge"]
    rates = {name: m["update_rates"] for name, m in record["methods"].items()}
    for m in record["methods"].values():
        assert len(m.pop("update_rates")) == 3 and len(m.pop("end_to_end_rates")) == 3
        assert m.pop("spread") >= 0
        assert set(m) == {
            "update_samples_per_s",
            "end_to_end_samples_per_s",
            "step_ratio_to_joint",
            "end_to_end_ratio_to_joint",
        }
        assert all(isinstance(v, float) and v > 0 for v in m.values())
    assert record["methods"]["joint"]["step_ratio_to_joint"] == 1.0
    # the median over rounds of joint's rate / ogm_ge's rate within each round
    per_round = sorted(j / o for j, o in zip(rates["joint"], rates["ogm_ge"], strict=True))
    assert record["methods"]["ogm_ge"]["step_ratio_to_joint"] == pytest.approx(per_round[1])


def test_speed_reports_the_median_and_warns_when_the_rounds_spread():
    """Hand-made rounds: the median rate is reported, a ratio is the median of the rounds'
    ratios, the spread is the interquartile range / median, and a spread over BUSY_SPREAD
    prints the busy-machine warning naming the method."""
    quiet = MethodSpeed(update_rates=[100.0, 101.0, 99.0], end_to_end_rates=[50.0, 50.0, 51.0])
    busy = MethodSpeed(update_rates=[300.0, 50.0, 100.0], end_to_end_rates=[40.0, 40.0, 40.0])
    report = SpeedReport("synth", "cpu", 32, 0, 2, 1, 3, 1000.0, 2000.0)
    report.methods = {"joint": quiet, "pmr": busy}
    assert busy.update_samples_per_s == 100.0 and quiet.update_samples_per_s == 100.0
    # quartiles (inclusive) of 99, 100, 101: 99.5 and 100.5; of 50, 100, 300: 75 and 200
    assert quiet.spread == pytest.approx(0.01) and busy.spread == pytest.approx(1.25)
    # per-round ratios 100/300, 101/50, 99/100: median 0.99, not the lucky 300 samples/s
    assert report.step_ratio("pmr") == pytest.approx(0.99)
    assert report.end_to_end_ratio("pmr") == pytest.approx(50 / 40)
    assert report.busy() == ["pmr"]
    table = format_table(report)
    assert table.splitlines()[-1].startswith("warning: rounds differ by more than 20% for pmr:")
    report.methods = {"joint": quiet}
    assert "warning" not in format_table(report)


def test_speed_runs_without_the_media_and_cluster_libraries(tmp_path, synth):
    """The GPU machines' image has no soundfile, soxr, submitit or librosa, and `speed`
    needs only torch, torchvision, numpy, scipy, pillow and tqdm (docs/speed.md, "GPU"): every
    other dependency is made unimportable here."""
    blocked = ("soundfile", "soxr", "submitit", "librosa", "pandas", "matplotlib", "seaborn")
    blocked += ("sklearn", "yaml")
    code = (
        "import runpy, sys\n"
        f"for name in {blocked!r}:\n"
        "    sys.modules[name] = None  # any import of it raises\n"
        "sys.argv = ['benchmark', *sys.argv[1:]]\n"
        "runpy.run_module('benchmark', run_name='__main__')\n"
    )
    args = ["speed", "--dataset", str(synth.root), "--methods", "mie", "--steps", "1",
            "--warmup", "1", "--device", "cpu", "--data-root", str(tmp_path)]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [line.split()[0] for line in proc.stdout.splitlines()[3:5]] == ["joint", "mie"]


def test_speed_rejects_an_unknown_method(data_root, capsys):
    assert (
        main(["speed", "--methods", "nope", "--device", "cpu", "--data-root", str(data_root)]) == 2
    )
    assert "unknown method(s) nope" in capsys.readouterr().err


def _torchvision_boxes(n, height, width, scale, ratio, seed):
    torch.manual_seed(seed)
    image = torch.empty(3, height, width)
    return np.array(
        [RandomResizedCrop.get_params(image, list(scale), list(ratio)) for _ in range(n)],
        dtype=np.float64,
    )  # rows (top, left, h, w)


@pytest.mark.parametrize(
    "height, width, scale",
    [(256, 341, (0.08, 1.0)), (224, 224, (0.08, 1.0)), (16, 16, (0.6, 1.0))],
)
def test_crop_boxes_match_torchvision_random_resized_crop(height, width, scale):
    n, ratio = 4000, (3 / 4, 4 / 3)
    ours = (
        sample_crop_boxes(
            n, height, width, scale, ratio, generator=torch.Generator().manual_seed(0)
        )
        .numpy()
        .astype(np.float64)
    )  # whole pixels, as torchvision's; same float width for ties
    ref = _torchvision_boxes(n, height, width, scale, ratio, seed=1)
    for boxes in (ours, ref):  # every box lies inside the image
        top, left, h, w = boxes.T
        assert (h >= 1).all() and (w >= 1).all()
        assert (top >= 0).all() and (left >= 0).all()
        assert (top + h <= height).all() and (left + w <= width).all()

    def stats(boxes):
        top, left, h, w = boxes.T
        free_h, free_w = np.maximum(height - h, 1), np.maximum(width - w, 1)
        return {
            "area": h * w / (height * width),
            "log_aspect": np.log(w / h),
            "top": top / free_h,  # position within the free range, ~U[0, 1]
            "left": left / free_w,
        }

    a, b = stats(ours), stats(ref)
    for key in a:
        ks = ks_2samp(a[key], b[key])
        # Same distribution: with 4,000 draws each, 0.045 is the KS critical value at p ~ 0.01.
        assert ks.statistic < 0.045, (key, ks)
        assert abs(a[key].mean() - b[key].mean()) < 0.03 * max(1.0, abs(b[key].mean())), key
        assert np.quantile(a[key], [0.1, 0.5, 0.9]) == pytest.approx(
            np.quantile(b[key], [0.1, 0.5, 0.9]), abs=0.05
        ), key
    # Same ranges: area and aspect within scale and ratio, up to rounding h and w to pixels.
    side = math.sqrt(scale[0] * height * width)  # the smallest crop's side
    area_tol, aspect_tol = 2 * side / (height * width), 1 / side
    for s in (a, b):
        assert s["area"].min() >= scale[0] - area_tol and s["area"].max() <= scale[1]
        assert s["log_aspect"].min() >= math.log(ratio[0]) - aspect_tol
        assert s["log_aspect"].max() <= math.log(ratio[1]) + aspect_tol
    for key in ("area", "log_aspect"):  # and both reach the ends of those ranges alike
        assert a[key].min() == pytest.approx(b[key].min(), abs=0.02), key
        assert a[key].max() == pytest.approx(b[key].max(), abs=0.02), key


def test_crop_boxes_fall_back_to_torchvision_centre_crop():
    # No attempt fits a 10 x 100 strip at scale >= 0.9: both use the same centre crop.
    ours = sample_crop_boxes(50, 10, 100, (0.9, 1.0), generator=torch.Generator().manual_seed(0))
    ref = _torchvision_boxes(50, 10, 100, (0.9, 1.0), (3 / 4, 4 / 3), seed=0)
    assert (ours.numpy() == ref).all()
    assert ref[0].tolist() == [0, 43, 10, 13]


def test_workers_auto_and_compile_settings(synth, data_root):
    assert resolve_workers("auto", "cpu") == 0
    assert 1 <= resolve_workers("auto", torch.device("cuda")) <= 8
    assert resolve_workers(3, "cpu") == 3
    path = str(synth.root)
    cfg = resolve("joint", "synth", path, {}, 0, {"compile": True})
    eager = resolve("joint", "synth", path, {}, 0, {"workers": 2})
    assert cfg.settings["workers"] == "auto"
    assert cfg.run_id == eager.run_id  # neither compile nor workers change the run id
    method = build_method(cfg, synth, torch.device("cpu"), steps_per_epoch=1)
    plain = build_method(eager, synth, torch.device("cpu"), steps_per_epoch=1)
    for m in method.modalities:  # compiled in place: same state-dict keys for checkpoints
        assert method.encoders[m]._compiled_call_impl is not None
        assert plain.encoders[m]._compiled_call_impl is None
    assert list(method.state_dict()) == list(plain.state_dict())
    for m in method.modalities:  # the default mode records no CUDA graphs
        assert not method.encoders[m]._compiled_call_impl.get_compiler_config()["triton.cudagraphs"]
    graphs = resolve(
        "joint", "synth", path, {}, 0, {"compile": True, "compile_mode": "reduce-overhead"}
    )
    assert graphs.run_id == eager.run_id
    method = build_method(graphs, synth, torch.device("cpu"), steps_per_epoch=1)
    for m in method.modalities:
        assert method.encoders[m]._compiled_call_impl.get_compiler_config()["triton.cudagraphs"]
    with pytest.raises(UserError, match="unknown compile_mode 'fast'; choose one of default, "):
        resolve("joint", "synth", path, {}, 0, {"compile": True, "compile_mode": "fast"})
    with pytest.raises(UserError, match="workers must be auto or a number >= 0"):
        resolve("joint", "synth", path, {}, 0, {"workers": -1})


@pytest.mark.parametrize("method", list_methods())
def test_compiled_encoders_train_and_predict_like_eager(method, synth):
    """compile=true runs (both encoders, a train and an eval batch size) and computes what
    eager mode computes, up to float rounding, for every method (MIE's SAM pass included:
    compiled graphs assert the parameters' strides)."""
    settings = {"encoder": "small", "lr": 0.05}
    path = str(synth.root)
    if method == "mmpareto":  # two backward passes through a retained graph: eager only
        cfg = resolve(method, "synth", path, {}, 0, {**settings, "compile": True})
        with pytest.raises(MethodConfigError, match="mmpareto does not support compile=true"):
            build_method(cfg, synth, torch.device("cpu"), steps_per_epoch=2)
        return
    models = []
    for compiled in (False, True):
        cfg = resolve(method, "synth", path, {}, 0, {**settings, "compile": compiled})
        torch.manual_seed(0)
        model = build_method(cfg, synth, torch.device("cpu"), steps_per_epoch=2)
        model.train()
        model.on_epoch_start(0, FixedSource([make_batch(8, seed=5, classes=synth.num_classes)]))
        models.append(model)
    batch = make_batch(8, seed=1, classes=synth.num_classes)
    logs = []
    for model in models:
        torch.manual_seed(1)  # OGM-GE's noise
        logs.append([model.update(batch, StepInfo(0, i, i)) for i in range(2)])
    for eager, compiled in zip(*logs, strict=True):
        for key in eager:
            torch.testing.assert_close(compiled[key], eager[key], rtol=1e-4, atol=1e-5)
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    eval_batch = make_batch(5, seed=2, classes=synth.num_classes)  # another shape
    with torch.no_grad():
        outs = [m.eval().predict(eval_batch) for m in models]
    for head in outs[0]:
        torch.testing.assert_close(outs[1][head], outs[0][head], rtol=1e-4, atol=1e-4)
