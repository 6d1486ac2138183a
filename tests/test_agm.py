"""AGM (methods/agm.py): the pure rules against hand-worked numbers, the gradient hook,
the one-sample zero-input shortcut against the batched passes, the conditional clip."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import helpers
import pytest
import torch
from helpers import make_method

import methods.agm as agm
from benchmark.train.config import resolve
from methods import MethodConfigError, StepInfo
from methods.agm import (
    conditional_clip_factor,
    eval_mode,
    modulation_coefficients,
    mono_scores,
    running_scores,
    shapley_responses,
)
from methods.parts.base import cross_entropy

ROOT = Path(__file__).resolve().parents[1]


def t(x):
    return torch.tensor(x, dtype=torch.float64)


# -- pure functions, hand-worked ------------------------------------------------------------
def test_shapley_responses_hand_values():
    f_av, f_a0, f_0v = t([[2.0, 0.0]]), t([[1.0, 1.0]]), t([[0.0, 3.0]])
    phi_a, phi_v = shapley_responses(f_av, f_a0, f_0v)
    # phi_a = ([2,0] - [0,3] + [1,1]) / 2 = [1.5, -1]; phi_v = ([2,0] - [1,1] + [0,3]) / 2
    assert torch.equal(phi_a, t([[1.5, -1.0]]))
    assert torch.equal(phi_v, t([[0.5, 1.0]]))
    assert torch.equal(phi_a + phi_v, f_av)


def test_mono_scores_hand_values():
    # p = softmax([1,0])[0] = e/(e+1), softmax([0,0])[1] = 1/2:
    # -(log(e/(e+1)) + log(1/2)) / 2 = 0.503204434039084
    score = mono_scores(t([[1.0, 0.0], [0.0, 0.0]]), torch.tensor([0, 1]))
    assert score.item() == pytest.approx(0.503204434039084, rel=1e-6)
    # softmax([0,100])[0] = e^-100 < 1e-8: floored, -log(1e-8) = 18.420680743952367
    floor = mono_scores(t([[0.0, 100.0]]), torch.tensor([0]))
    assert floor.item() == pytest.approx(18.420680743952367, rel=1e-6)
    assert not mono_scores(t([[1.0, 0.0]]).requires_grad_(), torch.tensor([0])).requires_grad


def test_modulation_coefficients_hand_values():
    # CE^a = 0.5, CE^v = 1.0: r^a = e^0.5, r^v = e^-0.5; CE-bar equal: r-bar = 1.
    # kappa^a = exp(1.5 (1 - e^0.5)) = 0.37791653823953525
    # kappa^v = exp(1.5 (1 - e^-0.5)) = 1.804356485395874
    ka, kv = modulation_coefficients(t(0.5), t(1.0), t(0.8), t(0.8), alpha=1.5)
    assert ka.item() == pytest.approx(0.37791653823953525, rel=1e-9)
    assert kv.item() == pytest.approx(1.804356485395874, rel=1e-9)
    # CE = (0, 0): r = 1; CE-bar = (0, 3): r-bar^a = e^3, r-bar^v = e^-3.
    # a: e^3 - 1 = 19.09 > clip 10 -> exp(1.5 * 10) = 3269017.3724721107
    # v: exp(1.5 (e^-3 - 1)) = 0.24043165768531888
    ka, kv = modulation_coefficients(t(0.0), t(0.0), t(0.0), t(3.0), alpha=1.5)
    assert ka.item() == pytest.approx(3269017.3724721107, rel=1e-9)
    assert kv.item() == pytest.approx(0.24043165768531888, rel=1e-9)
    # clip 2, alpha 1.5: exp(3) = 20.085536923187668
    ka, _ = modulation_coefficients(t(0.0), t(0.0), t(0.0), t(3.0), alpha=1.5, clip=2.0)
    assert ka.item() == pytest.approx(20.085536923187668, rel=1e-9)


def test_running_scores_hand_values():
    # t = 0: the reference is this step's scores (kappa = 1), the mean is the scores.
    ref, mean = running_scores(t([0.0, 0.0]), t([1.0, 2.0]), torch.tensor(0))
    assert torch.equal(ref, t([1.0, 2.0])) and torch.equal(mean, t([1.0, 2.0]))
    # t = 1: reference = the mean before the update; mean = (1 + 3) / 2, (2 + 0) / 2.
    ref, mean = running_scores(t([1.0, 2.0]), t([3.0, 0.0]), torch.tensor(1))
    assert torch.equal(ref, t([1.0, 2.0])) and torch.equal(mean, t([2.0, 1.0]))
    # t = 3: 2 * 3/4 + 6/4 = 3, 2 * 3/4 - 2/4 = 1.
    _, mean = running_scores(t([2.0, 2.0]), t([6.0, -2.0]), torch.tensor(3))
    assert torch.allclose(mean, t([3.0, 1.0]))
    # At t = 0, the coefficients are exactly 1.
    ka, kv = modulation_coefficients(t(0.3), t(1.7), ref[0] * 0 + 0.3, ref[1] * 0 + 1.7, 1.5)
    assert ka.item() == 1.0 and kv.item() == 1.0


def test_conditional_clip_factor_hand_values():
    grads = [t([3.0]), t([4.0])]  # total norm 5
    assert conditional_clip_factor([t([0.5, -0.9])], grads, 1.0).item() == 1.0
    assert conditional_clip_factor([t([1.0, -1.0])], grads, 1.0).item() == 1.0  # boundary
    # outside [-1, 1]: 1 / (5 + 1e-6) = 0.19999996000000803
    for watched in ([t([1.5])], [t([0.0, -1.5])], [t([0.1]), t([[2.0]])]):
        f = conditional_clip_factor(watched, grads, 1.0).item()
        assert f == pytest.approx(0.19999996000000803, rel=1e-9)
    # triggered but the norm is already below max_norm: min(1, 10 / 5) = 1
    assert conditional_clip_factor([t([1.5])], grads, 10.0).item() == 1.0


# -- the method -----------------------------------------------------------------------------
def make(hp=None, settings=None, n_mod=2):
    modalities = ("audio", "visual", "depth")[:n_mod]
    return make_method("agm", hp, modalities=modalities, settings=settings)


def make_batch(dtype=torch.float32):
    return helpers.make_batch(seed=1, dtype=dtype)


STEP = StepInfo(epoch=0, step=0, batch=0)


def warm_up_bn(m, batch):
    """A few train-mode passes so BatchNorm running statistics differ from their init."""
    with torch.no_grad():
        for _ in range(3):
            m.forward_heads(batch)


def grads_of(m):
    return [p.grad.clone() if p.grad is not None else None for p in m.parameters()]


@pytest.mark.parametrize("muted_pass", ["fast", "eval"])
@pytest.mark.parametrize("fusion", ["concat", "film"])
def test_phi_sum_is_fused_logits(muted_pass, fusion):
    m = make({"muted_pass": muted_pass}, {"fusion": fusion})
    batch = make_batch()
    m.train()
    out = m.forward_heads(batch)
    f_av, phi_a, phi_v = m.responses(batch, out)
    assert torch.equal(f_av, out["fused"])
    assert torch.allclose(phi_a + phi_v, out["fused"], atol=1e-6)
    assert not torch.allclose(phi_a, phi_v)


def test_hook_scales_exactly_each_branch(monkeypatch):
    m = make().double()
    batch = make_batch(torch.float64)
    warm_up_bn(m, batch)
    m.train()
    params = list(m.parameters())
    fixed = (t(2.0), t(0.5))
    monkeypatch.setattr(agm, "modulation_coefficients", lambda *a, **k: fixed)
    out = m.forward_heads(batch)
    loss, logs = m.compute_loss(batch, out, STEP)
    assert logs["kappa_audio"].item() == 2.0 and logs["kappa_visual"].item() == 0.5
    got = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)

    # Reference: the same responses without hooks; push 2 g into phi^a and 0.5 g into
    # phi^v, with g the gradient of CE at phi^a + phi^v.
    _, phi_a, phi_v = m.responses(batch, out)
    s = phi_a + phi_v
    (g,) = torch.autograd.grad(cross_entropy(s, batch["label"]), s, retain_graph=True)
    ref_a = torch.autograd.grad(phi_a, params, 2.0 * g, retain_graph=True, allow_unused=True)
    ref_v = torch.autograd.grad(phi_v, params, 0.5 * g, retain_graph=True, allow_unused=True)
    unscaled_a = torch.autograd.grad(phi_a, params, g, retain_graph=True, allow_unused=True)
    n_checked = 0
    for p, x, ra, rv in zip(params, got, ref_a, ref_v, strict=True):
        ref = None if ra is None and rv is None else (ra if ra is not None else 0) + rv
        if ref is None:
            assert x is None
            continue
        assert torch.allclose(x, ref, rtol=1e-10, atol=1e-12), p.shape
        n_checked += 1
    assert n_checked == len(params)
    # The scaling did something: differs from the unscaled sum of branches.
    assert any(
        not torch.allclose(x, a + b, atol=1e-6)
        for x, a, b in zip(got, unscaled_a, torch.autograd.grad(phi_v, params, g), strict=True)
    )


def test_unit_coefficients_give_joint_gradients(monkeypatch):
    """kappa = 1: the muted terms cancel in phi^a + phi^v, so the gradients are joint's."""
    m = make()
    batch = make_batch()
    warm_up_bn(m, batch)
    m.train()
    params = list(m.parameters())
    one = (torch.tensor(1.0), torch.tensor(1.0))
    monkeypatch.setattr(agm, "modulation_coefficients", lambda *a, **k: one)
    out = m.forward_heads(batch)
    loss, _ = m.compute_loss(batch, out, STEP)
    got = torch.autograd.grad(loss, params, retain_graph=True)
    joint = torch.autograd.grad(cross_entropy(out["fused"], batch["label"]), params)
    for x, y in zip(got, joint, strict=True):
        assert torch.allclose(x, y, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("muted_pass", ["fast", "eval"])
@pytest.mark.parametrize("fusion", ["concat", "gated"])
def test_one_zero_sample_matches_batched_passes(muted_pass, fusion):
    """The shortcut (one all-zero sample per encoder, broadcast) against the plain batched
    muted passes: same responses, same gradients of every parameter (float64)."""
    m = make({"muted_pass": muted_pass}, {"fusion": fusion}).double()
    batch = make_batch(torch.float64)
    warm_up_bn(m, batch)
    m.train()
    params = list(m.parameters())
    out = m.forward_heads(batch)
    g = torch.Generator().manual_seed(2)
    w_a = torch.randn(8, 6, generator=g, dtype=torch.float64)
    w_v = torch.randn(8, 6, generator=g, dtype=torch.float64)

    _, phi_a, phi_v = m.responses(batch, out)
    fast = torch.autograd.grad((w_a * phi_a).sum() + (w_v * phi_v).sum(), params, retain_graph=True)

    # Batched reference: whole-batch zero inputs (and, for "eval", the present
    # modality re-encoded in eval mode), two separate head calls.
    with eval_mode(m.encoders):
        zeros = {k: m.encoders[k](torch.zeros_like(batch[k])) for k in ("audio", "visual")}
        present = m.features(batch) if muted_pass == "eval" else out["features"]
    f_a0, _ = m.head({"audio": present["audio"], "visual": zeros["visual"]})
    f_0v, _ = m.head({"audio": zeros["audio"], "visual": present["visual"]})
    ref_a, ref_v = shapley_responses(out["fused"], f_a0, f_0v)
    assert torch.allclose(phi_a, ref_a, rtol=0, atol=1e-12)
    assert torch.allclose(phi_v, ref_v, rtol=0, atol=1e-12)
    ref = torch.autograd.grad((w_a * ref_a).sum() + (w_v * ref_v).sum(), params)
    for p, x, y in zip(params, fast, ref, strict=True):
        assert torch.allclose(x, y, rtol=1e-10, atol=1e-12), p.shape


def test_muted_passes_leave_bn_stats_and_modes_alone():
    m = make({"muted_pass": "eval"})
    batch = make_batch()
    m.train()
    m.encoders["visual"].net[1].eval()  # a submodule's own flag must survive
    out = m.forward_heads(batch)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    flags = {name: mod.training for name, mod in m.named_modules()}
    m.responses(batch, out)
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert flags == {name: mod.training for name, mod in m.named_modules()}


def test_update_logs_and_running_state():
    m = make()
    batch = make_batch()
    m.train()
    logs = m.update(batch, STEP)
    keys = {"loss", "clip_factor"}
    keys |= {f"{k}_{mod}" for k in ("kappa", "r", "rbar") for mod in ("audio", "visual")}
    assert set(logs) == keys
    for v in logs.values():
        assert v.ndim == 0 and not v.requires_grad
    # Step 0: r-bar = r, so kappa = 1 exactly.
    assert logs["kappa_audio"].item() == 1.0 and logs["kappa_visual"].item() == 1.0
    assert torch.equal(logs["rbar_audio"], logs["r_audio"])
    assert m.t.item() == 1
    first = m.ce_bar.clone()
    assert logs["r_audio"].item() == pytest.approx(torch.exp(first[1] - first[0]).item())
    logs = m.update(batch, StepInfo(epoch=0, step=1, batch=1))
    assert m.t.item() == 2
    # Step 1: r-bar comes from the step-0 scores.
    assert logs["rbar_audio"].item() == pytest.approx(torch.exp(first[1] - first[0]).item())
    assert "ce_bar" in m.state_dict() and "t" in m.state_dict()


def test_conditional_clip_in_the_method():
    m = make().double()
    params = list(m.parameters())
    for p in params:
        p.grad = torch.full_like(p, 0.01)
    small = grads_of(m)
    logs = m.modify_gradients(make_batch(), {}, STEP)
    assert logs["clip_factor"].item() == 1.0
    for p, g in zip(params, small, strict=True):
        assert torch.equal(p.grad, g)  # nothing outside [-1, 1]: no clip, though norm > 1
    m.head.fc.weight.grad[0, 0] = -1.5
    norm = lambda: torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))  # noqa: E731
    before = norm().item()
    m.modify_gradients(make_batch(), {}, STEP)
    # total norm N -> N * 1 / (N + 1e-6): the norm is clipped to (almost exactly) 1
    assert norm().item() == pytest.approx(before / (before + 1e-6), rel=1e-12)
    # an encoder gradient outside [-1, 1] does not trigger it
    m2 = make()
    for p in m2.parameters():
        p.grad = torch.full_like(p, 0.01)
    next(m2.encoders["audio"].parameters()).grad[0] = 5.0
    assert m2.modify_gradients(make_batch(), {}, STEP)["clip_factor"].item() == 1.0
    assert make({"grad_clip_norm": 0}).modify_gradients(make_batch(), {}, STEP) == {}


