"""MLA (methods/mla.py): the projection P, the entropy weights and the fusion against
hand-worked numbers; one update against a direct computation; the options and errors."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from helpers import make_batch, make_method
from torch import nn

from benchmark.train.config import RUN_DEFAULTS
from methods import MethodConfigError, RunContext, StepInfo, create_method
from methods.mla import (
    batch_entropy_weights,
    code_formula_update,
    entropy_weights,
    fuse,
    owm_alpha,
    owm_update,
    project,
)
from methods.parts.base import cross_entropy

PLAIN_SGD = {"momentum": 0.0, "weight_decay": 0.0, "lr": 0.1}


def t(x):
    return torch.tensor(x, dtype=torch.float64)


def h2(p):
    """Entropy of (p, 1 - p), by hand."""
    return -(p * math.log(p) + (1 - p) * math.log(1 - p))


# -- pure functions, hand-worked ------------------------------------------------------------
def test_owm_alpha_hand_values():
    assert owm_alpha(0, 10) == pytest.approx(0.1)  # b = 0: 0.1^1
    assert owm_alpha(5, 10) == pytest.approx(0.1**1.5)  # halfway: 0.1^1.5 = 0.0316...
    assert owm_alpha(9, 10) == pytest.approx(0.1**1.9)


def test_owm_update_hand_values():
    eye = torch.eye(2, dtype=torch.float64)
    # r = (1, 0): k = (1, 0), r k = 1 -> P = I - diag(1, 0) / 1.1 = diag(1/11, 1)
    p = owm_update(eye, t([1.0, 0.0]), 0.1)
    assert torch.allclose(p, t([[1 / 11, 0.0], [0.0, 1.0]]), atol=1e-12)
    # r = (1, 1): k = (1, 1), r k = 2 -> P = I - ones / 2.1
    p = owm_update(eye, t([1.0, 1.0]), 0.1)
    expected = t([[1 - 1 / 2.1, -1 / 2.1], [-1 / 2.1, 1 - 1 / 2.1]])
    assert torch.allclose(p, expected, atol=1e-12)
    # from P = diag(2, 1), r = (1, 0): k = (2, 0), r k = 2 -> P = diag(2 - 4 / 2.1, 1)
    p = owm_update(t([[2.0, 0.0], [0.0, 1.0]]), t([1.0, 0.0]), 0.1)
    assert torch.allclose(p, t([[2 - 4 / 2.1, 0.0], [0.0, 1.0]]), atol=1e-12)


def test_code_formula_update_hand_values():
    # r = (1, 1): k = (1, 1); k k^T = ones; alpha + k r (outer) = 1.1 everywhere
    # -> I - ones / 1.1 = [[1/11, -10/11], [-10/11, 1/11]]; Frobenius norm sqrt(202) / 11
    p = code_formula_update(torch.eye(2, dtype=torch.float64), t([1.0, 1.0]), 0.1)
    norm = math.sqrt(202) / 11
    expected = t([[1 / 11, -10 / 11], [-10 / 11, 1 / 11]]) / norm
    assert torch.allclose(p, expected, atol=1e-12)
    # r = (1, 0): k k^T = diag(1, 0); alpha + k r = [[1.1, 0.1], [0.1, 0.1]]
    # -> diag(1/11, 1), norm sqrt(1/121 + 1)
    p = code_formula_update(torch.eye(2, dtype=torch.float64), t([1.0, 0.0]), 0.1)
    expected = t([[1 / 11, 0.0], [0.0, 1.0]]) / math.sqrt(1 / 121 + 1)
    assert torch.allclose(p, expected, atol=1e-12)


def test_project_hand_values():
    # G P^T with G = [[1, 2]], P = [[0, 1], [3, 0]]: P^T = [[0, 3], [1, 0]] -> [[2, 3]]
    assert torch.equal(project(t([[1.0, 2.0]]), t([[0.0, 1.0], [3.0, 0.0]])), t([[2.0, 3.0]]))


def test_entropy_weights_hand_values():
    # u^a = (0, 0): p = (1/2, 1/2), e_a = ln 2; u^v = (ln 3, 0): p = (3/4, 1/4), e_v = H(3/4)
    ua, uv = t([[0.0, 0.0]]), t([[math.log(3), 0.0]])
    e_a, e_v = math.log(2), h2(0.75)
    lam_a = math.exp(-e_a) / (math.exp(-e_a) + math.exp(-e_v))
    lam = entropy_weights([ua, uv])
    assert lam.shape == (2, 1)
    assert lam[0, 0].item() == pytest.approx(lam_a, rel=1e-6)
    assert lam[1, 0].item() == pytest.approx(1 - lam_a, rel=1e-6)
    assert lam[1, 0] > lam[0, 0]  # the more confident modality weighs more
    # the code's form exp(max e - e_m) / sum is the same number
    code = math.exp(max(e_a, e_v) - e_a) / (
        math.exp(max(e_a, e_v) - e_a) + math.exp(max(e_a, e_v) - e_v)
    )
    assert lam[0, 0].item() == pytest.approx(code, rel=1e-6)
    fused = fuse([ua, uv], lam)
    assert fused[0, 0].item() == pytest.approx((1 - lam_a) * math.log(3), rel=1e-6)
    assert fused[0, 1].item() == pytest.approx(0.0, abs=1e-7)


def test_batch_entropy_weights_hand_values():
    # The code's rule, softmax over the batch: u^a = zeros(2, 2): each column (1/2, 1/2),
    # e_a = 2 ln 2; u^v = [[ln 3, 0], [0, 0]]: column 0 (3/4, 1/4), column 1 (1/2, 1/2),
    # e_v = H(3/4) + ln 2.
    ua = t([[0.0, 0.0], [0.0, 0.0]])
    uv = t([[math.log(3), 0.0], [0.0, 0.0]])
    e_a, e_v = 2 * math.log(2), h2(0.75) + math.log(2)
    lam_a = 1 / (1 + math.exp(e_a - e_v))
    lam = batch_entropy_weights([ua, uv])
    assert lam.shape == (2, 1)
    assert lam[0, 0].item() == pytest.approx(lam_a, rel=1e-6)
    fused = fuse([ua, uv], lam)  # one weight per modality for the whole batch
    assert fused[0, 0].item() == pytest.approx((1 - lam_a) * math.log(3), rel=1e-6)
    assert fused[1, 0].item() == pytest.approx(0.0, abs=1e-7)


def test_fixed_fusion_hand_values():
    fused = fuse([t([[1.0, 2.0]]), t([[3.0, -1.0]])], t([0.55, 0.45]))
    assert torch.allclose(fused.double(), t([[0.55 + 1.35, 1.1 - 0.45]]), atol=1e-6)


# -- the method -----------------------------------------------------------------------------
def test_one_update_matches_a_direct_computation():
    """Audio sub-step (no projection: the run's first), then the visual one with P from
    r = mean z^v; audio's encoder never sees L_v, visual's never sees L_a."""
    model = make_method("mla", settings=PLAIN_SGD)
    ref = copy.deepcopy(model)
    model.train(), ref.train()
    batch = make_batch(seed=3)
    y, lr = batch["label"], 0.1
    alpha = 0.1 ** (1 + 2 / 5)  # batch 2 of 5

    # direct: audio sub-step
    loss_a = cross_entropy(ref.head(ref.encoders["audio"](batch["audio"])), y)
    theta_a = [*ref.encoders["audio"].parameters(), *ref.head.parameters()]
    g_a = torch.autograd.grad(loss_a, theta_a)
    with torch.no_grad():
        for p, g in zip(theta_a, g_a, strict=True):
            p -= lr * g
    # direct: visual sub-step with the OWM projection of the head's weight gradient
    z_v = ref.encoders["visual"](batch["visual"])
    loss_v = cross_entropy(ref.head(z_v), y)
    theta_v = [*ref.encoders["visual"].parameters(), *ref.head.parameters()]
    g_v = list(torch.autograd.grad(loss_v, theta_v))
    r = z_v.detach().mean(dim=0, keepdim=True)  # 1 x D
    k = r.T  # P = I: k = P r^T
    p_new = torch.eye(r.shape[1]) - (k @ k.T) / (alpha + (r @ k))
    n_enc = len(list(ref.encoders["visual"].parameters()))
    g_v[n_enc] = g_v[n_enc] @ p_new.T  # the head's weight
    with torch.no_grad():
        for p, g in zip(theta_v, g_v, strict=True):
            p -= lr * g

    logs = model.update(batch, StepInfo(0, 2, 2))
    assert model.substeps == 2
    assert torch.allclose(model.proj, p_new, atol=1e-6)
    for (name, a), b in zip(model.named_parameters(), ref.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name
    assert logs["loss_audio"].item() == pytest.approx(loss_a.item(), rel=1e-6)
    assert logs["loss_visual"].item() == pytest.approx(loss_v.item(), rel=1e-6)
    # the audio encoder's gradient is dL_a only (no loss reached it in the visual sub-step)
    for p, g in zip(model.encoders["audio"].parameters(), g_a, strict=False):
        assert torch.allclose(p.grad, g, atol=1e-6)


def test_first_substep_of_the_run_is_not_projected_and_p_persists():
    model = make_method("mla", {"order": ["visual", "audio"]}, settings=PLAIN_SGD)
    model.train()
    model.update(make_batch(seed=1), StepInfo(0, 0, 0))
    p1 = model.proj.clone()
    assert not torch.equal(p1, torch.eye(p1.shape[0]))  # updated by audio (second sub-step)
    model.update(make_batch(seed=2), StepInfo(0, 1, 1))
    assert model.substeps == 4
    assert model.proj.trace() < p1.trace()  # never reset: keeps shrinking
    state = model.training_state()
    assert "proj" in state["model"] and state["extra"] == {"substeps": 4}
    other = make_method("mla", {"order": ["visual", "audio"]}, settings=PLAIN_SGD, seed=5)
    other.load_training_state(state)
    assert other.substeps == 4 and torch.equal(other.proj, model.proj)


def test_gm_none_leaves_p_alone():
    model = make_method("mla", {"gm": "none"})
    model.train()
    for i in range(2):
        model.update(make_batch(seed=i), StepInfo(0, i, i))
    assert torch.equal(model.proj, torch.eye(model.proj.shape[0]))


def test_stale_zero_grads_give_the_earlier_encoder_a_momentum_step():
    """torch 1.8.1's zero_grad: in the visual sub-step SGD steps audio again with g = 0:
    p = p0 - lr g - lr * 0.9 g (buffer 0.9 g), by hand."""
    sgd = {"momentum": 0.9, "weight_decay": 0.0, "lr": 0.1}
    model = make_method("mla", {"stale_zero_grads": True, "gm": "none"}, settings=sgd)
    plain = make_method("mla", {"gm": "none"}, settings=sgd)
    model.train(), plain.train()
    p0 = [p.detach().clone() for p in model.encoders["audio"].parameters()]
    batch = make_batch(seed=4)
    loss = cross_entropy(model.head(model.encoders["audio"](batch["audio"])), batch["label"])
    g = torch.autograd.grad(loss, list(model.encoders["audio"].parameters()))
    model.zero_grad()
    # the grad pass ran the audio encoder once in train mode: reset BN to match `plain`
    model.load_state_dict(plain.state_dict())
    model.update(batch, StepInfo(0, 0, 0))
    plain.update(batch, StepInfo(0, 0, 0))
    for p, a, gi, q in zip(
        model.encoders["audio"].parameters(),
        p0,
        g,
        plain.encoders["audio"].parameters(),
        strict=True,
    ):
        assert torch.allclose(p, a - 0.1 * gi - 0.1 * 0.9 * gi, atol=1e-6)
        assert torch.allclose(q, a - 0.1 * gi, atol=1e-6)  # default: one step only


def test_predict_entropy_and_fixed():
    model = make_method("mla")
    model.eval()
    batch = make_batch(5)
    with torch.no_grad():
        out = model.predict(batch)
        lam = entropy_weights([out["audio"], out["visual"]])
        assert torch.allclose(
            out["fused"], lam[0, :, None] * out["audio"] + lam[1, :, None] * out["visual"]
        )
    fixed = make_method("mla", {"fusion": "fixed"})
    fixed.eval()
    with torch.no_grad():
        out = fixed.predict(batch)
    assert torch.allclose(out["fused"], 0.55 * out["audio"] + 0.45 * out["visual"], atol=1e-6)
    three = make_method("mla", {"fusion": "fixed"}, modalities=("audio", "visual", "text"))
    assert three.fixed_weights == (0.35, 0.25, 0.4)


class _Flat(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.out_dim = width
        self.fc = nn.Linear(4, width)

    def forward(self, x):
        return self.fc(x)


def _ctx():
    settings = {**RUN_DEFAULTS, "encoder": "small", "device": "cpu"}
    return RunContext(torch.device("cpu"), 2, 3, {"audio": "audio", "visual": "visual"}, settings)


def test_unequal_feature_widths_are_refused():
    encoders = {"audio": _Flat(8), "visual": _Flat(16)}
    with pytest.raises(MethodConfigError, match="equal feature widths.*audio=8, visual=16"):
        create_method("mla", encoders, 3, {}, _ctx())


@pytest.mark.parametrize(
    "hp, match",
    [
        ({"gm": "projection"}, "gm must be one of"),
        ({"fusion": "mean"}, "fusion must be one of"),
        ({"entropy": "batch"}, "entropy must be one of"),
        ({"variant": "v2"}, "variant must be one of"),
        ({"order": ["audio"]}, "order must list each modality once"),
        ({"weights": [1.0]}, "weights must be a list of 2 numbers"),
        ({"stale_zero_grads": 1}, "stale_zero_grads must be true or false"),
    ],
)
def test_invalid_options_raise_one_line_errors(hp, match):
    with pytest.raises(MethodConfigError, match=match) as err:
        make_method("mla", hp)
    assert "\n" not in str(err.value)


def test_official_variant_defaults():
    from methods.mla import MLA

    assert MLA.variant_defaults["official"] == {
        "gm": "none",
        "entropy": "official_batch",
        "stale_zero_grads": True,
    }
