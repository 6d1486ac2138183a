"""Every registered method x encoder x fusion head (and each method's options) builds, trains
three steps without a host sync and predicts."""

import contextlib

import pytest
import torch
from helpers import FixedSource

from benchmark.speed.host_sync import no_host_sync
from benchmark.train.config import RUN_DEFAULTS
from methods import (
    RunContext,
    StepInfo,
    create_encoder,
    create_method,
    list_encoders,
    list_fusions,
    list_methods,
)

SHAPES = {"audio": (1, 32, 32), "visual": (2, 32, 32, 3)}
CLASSES = 4


def make_batch(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "audio": torch.randn(n, 1, 32, 32, generator=g),
        "visual": torch.randn(n, 1, 3, 32, 32, generator=g),
        "label": torch.arange(n) % CLASSES,
        "index": torch.arange(n),
    }


def build(method, encoder="small", fusion="concat", hp=None):
    torch.manual_seed(0)
    settings = {**RUN_DEFAULTS, "encoder": encoder, "fusion": fusion, "lr": 0.01, "epochs": 2}
    ctx = RunContext(torch.device("cpu"), 2, 3, {"audio": "audio", "visual": "visual"}, settings, 0)
    encoders = {m: create_encoder(encoder, m, s) for m, s in SHAPES.items()}
    return create_method(method, encoders, CLASSES, hp or {}, ctx)


def train_three_steps(model, check_syncs=True):
    """Three updates; the second and third must not synchronise the host with the device
    (the first may: lazy state is created there) unless `check_syncs` is False."""
    source = FixedSource([make_batch(8, seed=1), make_batch(8, seed=2)])
    model.train()
    model.on_epoch_start(0, source)
    logs = [model.update(make_batch(seed=0), StepInfo(0, 0, 0))]
    with no_host_sync(torch.device("cpu")) if check_syncs else contextlib.nullcontext():
        logs += [model.update(make_batch(seed=i), StepInfo(0, i, i)) for i in (1, 2)]
    model.on_epoch_end(0, source)
    return logs


def check(model, logs, every_parameter_trained=True):
    for step in logs:
        for key, value in step.items():
            assert isinstance(value, torch.Tensor) and value.dim() == 0, key
            assert torch.isfinite(value), key
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad or not every_parameter_trained, f"parameters without gradient: {no_grad[:5]}"
    for n, p in model.named_parameters():
        assert torch.isfinite(p).all(), n
    model.eval()
    with torch.no_grad():
        out = model.predict(make_batch(5))
    assert set(out) == {"fused", "audio", "visual"}
    for head, logits in out.items():
        assert logits.shape == (5, CLASSES), head
        assert torch.isfinite(logits).all(), head


@pytest.mark.parametrize("encoder", list_encoders())
@pytest.mark.parametrize("method", list_methods())
def test_method_with_encoder(method, encoder):
    model = build(method, encoder=encoder)
    check(model, train_three_steps(model), every_parameter_trained=method not in STAGED)


# Options some methods need with some fusion heads (a no-op with the others).
FUSION_HP = {"mmcosine": {"head": "symmetric"}}  # the suite's film/gated have no slices


@pytest.mark.parametrize("fusion", list_fusions())
@pytest.mark.parametrize("method", list_methods())
def test_method_with_fusion(method, fusion):
    model = build(method, fusion=fusion, hp=FUSION_HP.get(method))
    check(model, train_three_steps(model), every_parameter_trained=method not in STAGED)


@pytest.mark.parametrize("method", list_methods())
def test_method_on_the_cuda_path_rehearsed_on_the_cpu(method):
    """What the engine does on CUDA, done on the CPU: channels_last and bf16 autocast around
    `update` (catches dtype mismatches such as a bf16 matmul assigned to an fp32 grad)."""
    hp = {"t_refresh": 1} if method == "mie" else {}  # MIE: a non-identity T from step 2 on
    model = build(method, encoder="resnet18", hp=hp).to(memory_format=torch.channels_last)
    before = [p.detach().clone() for p in model.parameters()]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logs = train_three_steps(model, check_syncs=method != "mie")
    check(model, logs, every_parameter_trained=method not in STAGED)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(p.grad.dtype == torch.float32 for p in model.parameters() if p.grad is not None)
    changed = [not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True)]
    assert sum(changed) > len(changed) // 2


OPTIONS = [
    ("ogm_ge", {"scope": "conv"}),
    ("ogm_ge", {"coeff": "shifted", "ge": False}),
    ("pmr", {"variant": "official"}),
    ("agm", {"muted_pass": "fast"}),
    ("agm", {"variant": "official"}),
    ("agm", {"grad_clip_norm": 0.0}),
    ("mie", {"variant": "official", "rho": 1e-10}),
    ("mie", {"head": "linear"}),
    ("mie", {"schedule": [["visual", 1], ["audio", 1]]}),
    ("mmpareto", {"norm_scope": "encoder"}),
    ("mmcosine", {"variant": "official", "nce_lambda": 0.1}),
    ("inforeg", {"variant": "v1"}),
    ("inforeg", {"variant": "v2"}),
    ("greedy", {"variant": "official", "warmup_epochs": 0, "alpha": 0.0}),
    ("g_blending", {"mode": "offline", "estimate_epochs": 1}),
    ("g_blending", {"weights": [0.2, 0.3, 0.5]}),
    ("relearn", {"period": 1, "reset_bn_stats": True, "reset_momentum": True}),
    ("reconboost", {"e1": 1, "e2": 1, "other_mode": "eval", "ga_grad": True}),
    ("reconboost", {"head": "linear", "beta_init": 0.01, "ga_rerun": False}),
    ("reconboost", {"fresh_optimizer_per_phase": False, "w1": 4.0}),
    ("umt", {"teacher_mode": "train", "teacher_epochs": 1, "lam": 1.0}),
    ("mla", {"variant": "official"}),
    ("mla", {"gm": "code_formula", "order": ["visual", "audio"]}),
    ("mla", {"gm": "none", "fusion": "fixed", "weights": [0.3, 0.7]}),
    ("mla", {"entropy": "official_batch", "stale_zero_grads": True}),
]

# Methods whose first epoch trains one modality's learner only (ReconBoost: stage 0, phase 1).
STAGED = {"reconboost"}


@pytest.mark.parametrize("method, hp", OPTIONS, ids=lambda v: str(v))
def test_method_option(method, hp):
    model = build(method, hp=hp)
    staged = "schedule" in hp or method in STAGED  # epoch 0 trains one modality only
    check(model, train_three_steps(model), every_parameter_trained=not staged)


def test_methods_registered():
    assert "joint" in list_methods()
