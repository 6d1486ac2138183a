"""What a run costs: parameters, training FLOPs per sample, peak memory, seconds per epoch.

The `cost` block of summary.json (MultiBench, Liang et al. NeurIPS 2021, reports each
method's cost beside its accuracy; a method that wins by spending 3x the compute of joint
training should say so). FLOPs are counted by `torch.utils.flop_counter.FlopCounterMode`
on one `update` of a deep copy of the trained method, under a forked RNG, so the run's
own state and random stream are untouched (matmuls and convolutions, forward and
backward; element-wise work is not counted). Peak memory: on CUDA the allocator's peak
over the run (`torch.cuda.max_memory_allocated`: training steps and evaluation), on the
CPU the process's peak resident set size (`ru_maxrss`, whole process).
"""

from __future__ import annotations

import copy
import resource
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from methods import Method, StepInfo


def parameter_counts(method: Method) -> dict[str, int]:
    """{"encoder/<m>": n, "heads": everything that is not an encoder, "total": n}."""
    counts = {
        f"encoder/{m}": sum(p.numel() for p in e.parameters()) for m, e in method.encoders.items()
    }
    total = sum(p.numel() for p in method.parameters())
    return {**counts, "heads": total - sum(counts.values()), "total": total}


def flops_per_sample(
    method: Method,
    batch: Mapping[str, torch.Tensor],
    autocast: Callable[[], AbstractContextManager],
) -> float | None:
    """Training FLOPs of one `update` on `batch`, divided by its size; None when the
    method cannot be copied or counted (e.g. compiled encoders)."""
    try:
        clone = copy.deepcopy(method)
        devices = [batch["label"].device] if batch["label"].is_cuda else []
        with torch.random.fork_rng(devices=devices), FlopCounterMode(display=False) as counter:
            clone.train()
            with autocast():
                clone.update(dict(batch), StepInfo(epoch=0, step=0, batch=0))
        return counter.get_total_flops() / len(batch["label"])
    except Exception:  # noqa: BLE001 - cost is a report, never a reason to fail a run
        return None


def peak_memory(device: torch.device) -> dict[str, Any]:
    if device.type == "cuda":
        return {
            "peak_memory_bytes": int(torch.cuda.max_memory_allocated(device)),
            "peak_memory_kind": "cuda_max_allocated",
        }
    return {
        "peak_memory_bytes": int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024,
        "peak_memory_kind": "process_peak_rss",
    }


def cost_block(
    method: Method,
    rows: Sequence[Mapping[str, Any]],
    batch: Mapping[str, torch.Tensor],
    device: torch.device,
    autocast: Callable[[], AbstractContextManager],
) -> dict[str, Any]:
    seconds = [r["seconds"] for r in rows if "seconds" in r]
    probes = [r["probe_seconds"] for r in rows if "probe_seconds" in r]
    return {
        "parameters": parameter_counts(method),
        "train_flops_per_sample": flops_per_sample(method, batch, autocast),
        **peak_memory(device),
        "seconds_per_epoch": sum(seconds) / len(seconds) if seconds else None,
        "probe_seconds": sum(probes) / len(probes) if probes else None,
    }
