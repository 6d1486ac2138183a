"""PMR (methods/pmr.py): Eqs. 6-13 against hand-worked numbers, the prototypes against
class means of a known subset, PER only in its stage, the official variant."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import FixedSource, make_method

from benchmark.train.config import resolve
from methods import MethodConfigError, StepInfo
from methods.pmr import class_sums, prototype_logits, rebalance_coefficients, update_prototypes

LN2 = math.log(2.0)


# -- Eq. 7 ------------------------------------------------------------------------------
def test_prototype_logits_by_hand() -> None:
    z = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    c = torch.tensor([[0.0, 0.0], [0.0, 4.0], [3.0, 0.0]])
    # |(0,0)-(0,0)| = 0, |(0,0)-(0,4)| = 4, |(0,0)-(3,0)| = 3
    # |(3,4)-(0,0)| = 5, |(3,4)-(0,4)| = 3, |(3,4)-(3,0)| = 4
    want = torch.tensor([[0.0, -4.0, -3.0], [-5.0, -3.0, -4.0]])
    torch.testing.assert_close(prototype_logits(z, c), want)


def test_prototype_logits_pass_gradient_to_features() -> None:
    z = torch.tensor([[3.0, 4.0]], requires_grad=True)
    prototype_logits(z, torch.zeros(1, 2)).sum().backward()
    # d(-|z|)/dz = -z / |z| = (-.6, -.8)
    torch.testing.assert_close(z.grad, torch.tensor([[-0.6, -0.8]]))


# -- Eq. 11 -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("rho", "beta", "gamma"),
    [
        (0.5, 1.0, 0.0),  # 1/.5 - 1 = 1
        (0.8, 0.25, 0.0),  # 1/.8 - 1 = .25
        (0.25, 1.0, 0.0),  # 1/.25 - 1 = 3, clipped to 1
        (1.0, 0.0, 0.0),  # rho = 1: gamma = clip(0) = 0
        (1.5, 0.0, 0.5),  # 1.5 - 1
        (3.0, 0.0, 1.0),  # 3 - 1 = 2, clipped to 1
    ],
)
def test_rebalance_coefficients_paper(rho: float, beta: float, gamma: float) -> None:
    b, g = rebalance_coefficients(torch.tensor(rho), "paper", alpha=2.0)  # alpha not applied
    assert b.item() == pytest.approx(beta) and g.item() == pytest.approx(gamma)


@pytest.mark.parametrize(
    ("rho", "beta", "gamma"), [(0.5, 2.0, 0.0), (0.99, 2.0, 0.0), (1.0, 0.0, 0.0), (1.5, 0.0, 2.0)]
)
def test_rebalance_coefficients_official_binary(rho: float, beta: float, gamma: float) -> None:
    b, g = rebalance_coefficients(torch.tensor(rho), "official", alpha=2.0)
    assert b.item() == beta and g.item() == gamma


def test_rebalance_coefficients_unknown_variant() -> None:
    with pytest.raises(MethodConfigError, match="official"):
        rebalance_coefficients(torch.tensor(1.0), "bogus")


# -- Eqs. 6 and 12 ----------------------------------------------------------------------
def test_class_sums_and_prototype_update_by_hand() -> None:
    z = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    sums, counts = class_sums(z, torch.tensor([0, 0, 2]), 3)
    torch.testing.assert_close(sums, torch.tensor([[4.0, 6.0], [0.0, 0.0], [5.0, 6.0]]))
    torch.testing.assert_close(counts, torch.tensor([2.0, 0.0, 1.0]))
    old = torch.tensor([[9.0, 9.0], [7.0, 7.0], [1.0, 1.0]])
    seen = torch.ones(3, dtype=torch.bool)
    # means: class 0 (2, 3), class 2 (5, 6); class 1 absent keeps (7, 7)
    # eps = .5: class 0 .5*(9,9) + .5*(2,3) = (5.5, 6); class 2 .5*(1,1) + .5*(5,6) = (3, 3.5)
    got = update_prototypes(old, seen, sums, counts, 0.5)
    torch.testing.assert_close(got, torch.tensor([[5.5, 6.0], [7.0, 7.0], [3.0, 3.5]]))
    # the first computation (nothing seen yet) takes the means as they are
    got = update_prototypes(old, torch.zeros(3, dtype=torch.bool), sums, counts, 0.5)
    torch.testing.assert_close(got, torch.tensor([[2.0, 3.0], [7.0, 7.0], [5.0, 6.0]]))


# -- the method on a tiny model ---------------------------------------------------------
def make(hp: dict | None = None, seed: int = 0, modalities=("audio", "visual"), classes: int = 6):
    return make_method("pmr", hp, seed=seed, modalities=modalities, classes=classes)


def batch(n: int = 8, seed: int = 1, labels=None) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "audio": torch.randn(n, 1, 16, 16, generator=g),
        "visual": torch.randn(n, 1, 3, 16, 16, generator=g),
        "label": torch.randint(0, 6, (n,), generator=g) if labels is None else labels,
        "index": torch.arange(n),
    }


def test_prototypes_are_class_means_of_the_subset() -> None:
    method = make({"proto_fraction": 0.25})
    parts = [
        batch(4, seed=2, labels=torch.tensor([0, 1, 0, 3])),
        batch(3, seed=3, labels=torch.tensor([3, 0, 1])),
    ]
    source = FixedSource(parts)
    method.train()
    method.on_epoch_start(0, source)
    assert source.calls == [("train", 0.25, False)]
    assert method.training  # train mode restored
    method.eval()
    with torch.no_grad():
        feats = [method.features(b) for b in parts]
    labels = torch.cat([b["label"] for b in parts])
    for m in ("audio", "visual"):
        z = torch.cat([f[m] for f in feats])
        proto = method.prototype(m)
        assert proto.shape == (6, method.encoders[m].out_dim)
        for k in (0, 1, 3):
            torch.testing.assert_close(proto[k], z[labels == k].mean(dim=0))
        for k in (2, 4, 5):  # absent: still the initial zeros
            assert torch.equal(proto[k], torch.zeros_like(proto[k]))
    assert method.prototype_seen.tolist() == [True, True, False, True, False, False]


def test_prototype_momentum_and_absent_classes_across_epochs() -> None:
    method = make({"proto_momentum": 0.5})
    first = FixedSource([batch(4, seed=2, labels=torch.tensor([0, 1, 0, 1]))])
    method.on_epoch_start(0, first)
    old = method.prototype("audio").clone()
    second = FixedSource([batch(2, seed=4, labels=torch.tensor([0, 2]))])
    method.on_epoch_start(1, second)
    method.eval()
    with torch.no_grad():
        z = method.features(second._batches[0])["audio"]
    new = method.prototype("audio")
    torch.testing.assert_close(new[0], 0.5 * old[0] + 0.5 * z[0])  # Eq. 12
    torch.testing.assert_close(new[1], old[1])  # absent this time: kept
    torch.testing.assert_close(new[2], z[1])  # first seen now: the mean itself


def test_official_variant_leaves_the_first_two_computations_unblended() -> None:
    """The official code passes epoch 0 to its first two prototype computations, so with a
    momentum the prototypes computed at the start of epochs 0 and 1 are plain class means;
    Eq. 12 blends from epoch 2 on."""
    method = make({"proto_momentum": 0.5, "variant": "official"})
    labels = torch.tensor([0, 1, 0, 1])
    sources = [FixedSource([batch(4, seed=s, labels=labels)]) for s in (2, 4, 6)]

    def means(source):
        method.eval()
        with torch.no_grad():
            z = method.features(source._batches[0])["audio"]
        return torch.stack([z[[0, 2]].mean(dim=0), z[[1, 3]].mean(dim=0)])

    method.on_epoch_start(0, sources[0])
    method.on_epoch_start(1, sources[1])
    torch.testing.assert_close(method.prototype("audio")[:2], means(sources[1]))  # unblended
    old = method.prototype("audio")[:2].clone()
    method.on_epoch_start(2, sources[2])
    torch.testing.assert_close(method.prototype("audio")[:2], 0.5 * old + 0.5 * means(sources[2]))


def test_proto_split_val_and_the_official_ave_preset() -> None:
    method = make({"proto_split": "val", "proto_fraction": 1.0})
    source = FixedSource([batch(4, seed=2, labels=torch.tensor([0, 1, 0, 1]))])
    method.on_epoch_start(0, source)
    assert source.calls == [("val", 1.0, False)]
    ave = resolve("pmr", "ave", "/nowhere", {}, 0, {"variant": "official"}).hp
    assert ave["proto_split"] == "val" and ave["proto_fraction"] == 1.0
    assert resolve("pmr", "ave", "/nowhere", {}, 0, {}).hp["proto_split"] == "train"
    assert (
        resolve("pmr", "cremad", "/nowhere", {}, 0, {"variant": "official"}).hp["proto_split"]
        == "train"
    )


# A hand-made forward output: D = 1, two classes, two samples with labels [0, 1].
#   audio prototypes (0), (2); features 1, 1 -> logits [-1, -1]: softmax (.5, .5), s_a = 1,
#     PCE_a = ln 2, H_a = ln 2.
#   visual prototypes (0), (1); features 0 (y=0) -> logits [0, -1], 1 (y=1) -> [-1, 0]:
#     true-class probability sigma(1) = 0.7310585786 each, s_v = 1.4621171573,
#     PCE_v = -ln sigma(1) = 0.3132616875, H_v = 0.5822031089 (entropy of (.731, .269)).
#   rho = s_a / s_v = 0.6839397206 < 1: beta = 1/rho - 1 = 0.4621171573, gamma = 0.
#   fused logits all 0: CE = ln 2.
# Paper, alpha = 1: L_acc = ln 2 + beta ln 2 = 1.0134623852            (Eq. 10)
#   with PER (mu = .1): L = L_acc - .1 * beta * H_v = 0.9865577806     (Eq. 13)
# Official, alpha = 2: beta = 2, gamma = 0: L = ln 2 + 2 ln 2 = 2.0794415417; after the
#   window: L = ln 2.
BETA = 0.4621171572600098


def hand_case(hp: dict):
    method = make(hp, classes=2)
    method.prototype_0 = torch.tensor([[0.0], [2.0]])
    method.prototype_1 = torch.tensor([[0.0], [1.0]])
    b = {"label": torch.tensor([0, 1])}
    out = {
        "features": {"audio": torch.tensor([[1.0], [1.0]]), "visual": torch.tensor([[0.0], [1.0]])},
        "fused": torch.zeros(2, 2),
        "uni": {},
    }
    return method, b, out


@pytest.mark.parametrize(
    ("hp", "epoch", "loss", "beta"),
    [
        ({"mu": 0.1}, 0, 0.9865577806403616, BETA),  # PER stage
        ({"mu": 0.1}, 9, 0.9865577806403616, BETA),
        ({"mu": 0.1}, 10, 1.013462385203098, BETA),  # after per_epochs = 10
        ({"mu": 0.0}, 0, 1.013462385203098, BETA),
        ({"mu": 0.1, "per_epochs": 0}, 0, 1.013462385203098, BETA),
        ({"variant": "official", "alpha": 2.0, "mu": 0.1}, 0, 2.0794415416798357, 2.0),
        ({"variant": "official", "alpha": 2.0, "mu": 0.1}, 70, 2.0794415416798357, 2.0),
        ({"variant": "official", "alpha": 2.0}, 71, LN2, 0.0),  # outside its window
    ],
)
def test_loss_by_hand(hp: dict, epoch: int, loss: float, beta: float) -> None:
    method, b, out = hand_case(hp)
    got, logs = method.compute_loss(b, out, StepInfo(epoch=epoch, step=0, batch=0))
    assert got.item() == pytest.approx(loss, abs=1e-6)
    assert logs["rho"].item() == pytest.approx(0.6839397205857212, abs=1e-6)
    assert logs["beta"].item() == pytest.approx(beta, abs=1e-6)
    assert logs["gamma"].item() == 0.0


def test_per_only_before_per_epochs_on_a_real_forward() -> None:
    method = make({"mu": 0.5, "per_epochs": 2})
    method.on_epoch_start(0, FixedSource([batch(24, seed=5)]))
    b = batch(8, seed=6)
    method.train()
    with torch.no_grad():
        out = method.forward_heads(b)
    losses = {}
    for mu in (0.0, 0.5):
        method.hp["mu"] = mu
        for epoch in (1, 2):
            losses[mu, epoch] = method.compute_loss(b, out, StepInfo(epoch, 0, 0))[0].item()
    assert losses[0.5, 1] < losses[0.0, 1]  # PER subtracts a (positive) entropy term
    assert losses[0.5, 2] == losses[0.0, 2]


def test_update_trains_encoders_through_pce_and_logs() -> None:
    method = make()
    method.on_epoch_start(0, FixedSource([batch(24, seed=5)]))
    before = [p.clone() for p in method.encoders.parameters()]
    logs = method.update(batch(), StepInfo(epoch=0, step=0, batch=0))
    assert set(logs) == {"loss", "rho", "beta", "gamma"}
    for key, value in logs.items():
        assert value.shape == () and not value.requires_grad and torch.isfinite(value), key
    assert any(
        not torch.equal(p, q) for p, q in zip(before, method.encoders.parameters(), strict=True)
    )
    state = method.state_dict()
    assert {"prototype_0", "prototype_1", "prototype_seen"} <= set(state)


def test_config_errors_and_defaults() -> None:
    with pytest.raises(MethodConfigError, match="two modalities"):
        make(modalities=("a", "b", "c"))
    with pytest.raises(MethodConfigError, match="variant"):
        make({"variant": "code"})
    with pytest.raises(MethodConfigError, match="proto_fraction"):
        make({"proto_fraction": 0.0})
    cls = type(make())
    assert cls.defaults == {
        "alpha": 1.0,
        "mu": 1e-3,
        "per_epochs": 10,
        "proto_momentum": 0.0,
        "proto_fraction": 0.1,
        "variant": "paper",
        "modulation_end": 70,
        "proto_split": "train",
    }
    assert cls.paper_settings["frames"] == 3
    with pytest.raises(MethodConfigError, match="proto_split"):
        make({"proto_split": "test"})