def test_configuration_errors():
    with pytest.raises(MethodConfigError, match="exactly two"):
        make(n_mod=3)
    with pytest.raises(MethodConfigError):
        make(n_mod=1)
    with pytest.raises(MethodConfigError, match="muted_pass"):
        make({"muted_pass": "slow"})
    with pytest.raises(MethodConfigError, match="variant"):
        make({"variant": "authors"})
    with pytest.raises(MethodConfigError, match="muted_pass=fast"):
        make({"variant": "official", "muted_pass": "fast"})
    with pytest.raises(MethodConfigError, match="modulation_end"):
        make({"modulation_end": -2})
    with pytest.raises(MethodConfigError, match="unknown hyper-parameter"):
        make({"beta": 1.0})


def test_presets_and_paper_settings():
    cfg = resolve("agm", "cremad", "/nowhere", {}, 0, {"protocol": "paper"})
    assert cfg.hp == {
        "alpha": 1.5,
        "clip": 10.0,
        "grad_clip_norm": 1.0,
        "muted_pass": "eval",
        "variant": "paper",
        "modulation_start": 0,
        "modulation_end": -1,
    }
    assert cfg.settings["optimizer"] == "sgd" and cfg.settings["lr"] == 1e-3
    assert cfg.settings["momentum"] == 0.9 and cfg.settings["weight_decay"] == 1e-4


