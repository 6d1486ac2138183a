"""OGM-GE (methods/ogm_ge.py): Eq. 9-10 against hand-worked numbers, the gradient
modulation against joint training's gradients, the GE noise's spread, the window."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import make_method

from methods import MethodConfigError, StepInfo
from methods.ogm_ge import modulate_, modulation_coefficients

LN3 = math.log(3.0)
LN2 = math.log(2.0)


# -- Eqs. 9-10 by hand -----------------------------------------------------------------
# Two samples, two classes, labels [0, 1]:
#   audio  softmax([ln3, 0]) = [.75, .25] -> .75;  softmax([0, 0]) -> .5;   s_a = 1.25
#   visual softmax([0, 0]) -> .5;  softmax([ln3, 0]) = [.75, .25] -> .25;  s_v = .75
#   rho_a = 1.25 / .75 = 5/3 > 1 (audio dominates), rho_v = 3/5.
# alpha = .8:  paper   k_a = 1 - tanh(.8 * 5/3) = 1 - tanh(4/3)  = 0.129938338...
#              shifted k_a = 1 - tanh(.8 * 2/3) = 1 - tanh(8/15) = 0.512075017...
#              k_v = 1 in both.
A2 = torch.tensor([[LN3, 0.0], [0.0, 0.0]])
V2 = torch.tensor([[0.0, 0.0], [LN3, 0.0]])
Y2 = torch.tensor([0, 1])

# Three samples, three classes, labels [0, 0, 1]:
#   audio  all logits 0 -> 1/3 each;                    s_a = 1
#   visual softmax([ln2, 0, 0]) = [.5, .25, .25]: .5 + .5 + .25 = s_v = 1.25
#   rho_v = 1.25 (visual dominates), rho_a = .8.
# alpha = .1:  paper   k_v = 1 - tanh(.125) = 0.875646998...
#              shifted k_v = 1 - tanh(.025) = 0.975005207...
A3 = torch.zeros(3, 3)
V3 = torch.tensor([[LN2, 0.0, 0.0]] * 3)
Y3 = torch.tensor([0, 0, 1])


@pytest.mark.parametrize(
    ("logits_a", "logits_v", "labels", "alpha", "coeff", "k_a", "k_v"),
    [
        (A2, V2, Y2, 0.8, "paper", 0.12993833825732815, 1.0),
        (A2, V2, Y2, 0.8, "shifted", 0.512075017350484, 1.0),
        (A3, V3, Y3, 0.1, "paper", 1.0, 0.8756469982284039),
        (A3, V3, Y3, 0.1, "shifted", 1.0, 0.9750052070315793),
        # a tie (rho = 1): Eq. 10 leaves both at 1, and so does the shifted form
        (A3, A3, Y3, 0.8, "paper", 1.0, 1.0),
        (A3, A3, Y3, 0.8, "shifted", 1.0, 1.0),
    ],
)
def test_coefficients_by_hand(logits_a, logits_v, labels, alpha, coeff, k_a, k_v) -> None:
    got_a, got_v = modulation_coefficients(logits_a, logits_v, labels, alpha, coeff)
    assert got_a.shape == () and got_v.shape == ()
    assert got_a.item() == pytest.approx(k_a, abs=1e-6)
    assert got_v.item() == pytest.approx(k_v, abs=1e-6)


def test_coefficients_ignore_gradient_and_dtype() -> None:
    a = A2.clone().to(torch.bfloat16).requires_grad_()
    k_a, k_v = modulation_coefficients(a, V2, Y2, 0.8)
    assert not k_a.requires_grad and k_a.dtype == torch.float32
    assert k_a.item() == pytest.approx(0.12993833825732815, abs=1e-3)  # bf16 input rounding


def test_unknown_coeff() -> None:
    with pytest.raises(MethodConfigError, match="shifted"):
        modulation_coefficients(A2, V2, Y2, 0.8, "bogus")


def test_ge_noise_has_the_gradients_std() -> None:
    torch.manual_seed(0)
    g = torch.randn(200_000) * 3.0 + 1.0  # std 3
    before = g.clone()
    modulate_([g], torch.tensor(0.25), ge=True)
    noise = g - 0.25 * before
    sigma = before.std().item() + 1e-8
    assert noise.std().item() == pytest.approx(sigma, rel=0.02)
    assert abs(noise.mean().item()) < 0.05
    h = before.clone()
    modulate_([h], torch.tensor(0.25), ge=False)
    assert torch.equal(h, 0.25 * before)


def test_ge_noise_drawn_into_a_buffer_equals_a_fresh_draw() -> None:
    grads = [torch.randn(3, 4), torch.randn(5), torch.randn(1)]
    fresh, buffered = [g.clone() for g in grads], [g.clone() for g in grads]
    torch.manual_seed(3)
    modulate_(fresh, torch.tensor(0.5), ge=True)
    torch.manual_seed(3)
    buffer = torch.full((30,), float("nan"))  # longer than the 18 elements needed
    modulate_(buffered, torch.tensor(0.5), ge=True, noise=buffer)
    for a, b, g in zip(fresh, buffered, grads, strict=True):
        assert torch.equal(a, b) and not torch.equal(a, 0.5 * g)
    assert torch.isnan(buffer[18:]).all()  # only the head of the buffer is drawn into


# -- the method on a tiny model ---------------------------------------------------------
def make(name: str, hp: dict | None = None, seed: int = 0, modalities=("audio", "visual")):
    return make_method(name, hp, seed=seed, modalities=modalities)


def batch(seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "audio": torch.randn(8, 1, 16, 16, generator=g),
        "visual": torch.randn(8, 1, 3, 16, 16, generator=g),
        "label": torch.randint(0, 6, (8,), generator=g),
        "index": torch.arange(8),
    }


def twins(hp: dict):
    """An OGM-GE model and a joint model with the same initial weights."""
    ogm = make("ogm_ge", hp)
    joint = make("joint", seed=1)
    joint.load_state_dict(ogm.state_dict())
    return ogm, joint


def grads_after_backward(method, b, step: StepInfo, modify: bool):
    method.train()
    method.optimizers["main"].zero_grad(set_to_none=True)
    out = method.forward_heads(b)
    loss, _ = method.compute_loss(b, out, step)
    loss.backward()
    logs = method.modify_gradients(b, out, step) if modify else {}
    return {n: p.grad.clone() for n, p in method.named_parameters()}, logs


def dominant(logs) -> tuple[str, str]:
    k_a, k_v = logs["k_audio"].item(), logs["k_visual"].item()
    assert min(k_a, k_v) < 1.0 and max(k_a, k_v) == 1.0  # random init: no exact tie
    return ("audio", "visual") if k_a < 1 else ("visual", "audio")


def test_only_the_dominant_encoder_is_scaled() -> None:
    ogm, joint = twins({"ge": False})
    b, step = batch(), StepInfo(epoch=0, step=0, batch=0)
    g_ogm, logs = grads_after_backward(ogm, b, step, modify=True)
    g_joint, _ = grads_after_backward(joint, b, step, modify=False)
    strong, weak = dominant(logs)
    k = logs[f"k_{strong}"]
    assert set(logs) == {"k_audio", "k_visual", "ratio"}
    assert (logs["ratio"].item() > 1) == (strong == "audio")
    for name, g in g_joint.items():
        if name.startswith(f"encoders.{strong}."):
            torch.testing.assert_close(g_ogm[name], k * g, rtol=1e-5, atol=1e-8)
        else:  # the weaker encoder and the fusion head: the joint gradient
            torch.testing.assert_close(g_ogm[name], g, rtol=1e-5, atol=1e-8)


def test_ge_noise_on_both_encoders_with_the_stated_std() -> None:
    ogm, joint = twins({"ge": True})
    b, step = batch(), StepInfo(epoch=0, step=0, batch=0)
    g_ogm, logs = grads_after_backward(ogm, b, step, modify=True)
    g_joint, _ = grads_after_backward(joint, b, step, modify=False)
    for m in ("audio", "visual"):
        # the largest conv weight of each encoder (128 x 64 x 3 x 3 = 73,728 entries)
        name = max(
            (n for n in g_joint if n.startswith(f"encoders.{m}.")),
            key=lambda n: g_joint[n].numel(),
        )
        noise = g_ogm[name] - logs[f"k_{m}"] * g_joint[name]
        sigma = g_joint[name].std().item() + 1e-8
        assert noise.std().item() == pytest.approx(sigma, rel=0.03)
    for name, g in g_joint.items():  # the head gets no noise
        if name.startswith("head."):
            torch.testing.assert_close(g_ogm[name], g)


def test_scope_conv_leaves_batchnorm_unscaled() -> None:
    ogm, joint = twins({"ge": False, "scope": "conv"})
    b, step = batch(), StepInfo(epoch=0, step=0, batch=0)
    g_ogm, logs = grads_after_backward(ogm, b, step, modify=True)
    g_joint, _ = grads_after_backward(joint, b, step, modify=False)
    strong, _ = dominant(logs)
    k = logs[f"k_{strong}"]
    conv = {
        f"encoders.{strong}.{n}.weight"
        for n, mod in ogm.encoders[strong].named_modules()
        if isinstance(mod, torch.nn.Conv2d)
    }
    assert conv
    for name, g in g_joint.items():
        want = k * g if name in conv else g
        torch.testing.assert_close(g_ogm[name], want, rtol=1e-5, atol=1e-8)
    assert any("1.weight" in n for n in g_joint if n.startswith(f"encoders.{strong}."))  # BN


@pytest.mark.parametrize(
    ("epoch", "hp"), [(0, {"modulation_start": 1}), (3, {"modulation_end": 2})]
)
def test_outside_the_window_a_step_is_a_joint_step(epoch: int, hp: dict) -> None:
    ogm, joint = twins(hp)
    b = batch()
    for method in (ogm, joint):
        method.train()
        method.update(b, StepInfo(epoch=epoch, step=0, batch=0))
    logs = ogm.update(b, StepInfo(epoch=epoch, step=1, batch=1))
    joint.update(b, StepInfo(epoch=epoch, step=1, batch=1))
    for (name, p), q in zip(ogm.state_dict().items(), joint.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    assert logs["k_audio"].item() == logs["k_visual"].item() == 1.0


def test_inside_the_window_a_step_differs_and_logs_detached_scalars() -> None:
    ogm, joint = twins({})
    b = batch()
    logs = ogm.update(b, StepInfo(epoch=0, step=0, batch=0))
    joint.update(b, StepInfo(epoch=0, step=0, batch=0))
    assert not all(
        torch.equal(p, q) for p, q in zip(ogm.parameters(), joint.parameters(), strict=True)
    )
    for key in ("loss", "k_audio", "k_visual", "ratio"):
        assert logs[key].shape == () and not logs[key].requires_grad
        assert torch.isfinite(logs[key])


def test_config_errors_and_defaults() -> None:
    with pytest.raises(MethodConfigError, match="two modalities"):
        make("ogm_ge", modalities=("a", "b", "c"))
    with pytest.raises(MethodConfigError):
        make("ogm_ge", modalities=("audio",))
    with pytest.raises(MethodConfigError, match="scope"):
        make("ogm_ge", {"scope": "bn"})
    with pytest.raises(MethodConfigError, match="coeff"):
        make("ogm_ge", {"coeff": "tanh"})
    with pytest.raises(MethodConfigError, match="unknown hyper-parameter"):
        make("ogm_ge", {"beta": 1})
    cls = type(make("ogm_ge"))
    assert cls.defaults["alpha"] == 0.8 and cls.presets["vggsound"]["alpha"] == 0.1
    assert cls.paper_settings["lr_step"] == 70


def test_modality_names_are_free() -> None:
    ogm = make("ogm_ge", modalities=("spec", "frames"))
    g = torch.Generator().manual_seed(3)
    b = {
        "spec": torch.randn(8, 1, 16, 16, generator=g),
        "frames": torch.randn(8, 1, 3, 16, 16, generator=g),
        "label": torch.randint(0, 6, (8,), generator=g),
        "index": torch.arange(8),
    }
    logs = ogm.update(b, StepInfo(epoch=0, step=0, batch=0))
    assert {"k_spec", "k_frames", "ratio"} <= set(logs)
