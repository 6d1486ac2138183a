"""InfoReg (methods/inforeg.py): the window and beta against hand-worked numbers, the proximal
gradient and the trace, one step against a direct computation, the variants and options."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import make_batch, make_method

from benchmark.train.config import resolve
from methods import MethodConfigError, StepInfo
from methods.inforeg import (
    add_proximal_,
    regulation_coefficients,
    trace_increment,
    true_class_sum,
    window_k,
)
from methods.parts.base import cross_entropy

PLAIN_SGD = {"momentum": 0.0, "weight_decay": 0.0, "lr": 0.1}


def t(x):
    return torch.tensor(x, dtype=torch.float64)


# -- pure functions, hand-worked ------------------------------------------------------------
def test_window_k_hand_values():
    assert window_k([]) == 1.0  # k_0 = 1
    # one finished epoch: A = T0/10, A' = 0 -> k = 1
    assert window_k([5.0]) == pytest.approx(1.0)
    # two: A = (T0 + T1)/10, A' = T0/10 -> k = T1 / (T0 + T1) = 3 / 8
    assert window_k([5.0, 3.0]) == pytest.approx(3 / 8)
    # twelve traces 1..12, window 10: A = mean(3..12) = 7.5, A' = mean(2..11) = 6.5 -> 1/7.5
    assert window_k([float(i) for i in range(1, 13)]) == pytest.approx(1 / 7.5)
    # window 2: [0, 0, 4, 2]: A = 3, A' = 2 -> 1/3
    assert window_k([4.0, 2.0], window=2) == pytest.approx(1 / 3)
    assert window_k([0.0, 0.0]) == 0.0  # no information: guarded, not a division by zero


def test_regulation_coefficients_hand_values():
    # s_a = 5, s_v = 3: beta_a = 0.95 exp(tanh(2)) = 0.95 * 2.6215... ; beta_v = 0
    b_a, b_v = regulation_coefficients(t(5.0), t(3.0), 0.95, 0.1, in_window=True)
    assert b_a.item() == pytest.approx(0.95 * math.exp(math.tanh(2.0)), rel=1e-12)
    assert b_v.item() == 0.0
    # s_v larger by 0.5: beta_v = 0.1 exp(tanh(0.5)) = 0.15863...
    b_a, b_v = regulation_coefficients(t(1.0), t(1.5), 0.95, 0.1, in_window=True)
    assert b_a.item() == 0.0
    assert b_v.item() == pytest.approx(0.1 * math.exp(math.tanh(0.5)), rel=1e-12)
    # v1: the second branch never fires
    b_a, b_v = regulation_coefficients(t(1.0), t(1.5), 0.95, 0.1, True, second_branch=False)
    assert b_a.item() == 0.0 and b_v.item() == 0.0
    # a tie, and outside the window: nothing
    assert all(b.item() == 0 for b in regulation_coefficients(t(2.0), t(2.0), 1.0, 1.0, True))
    assert all(b.item() == 0 for b in regulation_coefficients(t(5.0), t(1.0), 1.0, 1.0, False))


def test_true_class_sum_hand_value():
    # softmax([0, 0])[1] = 1/2, softmax([log 3, 0])[0] = 3/4: s = 1.25 (a SUM, not a mean)
    s = true_class_sum(t([[0.0, 0.0], [math.log(3.0), 0.0]]), torch.tensor([1, 0]))
    assert s.item() == pytest.approx(1.25, rel=1e-6)


def test_add_proximal_hand_values():
    g, p, anchor = [t([1.0, 2.0])], [t([3.0, 3.0])], [t([1.0, 4.0])]
    add_proximal_(g, p, anchor, t(0.5))
    # g + 0.5 (p - p_bar) = [1 + 1, 2 - 0.5]
    assert torch.equal(g[0], t([2.0, 1.5]))


def test_trace_increment_hand_value():
    # ||[1, 2]||^2 / 2 + ||[[3]]||^2 / 1 = 2.5 + 9
    assert trace_increment([t([1.0, 2.0]), t([[3.0]])]).item() == pytest.approx(11.5)


# -- the method -----------------------------------------------------------------------------
def make(hp=None, settings=None, **kw):
    return make_method("inforeg", hp, settings=settings, **kw)


@pytest.mark.parametrize("hp", [{}, {"variant": "v2"}, {"variant": "v1"}])
def test_steps_match_a_direct_computation(hp):
    """Two epochs of updates = plain SGD on CE(fused) + sum_m CE(u^m), plus beta (p - p_bar)
    on the leading encoder's gradient, with p_bar the start-of-epoch weights (float64)."""
    m = make(hp, PLAIN_SGD).double()
    ref = make(hp, PLAIN_SGD).double()
    ref.load_state_dict(m.state_dict())
    m.train()
    ref.train()
    step = 0
    for epoch in range(2):
        m.on_epoch_start(epoch, None)
        anchor = {k: p.detach().clone() for k, p in ref.named_parameters()}
        assert m.in_window  # k_0 = k_1 = 1
        for i in range(2):
            batch = {
                k: v.double() if v.is_floating_point() else v
                for k, v in make_batch(seed=10 * epoch + i).items()
            }
            logs = m.update(batch, StepInfo(epoch, step, i))
            step += 1
            out = ref.forward_heads(batch)
            y = batch["label"]
            loss = cross_entropy(out["fused"].double(), y)
            loss = loss + sum(cross_entropy(out["uni"][k].double(), y) for k in ("audio", "visual"))
            names = [n for n, _ in ref.named_parameters()]
            grads = torch.autograd.grad(loss, list(ref.parameters()))
            s = {k: true_class_sum(out["uni"][k], y).double() for k in ("audio", "visual")}
            gap = (s["audio"] - s["visual"]).item()
            beta = {"audio": 0.0, "visual": 0.0}
            if gap > 0:
                beta["audio"] = 0.95 * math.exp(math.tanh(gap))
            elif gap < 0 and hp.get("variant") != "v1":
                beta["visual"] = 0.1 * math.exp(math.tanh(-gap))
            assert logs["beta_audio"].item() == pytest.approx(beta["audio"], rel=1e-5)
            assert logs["beta_visual"].item() == pytest.approx(beta["visual"], rel=1e-5)
            with torch.no_grad():
                for (name, p), g in zip(ref.named_parameters(), grads, strict=True):
                    mod = name.split(".")[1] if name.startswith("encoders.") else None
                    if mod is not None:
                        g = g + beta[mod] * (p - anchor[name])
                    p -= 0.1 * g
            for name, p in zip(names, ref.parameters(), strict=True):
                got = dict(m.named_parameters())[name]
                assert torch.allclose(got, p, rtol=1e-6, atol=1e-9), name
        m.on_epoch_end(epoch, None)


