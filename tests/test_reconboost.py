"""ReconBoost (methods/reconboost.py): the stage schedule and the losses against hand-worked
numbers, one step of each phase against a direct computation, options, checkpoint state."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import FixedSource, make_batch, make_method

from methods import MethodConfigError, StepInfo
from methods.reconboost import agreement, boosting_loss, stage_modality, stage_of, true_class_prob

PLAIN_SGD = {"momentum": 0.0, "weight_decay": 0.0, "lr": 0.1, "scheduler": "none"}


def t(x):
    return torch.tensor(x, dtype=torch.float64)


# -- pure functions, hand-worked ------------------------------------------------------------
def test_stage_schedule_hand_values():
    # E1 = E2 = 4: epochs 0-3 stage 0 phase 1, 4-7 phase 2, 8 stage 1 phase 1, 13 phase 2
    assert [stage_of(e, 4, 4) for e in (0, 3, 4, 7, 8, 13, 16)] == [
        (0, 1),
        (0, 1),
        (0, 2),
        (0, 2),
        (1, 1),
        (1, 2),
        (2, 1),
    ]
    assert [stage_of(e, 1, 2) for e in range(4)] == [(0, 1), (0, 2), (0, 2), (1, 1)]
    mods = ["audio", "visual"]
    assert [stage_modality(s, mods) for s in range(4)] == ["audio", "visual", "audio", "visual"]
    assert stage_modality(-1, mods) == "visual"


def test_boosting_loss_hand_values():
    # two samples, C = 2. Sample 0: logits (0, 0), y = 0 -> log p = log 1/2, q = 0.5;
    # sample 1: logits (ln 3, 0), y = 0 -> p = 3/4, q = 0.2. w1 = 5, w2 = 1:
    # weights (0.5 - 5) = -4.5 and (0.2 - 5) = -4.8;
    # L = mean(-4.5 ln 1/2, -4.8 ln 3/4) / 2
    logits = t([[0.0, 0.0], [math.log(3.0), 0.0]])
    y = torch.tensor([0, 0])
    q = t([0.5, 0.2])
    expected = (-4.5 * math.log(0.5) - 4.8 * math.log(0.75)) / 2 / 2
    assert boosting_loss(logits, y, q, 5.0, 1.0).item() == pytest.approx(expected, rel=1e-6)
    # q = 1 everywhere: (w1 - w2)/C * CE
    ce = (-math.log(0.5) - math.log(0.75)) / 2
    got = boosting_loss(logits, y, t([1.0, 1.0]), 5.0, 1.0).item()
    assert got == pytest.approx(4.0 / 2 * ce, rel=1e-6)


def test_true_class_prob_and_agreement_hand_values():
    logits = t([[math.log(3.0), 0.0], [0.0, 0.0]])
    assert true_class_prob(logits, torch.tensor([0, 1])).tolist() == pytest.approx([0.75, 0.5])
    # softmax rows (3/4, 1/4), (1/2, 1/2) vs (1/2, 1/2) twice: squared differences
    # 1/16, 1/16, 0, 0 -> mean 1/32
    other = t([[0.0, 0.0], [0.0, 0.0]])
    assert agreement(logits, other).item() == pytest.approx(1 / 32)


# -- the method ------------------------------------------------------------------------------
def run_epoch(model, epoch, batches, start_step=0):
    model.train()
    model.on_epoch_start(epoch, FixedSource(batches))
    logs = [model.update(b, StepInfo(epoch, start_step + i, i)) for i, b in enumerate(batches)]
    return logs, model.on_epoch_end(epoch, FixedSource(batches))


def test_stage0_phase1_trains_audio_and_head_only_with_q_one():
    model = make_method("reconboost", settings=PLAIN_SGD)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    logs, diag = run_epoch(model, 0, [make_batch(seed=1)])
    assert logs[0]["q_y"].item() == 1.0 and logs[0]["weight"].item() == 4.0
    assert "ga" not in logs[0]
    assert diag["stage"] == 0 and diag["phase"] == 1 and diag["modality"] == 0
    for n, p in model.named_parameters():
        moved = not torch.equal(p, before[n])
        if n.startswith("encoders.visual") or n == "beta":
            assert not moved, n
        elif n.startswith("head") or n.startswith("encoders.audio.net.0.weight"):
            assert moved, n


def test_phase1_step_matches_direct_computation():
    """Stage 1 (visual), e1 = e2 = 1: q from beta * f_audio, loss and one plain SGD step."""
    hp = {"e1": 1, "e2": 1, "w1": 5.0, "w2": 1.0}
    model = make_method("reconboost", hp, settings=PLAIN_SGD)
    batch = make_batch(seed=3)
    with torch.no_grad():
        model.beta.fill_(0.7)
    model.train()
    model.on_epoch_start(2, FixedSource([batch]))
    assert model.current == "visual" and model.phase == 1
    params = [*model.encoders["visual"].parameters(), *model.head.parameters()]
    with torch.no_grad():
        f_a = model.learner("audio", batch["audio"])
    f_v = model.learner("visual", batch["visual"])
    q = (0.7 * f_a).softmax(1).gather(1, batch["label"][:, None])[:, 0]
    logp = f_v.log_softmax(1).gather(1, batch["label"][:, None])[:, 0]
    loss = ((q - 5.0) * logp).mean() / 6
    grads = torch.autograd.grad(loss, params)
    expected = [p.detach() - 0.1 * g for p, g in zip(params, grads, strict=True)]
    logs = model.update(batch, StepInfo(2, 0, 0))
    assert logs["loss"].item() == pytest.approx(loss.item(), rel=1e-5)
    assert logs["q_y"].item() == pytest.approx(q.mean().item(), rel=1e-5)
    assert "ga" in logs
    for p, e in zip(params, expected, strict=True):
        torch.testing.assert_close(p.detach(), e, atol=1e-6, rtol=1e-5)


def test_phase2_step_matches_direct_computation():
    model = make_method("reconboost", {"e1": 1, "e2": 1}, settings=PLAIN_SGD)
    batch = make_batch(seed=4)
    model.train()
    model.on_epoch_start(3, FixedSource([batch]))  # stage 1 phase 2: both joined
    assert model.phase == 2 and model.joined == ["audio", "visual"]
    params = list(model.parameters())
    fused = model.beta * (
        model.learner("audio", batch["audio"]) + model.learner("visual", batch["visual"])
    )
    loss = torch.nn.functional.cross_entropy(fused, batch["label"])
    grads = torch.autograd.grad(loss, params)
    expected = [p.detach() - 0.1 * g for p, g in zip(params, grads, strict=True)]
    model.update(batch, StepInfo(3, 0, 0))
    for p, e in zip(params, expected, strict=True):
        torch.testing.assert_close(p.detach(), e, atol=1e-6, rtol=1e-5)
    model.eval()
    with torch.no_grad():
        out = model.predict(batch)
        f_a, f_v = model.learner("audio", batch["audio"]), model.learner("visual", batch["visual"])
    torch.testing.assert_close(out["fused"], model.beta * (f_a + f_v))
    torch.testing.assert_close(out["audio"], f_a)


def test_stage0_phase2_fits_the_audio_learner_alone():
    model = make_method("reconboost", {"e1": 1, "e2": 1}, settings=PLAIN_SGD)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    run_epoch(model, 1, [make_batch(seed=5)])
    for n, p in model.named_parameters():
        if n.startswith("encoders.visual"):
            assert torch.equal(p, before[n]), n
    assert not torch.equal(model.beta, before["beta"])


def test_ga_grad_changes_the_step_and_default_does_not():
    batch = make_batch(seed=6)
    results = []
    for hp in ({}, {"ga_grad": False, "ga_rerun": False}, {"ga_grad": True}):
        model = make_method("reconboost", {"e1": 1, "e2": 1, **hp}, settings=PLAIN_SGD)
        run_epoch(model, 2, [batch])
        results.append(torch.cat([p.detach().flatten() for p in model.head.parameters()]))
    torch.testing.assert_close(results[0], results[1])
    assert not torch.allclose(results[0], results[2])


def test_fresh_optimizer_per_phase_clears_momentum():
    model = make_method("reconboost", {"e1": 1, "e2": 1})
    run_epoch(model, 0, [make_batch(seed=7)])
    assert model.optimizers["phase1_audio"].state
    run_epoch(model, 1, [make_batch(seed=7)])
    model.on_epoch_start(2, FixedSource([]))  # visual phase 1
    model.on_epoch_start(4, FixedSource([]))  # audio phase 1 again: cleared
    assert not model.optimizers["phase1_audio"].state
    kept = make_method("reconboost", {"e1": 1, "e2": 1, "fresh_optimizer_per_phase": False})
    run_epoch(kept, 0, [make_batch(seed=7)])
    kept.on_epoch_start(4, FixedSource([]))
    assert kept.optimizers["phase1_audio"].state


def test_extra_state_records_stage_phase_joined():
    model = make_method("reconboost", {"e1": 1, "e2": 1})
    model.on_epoch_start(3, FixedSource([]))
    assert model.extra_state() == {"stage": 1, "phase": 2, "joined": ["audio", "visual"]}
    assert "beta" in model.state_dict()


@pytest.mark.parametrize(
    "hp, words",
    [
        ({"e1": 0}, "e1 must be an integer >= 1"),
        ({"other_mode": "frozen"}, "unknown other_mode"),
        ({"head": "deep"}, "unknown head"),
        ({"w1": "5"}, "w1 must be a number"),
    ],
)
def test_invalid_options_raise(hp, words):
    with pytest.raises(MethodConfigError, match=words):
        make_method("reconboost", hp)