def test_official_presets():
    """The official variant's window and per-dataset bounds; --set still wins."""
    ave = resolve("agm", "ave", "/nowhere", {}, 0, {"variant": "official"}).hp
    assert ave["clip"] == float("inf") and ave["grad_clip_norm"] == 0.0  # AVE_main: neither
    assert ave["modulation_end"] == 19 and ave["muted_pass"] == "eval"
    cremad = resolve("agm", "cremad", "/nowhere", {}, 0, {"variant": "official"}).hp
    assert cremad["clip"] == 10.0 and cremad["grad_clip_norm"] == 1.0
    assert resolve("agm", "ave", "/nowhere", {}, 0, {}).hp["clip"] == 10.0  # paper: no preset
    mine = {"variant": "official", "clip": 3.0, "modulation_end": 5}
    hp = resolve("agm", "ave", "/nowhere", {}, 0, mine).hp
    assert hp["clip"] == 3.0 and hp["modulation_end"] == 5


def eval_mode_scores(m, batch):
    """(CE^a, CE^v) from explicit batched muted passes with the encoders in eval mode: the
    rule of docs/methods.md, written out without the method's shortcuts."""
    with torch.no_grad():
        fused, _ = m.head(m.features(batch))  # train mode: the main pass
        with eval_mode(m.encoders):
            z = m.features(batch)
            zeros = {k: m.encoders[k](torch.zeros_like(batch[k])) for k in ("audio", "visual")}
        f_a0, _ = m.head({"audio": z["audio"], "visual": zeros["visual"]})
        f_0v, _ = m.head({"audio": zeros["audio"], "visual": z["visual"]})
    phi_a, phi_v = shapley_responses(fused, f_a0, f_0v)
    return mono_scores(phi_a, batch["label"]), mono_scores(phi_v, batch["label"])