def test_trace_window_and_epoch_diagnostics():
    m = make({"tau": 0.5})
    m.train()
    step = 0
    rows = []
    for epoch in range(3):
        m.on_epoch_start(epoch, None)
        for i in range(2):
            m.update(make_batch(seed=epoch * 2 + i), StepInfo(epoch, step, i))
            step += 1
        rows.append(m.on_epoch_end(epoch, None))
    for row in rows:
        assert {"trace_audio", "trace_visual", "trace_total", "k", "prox_audio"} <= set(row)
        assert row["trace_total"] == pytest.approx(row["trace_audio"] + row["trace_visual"])
        assert row["trace_audio"] > 0
    assert m.traces["audio"] == [r["trace_audio"] for r in rows]
    # k of epoch 2 = T1 / (T0 + T1) on the total trace
    totals = [r["trace_total"] for r in rows]
    assert rows[2]["k"] == pytest.approx(totals[1] / (totals[0] + totals[1]))
    m.on_epoch_start(3, None)
    assert m.k == pytest.approx(window_k(totals)) and m.in_window == (m.k > 0.5)
    first = make({"window_trace": "first"})
    first.traces = {"audio": [1.0, 3.0], "visual": [10.0, 0.0]}
    assert first.trace_series() == [1.0, 3.0]
    first.hp["window_trace"] = "visual"
    assert first.trace_series() == [10.0, 0.0]


