"""The cost block of summary.json (issue 12): counting never touches the run's state."""

import contextlib

import torch
from helpers import make_batch, make_method

from benchmark.train.cost import flops_per_sample, parameter_counts


def test_parameter_counts_split_encoders_and_heads():
    method = make_method("joint")
    counts = parameter_counts(method)
    total = sum(p.numel() for p in method.parameters())
    assert counts["total"] == total
    assert counts["encoder/audio"] + counts["encoder/visual"] + counts["heads"] == total
    head = method.head.fc
    assert counts["heads"] == head.weight.numel() + head.bias.numel()


def test_flops_are_counted_on_a_copy_without_touching_state_or_rng():
    method = make_method("ogm_ge")  # GE draws noise from the global RNG
    before = {k: v.clone() for k, v in method.state_dict().items()}
    rng = torch.get_rng_state()
    flops = flops_per_sample(method, make_batch(n=8), contextlib.nullcontext)
    assert flops is not None and flops > 0
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(before[k], v) for k, v in method.state_dict().items())
    # per sample: twice the batch gives the same count
    assert flops_per_sample(method, make_batch(n=16), contextlib.nullcontext) == flops
