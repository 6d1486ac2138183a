"""`python -m benchmark speed`: samples/s of the loader, of each method's step, end to end.

Three measurements in one process, on one dataset, device and batch size:

(a) loader alone: train batches read, moved to the device and augmented there (and,
    reported beside it, the reads alone: `Loader.host_batches`);
(b) `update` per method on one batch already on the device (the step alone), the same
    batch for every method, under bf16 autocast on CUDA as in the engine; two steps after
    the warm-up run under `benchmark.speed.host_sync.no_host_sync` (on CUDA
    ``torch.cuda.set_sync_debug_mode("error")``, on the CPU a dispatch-mode detector of the
    operators that would sync on CUDA), so a host-device synchronisation in a step is
    caught and reported in the table;
(c) end to end: loader + update, as the engine runs an epoch.

Each method is built by the engine's own `build_method` from its resolved run config
(same encoders, fusion head, optimiser and run settings as `run`); ratios are step
times relative to joint.

Timings repeat: (b) and (c) run `repeats` rounds, each round timing every method once in
turn, so that a load that comes and goes hits every method alike rather than whichever ran
then. Rates are the median over rounds; a ratio to joint is the median over rounds of the
ratio measured within each round (both timed under the same load). Each method comes with
its spread, the interquartile range of its rounds' rates over their median (one odd
round, such as a slow first one, does not move it); a spread over `BUSY_SPREAD` means the
machine was busy and the ratios are uncertain, and the table says so.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from benchmark.errors import UserError
from benchmark.speed.host_sync import first_host_sync
from benchmark.train.config import RunConfig, resolve
from benchmark.train.data import RunData, open_dataset
from benchmark.train.devices import check_devices
from benchmark.train.engine import autocast, build_method, configure_backends, resolve_device
from datasets import PreparedDataset
from datasets.loader import Loader, resolve_workers
from methods import Method, StepInfo, list_methods

BASELINE = "joint"
CHECKED_STEPS = 2  # steps of each method run under the host-sync check, untimed
BUSY_SPREAD = 0.2  # a rate whose rounds differ by more than this (relative) is uncertain
Batch = dict[str, torch.Tensor]


def spread(rates: Sequence[float]) -> float:
    """Interquartile range / median of repeated rates: 0 when the rounds agree."""
    if len(rates) < 2:
        return 0.0
    q1, _, q3 = statistics.quantiles(rates, n=4, method="inclusive")
    return (q3 - q1) / statistics.median(rates)


@dataclass
class MethodSpeed:
    """One method's rates (samples/s, one per round) and what the sync check found (None:
    no sync). The reported rate is the median over rounds."""

    update_rates: list[float]
    end_to_end_rates: list[float]
    host_sync: str | None = None

    @property
    def update_samples_per_s(self) -> float:
        return statistics.median(self.update_rates)

    @property
    def end_to_end_samples_per_s(self) -> float:
        return statistics.median(self.end_to_end_rates)

    @property
    def spread(self) -> float:
        """The larger spread of the two rates (see `spread`)."""
        return max(spread(self.update_rates), spread(self.end_to_end_rates))


@dataclass
class SpeedReport:
    """Everything `speed` measured; `to_json` gives the --json record."""

    dataset: str
    device: str
    batch_size: int
    workers: int
    steps: int
    warmup: int
    repeats: int
    loader_samples_per_s: float
    loader_host_samples_per_s: float  # the reads alone, without the device half
    methods: dict[str, MethodSpeed] = field(default_factory=dict)

    def step_ratio(self, name: str) -> float:
        """Step time of `name` / step time of joint (> 1: slower than joint): the median
        over rounds of the ratio within each round."""
        base, rates = self.methods[BASELINE].update_rates, self.methods[name].update_rates
        return statistics.median(b / r for b, r in zip(base, rates, strict=True))

    def end_to_end_ratio(self, name: str) -> float:
        base, rates = self.methods[BASELINE].end_to_end_rates, self.methods[name].end_to_end_rates
        return statistics.median(b / r for b, r in zip(base, rates, strict=True))

    def busy(self) -> list[str]:
        """The methods whose rounds spread more than `BUSY_SPREAD`."""
        return [name for name, m in self.methods.items() if m.spread > BUSY_SPREAD]

    def to_json(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "batch_size": self.batch_size,
            "repeats": self.repeats,
            "loader_samples_per_s": self.loader_samples_per_s,
            "methods": {
                name: {
                    "update_samples_per_s": m.update_samples_per_s,
                    "end_to_end_samples_per_s": m.end_to_end_samples_per_s,
                    "step_ratio_to_joint": self.step_ratio(name),
                    "end_to_end_ratio_to_joint": self.end_to_end_ratio(name),
                    "spread": m.spread,
                    "update_rates": m.update_rates,
                    "end_to_end_rates": m.end_to_end_rates,
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


class StepRunner:
    """Runs `method.update` as the engine does (bf16 autocast on CUDA, the per-step logs
    summed on the device) with a step counter that carries on across calls."""

    def __init__(self, method: Method, device: torch.device) -> None:
        self.method, self.device, self.i = method, device, 0
        self.sums: dict[str, torch.Tensor] = {}

    def __call__(self, batch: Batch) -> None:
        with autocast(self.device):
            logs = self.method.update(batch, StepInfo(epoch=0, step=self.i, batch=self.i))
        for key, value in logs.items():
            value = value.detach().float()
            self.sums[key] = self.sums[key] + value if key in self.sums else value
        self.i += 1


def warm_up_and_check(run: StepRunner, batch: Batch, warmup: int) -> str | None:
    """`warmup` untimed steps, then `CHECKED_STEPS` untimed steps under `no_host_sync` (CUDA's
    sync debug mode, or the CPU detector, which costs time): the first host sync found, or
    None."""
    run.method.train()
    for _ in range(warmup):
        run(batch)
    checks = [first_host_sync(lambda: run(batch), run.device) for _ in range(CHECKED_STEPS)]
    return next((found for found in checks if found), None)


def time_update(run: StepRunner, batch: Batch, steps: int) -> float:
    """(b) Samples/s of `update` on one device batch (already warmed up)."""
    run.method.train()
    return timed_rate(lambda _: run(batch), steps, 0, len(batch["label"]), run.device)


def time_end_to_end(run: StepRunner, loader: Loader, steps: int, warmup: int) -> float:
    """(c) Samples/s of loader + update, as an engine epoch runs them."""
    run.method.train()
    stream = batch_stream(loader.epoch)
    return timed_rate(
        lambda _: run(next(stream)), steps, warmup, loader.sampler.batch_size, run.device
    )


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
    repeats: int = 5,
    progress: bool = True,
) -> SpeedReport:
    """Run the three measurements, (b) and (c) in `repeats` interleaved rounds (see the
    module docstring); `overrides` are run settings as from `--set` (batch_size, device,
    workers, encoder, compile, ...). With `progress`, a bar on a terminal, else one line
    per round on stderr."""
    if steps < 1 or warmup < 0 or repeats < 1:
        raise UserError(
            f"--steps and --repeats must be >= 1 and --warmup >= 0, got {steps}, {repeats} "
            f"and {warmup}"
        )
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
        repeats=repeats,
        loader_samples_per_s=time_loader(loader.epoch, steps, warmup, batch_size, device),
        loader_host_samples_per_s=time_loader(
            loader.host_batches, steps, warmup, batch_size, device
        ),
    )
    batch = next(loader.epoch(0))  # the one batch every method's step is timed on
    terminal = progress and sys.stderr.isatty()
    bar = tqdm(
        total=len(configs) * (repeats + 1), desc="speed", unit="method", disable=not terminal
    )
    runners: dict[str, StepRunner] = {}
    for name, cfg in configs.items():
        bar.set_postfix_str(f"build and warm up {name}")
        torch.manual_seed(0)
        method = build_method(cfg, ds, device, steps_per_epoch=len(loader))
        method.on_epoch_start(0, data)
        runners[name] = StepRunner(method, device)
        sync = warm_up_and_check(runners[name], batch, warmup)
        report.methods[name] = MethodSpeed([], [], host_sync=sync)
        bar.update()
    if progress and not terminal:
        print(f"speed: {len(runners)} methods built and warmed up", file=sys.stderr)
    for round_ in range(repeats):
        start = time.perf_counter()
        for name, run in runners.items():
            bar.set_postfix_str(f"round {round_ + 1}/{repeats} {name}")
            speed = report.methods[name]
            speed.update_rates.append(time_update(run, batch, steps))
            speed.end_to_end_rates.append(time_end_to_end(run, loader, steps, 0))
            bar.update()
        if progress and not terminal:
            print(
                f"speed: round {round_ + 1}/{repeats} timed in {time.perf_counter() - start:.0f} s",
                file=sys.stderr,
            )
    bar.close()
    runners.clear()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return report


def format_table(report: SpeedReport) -> str:
    """The printed table: median rates in samples/s, step/end-to-end time ratios to joint,
    the rounds' spread; and a warning line when a spread says the machine was busy."""
    fastest = max(m.update_samples_per_s for m in report.methods.values())
    width = max(8, *(len(name) for name in report.methods))
    lines = [
        f"speed on {report.dataset}: device {report.device}, batch {report.batch_size}, "
        f"median of {report.repeats} rounds of {report.steps} timed steps (after "
        f"{report.warmup} warm-up), loader workers {report.workers}",
        f"loader alone: {report.loader_samples_per_s:,.0f} samples/s "
        f"({report.loader_samples_per_s / fastest:.2f}x the fastest step; its reads alone "
        f"{report.loader_host_samples_per_s:,.0f} samples/s)",
        f"{'method':{width}s} {'step/s':>9s} {'ratio':>6s} {'end-to-end/s':>13s} {'ratio':>6s} "
        f"{'spread':>7s}  host sync in step",
    ]
    for name, m in report.methods.items():
        sync = m.host_sync or "none"
        lines.append(
            f"{name:{width}s} {m.update_samples_per_s:9,.0f} {report.step_ratio(name):6.2f} "
            f"{m.end_to_end_samples_per_s:13,.0f} {report.end_to_end_ratio(name):6.2f} "
            f"{m.spread:7.0%}  {sync}"
        )
    lines.append(
        "rates in samples/s (median over rounds); ratio = time per step / joint's (lower is "
        "faster; median of the rounds' ratios); spread = interquartile range / median of the "
        "rounds' rates"
    )
    busy = report.busy()
    if busy:
        lines.append(
            f"warning: rounds differ by more than {BUSY_SPREAD:.0%} for {', '.join(busy)}: the "
            "machine was busy, so these ratios are uncertain; measure again on a quiet machine"
        )
    return "\n".join(lines)


def write_json(report: SpeedReport, path: Path) -> None:
    """The --json record (docs/speed.md): device, batch size, repeats, loader and per-method
    rates."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(report.to_json(), indent=1) + "\n")
    tmp.replace(path)
