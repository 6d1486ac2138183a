"""MMPareto: the weights and rescale (hand-worked), and the step against a direct computation."""

import math

import pytest
import torch
from helpers import make_batch, make_method

from methods import MethodConfigError, StepInfo
from methods.mmpareto import pareto_gradients, pareto_weights

t = torch.tensor


def test_weights_are_equal_without_conflict():
    # G = [1, 2], U = [3, 1]: b = 5 > 0
    assert pareto_weights(t(5.0), t(5.0), t(10.0)).item() == 0.5


def test_weights_are_the_min_norm_point_under_conflict():
    # G = [1, 0], U = [-1, 1]: a = 1, b = -1, c = 2; min over s of ||s G + (1 - s) U||^2
    # = (2s - 1)^2 + (1 - s)^2, derivative 4(2s - 1) - 2(1 - s) = 0 -> s = 0.6
    assert pareto_weights(t(1.0), t(-1.0), t(2.0)).item() == pytest.approx(0.6)


def test_weights_at_a_vanishing_multimodal_gradient():
    # G = 0: cos = 0 is a conflict, and b = 0 >= a = 0 gives the solver's 0.999
    assert pareto_weights(t(0.0), t(0.0), t(2.0)).item() == pytest.approx(0.999)


def test_gradients_without_conflict_are_gamma_times_the_sum():
    new, stats = pareto_gradients([t([1.0, 2.0])], [t([3.0, 1.0])], gamma=1.5)
    torch.testing.assert_close(new[0], t([6.0, 4.5]))  # 1.5 * (G + U)
    assert stats["conflict"].item() == 0.0 and stats["alpha"].item() == 0.5


@pytest.mark.parametrize("scope", ["tensor", "encoder"])
def test_gradients_under_conflict_rescale_per_tensor_or_per_encoder(scope):
    # Two tensors: G = ([1, 0], [0.5]), U = ([-1, 1], [0.5]).
    # a = 1.25, b = -0.75, c = 2.25 -> alpha = (c - b) / (a + c - 2b) = 3 / 5 = 0.6
    # d = 2 (0.6 G + 0.4 U) = ([0.4, 0.8], [1.0]); G + U = ([0, 1], [1.0])
    g = [t([1.0, 0.0]), t([0.5])]
    u = [t([-1.0, 1.0]), t([0.5])]
    new, stats = pareto_gradients(g, u, gamma=1.5, norm_scope=scope)
    if scope == "tensor":  # s_1 = 1 / sqrt(0.8) > 1, s_2 = 1 / 1 = 1
        s1, s2 = 1 / math.sqrt(0.8), 1.0
    else:  # one s = sqrt(1 + 1) / sqrt(0.8 + 1)
        s1 = s2 = math.sqrt(2.0) / math.sqrt(1.8)
    torch.testing.assert_close(new[0], 1.5 * s1 * t([0.4, 0.8]))
    torch.testing.assert_close(new[1], 1.5 * s2 * t([1.0]))
    assert stats["alpha"].item() == pytest.approx(0.6)
    assert stats["conflict"].item() == 1.0
    assert stats["cos"].item() == pytest.approx(-0.75 / math.sqrt(1.25 * 2.25))


def test_a_step_matches_a_direct_computation():
    """Plain SGD (no momentum, no decay): each parameter moves by -lr times the gradient the
    rule prescribes, with G and U from separate backward passes of a copy of the model."""
    lr = 0.1
    settings = {"optimizer": "sgd", "lr": lr, "momentum": 0.0, "weight_decay": 0.0}
    model = make_method("mmpareto", settings=settings)
    batch = make_batch(seed=3)
    model.train()
    ref = {n: p.detach().clone() for n, p in model.named_parameters()}

    out = model.forward_heads(batch)
    y = batch["label"]
    loss_mm = torch.nn.functional.cross_entropy(out["fused"], y)
    expected = {}
    conflicts = 0
    for m in model.modalities:
        names = [n for n, _ in model.named_parameters() if n.startswith(f"encoders.{m}.")]
        params = [dict(model.named_parameters())[n] for n in names]
        loss_m = torch.nn.functional.cross_entropy(out["uni"][m], y)
        gs = torch.autograd.grad(loss_mm, params, retain_graph=True)
        us = torch.autograd.grad(loss_m, params, retain_graph=True)
        gv, uv = torch.cat([g.flatten() for g in gs]), torch.cat([u.flatten() for u in us])
        cos = gv @ uv / (gv.norm() * uv.norm())
        conflicts += int(cos <= 0)
        # without conflict 1/2, else argmin_s ||s G + (1 - s) U||: s = <U - G, U> / ||U - G||^2
        alpha = 0.5 if cos > 0 else float((uv - gv) @ uv / (uv - gv).square().sum())
        for n, g, u in zip(names, gs, us, strict=True):
            d = 2 * (alpha * g + (1 - alpha) * u)
            s = max(float((g + u).norm() / d.norm()), 1.0)
            expected[n] = ref[n] - lr * 1.5 * s * d
    assert conflicts == 1  # this batch exercises both branches
    heads = [(n, p) for n, p in model.named_parameters() if n.startswith("head.")]
    for (n, _), g in zip(heads, torch.autograd.grad(loss_mm, [p for _, p in heads]), strict=True):
        expected[n] = ref[n] - lr * g
    for m in model.modalities:
        loss_m = torch.nn.functional.cross_entropy(out["uni"][m], y)
        hs = [(n, p) for n, p in model.named_parameters() if n.startswith(f"uni_heads.{m}.")]
        for (n, _), g in zip(hs, torch.autograd.grad(loss_m, [p for _, p in hs]), strict=True):
            expected[n] = ref[n] - lr * g

    fresh = make_method("mmpareto", settings=settings)  # the same initial weights (seed 0)
    fresh.train()
    logs = fresh.update(batch, StepInfo(0, 0, 0))
    assert set(expected) == {n for n, _ in fresh.named_parameters()}
    for n, p in fresh.named_parameters():
        torch.testing.assert_close(p.detach(), expected[n], rtol=1e-5, atol=1e-6, msg=n)
    for key in ("cos", "conflict", "alpha", "ratio", "scale"):
        assert {f"{key}_audio", f"{key}_visual"} <= set(logs)


@pytest.mark.parametrize(
    "hp, match",
    [
        ({"norm_scope": "layer"}, "norm_scope"),
        ({"gamma": 0.0}, "gamma"),
        ({"gama": 1.5}, "unknown hyper-parameter"),
    ],
)
def test_bad_options_are_rejected(hp, match):
    with pytest.raises(MethodConfigError, match=match):
        make_method("mmpareto", hp)


def test_defaults_are_the_official_values():
    model = make_method("mmpareto")
    assert model.hp == {"gamma": 1.5, "norm_scope": "tensor"}
