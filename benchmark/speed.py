"""`python -m benchmark speed`: samples/s of the loader, of each method's step, end to end.

Three measurements in one process, on one dataset, device and batch size:

(a) loader alone: train batches read, moved to the device and augmented there (and,
    reported beside it, the reads alone: `Loader.host_batches`);
(b) `update` per method on one batch already on the device (the step alone), the same
    batch for every method, under bf16 autocast on CUDA as in the engine; two steps after
    the warm-up run under `benchmark.host_sync.no_host_sync` (on CUDA
    ``torch.cuda.set_sync_debug_mode("error")``, on the CPU a dispatch-mode detector of the
    operators that would sync on CUDA), so a host-device synchronisation in a step is
    caught and reported in the table;
(c) end to end: loader + update, as the engine runs an epoch.

Each method is built by the engine's own `build_method` from its resolved run config
(same encoders, fusion head, optimiser and run settings as `run`); ratios are step
times relative to joint, which is always measured first.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from benchmark.config import RunConfig, resolve
from benchmark.data import RunData, open_dataset
from benchmark.engine import autocast, build_method, configure_backends, resolve_device
from benchmark.errors import UserError
from benchmark.host_sync import first_host_sync
from benchmark.launch import check_devices
from datasets import PreparedDataset
from datasets.loader import Loader, resolve_workers
from methods import Method, StepInfo, list_methods

BASELINE = "joint"
CHECKED_STEPS = 2  # steps of each method run under the host-sync check, untimed
Batch = dict[str, torch.Tensor]


@dataclass
class MethodSpeed:
    """One method's rates (samples/s) and what the sync check found (None: no sync)."""

    update_samples_per_s: float
    end_to_end_samples_per_s: float
    host_sync: str | None = None


