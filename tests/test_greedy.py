"""Greedy (methods/greedy.py): the conditional learning speed, the BDR difference and the
re-balancing state machine against hand-worked numbers; the MMTM squeeze over a clip's frames;
one step's speeds against a direct computation; options and errors."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import FixedSource, make_batch, make_method
from torch import nn

from methods import MethodConfigError, RunContext, StepInfo, create_method
from methods.greedy import (
    _excite,
    _squeeze,
    bdr_difference,
    learning_speed,
    next_state,
)
from methods.parts.base import cross_entropy


def t(x, dtype=torch.float64):
    return torch.tensor(x, dtype=dtype)


# -- pure functions, hand-worked ------------------------------------------------------------
def test_learning_speed_hand_value():
    # sum ||g||^2 = 1 + 4 + 9 = 14; sum ||p||^2 = 4 + 16 = 20 -> 0.7 (a ratio of sums)
    grads = [t([1.0, 2.0]), t([3.0])]
    params = [t([2.0, 0.0]), t([4.0])]
    assert learning_speed(grads, params).item() == pytest.approx(0.7)


def test_bdr_difference_hand_values():
    bdr, d = bdr_difference(t([1.0, 2.0]), t([10.0, 0.2]))
    # BDR_0 = log10(10 / 1) = 1, BDR_1 = log10(0.2 / 2) = -1, d = 2
    assert torch.allclose(bdr, t([1.0, -1.0])) and d.item() == pytest.approx(2.0)
    _, d = bdr_difference(t([1.0, 1.0]), t([0.0, 1.0]))  # guarded: finite
    assert math.isfinite(d.item())


def test_state_machine_hand_trace():
    cur, care = torch.tensor(0), torch.tensor(0)
    # locked: nothing happens whatever d
    c, k, trig = next_state(cur, care, t(5.0), 0.01, 3, unlocked=False)
    assert (c.item(), k.item(), trig.item()) == (0, 0, False)
    # |d| <= alpha: stays free
    c, k, trig = next_state(cur, care, t(-0.005), 0.01, 3, unlocked=True)
    assert (c.item(), k.item(), trig.item()) == (0, 0, False)
    # d < -alpha: care for modality 1 for the next 3 steps
    c, k, trig = next_state(cur, care, t(-0.5), 0.01, 3, unlocked=True)
    assert (c.item(), k.item(), trig.item()) == (3, 1, True)
    # then counts down whatever d, keeping care, and is free again after 3 steps
    trace = []
    for _ in range(3):
        c, k, trig = next_state(c, k, t(9.0), 0.01, 3, unlocked=True)
        trace.append((c.item(), k.item(), trig.item()))
    assert trace == [(2, 1, False), (1, 1, False), (0, 1, False)]
    # d > alpha: care for modality 0
    c, k, trig = next_state(c, k, t(0.5), 0.01, 3, unlocked=True)
    assert (c.item(), k.item(), trig.item()) == (3, 0, True)


def test_squeeze_and_excite_span_a_clips_frames():
    b, k, c = 2, 3, 4
    h = torch.arange(b * k * c * 2 * 2, dtype=torch.float64).view(b * k, c, 2, 2)
    q = _squeeze(h, b, k)
    want = h.view(b, k, c, 2, 2).mean(dim=(1, 3, 4))
    assert q.shape == (b, c) and torch.equal(q, want)
    g = torch.rand(b, c, dtype=torch.float64)
    out = _excite(h, g, b, k)
    # every frame of clip i is scaled by clip i's gate
    for i in range(b):
        for f in range(k):
            assert torch.equal(out[i * k + f], h[i * k + f] * g[i][:, None, None])


# -- the method -----------------------------------------------------------------------------
def make(hp=None, settings=None, **kw):
    return make_method("greedy", hp, settings=settings, **kw)


def test_speeds_of_one_step_match_a_direct_computation():
    """M after one free step = mu(main_m), mu(byp_m) from the step's gradients and the
    weights before it; parameters = one plain SGD step on sum_m CE(h^m, y)."""
    settings = {"momentum": 0.0, "weight_decay": 0.0, "lr": 0.1}
    m = make({"warmup_epochs": 0}, settings)
    ref = make({"warmup_epochs": 0}, settings)
    ref.load_state_dict(m.state_dict())
    batch = make_batch()
    m.train()
    ref.train()
    logs = m.update(batch, StepInfo(0, 0, 0))
    out = ref.forward_streams(batch, curate=True, track=True)
    loss = sum(cross_entropy(out["logits"][k], batch["label"]) for k in ("audio", "visual"))
    names = [n for n, _ in ref.named_parameters()]
    grads = dict(zip(names, torch.autograd.grad(loss, list(ref.parameters())), strict=True))
    params = dict(ref.named_parameters())

    def mu(select):
        keys = [n for n in names if select(n)]
        g = sum(grads[n].double().square().sum() for n in keys)
        w = sum(params[n].detach().double().square().sum() for n in keys)
        return (g / w).item()

    main_a = mu(lambda n: n.startswith(("encoders.audio.", "heads.audio.")))
    main_v = mu(lambda n: n.startswith(("encoders.visual.", "heads.visual.")))
    byp_a = mu(lambda n: ".excite.0." in n or ".squeeze." in n)
    byp_v = mu(lambda n: ".excite.1." in n or ".squeeze." in n)
    assert m.m_main.tolist() == pytest.approx([main_a, main_v], rel=1e-5)
    assert m.m_byp.tolist() == pytest.approx([byp_a, byp_v], rel=1e-5)
    d = math.log10(byp_a / main_a) - math.log10(byp_v / main_v)
    assert logs["d"].item() == pytest.approx(d, rel=1e-4)
    new = dict(m.named_parameters())
    for n in names:
        assert torch.allclose(new[n], params[n] - 0.1 * grads[n], atol=1e-6), n


def test_curation_freezes_the_cared_gate_and_pauses_the_speeds():
    m = make({"warmup_epochs": 0, "alpha": 0.0, "curation_steps": 2})
    m.train()
    logs = m.update(make_batch(seed=1), StepInfo(0, 0, 0))
    assert logs["trigger"].item() == 1.0 and m.cur.item() == 2
    care = m.care.item()
    assert care == (0 if logs["d"].item() > 0 else 1)
    before = (m.m_main.clone(), m.m_byp.clone())
    batch = make_batch(seed=2)
    # the forward in curation uses the running mean (after this batch's update) of the cared
    # gate: rebuild it by hand and compare the logits
    state = {k: v.clone() for k, v in m.state_dict().items()}
    with torch.no_grad():
        got = m.forward_streams(batch, curate=True, track=True)["logits"]
    m.load_state_dict(state)
    with torch.no_grad():
        live = m.forward_streams(batch, track=True)
    means = [m.running_gate(j, care).clone() for j in range(3)]
    m.load_state_dict(state)
    assert not torch.allclose(live["gates"][0][care], means[0].expand_as(live["gates"][0][care]))
    m.load_state_dict(state)
    logs = m.update(batch, StepInfo(0, 1, 1))
    assert logs["curation"].item() == 1.0 and logs[f"care_{m.modalities[care]}"].item() == 1.0
    assert torch.equal(m.m_main, before[0]) and torch.equal(m.m_byp, before[1])  # paused
    assert m.cur.item() == 1
    # the logits in curation differ from the live-gate ones
    assert not torch.allclose(got["audio"], live["logits"]["audio"])


def test_running_gates_paper_and_official():
    batch = make_batch()
    for variant in ("paper", "official"):
        m = make({"variant": variant})
        m.train()
        with torch.no_grad():
            g1 = m.forward_streams(batch, track=True)["gates"]
            g2 = m.forward_streams(batch, track=True)["gates"]
        for j in range(3):
            src = 0 if variant == "official" else 1  # official: r_1 tracks g_0
            want = (g1[j][src].mean(0) + g2[j][src].mean(0)) / 2
            assert torch.allclose(m.running_gate(j, 1), want, atol=1e-6)
            assert torch.allclose(m.running_gate(j, 0), (g1[j][0].mean(0) + g2[j][0].mean(0)) / 2)


def test_predict_flow_off_uses_the_squeeze_means():
    m = make()
    source = FixedSource([make_batch(seed=3), make_batch(seed=4)])
    m.train()
    m.update(make_batch(), StepInfo(0, 0, 0))
    logs = m.on_epoch_end(0, source)
    assert {"acc_on_audio", "acc_off_visual", "u_audio", "d_util"} <= set(logs)
    m.eval()
    with torch.no_grad():
        sq = [m.forward_streams(b)["squeezes"] for b in source._batches]
        want = (sq[0][0][1].sum(0) + sq[1][0][1].sum(0)) / 16
        assert torch.allclose(m.mean_squeeze(0, 1), want, atol=1e-6)
        batch = make_batch(seed=5)
        out = m.predict(batch)
        live = m.forward_streams(batch)["logits"]
        off = m.forward_streams(batch, mode="off")["logits"]
    assert torch.allclose(out["fused"], (live["audio"] + live["visual"]) / 2)
    assert torch.equal(out["audio"], off["audio"]) and torch.equal(out["visual"], off["visual"])
    assert not torch.allclose(off["audio"], live["audio"])


def test_warmup_keeps_the_state_machine_off():
    m = make({"alpha": 0.0})  # warmup_epochs 1
    m.train()
    logs = m.update(make_batch(), StepInfo(0, 0, 0))
    assert logs["trigger"].item() == 0.0 and m.cur.item() == 0
    assert (m.m_main > 0).all()  # the speeds accumulate during warm-up
    logs = m.update(make_batch(seed=1), StepInfo(1, 1, 0))
    assert logs["trigger"].item() == 1.0


class NoStages(nn.Module):
    out_dim = 4

    def forward(self, x):
        return x.flatten(1)[:, :4]


def test_encoders_without_stages_are_refused():
    from benchmark.train.config import RUN_DEFAULTS

    settings = {**RUN_DEFAULTS, "device": "cpu"}
    ctx = RunContext(torch.device("cpu"), 1, 1, {"audio": "audio", "visual": "visual"}, settings)
    with pytest.raises(MethodConfigError, match="has none"):
        create_method("greedy", {"audio": NoStages(), "visual": NoStages()}, 3, {}, ctx)


@pytest.mark.parametrize(
    "hp, match",
    [
        ({"alpha": -1.0}, "alpha"),
        ({"curation_steps": 1.5}, "curation_steps"),
        ({"warmup_epochs": -1}, "warmup_epochs"),
        ({"ratio": 0}, "ratio"),
        ({"est_fraction": 0.0}, "est_fraction"),
        ({"util_fraction": 1.5}, "util_fraction"),
        ({"variant": "bb"}, "variant"),
        ({"epsilon": 0.01}, "unknown hyper-parameter"),
    ],
)
def test_every_key_is_validated(hp, match):
    with pytest.raises(MethodConfigError, match=match):
        make(hp)


def test_two_modalities_only():
    with pytest.raises(MethodConfigError, match="two modality"):
        make(modalities=("audio", "visual", "depth"))


def test_state_is_checkpointed():
    m = make({"warmup_epochs": 0, "alpha": 0.0})
    m.train()
    m.update(make_batch(), StepInfo(0, 0, 0))
    state = m.training_state()
    other = make({"warmup_epochs": 0, "alpha": 0.0})
    other.load_training_state(state)
    for key in ("cur", "care", "m_main", "m_byp", "running_gate_0_1", "gate_count"):
        assert torch.equal(getattr(other, key), getattr(m, key)), key
