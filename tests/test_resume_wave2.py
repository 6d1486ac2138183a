"""The second-wave methods resume exactly on the CPU: a run stopped after an epoch and
restarted from its checkpoint logs the same metrics as an uninterrupted one (their state:
InfoReg's traces, Greedy's state machine and running gates, G-Blending's weights,
Re-learning's initial weights)."""

from __future__ import annotations

import pytest

from benchmark.train.config import resolve
from benchmark.train.data import open_dataset, prepare_dataset
from benchmark.train.engine import train_run
from benchmark.train.runstore import read_metrics, run_dir

TIMING = ("seconds", "samples_per_s", "probe_seconds")
CASES = {
    "mmcosine": {},
    "inforeg": {"tau": 0.3},  # the window closes within the run
    "greedy": {"warmup_epochs": 1, "alpha": 0.0, "util_fraction": 0.0},
    "g_blending": {"super_epoch": 2},  # estimations at epochs 0 and 2
    "relearn": {"period": 1},  # an event at the start of epoch 2, after the resume point
    "reconboost": {"e1": 1, "e2": 1},  # phase 1, phase 2, then stage 1 (visual, with ga)
    "umt": {"teacher_epochs": 2},  # teachers come back from the checkpoint, not retrained
    "mla": {},  # P, the sub-step counter and the last head gradients carry over
}


class Stop(Exception):
    pass


@pytest.fixture(scope="module")
def small_synth(data_root):
    out = data_root / "synth_resume"
    if not (out / "meta.json").exists():
        prepare_dataset("synth", data_root, options={"num_samples": 240}, out_dir=out)
    return open_dataset(str(out), data_root)


@pytest.mark.parametrize("method", sorted(CASES))
def test_stopped_run_resumes_exactly(method, small_synth, tmp_path, data_root):
    ds, defaults = small_synth
    overrides = {"epochs": 3, "workers": 0, "batch_size": 16, **CASES[method]}
    cfg = resolve(method, ds.name, str(ds.root), defaults, 0, overrides)
    train_run(cfg, tmp_path / "straight", data_root, progress=False)

    def stop_after_epoch_1(row):
        if row["epoch"] == 1:
            raise Stop

    with pytest.raises(Stop):
        train_run(cfg, tmp_path / "stopped", data_root, progress=False, on_epoch=stop_after_epoch_1)
    train_run(cfg, tmp_path / "stopped", data_root, progress=False)

    def rows(root):
        return [
            {k: v for k, v in r.items() if k not in TIMING}
            for r in read_metrics(run_dir(root, cfg))
        ]

    straight, resumed = rows(tmp_path / "straight"), rows(tmp_path / "stopped")
    assert [r["epoch"] for r in resumed] == [0, 1, 2]
    assert resumed == straight