@dataclass
class SpeedReport:
    """Everything `speed` measured; `to_json` gives the --json record."""

    dataset: str
    device: str
    batch_size: int
    workers: int
    steps: int
    warmup: int
    loader_samples_per_s: float
    loader_host_samples_per_s: float  # the reads alone, without the device half
    methods: dict[str, MethodSpeed] = field(default_factory=dict)

    def step_ratio(self, name: str) -> float:
        """Step time of `name` / step time of joint (> 1: slower than joint)."""
        return self.methods[BASELINE].update_samples_per_s / self.methods[name].update_samples_per_s

    def end_to_end_ratio(self, name: str) -> float:
        base = self.methods[BASELINE].end_to_end_samples_per_s
        return base / self.methods[name].end_to_end_samples_per_s

    def to_json(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "batch_size": self.batch_size,
            "loader_samples_per_s": self.loader_samples_per_s,
            "methods": {
                name: {
                    "update_samples_per_s": m.update_samples_per_s,
                    "end_to_end_samples_per_s": m.end_to_end_samples_per_s,
                    "step_ratio_to_joint": self.step_ratio(name),
                }
                for name, m in self.methods.items()
            },
        }


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); nothing on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    """The device with its card name, e.g. cuda:0 (NVIDIA H100 80GB HBM3); or cpu."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def batch_stream(epoch_batches: Callable[[int], Iterator[Batch]]) -> Iterator[Batch]:
    """The batches of epoch_batches(0), epoch_batches(1), ... without end."""
    epoch = 0
    while True:
        yield from epoch_batches(epoch)
        epoch += 1


def timed_rate(
    step: Callable[[int], None], steps: int, warmup: int, batch_size: int, device: torch.device
) -> float:
    """Samples/s of `steps` calls of step(i) after `warmup` untimed ones."""
    for i in range(warmup):
        step(i)
    synchronize(device)
    start = time.perf_counter()
    for i in range(warmup, warmup + steps):
        step(i)
    synchronize(device)
    return steps * batch_size / max(time.perf_counter() - start, 1e-9)


def time_loader(
    epoch_batches: Callable[[int], Iterator[Batch]],
    steps: int,
    warmup: int,
    batch_size: int,
    device: torch.device,
) -> float:
    """(a) Samples/s of a loader alone: `Loader.epoch` (read, copy to the device, augment)
    or `Loader.host_batches` (the reads alone)."""
    stream = batch_stream(epoch_batches)
    keep: list[Batch] = []

    def step(_: int) -> None:
        keep[:] = [next(stream)]  # hold the batch like a consumer would

    return timed_rate(step, steps, warmup, batch_size, device)


def time_update(
    method: Method, batch: Batch, steps: int, warmup: int, device: torch.device
) -> tuple[float, str | None]:
    """(b) Samples/s of `update` on one device batch, and the host sync found (or None).

    The per-step logs are summed on the device as the engine does. After the warm-up,
    `CHECKED_STEPS` untimed steps run under `no_host_sync` (CUDA's sync debug mode, or the
    CPU detector); then the timed steps run without the check, which costs time on the CPU."""
    method.train()
    sums: dict[str, torch.Tensor] = {}

    def step(i: int) -> None:
        with autocast(device):
            logs = method.update(batch, StepInfo(epoch=0, step=i, batch=i))
        for key, value in logs.items():
            value = value.detach().float()
            sums[key] = sums[key] + value if key in sums else value

    for i in range(warmup):
        step(i)
    checked = range(warmup, warmup + CHECKED_STEPS)
    checks = [first_host_sync(lambda i=i: step(i), device) for i in checked]
    start = warmup + CHECKED_STEPS
    rate = timed_rate(lambda i: step(start + i), steps, 0, len(batch["label"]), device)
    return rate, next((found for found in checks if found), None)


def time_end_to_end(
    method: Method, loader: Loader, steps: int, warmup: int, device: torch.device
) -> float:
    """(c) Samples/s of loader + update, as an engine epoch runs them."""
    method.train()
    stream = batch_stream(loader.epoch)
    sums: dict[str, torch.Tensor] = {}

    def step(i: int) -> None:
        batch = next(stream)
        with autocast(device):
            logs = method.update(batch, StepInfo(epoch=0, step=i, batch=i))
        for key, value in logs.items():
            value = value.detach().float()
            sums[key] = sums[key] + value if key in sums else value

    return timed_rate(step, steps, warmup, loader.sampler.batch_size, device)


def check_methods(methods: Sequence[str]) -> list[str]:
    """The methods to time, joint first (the ratios' baseline), each once."""
    known = list_methods()
    unknown = [m for m in methods if m not in known]
    if unknown:
        raise UserError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    return [BASELINE, *dict.fromkeys(m for m in methods if m != BASELINE)]


def resolve_configs(
    methods: Sequence[str],
    ds: PreparedDataset,
    defaults: Mapping[str, Any],
    overrides: Mapping[str, Any],
) -> dict[str, RunConfig]:
    """Each method's resolved run config (as `run` would resolve it, seed 0)."""
    configs = {
        m: resolve(m, ds.name, str(ds.root), defaults, 0, overrides) for m in check_methods(methods)
    }
    check_devices(list(configs.values()))  # --device cuda without that GPU: one line
    return configs


def measure(
    dataset: str,
    data_root: Path,
    methods: Sequence[str],
    overrides: Mapping[str, Any],
    steps: int = 20,
    warmup: int = 5,
    progress: bool = True,
) -> SpeedReport:
    """Run the three measurements; `overrides` are run settings as from `--set` (batch_size,
    device, workers, encoder, compile, ...)."""
    if steps < 1 or warmup < 0:
        raise UserError(f"--steps must be >= 1 and --warmup >= 0, got {steps} and {warmup}")
    ds, defaults = open_dataset(dataset, data_root)
    configs = resolve_configs(methods, ds, defaults, overrides)
    settings = configs[BASELINE].settings
    device = resolve_device(settings["device"])
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device} asked for but CUDA is not available; use --device cpu")
    configure_backends(device)
    torch.manual_seed(0)
    data = RunData(ds, settings, 0, device)
    loader = data.train
    batch_size = loader.sampler.batch_size
    report = SpeedReport(
        dataset=ds.name,
        device=device_name(device),
        batch_size=batch_size,
        workers=resolve_workers(settings["workers"], device),
        steps=steps,
        warmup=warmup,
        loader_samples_per_s=time_loader(loader.epoch, steps, warmup, batch_size, device),
        loader_host_samples_per_s=time_loader(
            loader.host_batches, steps, warmup, batch_size, device
        ),
    )
    batch = next(loader.epoch(0))  # the one batch every method's step is timed on
    bar = tqdm(configs.items(), desc="speed", unit="method", disable=not progress)
    for name, cfg in bar:
        bar.set_postfix_str(name)
        torch.manual_seed(0)
        method = build_method(cfg, ds, device, steps_per_epoch=len(loader))
        method.on_epoch_start(0, data)
        update_rate, sync = time_update(method, batch, steps, warmup, device)
        report.methods[name] = MethodSpeed(
            update_samples_per_s=update_rate,
            end_to_end_samples_per_s=time_end_to_end(method, loader, steps, warmup, device),
            host_sync=sync,
        )
        del method
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return report


def format_table(report: SpeedReport) -> str:
    """The printed table: rates in samples/s and step/end-to-end time ratios to joint."""
    fastest = max(m.update_samples_per_s for m in report.methods.values())
    lines = [
        f"speed on {report.dataset}: device {report.device}, batch {report.batch_size}, "
        f"{report.steps} timed steps after {report.warmup} warm-up, loader workers "
        f"{report.workers}",
        f"loader alone: {report.loader_samples_per_s:,.0f} samples/s "
        f"({report.loader_samples_per_s / fastest:.2f}x the fastest step; its reads alone "
        f"{report.loader_host_samples_per_s:,.0f} samples/s)",
        f"{'method':8s} {'step/s':>9s} {'ratio':>6s} {'end-to-end/s':>13s} {'ratio':>6s}  "
        "host sync in step",
    ]
    for name, m in report.methods.items():
        sync = m.host_sync or "none"
        lines.append(
            f"{name:8s} {m.update_samples_per_s:9,.0f} {report.step_ratio(name):6.2f} "
            f"{m.end_to_end_samples_per_s:13,.0f} {report.end_to_end_ratio(name):6.2f}  {sync}"
        )
    lines.append("rates in samples/s; ratio = time per step / joint's (lower is faster)")
    return "\n".join(lines)


def write_json(report: SpeedReport, path: Path) -> None:
    """The --json record (DESIGN: device, batch_size, loader and per-method rates)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(report.to_json(), indent=1) + "\n")
    tmp.replace(path)
