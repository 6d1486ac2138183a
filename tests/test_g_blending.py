"""G-Blending (methods/g_blending.py): the weights from given losses by hand, the held-out
rows, one step against a direct computation, an estimation that leaves the main model, its
optimiser and the RNG alone and reads only the train split, options."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import FixedSource, make_batch, make_method
from torch.nn import functional as F

from methods import MethodConfigError, StepInfo
from methods.g_blending import blend_weights, holdout_mask, masked_ce

PLAIN_SGD = {"momentum": 0.0, "weight_decay": 0.0, "lr": 0.1}


# -- pure functions, hand-worked ------------------------------------------------------------
def test_blend_weights_hand_values():
    # raw = max(dG, 0) / dO^2: 0.2 / 0.01 = 20, 0 (got worse), 0.1 / 0.04 = 2.5; sum 22.5
    w = blend_weights([0.2, -0.1, 0.1], [0.1, 0.5, 0.2], eps=0.0)
    assert w == pytest.approx([20 / 22.5, 0.0, 2.5 / 22.5])
    assert blend_weights([-1.0, 0.0], [1.0, 1.0]) == [0.5, 0.5]  # nothing generalised: uniform
    assert blend_weights([float("nan"), 0.1], [0.1, 0.1]) == pytest.approx([0.0, 1.0])
    # eps keeps dO = 0 finite: 1e-3 / 1e-8 vs 1e-3 / (1 + 1e-8)
    w = blend_weights([1e-3, 1e-3], [0.0, 1.0])
    assert w[0] == pytest.approx(1e8 / (1e8 + 1), rel=1e-6)


def test_holdout_mask_hand_value_and_share():
    # row 3, seed 0: (3 + 1000003) * 2654435761 mod 2^32 = 2984896614, 0.695 of the range:
    # held out at fraction 0.7, not at 0.69
    assert (3 + 1000003) * 2654435761 % 2**32 == 2984896614
    assert holdout_mask(torch.tensor([3]), 0.7).item() is True
    assert holdout_mask(torch.tensor([3]), 0.69).item() is False
    rows = torch.arange(100_000)
    share = holdout_mask(rows, 0.08).float().mean().item()
    assert share == pytest.approx(0.08, abs=0.005)
    assert torch.equal(holdout_mask(rows, 0.08), holdout_mask(rows, 0.08))  # fixed
    other = holdout_mask(rows, 0.08, seed=1)  # another seed, another set
    assert (other & holdout_mask(rows, 0.08)).float().mean().item() < 0.02


def test_masked_ce_hand_values():
    logits = torch.zeros(3, 2)
    labels = torch.tensor([0, 1, 0])
    assert masked_ce(logits, labels, torch.tensor([True, False, True])).item() == pytest.approx(
        math.log(2)
    )
    assert masked_ce(logits, labels, torch.zeros(3, dtype=torch.bool)).item() == 0.0


# -- the method -----------------------------------------------------------------------------
def make(hp=None, settings=None, **kw):
    return make_method("g_blending", hp, settings=settings, **kw)


def batch_with_rows(seed, n=16):
    b = make_batch(n=n, seed=seed)
    b["index"] = torch.arange(n) + n * seed
    return b


def test_step_matches_a_direct_computation():
    weights = [0.25, 0.5, 0.25]  # exact in the float32 buffer
    m = make({"weights": weights}, PLAIN_SGD).double()
    ref = make({"weights": weights}, PLAIN_SGD).double()
    ref.load_state_dict(m.state_dict())
    batch = {k: v.double() if v.is_floating_point() else v for k, v in batch_with_rows(2).items()}
    keep = ~holdout_mask(batch["index"], 0.08)
    assert not keep.all()  # the batch holds held-out rows
    m.train()
    ref.train()
    logs = m.update(batch, StepInfo(0, 0, 0))
    feats = {k: ref.encoders[k](batch[k]) for k in ("audio", "visual")}
    fused = ref.head.fc(torch.cat([feats["audio"], feats["visual"]], dim=1))
    y = batch["label"]

    def ce(logits):
        per = F.cross_entropy(logits, y, reduction="none")
        return per[keep].mean()

    loss = 0.25 * ce(ref.uni_heads["audio"](feats["audio"]))
    loss = loss + 0.5 * ce(ref.uni_heads["visual"](feats["visual"])) + 0.25 * ce(fused)
    assert logs["loss"].item() == pytest.approx(loss.item(), rel=1e-6)
    names = [n for n, _ in ref.named_parameters()]
    grads = torch.autograd.grad(loss, list(ref.parameters()))
    new = dict(m.named_parameters())
    for n, p, g in zip(names, ref.parameters(), grads, strict=True):
        assert torch.allclose(new[n], p - 0.1 * g, rtol=1e-9, atol=1e-12), n


def test_held_out_rows_never_train():
    """Changing the labels of the held-out rows changes nothing in a step."""
    a, b = make({"weights": [1, 1, 1]}), make({"weights": [1, 1, 1]})
    b.load_state_dict(a.state_dict())
    batch = batch_with_rows(2)
    other = dict(batch)
    held = holdout_mask(batch["index"], 0.08)
    other["label"] = torch.where(held, (batch["label"] + 1) % 6, batch["label"])
    assert not torch.equal(other["label"], batch["label"])
    a.train()
    b.train()
    a.update(batch, StepInfo(0, 0, 0))
    b.update(other, StepInfo(0, 0, 0))
    for (n, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q), n


def test_estimation_leaves_the_main_run_alone_and_reads_train_only():
    m = make({"super_epoch": 1})
    source = FixedSource([batch_with_rows(i) for i in range(4)])
    m.train()
    m.update(batch_with_rows(9), StepInfo(0, 0, 0))  # optimiser state exists
    state = {k: v.clone() for k, v in m.state_dict().items()}
    opt_state = {
        k: v["momentum_buffer"].clone()
        for k, v in m.optimizers["main"].state_dict()["state"].items()
    }
    rng = torch.get_rng_state()
    m.on_epoch_start(0, source)
    for k, v in m.state_dict().items():
        if k != "w":
            assert torch.equal(v, state[k]), k
    for k, v in m.optimizers["main"].state_dict()["state"].items():
        assert torch.equal(v["momentum_buffer"], opt_state[k])
    assert torch.equal(torch.get_rng_state(), rng)
    assert {split for split, _, _ in source.calls} == {"train"}  # never val or test
    assert tuple(sorted({aug for _, _, aug in source.calls})) == (False, True)
    # w = the rule applied to the measured losses
    est = m.last_estimate
    d_g = [est[f"dG_{k}"] for k in ("audio", "visual", "fused")]
    d_o = [est[f"dO_{k}"] for k in ("audio", "visual", "fused")]
    for k in ("audio", "visual", "fused"):
        assert est[f"dG_{k}"] == pytest.approx(est[f"lv0_{k}"] - est[f"lv1_{k}"])
        gap0 = est[f"lv0_{k}"] - est[f"lt0_{k}"]
        assert est[f"dO_{k}"] == pytest.approx(est[f"lv1_{k}"] - est[f"lt1_{k}"] - gap0)
    assert m.w.tolist() == pytest.approx(blend_weights(d_g, d_o), rel=1e-6)
    assert sum(m.w.tolist()) == pytest.approx(1.0)
    logs = m.on_epoch_end(0, source)
    assert {"w_audio", "w_fused", "dG_visual", "ogr_fused", "lv1_audio"} <= set(logs)


def test_held_losses_split_train_and_held_out_rows():
    m = make()
    batches = [batch_with_rows(i) for i in range(3)]
    lt, lv = m.held_losses("audio", m.branch_copy("audio"), FixedSource(batches))
    m.eval()
    per, held = [], []
    with torch.no_grad():
        for b in batches:
            logits = m.uni_heads["audio"](m.encoders["audio"](b["audio"]))
            per.append(F.cross_entropy(logits, b["label"], reduction="none"))
            held.append(holdout_mask(b["index"], 0.08))
    per, held = torch.cat(per), torch.cat(held)
    assert lt == pytest.approx(per[~held].mean().item(), rel=1e-5)
    assert lv == pytest.approx(per[held].mean().item(), rel=1e-5)


def test_estimation_schedule():
    online = make({"super_epoch": 3})
    assert [online.estimation_epochs(e) for e in range(7)] == [3, 0, 0, 3, 0, 0, 3]
    offline = make({"mode": "offline", "estimate_epochs": 2})
    assert [offline.estimation_epochs(e) for e in range(4)] == [2, 0, 0, 0]
    fixed = make({"weights": [0.1, 0.2, 0.7]})
    assert [fixed.estimation_epochs(e) for e in range(3)] == [0, 0, 0]
    assert fixed.w.tolist() == pytest.approx([0.1, 0.2, 0.7])


@pytest.mark.parametrize(
    "hp, match",
    [
        ({"super_epoch": 0}, "super_epoch"),
        ({"estimate_epochs": 1.5}, "estimate_epochs"),
        ({"mode": "sometimes"}, "mode"),
        ({"weights": [1.0, 1.0]}, "weights"),
        ({"weights": [1.0, -1.0, 1.0]}, "weights"),
        ({"holdout_fraction": 0.0}, "holdout_fraction"),
        ({"est_fraction": 1.5}, "est_fraction"),
        ({"ogr": "multibench"}, "unknown hyper-parameter"),
    ],
)
def test_every_key_is_validated(hp, match):
    with pytest.raises(MethodConfigError, match=match):
        make(hp)
