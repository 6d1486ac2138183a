"""Diagnosing & Re-learning (Wei et al., ECCV 2024): the rule's parts by hand, the event
schedule, and the event inside a real run."""

import math

import numpy as np
import pytest
import torch
from helpers import FixedSource, make_batch, make_method

from methods import MethodConfigError
from methods.relearn import (
    event_due,
    minmax_scale,
    purity,
    relearn_strength,
    scaled_period,
    soft_reset_,
)


def test_purity_by_hand():
    # cluster 0 holds labels 1, 1, 2 (majority 2 of 3); cluster 1 holds 0, 0 (2 of 2);
    # cluster 2 holds 2 (1 of 1): purity = (2 + 2 + 1) / 6
    clusters = np.array([0, 0, 0, 1, 1, 2])
    labels = np.array([1, 1, 2, 0, 0, 2])
    assert purity(clusters, labels) == pytest.approx(5 / 6)
    assert purity(np.zeros(4, int), np.array([0, 1, 2, 3])) == pytest.approx(1 / 4)


def test_minmax_scale_by_hand():
    x = np.array([[0.0, 5.0, 7.0], [2.0, 5.0, 3.0], [1.0, 5.0, 5.0]])
    # column 0: min 0, max 2 -> -1, 1, 0; column 1 constant -> -1; column 2: 3..7 -> 1, -1, 0
    expected = np.array([[-1.0, -1.0, 1.0], [1.0, -1.0, -1.0], [0.0, -1.0, 0.0]])
    assert np.allclose(minmax_scale(x), expected)


def test_strength_is_tanh_of_the_scaled_gap():
    # P_D 0.9, P_V 0.6, lambda 3: alpha = tanh(0.9)
    assert relearn_strength(0.9, 0.6, 3.0) == pytest.approx(math.tanh(0.9))
    assert relearn_strength(0.6, 0.9, 3.0) == pytest.approx(math.tanh(0.9))  # |gap|
    assert relearn_strength(0.7, 0.7, 3.0) == 0.0


def test_soft_reset_mixes_toward_the_initial_weights():
    current = [torch.tensor([1.0, 3.0]), torch.tensor([[2.0]])]
    initial = [torch.tensor([0.0, -1.0]), torch.tensor([[4.0]])]
    soft_reset_(current, initial, 0.25)
    # (1 - 0.25) * 1 + 0.25 * 0 = 0.75; 0.75 * 3 - 0.25 = 2; 0.75 * 2 + 0.25 * 4 = 2.5
    assert torch.allclose(current[0], torch.tensor([0.75, 2.0]))
    assert torch.allclose(current[1], torch.tensor([[2.5]]))


def test_event_schedule():
    # official: T = 20, N = 3 -> events before epochs 21, 41, 61 (after 20, 40, 60)
    starts = [e for e in range(1, 100) if event_due(e, 20, 3)]
    assert starts == [21, 41, 61]
    assert [e for e in range(1, 20) if event_due(e, 4, 3)] == [5, 9, 13]
    assert not any(event_due(e, 1, 0) for e in range(1, 10))
    assert scaled_period(90) == 20 and scaled_period(20) == 4 and scaled_period(2) == 1


def test_bad_options_are_one_line_errors():
    for hp in ({"period": 0}, {"period": "often"}, {"events": -1}, {"feature_fraction": 0}):
        with pytest.raises(MethodConfigError, match="relearn"):
            make_method("relearn", hp)


def _trained(model, steps=3):
    for i in range(steps):
        model.update(make_batch(seed=i), step=None)


def test_event_resets_each_encoder_by_its_own_alpha():
    """An event moves every encoder parameter by exactly alpha^m toward its initial
    value, leaves the head, the running statistics and the optimiser state alone, and
    logs the purities it computed."""
    model = make_method("relearn", {"period": 1, "kmeans_n_init": 1})
    initial = {n: p.detach().clone() for n, p in model.encoders.named_parameters()}
    _trained(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    stats_before = {n: b.clone() for n, b in model.encoders.named_buffers()}
    momentum = {p: s["momentum_buffer"].clone() for p, s in model.optimizers["main"].state.items()}
    batches = [make_batch(n=24, seed=10 + i) for i in range(2)]
    model.on_epoch_start(2, FixedSource(batches))
    logs = model.on_epoch_end(2, FixedSource(batches))
    assert logs["event"] == 1.0
    for m in ("audio", "visual"):
        alpha = logs[f"alpha_{m}"]
        gap = abs(logs[f"purity_train_{m}"] - logs[f"purity_val_{m}"])
        assert alpha == pytest.approx(math.tanh(3.0 * gap))
        for n, p in model.encoders[m].named_parameters():
            name = f"{m}.{n}"
            want = (1 - alpha) * before[f"encoders.{name}"] + alpha * initial[name]
            assert torch.allclose(p, want, atol=1e-6), name
    for n, p in model.head.named_parameters():
        assert torch.equal(p, before[f"head.{n}"])
    for n, b in model.encoders.named_buffers():
        assert torch.equal(b, stats_before[n])
    for p, s in model.optimizers["main"].state.items():
        assert torch.equal(s["momentum_buffer"], momentum[p])
    # period 1, N = 3: events start epochs 2, 3 and 4, and no later one
    model.on_epoch_start(3, FixedSource(batches))
    assert model.on_epoch_end(3, FixedSource(batches))["event"] == 1.0
    model.on_epoch_start(5, FixedSource(batches))
    assert model.on_epoch_end(5, FixedSource(batches))["event"] == 0.0  # N = 3 spent


def test_initial_weights_are_in_the_checkpoint():
    """A resumed run re-initialises toward the weights the run started from, not toward
    the weights of a freshly built model."""
    model = make_method("relearn", {"period": 1}, seed=0)
    state = model.training_state()
    other = make_method("relearn", {"period": 1}, seed=1)
    other.load_training_state(state)
    for a, b in zip(model.initial.parameters(), other.initial.parameters(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(model.initial.buffers(), other.initial.buffers(), strict=True):
        assert torch.equal(a, b)
