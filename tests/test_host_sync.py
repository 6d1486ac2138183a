"""The CPU host-sync detector: it flags what stalls a GPU and nothing else. (That every
method's `update` is sync-free is checked in test_build, under this detector.)"""

import pytest
import torch
from helpers import make_batch, make_method

from benchmark.speed.host_sync import HostSyncDetector, HostSyncError, first_host_sync, no_host_sync
from benchmark.train.config import resolve
from benchmark.train.data import RunData, open_dataset
from methods import StepInfo

CPU = torch.device("cpu")
x = torch.randn(6, 4)
counts = torch.tensor([0, 2])

SYNCING = [
    ("item", lambda: x.sum().item(), "aten::_local_scalar_dense"),
    ("float", lambda: float(x.max()), "aten::_local_scalar_dense"),
    ("python if", lambda: bool(x.sum() > 0), "aten::_local_scalar_dense"),
    ("boolean mask", lambda: x[x > 0], "aten::index"),
    ("masked write", lambda: x.clone().__setitem__(x > 0, 0.0), "aten::index_put_"),
    ("nonzero", lambda: torch.nonzero(x), "aten::nonzero"),
    ("where(cond)", lambda: torch.where(x > 0), "aten::nonzero"),
    ("unique", lambda: torch.unique(x), "aten::_unique2"),
    ("bincount", lambda: torch.bincount(counts), "aten::bincount"),
    ("equal", lambda: torch.equal(x, x), "aten::equal"),
    ("eigh", lambda: torch.linalg.eigh(x.T @ x), "aten::_linalg_eigh"),
    ("from python", lambda: x + torch.tensor([1.0, 2.0, 3.0, 4.0]), "aten::lift_fresh"),
    (
        "repeat_interleave",
        lambda: torch.repeat_interleave(x, torch.full((6,), 2), dim=0),
        "aten::repeat_interleave",
    ),
]


@pytest.mark.parametrize("what, run, op", SYNCING, ids=[s[0] for s in SYNCING])
def test_the_detector_flags_what_syncs_on_cuda(what, run, op):
    with HostSyncDetector() as detector:
        run()
    assert detector.found and detector.found[0].startswith(op), detector.found


def test_the_detector_lets_sync_free_work_through():
    w = torch.randn(4, 3, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    with HostSyncDetector() as detector:
        logits = x @ w
        loss = torch.nn.functional.cross_entropy(logits, labels)
        score = logits.softmax(1).gather(1, labels.unsqueeze(1)).sum()
        gated = torch.where(score > 1, logits, torch.zeros_like(logits))
        norms = torch._foreach_norm([w, logits])
        distances = torch.cdist(logits, logits).clamp_min(1e-8)
        noise = torch.randn(5) * torch.stack(norms).sum()
        x.repeat_interleave(2, dim=0)  # int repeats: the size is known
        x * torch.tensor(0.5)  # a 0-d tensor from Python: a scalar operand, no copy
        (loss + gated.sum() + distances.sum() + noise.sum()).backward()
    assert detector.found == []


def test_no_host_sync_raises_on_a_step_that_reads_a_tensor():
    model = make_method("joint")
    model.train()
    hook = model.modify_gradients

    def reads_the_loss(batch, out, step):
        if out["fused"].sum() > 0:  # a Python branch on a tensor: a sync on CUDA
            pass
        return hook(batch, out, step)

    model.modify_gradients = reads_the_loss
    expected = "host sync in the step: aten::_local_scalar_dense"
    with pytest.raises(HostSyncError, match=expected), no_host_sync(CPU):
        model.update(make_batch(), StepInfo(0, 0, 0))
    message = first_host_sync(lambda: model.update(make_batch(), StepInfo(0, 1, 1)), CPU)
    assert message is not None and "_local_scalar_dense" in message
    model.modify_gradients = hook
    assert first_host_sync(lambda: model.update(make_batch(), StepInfo(0, 2, 2)), CPU) is None


def test_mie_syncs_only_on_its_refresh_steps():
    """MIE's T refresh runs eigh every t_refresh steps: a sync by design, on those steps."""
    model = make_method("mie", {"t_refresh": 3})
    model.train()
    found = [
        first_host_sync(lambda i=i: model.update(make_batch(seed=i), StepInfo(0, i, i)), CPU)
        for i in range(6)
    ]
    assert [f is not None for f in found] == [False, False, True, False, False, True]
    assert "aten::_linalg_eigh" in found[2]


def test_the_loader_moves_and_augments_batches_without_a_sync(data_root):
    """The loader's main-process half (copy to the device, crop, flip, normalise there) is
    sync-free; the reads run in the worker processes."""
    synth, defaults = open_dataset("synth", data_root)
    settings = resolve("joint", "synth", str(synth.root), defaults, 0, {"workers": 2}).settings
    batches = RunData(synth, settings, 0, CPU).train.epoch(0)
    next(batches)  # an epoch's start draws host-side seeds; the normalising stats are made once
    with HostSyncDetector() as detector:
        batch = next(batches)
        next(batches)
    assert batch["visual"].dtype == torch.float32 and batch["visual"].dim() == 5  # augmented
    assert detector.seen > 20 and detector.found == []
