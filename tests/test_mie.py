"""MIE (methods/mie.py): the flat transform against hand-worked values, the SAM step, the
BatchNorm statistics, the flat gradient modification, both schedules and both variants."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from helpers import make_batch, make_method

from benchmark.train.config import RUN_DEFAULTS
from methods import MethodConfigError, StepInfo
from methods.mie import flat_transform

SETTINGS = {**RUN_DEFAULTS, "encoder": "small", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4}
S = math.exp(-0.4)  # sigma of the largest eigenvalue at tau = 0.4: 0.6703200460


# -- flat_transform: T = V diag(exp(-tau (lambda - lambda_min) / span)) V^T -----------------
def test_flat_transform_diagonal():
    # lambda = (4, 1): the first axis gets exp(-0.4 * 3/3), the second exp(0) = 1.
    t = flat_transform(torch.tensor([[4.0, 0.0], [0.0, 1.0]]), 0.4)
    assert torch.allclose(t, torch.tensor([[0.6703200460, 0.0], [0.0, 1.0]]), atol=1e-6)


def test_flat_transform_three_eigenvalues():
    # lambda = (0, 2, 1), tau = 1: sigma = (1, e^-1, e^-0.5).
    t = flat_transform(torch.diag(torch.tensor([0.0, 2.0, 1.0])), 1.0)
    assert torch.allclose(t, torch.diag(torch.tensor([1.0, 0.3678794412, 0.6065306597])), atol=1e-6)


def test_flat_transform_rotated():
    # [[2.5, 1.5], [1.5, 2.5]] = 4 uu^T + 1 ww^T, u = (1, 1)/sqrt2, w = (1, -1)/sqrt2:
    # T = S uu^T + ww^T = [[(S+1)/2, (S-1)/2], [(S-1)/2, (S+1)/2]].
    t = flat_transform(torch.tensor([[2.5, 1.5], [1.5, 2.5]]), 0.4)
    expected = torch.tensor([[0.8351600230, -0.1648399770], [-0.1648399770, 0.8351600230]])
    assert torch.allclose(t, expected, atol=1e-6)


def test_flat_transform_rank_one():
    # xbar = (3, 4): Ybar = xbar xbar^T has lambda 25 along (0.6, 0.8) and 0 along (0.8, -0.6):
    # T = S [[.36, .48], [.48, .64]] + [[.64, -.48], [-.48, .36]].
    t = flat_transform(torch.tensor([[9.0, 12.0], [12.0, 16.0]]), 0.4)
    expected = torch.tensor([[0.8813152166, -0.1582463779], [-0.1582463779, 0.7890048294]])
    assert torch.allclose(t, expected, atol=1e-6)


@pytest.mark.parametrize("ybar", [torch.zeros(3, 3), 3.0 * torch.eye(3)])
def test_flat_transform_identity_when_spectrum_is_flat(ybar):
    assert torch.equal(flat_transform(ybar, 0.4), torch.eye(3))


# -- the method ---------------------------------------------------------------------------
def build(epochs=3, **hp):
    return make_method("mie", hp, settings=SETTINGS, epochs=epochs)


def hand_sam(model, m, batch, rho):
    """g_sam of modality m computed here from the formula, on copies of phi^m and h^m."""
    enc, head = copy.deepcopy(model.encoders[m]), copy.deepcopy(model.heads[m])
    params = [*enc.parameters(), *head.parameters()]
    loss = torch.nn.functional.cross_entropy(head(enc(batch[m])), batch["label"])
    g = torch.autograd.grad(loss, params)
    norm = torch.sqrt(sum((x**2).sum() for x in g))
    with torch.no_grad():
        for p, x in zip(params, g, strict=True):
            p.add_(rho * x / norm)
    loss = torch.nn.functional.cross_entropy(head(enc(batch[m])), batch["label"])
    return enc, head, list(torch.autograd.grad(loss, params))


def test_sam_step_equals_sgd_from_perturbed_gradient():
    model = build(rho=0.05, t_refresh=1000)
    batch = make_batch()
    before = [p.detach().clone() for p in model.theta["audio"]]
    _, _, g_sam = hand_sam(model, "audio", batch, 0.05)
    model.update(batch, StepInfo(0, 0, 0))
    # The reference: the original parameters, one SGD step with g_sam (T^(visual) = I).
    ref = [torch.nn.Parameter(p.clone()) for p in before]
    opt = torch.optim.SGD(ref, lr=0.1, momentum=0.9, weight_decay=1e-4)
    for p, g in zip(ref, g_sam, strict=True):
        p.grad = g
    opt.step()
    for p, r in zip(model.theta["audio"], ref, strict=True):
        assert torch.allclose(p, r, atol=1e-6, rtol=1e-5)
    assert all(not torch.equal(p, b) for p, b in zip(model.theta["audio"], before, strict=True))


def test_perturbed_pass_leaves_batchnorm_statistics_alone():
    model = build(rho=0.05)
    batch = make_batch()
    clean = copy.deepcopy(model.encoders["audio"]).train()
    with torch.no_grad():
        clean(batch["audio"])  # the running statistics after one clean forward only
    model.update(batch, StepInfo(0, 0, 0))
    bufs = dict(model.encoders["audio"].named_buffers())
    for name, ref in clean.named_buffers():
        assert torch.equal(bufs[name], ref), name
    assert any("num_batches_tracked" in n and int(b) == 1 for n, b in bufs.items())


def test_head_weight_gradient_is_g_times_t():
    model = build(rho=0.05, t_refresh=1000)
    batch = make_batch()
    # Force T^(visual) (used for audio, whose previous modality is visual) to known matrices.
    forced = []
    for i, layer in enumerate(model.heads["visual"].layers):
        a = torch.randn(
            layer.in_features, layer.in_features, generator=torch.Generator().manual_seed(i)
        )
        forced.append(flat_transform(a @ a.T, 0.4))
        model.flat["visual"].get("t", i).copy_(forced[-1])
    _, _, g_sam = hand_sam(model, "audio", batch, 0.05)
    model.update(batch, StepInfo(0, 0, 0))
    n_enc = len(list(model.encoders["audio"].parameters()))
    for p, g in zip(list(model.encoders["audio"].parameters()), g_sam[:n_enc], strict=True):
        assert torch.allclose(p.grad, g, atol=1e-6)  # encoder gradients unchanged
    grads = dict(
        zip([id(p) for p in model.heads["audio"].parameters()], g_sam[n_enc:], strict=True)
    )
    for i, layer in enumerate(model.heads["audio"].layers):
        assert torch.allclose(layer.weight.grad, grads[id(layer.weight)] @ forced[i], atol=1e-6)
        assert torch.allclose(layer.bias.grad, grads[id(layer.bias)], atol=1e-6)  # bias as is


def test_t_is_identity_until_the_other_modality_has_trained():
    model = build(rho=0.05, t_refresh=1)
    batch = make_batch()
    for m in model.modalities:
        for i in range(3):
            assert torch.equal(
                model.flat[m].get("t", i), torch.eye(model.flat[m].get("t", i).shape[0])
            )
    _, _, g_audio = hand_sam(model, "audio", batch, 0.05)
    _, _, g_visual = hand_sam(model, "visual", batch, 0.05)  # visual untouched by audio's step
    model.update(batch, StepInfo(0, 0, 0))
    n_a = len(list(model.encoders["audio"].parameters()))
    n_v = len(list(model.encoders["visual"].parameters()))
    head_a = [layer.weight.grad for layer in model.heads["audio"].layers]
    head_v = [layer.weight.grad for layer in model.heads["visual"].layers]
    # Audio trained first: visual had not trained, so its gradient is unmodified.
    for got, g in zip(head_a, g_sam_weights(model, "audio", g_audio, n_a), strict=True):
        assert torch.allclose(got, g, atol=1e-6)
    # Visual trained after audio, whose T was refreshed (t_refresh = 1) and is no longer I.
    for i, (got, g) in enumerate(
        zip(head_v, g_sam_weights(model, "visual", g_visual, n_v), strict=True)
    ):
        t_audio = model.flat["audio"].get("t", i)
        assert not torch.allclose(t_audio, torch.eye(t_audio.shape[0]))
        assert torch.allclose(got, g @ t_audio, atol=1e-6)


def g_sam_weights(model, m, g_sam, n_enc):
    by_id = dict(zip([id(p) for p in model.heads[m].parameters()], g_sam[n_enc:], strict=True))
    return [by_id[id(layer.weight)] for layer in model.heads[m].layers]


@pytest.mark.parametrize("variant", ["paper", "official"])
@pytest.mark.parametrize("schedule", ["batch", [["visual", 1], ["audio", 2]]])
def test_schedules_and_variants_run(variant, schedule):
    hp = {"variant": variant, "schedule": schedule, "t_refresh": 2}
    if variant == "official":
        hp["rho"] = 1e-10
    model = build(**hp)
    audio_before = {k: v.clone() for k, v in model.state_dict().items() if ".audio." in k}
    visual_before = [p.detach().clone() for p in model.theta["visual"]]
    model.on_epoch_start(0, None)
    for b in range(3):
        logs = model.update(make_batch(seed=b), StepInfo(0, b, b))
        assert all(torch.isfinite(v) and v.dim() == 0 for v in logs.values())
    trained = {"loss_visual"} | ({"loss_audio"} if schedule == "batch" else set())
    assert trained <= set(logs) and (schedule == "batch") == ("loss_audio" in logs)
    diagnostics = model.on_epoch_end(0, None)
    assert all(math.isfinite(v) for v in diagnostics.values())
    assert "sigma_min_visual_l2" in diagnostics and "sigma_mean_audio_l0" in diagnostics
    assert any(
        not torch.equal(p, q) for p, q in zip(model.theta["visual"], visual_before, strict=True)
    )
    if schedule != "batch":  # epoch 0 is the visual stage: audio (params, BN, Ybar) untouched
        after = model.state_dict()
        assert all(torch.equal(after[k], v) for k, v in audio_before.items())
    out = model.eval().predict(make_batch(5))
    assert torch.isfinite(out["fused"]).all()


def test_cosine_diagnostics_logged_under_per_batch_alternation():
    model = build(t_refresh=1)
    model.on_epoch_start(0, None)
    for b in range(2):
        model.update(make_batch(seed=b), StepInfo(0, b, b))
    diagnostics = model.on_epoch_end(0, None)
    for key in ("cos_before", "cos_after", "cos_before_audio", "cos_after_visual"):
        assert -1.0 <= diagnostics[key] <= 1.0, key
    assert 0 < diagnostics["sigma_min_audio_l0"] < 1


def test_predict_fused_is_log_mean_of_softmax():
    model = build().eval()
    out = model.predict(make_batch(4))
    expected = torch.log((out["audio"].softmax(1) + out["visual"].softmax(1)) / 2)
    assert torch.allclose(out["fused"], expected, atol=1e-6)


def test_checkpoint_keeps_ybar_and_t():
    model = build(t_refresh=1)
    model.update(make_batch(), StepInfo(0, 0, 0))
    state = model.training_state()
    other = build(t_refresh=1)
    other.load_training_state(state)
    for m in model.modalities:
        for name in ("ybar", "t", "sigma"):
            assert torch.equal(other.flat[m].get(name, 0), model.flat[m].get(name, 0))
    assert not torch.equal(other.flat["audio"].get("ybar", 1), torch.zeros(256, 256))


@pytest.mark.parametrize(
    "hp",
    [
        {"schedule": [["depth", 3]]},
        {"schedule": [["audio", 1]]},  # covers 1 of 3 epochs
        {"schedule": "sometimes"},
        {"head": "transformer"},
        {"variant": "unofficial"},
        {"t_refresh": 0},
        {"alpha": 1.0},
    ],
)
def test_bad_options_raise(hp):
    with pytest.raises(MethodConfigError):
        build(**hp)


def test_official_variant_warns_about_rho():
    with pytest.warns(UserWarning, match="rho=1e-10"):
        build(variant="official")


def test_official_paper_protocol_uses_the_official_batch():
    """The official configs (crema.json, kinetics_sound.json) train with batch 12: the paper
    protocol of the official variant reads it; the paper variant keeps the run's batch."""
    from benchmark.train.config import resolve

    official = resolve(
        "mie", "cremad", "/nowhere", {}, 0, {"protocol": "paper", "variant": "official"}
    )
    assert official.settings["batch_size"] == 12 and official.settings["lr"] == 1e-2
    paper = resolve("mie", "cremad", "/nowhere", {}, 0, {"protocol": "paper"})
    assert paper.settings["batch_size"] == 64
    bench = resolve("mie", "cremad", "/nowhere", {}, 0, {"variant": "official"})
    assert bench.settings["batch_size"] == 64  # the benchmark protocol: same for all methods
    mine = {"protocol": "paper", "variant": "official", "batch_size": 32}
    assert resolve("mie", "cremad", "/nowhere", {}, 0, mine).settings["batch_size"] == 32
