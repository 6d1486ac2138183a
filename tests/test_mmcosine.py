"""MMCosine (methods/mmcosine.py): the cosine logits and the NCE term against hand-worked
numbers, one step against a direct computation, the heads it accepts and refuses, options."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import make_batch, make_method
from torch.nn import functional as F

from benchmark.train.config import resolve
from methods import MethodConfigError, StepInfo
from methods.mmcosine import SymmetricFiLM, SymmetricGated, cosine_logits, nce_loss

STEP = StepInfo(epoch=0, step=0, batch=0)
PLAIN_SGD = {"momentum": 0.0, "weight_decay": 0.0, "lr": 0.1}


# -- pure functions, hand-worked ------------------------------------------------------------
def test_cosine_logits_hand_values():
    z = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    w = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-5.0, 0.0]])
    # |z_0| = 5: cosines 3/5, 4/5, -3/5; times s = 10; a zero feature gives 0
    got = cosine_logits(z, w, 10.0)
    assert torch.allclose(got, torch.tensor([[6.0, 8.0, -6.0], [0.0, 0.0, 0.0]]))
    # the scale of W's rows and of z does not matter
    assert torch.allclose(cosine_logits(7 * z, 0.1 * w, 2.0), got / 5)


def test_cosine_logits_are_float32_under_autocast():
    z, w = torch.randn(4, 8), torch.randn(3, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = cosine_logits(z.bfloat16(), w, 10.0)
    assert got.dtype == torch.float32
    want = 10 * F.normalize(z.bfloat16().float()) @ F.normalize(w).t()
    assert torch.allclose(got, want, atol=1e-6)


def test_nce_loss_hand_value():
    # f = g = I (2 samples, different labels), T = 1: 1 - ||f_i - g_j||^2 / 2 = [[1, 0], [0, 1]]
    # p_00 = e / (e + 1) (positive), p_01 = 1 / (e + 1) (negative):
    # row 0 = -log(e / (e + 1)) - log(1 - 1 / (e + 1)) = 2 log(1 + 1/e); row 1 the same
    eye = torch.eye(2)
    got = nce_loss(eye, eye, torch.tensor([0, 1]), temperature=1.0)
    assert got.item() == pytest.approx(2 * math.log(1 + math.exp(-1)), rel=1e-6)
    # same labels: both are positives, p = [e, 1] / (e + 1); no negatives: no second term
    # row 0 = -(log(e/(e+1)) + log(1/(e+1))) / 2; row 1 the same
    same = nce_loss(eye, eye, torch.tensor([3, 3]), temperature=1.0)
    want = -(math.log(math.e / (math.e + 1)) + math.log(1 / (math.e + 1))) / 2
    assert same.item() == pytest.approx(want, rel=1e-6)


# -- the method -----------------------------------------------------------------------------
def make(hp=None, settings=None, **kw):
    return make_method("mmcosine", hp, settings=settings, **kw)


def manual_loss(m, batch, nce_lambda=0.0):
    """M1-M3 written out with the official code's operations: F.normalize of the feature rows
    and of the columns of each modality's transposed weight slice."""
    za = m.encoders["audio"](batch["audio"])
    zv = m.encoders["visual"](batch["visual"])
    if hasattr(m.head, "project"):
        proj = m.head.project({"audio": za, "visual": zv})
        za, zv = proj["audio"], proj["visual"]
    if hasattr(m.head.fc, "weight"):
        d = za.shape[1]
        wa, wv = m.head.fc.weight[:, :d], m.head.fc.weight[:, d:]
    else:
        wa, wv = m.head.fc["audio"].weight, m.head.fc["visual"].weight
    s = m.hp["scale"]
    out_a = s * torch.mm(F.normalize(za, dim=1), F.normalize(wa.t(), dim=0))
    out_v = s * torch.mm(F.normalize(zv, dim=1), F.normalize(wv.t(), dim=0))
    loss = F.cross_entropy(out_a + out_v, batch["label"])
    if nce_lambda:
        loss = loss + nce_lambda * nce_loss(za, zv, batch["label"], m.hp["nce_temperature"])
    return loss


@pytest.mark.parametrize(
    "fusion, hp",
    [
        ("concat", {}),
        ("sum", {"scale": 4.0}),
        ("film", {"head": "symmetric"}),
        ("gated", {"head": "symmetric", "nce_lambda": 0.5}),
    ],
)
def test_step_matches_a_direct_computation(fusion, hp):
    """One update = one plain SGD step on the written-out loss (float64)."""
    m = make(hp, {**PLAIN_SGD, "fusion": fusion}).double()
    ref = make(hp, {**PLAIN_SGD, "fusion": fusion}).double()
    ref.load_state_dict(m.state_dict())
    batch = {k: v.double() if v.is_floating_point() else v for k, v in make_batch().items()}
    m.train()
    ref.train()
    logs = m.update(batch, STEP)
    params = [p for p in ref.parameters() if p.requires_grad]
    loss = manual_loss(ref, batch, hp.get("nce_lambda", 0.0))
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    assert logs["loss"].item() == pytest.approx(loss.item(), rel=1e-10)
    new = dict(m.named_parameters())
    changed = 0
    trainable = [(n, p) for n, p in ref.named_parameters() if p.requires_grad]
    for (name, p), g in zip(trainable, grads, strict=True):
        want = p if g is None else p - 0.1 * g
        assert torch.allclose(new[name], want, rtol=1e-9, atol=1e-12), name
        changed += g is not None
    assert changed == len(params)  # every trainable parameter has a gradient
    for name, p in ref.named_parameters():  # the frozen final bias did not move
        if not p.requires_grad:
            assert torch.equal(new[name], p) and name.endswith("bias")