def method_scores(m, batch):
    with torch.no_grad():
        out = m.forward_heads(batch)
        _, phi_a, phi_v = m.responses(batch, out)
    return mono_scores(phi_a, batch["label"]), mono_scores(phi_v, batch["label"])


def test_default_scores_are_the_eval_mode_rule():
    """The default muted passes give the scores of explicit eval-mode passes; `fast`
    (train-mode features of the present modality) gives others once BatchNorm's running
    statistics have moved away from the batch's."""
    m = make()
    assert m.hp["muted_pass"] == "eval"
    batch = make_batch()
    warm_up_bn(m, helpers.make_batch(seed=7))  # running statistics of another batch
    m.train()
    state = {k: v.clone() for k, v in m.state_dict().items()}
    want = eval_mode_scores(m, batch)
    m.load_state_dict(state)
    got = method_scores(m, batch)
    for x, y in zip(got, want, strict=True):
        assert torch.allclose(x, y, rtol=1e-5, atol=1e-6)
    fast = make({"muted_pass": "fast"})
    fast.load_state_dict(state)
    fast.train()
    other = method_scores(fast, batch)
    assert max(abs(x - y).item() for x, y in zip(other, want, strict=True)) > 1e-3


def test_official_first_kappa_uses_unit_reference():
    """Official variant, step 0: CE-bar = 0, so r-bar = 1 and kappa^a = exp(alpha min(1 -
    r^a, clip)), not 1 as in the paper variant."""
    m = make({"variant": "official"})
    batch = make_batch()
    m.train()
    state = {k: v.clone() for k, v in m.state_dict().items()}
    ce_a, ce_v = method_scores(m, batch)
    m.load_state_dict(state)
    logs = m.update(batch, STEP)
    r_a = torch.exp(ce_v - ce_a).double()
    assert logs["rbar_audio"].item() == 1.0 and logs["rbar_visual"].item() == 1.0
    want = torch.exp(1.5 * (1 - r_a).clamp(max=10.0))
    assert logs["kappa_audio"].item() == pytest.approx(want.item(), rel=1e-5)
    assert abs(logs["kappa_audio"].item() - 1.0) > 1e-4  # the first step is modulated


