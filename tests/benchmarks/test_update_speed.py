"""One `update` per method against joint's, on the same batch and model (ISSUE 3, item 5).

ResNet18 encoders at small inputs (32 x 32 spectrogram and frame, batch 16, CPU). Each
method's fastest step time (of 12 rounds) is divided by joint's from the same run and
checked against its target. Run by `make bench-speed` (--benchmark-enable); plain `pytest`
does not collect this file (conftest.py: its --benchmark-disable default keeps `make test`
fast). The cheap check of the same code path in `make test` is tests/test_speed.py
(`speed` for two steps).
"""

from __future__ import annotations

import math

import pytest
import torch

from benchmark.speed.measure import resolve_configs
from benchmark.train.data import RunData, open_dataset
from benchmark.train.engine import autocast, build_method
from methods import StepInfo, list_methods

# Step time / joint's step time, at most (ISSUE 3, "Speed").
TARGETS = {"joint": 1.0, "ogm_ge": 1.10, "pmr": 1.15, "agm": 2.2, "mie": 2.2}
SETTINGS = {"encoder": "resnet18", "crop_size": 32, "batch_size": 16, "device": "cpu"}
ROUNDS, WARMUP = 12, 3
METHODS = ["joint", *(m for m in list_methods() if m != "joint")]  # joint first: the baseline


@pytest.fixture(scope="module")
def setup(resnet_synth, tmp_path_factory):
    ds, defaults = open_dataset(str(resnet_synth), tmp_path_factory.mktemp("unused"))
    configs = resolve_configs(METHODS, ds, defaults, SETTINGS)
    data = RunData(ds, configs["joint"].settings, 0, torch.device("cpu"))
    batch = next(data.train.epoch(0))
    return ds, configs, data, batch


@pytest.mark.parametrize("name", METHODS)
def test_update_time_against_joint(name, setup, benchmark, speed_ratios):
    ds, configs, data, batch = setup
    torch.manual_seed(0)
    method = build_method(configs[name], ds, torch.device("cpu"), len(data.train))
    method.on_epoch_start(0, data)
    method.train()
    counter = iter(range(10**9))

    def step():
        i = next(counter)
        with autocast(torch.device("cpu")):
            return method.update(batch, StepInfo(epoch=0, step=i, batch=i))

    benchmark.group = "update"
    logs = benchmark.pedantic(step, rounds=ROUNDS, iterations=1, warmup_rounds=WARMUP)
    assert math.isfinite(float(logs["loss"]))
    # The fastest round: on a shared machine the least disturbed one, the step's own cost.
    best = benchmark.stats.stats.min
    speed_ratios["time"][name] = best
    assert "joint" in speed_ratios["time"], "run joint in the same session (no -k)"
    ratio = best / speed_ratios["time"]["joint"]
    speed_ratios["ratio"][name] = ratio
    print(f"{name}: {1000 * best:.1f} ms per step, {ratio:.2f}x joint")
    assert ratio <= TARGETS[name], f"{name} step is {ratio:.2f}x joint's, target {TARGETS[name]}"
