"""Every registered method x encoder x fusion head builds, trains three steps and predicts."""

import pytest
import torch

from benchmark.config import RUN_DEFAULTS
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


class FakeSource:
    """The BatchSource a method hook reads from, with fixed batches."""

    def batches(self, split="train", fraction=1.0, augment=False):
        yield make_batch(8, seed=1)
        yield make_batch(8, seed=2)


def build(method, encoder="small", fusion="concat"):
    torch.manual_seed(0)
    settings = {**RUN_DEFAULTS, "encoder": encoder, "fusion": fusion, "lr": 0.01, "epochs": 2}
    ctx = RunContext(torch.device("cpu"), 2, 3, {"audio": "audio", "visual": "visual"}, settings, 0)
    encoders = {m: create_encoder(encoder, m, s) for m, s in SHAPES.items()}
    return create_method(method, encoders, CLASSES, {}, ctx)


def train_three_steps(model):
    source = FakeSource()
    model.train()
    model.on_epoch_start(0, source)
    logs = [model.update(make_batch(seed=i), StepInfo(0, i, i)) for i in range(3)]
    model.on_epoch_end(0, source)
    return logs


def check(model, logs):
    for step in logs:
        for key, value in step.items():
            assert isinstance(value, torch.Tensor) and value.dim() == 0, key
            assert torch.isfinite(value), key
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f"parameters without gradient: {no_grad[:5]}"
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
    check(model, train_three_steps(model))


@pytest.mark.parametrize("fusion", list_fusions())
@pytest.mark.parametrize("method", list_methods())
def test_method_with_fusion(method, fusion):
    model = build(method, fusion=fusion)
    check(model, train_three_steps(model))


def test_methods_registered():
    assert "joint" in list_methods()