def test_the_trace_is_the_official_sum_of_layer_means():
    """I6-I7 written as the official code does (F_W += g * g per step, then sum of means)."""
    m = make(settings=PLAIN_SGD)
    m.train()
    m.on_epoch_start(0, None)
    fisher = {id(w): torch.zeros_like(w) for w in m.traced["visual"]}
    for i in range(3):
        m.update(make_batch(seed=i), StepInfo(0, i, i))
        for w in m.traced["visual"]:
            fisher[id(w)] += w.grad * w.grad
    row = m.on_epoch_end(0, None)
    want = sum(f.mean().item() for f in fisher.values())
    assert row["trace_visual"] == pytest.approx(want, rel=1e-5)


def test_outside_the_window_no_regulation():
    m = make({"tau": 2.0})  # k <= 1 < tau: never in the window
    m.train()
    m.on_epoch_start(0, None)
    logs = m.update(make_batch(), StepInfo(0, 0, 0))
    assert not m.in_window and logs["in_window"].item() == 0.0
    assert logs["beta_audio"].item() == 0.0 and logs["beta_visual"].item() == 0.0


def test_variants_and_presets():
    assert make().hp["uni_heads"] == "separate" and make().hp["window_trace"] == "total"
    v2 = make({"variant": "v2"})
    assert v2.hp["tau"] == 0.05 and v2.hp["uni_heads"] == "slices" and not hasattr(v2, "uni_heads")
    assert make({"variant": "v1"}).hp["window_trace"] == "first"
    hp = resolve("inforeg", "cremad", "/nowhere", {}, 0, {"variant": "v2"}).hp
    assert hp["tau"] == 0.05
    cfg = resolve("inforeg", "cremad", "/nowhere", {}, 0, {"protocol": "paper", "variant": "v2"})
    assert cfg.settings["epochs"] == 50 and cfg.settings["lr"] == 0.002
    assert (
        resolve("inforeg", "cremad", "/nowhere", {}, 0, {"protocol": "paper"}).settings["epochs"]
        == 80
    )


def test_gamma_by_name_or_kind():
    m = make(modalities=("audio", "rgb"))  # "rgb" is of kind visual: gamma["visual"]
    assert m.gamma == {"audio": 0.95, "rgb": 0.1}
    m = make({"gamma": {"audio": 1.0, "rgb": 0.3}}, modalities=("audio", "rgb"))
    assert m.gamma == {"audio": 1.0, "rgb": 0.3}


@pytest.mark.parametrize(
    "hp, match",
    [
        ({"variant": "official"}, "variant"),
        ({"uni_heads": "shared"}, "uni_heads"),
        ({"window_trace": "depth"}, "window_trace"),
        ({"tau": "high"}, "tau"),
        ({"window": 0}, "window"),
        ({"gamma": 0.5}, "gamma"),
        ({"gamma": {"audio": 1.0}}, "gamma"),  # no factor for visual
        ({"gamma": {"audio": 1.0, "visual": 1.0, "depth": 1.0}}, "gamma"),
        ({"gamma": {"audio": -1.0, "visual": 1.0}}, "gamma"),
        ({"beta": 1.0}, "unknown hyper-parameter"),
    ],
)
def test_every_key_is_validated(hp, match):
    with pytest.raises(MethodConfigError, match=match):
        make(hp)


def test_two_modalities_only():
    with pytest.raises(MethodConfigError, match="two modalities"):
        make(modalities=("audio", "visual", "depth"))


def test_resume_keeps_the_traces():
    m = make()
    m.train()
    m.on_epoch_start(0, None)
    m.update(make_batch(), StepInfo(0, 0, 0))
    m.on_epoch_end(0, None)
    state = m.training_state()
    other = make()
    other.load_training_state(state)
    assert other.traces == m.traces and len(other.traces["audio"]) == 1
    other.on_epoch_start(1, None)
    m.on_epoch_start(1, None)
    assert other.k == m.k