def test_rows_are_normalised_per_modality_slice():
    """W^m's rows are normalised over modality m's columns alone, not over W's full row."""
    m = make()
    with torch.no_grad():
        m.head.fc.weight[:, :128] = 1.0  # audio slice: rows of norm sqrt(128)
        m.head.fc.weight[:, 128:] = 100.0  # visual slice: much larger
    w = m.class_weights()
    assert set(w) == {"audio", "visual"} and w["audio"].shape == (6, 128)
    z = torch.ones(1, 128)
    # per slice: cos(1, 1) = 1 for both modalities (a full-row norm would give ~0.01 for audio)
    assert cosine_logits(z, w["audio"], 1.0)[0, 0].item() == pytest.approx(1.0)
    assert cosine_logits(z, w["visual"], 1.0)[0, 0].item() == pytest.approx(1.0)


def test_bias_is_frozen_and_out_of_the_optimiser():
    for fusion in ("concat", "sum"):
        m = make(settings={"fusion": fusion})
        frozen = [n for n, p in m.named_parameters() if not p.requires_grad]
        assert frozen and all(n.startswith("head.fc") and n.endswith("bias") for n in frozen)
        in_opt = {id(p) for g in m.optimizers["main"].param_groups for p in g["params"]}
        assert all(id(p) not in in_opt for p in m.parameters() if not p.requires_grad)


def test_heads_accepted_and_refused():
    for fusion in ("film", "gated"):
        with pytest.raises(MethodConfigError, match="head=symmetric"):
            make(settings={"fusion": fusion})
    assert isinstance(make({"head": "symmetric"}, {"fusion": "film"}).head, SymmetricFiLM)
    assert isinstance(make({"head": "symmetric"}, {"fusion": "gated"}).head, SymmetricGated)
    # concat and sum are symmetric already: the same head either way
    a, b = make({"head": "symmetric"}), make()
    assert type(a.head) is type(b.head)
    # three modalities: fine with concat, not with the NCE term or a symmetric head
    assert make(modalities=("audio", "visual", "depth")).predict is not None
    with pytest.raises(MethodConfigError, match="two modalities"):
        make({"nce_lambda": 1.0}, modalities=("audio", "visual", "depth"))
    with pytest.raises(MethodConfigError, match="two modalities"):
        make({"head": "symmetric"}, {"fusion": "film"}, modalities=("audio", "visual", "depth"))


@pytest.mark.parametrize(
    "hp, match",
    [
        ({"scale": 0}, "scale"),
        ({"scale": True}, "scale"),
        ({"head": "asymmetric"}, "head"),
        ({"eval_fused": "mean"}, "eval_fused"),
        ({"nce_lambda": -1.0}, "nce_lambda"),
        ({"nce_temperature": 0.0}, "nce_temperature"),
        ({"variant": "authors"}, "variant"),
        ({"s": 10.0}, "unknown hyper-parameter"),
    ],
)
def test_every_key_is_validated(hp, match):
    with pytest.raises(MethodConfigError, match=match):
        make(hp)


def test_predict_and_eval_fused():
    batch = make_batch()
    m = make()
    m.eval()
    with torch.no_grad():
        out = m.predict(batch)
        za = m.encoders["audio"](batch["audio"])
        zv = m.encoders["visual"](batch["visual"])
        w = m.class_weights()
        c_a, c_v = cosine_logits(za, w["audio"], 10.0), cosine_logits(zv, w["visual"], 10.0)
        raw, _ = m.head({"audio": za, "visual": zv})
    assert torch.allclose(out["audio"], c_a) and torch.allclose(out["visual"], c_v)
    assert torch.allclose(out["fused"], c_a + c_v)
    r = make({"eval_fused": "raw"})
    r.load_state_dict(m.state_dict())
    r.eval()
    with torch.no_grad():
        out_raw = r.predict(batch)
    assert torch.allclose(out_raw["fused"], raw) and torch.allclose(out_raw["audio"], c_a)


def test_official_variant_scores_the_raw_head():
    assert resolve("mmcosine", "cremad", "/nowhere", {}, 0, {}).hp["eval_fused"] == "cosine"
    hp = resolve("mmcosine", "cremad", "/nowhere", {}, 0, {"variant": "official"}).hp
    assert hp["eval_fused"] == "raw"
    assert make({"variant": "official"}).hp["eval_fused"] == "raw"  # also built directly
    assert make({"variant": "official", "eval_fused": "cosine"}).hp["eval_fused"] == "cosine"
    settings = resolve("mmcosine", "cremad", "/nowhere", {}, 0, {"protocol": "paper"}).settings
    assert settings["lr_step"] == 100 and settings["batch_size"] == 32


def test_update_logs():
    m = make({"nce_lambda": 0.1})
    m.train()
    logs = m.update(make_batch(), STEP)
    want = {"loss", "nce", "raw_acc"}
    for mod in ("audio", "visual"):
        want |= {f"{k}_{mod}" for k in ("wnorm", "znorm", "cos_y", "cos_y_std", "acc")}
    assert set(logs) == want
    for key, value in logs.items():
        assert value.ndim == 0 and not value.requires_grad and torch.isfinite(value), key
    assert -1 <= logs["cos_y_audio"].item() <= 1