def test_window_keeps_the_last_kappa():
    """After ``modulation_end`` kappa is no longer recomputed: the hooks keep the last value
    (official code); the running reference goes on."""
    m = make({"variant": "official", "modulation_end": 0})
    m.train()
    last = None
    for i in range(3):
        logs = m.update(helpers.make_batch(seed=10 + i), StepInfo(epoch=0, step=i, batch=i))
        assert last is None or logs["kappa_audio"].item() != last  # recomputed in the window
        last = logs["kappa_audio"].item()
    for i in range(3, 6):
        t_before = m.t.item()
        logs = m.update(helpers.make_batch(seed=10 + i), StepInfo(epoch=1, step=i, batch=i - 3))
        assert logs["kappa_audio"].item() == last and logs["kappa_visual"].item() == m.kappa[1]
        assert m.t.item() == t_before + 1  # CE-bar is still updated
    # the applied coefficients are the kept ones: the hook scales phi^a's gradient by `last`
    batch = make_batch()
    out = m.forward_heads(batch)
    loss, _ = m.compute_loss(batch, out, StepInfo(epoch=1, step=6, batch=3))
    _, phi_a, phi_v = m.responses(batch, out)
    s = phi_a + phi_v
    (g,) = torch.autograd.grad(cross_entropy(s, batch["label"]), s)
    head_w = m.head.fc.weight
    (got,) = torch.autograd.grad(loss, head_w, retain_graph=True)
    ref = torch.autograd.grad(phi_a, head_w, last * g, retain_graph=True)[0]
    ref = ref + torch.autograd.grad(phi_v, head_w, m.kappa[1].item() * g)[0]
    assert torch.allclose(got, ref, rtol=1e-5, atol=1e-7)
    # before the window starts: kappa = 1
    late = make({"modulation_start": 2})
    late.train()
    logs = late.update(make_batch(), STEP)
    assert logs["kappa_audio"].item() == 1.0 and logs["kappa_visual"].item() == 1.0


def test_end_to_end_synth(tmp_path):
    results, root = tmp_path / "r", str(tmp_path / "d")
    cli = [sys.executable, "-m", "benchmark"]
    # a small synth (300 samples) keeps this under a few seconds on a CPU
    prepare = [*cli, "prepare", "synth", "--set", "num_samples=300", "--data-root", root]
    subprocess.run(prepare, cwd=ROOT, check=True, capture_output=True, timeout=120)
    run = [*cli, "run", "--method", "agm", "--dataset", "synth", "--epochs", "1"]
    run += ["--results", str(results), "--data-root", root]
    subprocess.run(run, cwd=ROOT, check=True, capture_output=True, timeout=120)
    (metrics,) = results.glob("runs/synth/agm/*/metrics.jsonl")
    row = json.loads(metrics.read_text().splitlines()[-1])
    for key in ("train/kappa_audio", "train/kappa_visual", "train/r_audio", "train/rbar_visual"):
        assert key in row
    assert 0.0 <= row["val/fused/acc"] <= 1.0
