"""The one training loop: epochs of `Method.update`, evaluation every epoch, checkpoints.

The engine joins a Method (from the methods registry) with batches (from the datasets
loader); it never asks which method it runs. Per epoch it appends one line to
metrics.jsonl (train scalars averaged on the device and read once, then val and test
accuracy / macro-F1 / mAP for the fused head and each modality) and saves a checkpoint
(model, optimisers, schedules, RNG states); a restarted run resumes after the last
checkpointed epoch; summary.json, written last, holds the test metrics at the epoch
with the best validation fused accuracy (validation only selects).
"""

from __future__ import annotations

import contextlib
import platform
import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from benchmark.train import runlock, runstore
from benchmark.train.config import RunConfig
from benchmark.train.contribution import cached_encoders, contribution_row, subset_batches
from benchmark.train.cost import cost_block
from benchmark.train.data import RunData, open_dataset
from benchmark.train.fingerprint import code_fingerprint
from benchmark.train.metrics import classification_metrics
from benchmark.train.probes import encoder_features, probe_due, probe_row
from datasets import PreparedDataset
from methods import Method, RunContext, StepInfo, create_encoder, create_method

SELECT_KEY = "val/fused/acc"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every generator's state as tensors and plain values (a weights_only checkpoint)."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": {
            "version": version,
            "state": torch.tensor(internal, dtype=torch.int64),
            "gauss": gauss,
        },
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py, npy = state["python"], state["numpy"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    np.random.set_state(
        (
            npy["name"],
            npy["keys"].numpy().astype(np.uint32),
            npy["pos"],
            npy["has_gauss"],
            npy["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def environment() -> dict[str, Any]:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    import torchvision

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "git_commit": commit or None,
        "host": platform.node(),
    }


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; nothing on the CPU (runs there stay float32 and exact)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def configure_backends(device: torch.device) -> None:
    """On CUDA: cuDNN autotuning (fixed input shapes) and TF32 for the float32 matmuls."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def build_method(
    cfg: RunConfig,
    ds: PreparedDataset,
    device: torch.device,
    steps_per_epoch: int,
    run_dir: Path | None = None,
) -> Method:
    """The run's method with fresh encoders, built on `device`: channels_last on CUDA, and
    each encoder compiled in place (`nn.Module.compile`, state-dict keys unchanged) when
    the run setting ``compile`` is on, in the mode ``compile_mode`` ("reduce-overhead"
    records CUDA graphs). Used by `train_run` and `benchmark speed`."""
    ctx = RunContext(
        device=device,
        epochs=cfg.settings["epochs"],
        steps_per_epoch=steps_per_epoch,
        modalities={m: spec.kind for m, spec in ds.modalities.items()},
        settings=cfg.settings,
        seed=cfg.seed,
        run_dir=run_dir,
    )
    with torch.device(device):
        encoders = {
            m: create_encoder(cfg.settings["encoder"], spec.kind, spec.shape)
            for m, spec in ds.modalities.items()
        }
        method = create_method(cfg.method, encoders, ds.num_classes, cfg.hp, ctx)
    if device.type == "cuda":
        method = method.to(memory_format=torch.channels_last)
    if cfg.settings.get("compile", False):
        # Static shapes: every encoder and input shape (train batch, last batch, eval batch,
        # AGM's one-sample pass) gets its own graph. All encoders share the code object
        # that dynamo caches on (Module._call_impl), so the second one would otherwise be
        # recompiled with dynamic shapes, which inductor fails on for these convnets
        # (torch 2.11); the recompile limit is raised to hold the static graphs.
        dynamo_config = torch._dynamo.config
        dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, 64)
        for encoder in method.encoders.values():
            encoder.compile(mode=cfg.settings["compile_mode"], dynamic=False)
    return method


@torch.no_grad()
def evaluate(
    method: torch.nn.Module,
    data: RunData,
    split: str,
    device: torch.device,
    features: dict[str, Any] | None = None,
) -> dict[str, float]:
    """Accuracy, macro-F1 and mAP of every head of `method.predict` on one split; the fused
    accuracy with each subset of modalities absent, each modality's Shapley contribution
    and the fused accuracy without it (`benchmark.train.contribution`). When `features` is a
    dict, it receives the encoders' features of the split ({"features": {m: [N, D]},
    "label": [N]}) for the linear probes."""
    method.eval()
    scores: dict[str, list[torch.Tensor]] = {}
    labels = []
    modalities = list(method.encoders)
    correct: dict[frozenset[str], torch.Tensor] = {}
    feats: dict[str, list[torch.Tensor]] = {m: [] for m in modalities}
    with cached_encoders(method) as encoders:
        for batch in data.loader(split).epoch(0):
            for enc in encoders.values():
                enc.clear()
            with autocast(device):
                out = method.predict(batch)
                for subset, masked in subset_batches(batch, encoders):
                    hits = (method.predict(masked)["fused"].argmax(dim=1) == batch["label"]).sum()
                    correct[subset] = correct[subset] + hits if subset in correct else hits
                if features is not None:  # cached when predict ran the encoder (one pass)
                    for m, enc in encoders.items():
                        feats[m].append(enc(batch[m]).float())
            for head, logits in out.items():
                scores.setdefault(head, []).append(logits.float())
            labels.append(batch["label"])
        for enc in encoders.values():
            enc.clear()
    y = torch.cat(labels).cpu().numpy()
    row = {}
    for head, parts in scores.items():
        for name, value in classification_metrics(torch.cat(parts).cpu().numpy(), y).items():
            row[f"{split}/{head}/{name}"] = value
    values = {s: float(c.cpu()) / len(y) for s, c in correct.items()}
    values[frozenset(modalities)] = row[f"{split}/fused/acc"]
    row.update(contribution_row(split, values, modalities))
    if features is not None:
        features["features"] = {m: torch.cat(v) for m, v in feats.items()}
        features["label"] = torch.cat(labels)
    return row


def summarise(cfg: RunConfig, rows: list[dict[str, Any]], heads: list[str]) -> dict[str, Any]:
    """The record a table reads: test (and val) metrics at the best-val epoch and the last."""
    best = max(rows, key=lambda r: (r[SELECT_KEY], -r["epoch"]))
    last = rows[-1]
    summary: dict[str, Any] = {
        "method": cfg.method,
        "dataset": cfg.dataset,
        "seed": cfg.seed,
        "run_id": cfg.run_id,
        "status": "done",
        "selection": SELECT_KEY,
        "best_epoch": best["epoch"],
        "epochs": len(rows),
        "heads": heads,
    }
    for split in ("val", "test"):
        for head in heads:
            for metric in ("acc", "f1", "map"):
                key = f"{split}/{head}/{metric}"
                summary[key] = best[key]
                summary[f"last/{key}"] = last[key]
        for m in heads[1:]:  # evaluation-only measures, where the epoch has them
            for key in (
                f"{split}/{m}/probe_acc",
                f"{split}/{m}/contribution",
                f"{split}/fused_without_{m}/acc",
            ):
                if key in best:
                    summary[key] = best[key]
                if key in last:
                    summary[f"last/{key}"] = last[key]
    return summary


def _label(cfg: RunConfig) -> str:
    return f"{cfg.method}/{cfg.dataset}/seed {cfg.seed}"


def _note(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def finished_summary(
    cfg: RunConfig, directory: Path, restart: bool = False, rerun_stale: bool = False
) -> dict[str, Any] | None:
    """The summary of a run that is not to be trained (done, by this code, or by older
    code without `rerun_stale`), with a line saying so; None when it is to be trained.
    A damaged summary.json is DamagedRunFile, or (with `restart`) a run to train."""
    try:
        summary = runstore.load_summary(directory)
    except runstore.DamagedRunFile:
        if restart:
            return None
        raise
    if summary is None:
        return None
    older = runstore.older_code(directory, summary)
    if older is None:
        _note(
            f"{_label(cfg)}: done already in {directory} (summary.json); not retrained "
            "(use another --results to train it again)"
        )
        return summary
    if rerun_stale:
        return None
    _note(
        f"{_label(cfg)}: done with older code ({older}) in {directory}; not retrained "
        "(--rerun-stale trains it again with this code)"
    )
    return {**summary, "older_code": older}


def train_run(
    cfg: RunConfig,
    results: Path,
    data_root: Path,
    progress: bool | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    extra_config: dict[str, Any] | None = None,
    restart: bool = False,
    rerun_stale: bool = False,
) -> dict[str, Any]:
    """Train (or resume, or skip when finished) one run; return its summary.

    The run's lock (runlock.py) is held while it trains: when another live process holds
    it, one line says who and the returned record has status "busy". `restart` discards
    an unfinished or damaged run's state and trains it from scratch; `rerun_stale`
    retrains a run finished by other code."""
    directory = runstore.run_dir(results, cfg)
    summary = finished_summary(cfg, directory, restart, rerun_stale)
    if summary is not None:
        return summary
    try:
        with runlock.hold(directory, note=lambda line: _note(f"{_label(cfg)}: {line}")):
            # Another process may have finished it between the look above and the lock.
            summary = finished_summary(cfg, directory, restart, rerun_stale)
            if summary is not None:
                return summary
            # Here a summary.json is one to redo (older code, or damaged with restart).
            finished = (directory / runstore.SUMMARY).is_file()
            stale = rerun_stale and (finished or runstore.older_code(directory) is not None)
            if restart or stale:
                runstore.discard(directory)
            return _train(cfg, directory, data_root, progress, on_epoch, extra_config)
    except runlock.RunLocked as exc:
        holder = exc.holder
        _note(
            f"{_label(cfg)} is being trained by {holder.describe()} since {holder.started}; "
            f"not started (lock: {directory / runlock.LOCK})"
        )
        return {
            "method": cfg.method,
            "dataset": cfg.dataset,
            "seed": cfg.seed,
            "run_id": cfg.run_id,
            "status": "busy",
            "holder": holder.describe(),
            "since": holder.started,
        }


def _resume(cfg: RunConfig, directory: Path, method: Method) -> tuple[int, list[dict[str, Any]]]:
    """Load checkpoint.pt into `method` and the RNGs; (first epoch to train, metrics rows
    before it). (0, []) when there is no checkpoint."""
    checkpoint = runstore.load_checkpoint(directory)
    if checkpoint is None:
        return 0, []
    path = directory / runstore.CHECKPOINT
    try:
        method.load_training_state(checkpoint["method"])
        set_rng_state(checkpoint["rng"])
        start = int(checkpoint["epoch"]) + 1
    except (KeyError, RuntimeError, ValueError, TypeError, AttributeError) as exc:
        problem = f"does not fit this run's model and optimisers ({runstore._first_line(exc)})"
        raise runstore.DamagedRunFile(path, problem) from None
    rows = [r for r in runstore.read_metrics(directory, _note) if r["epoch"] < start]
    if [r["epoch"] for r in rows] != list(range(start)):
        raise runstore.DamagedRunFile(
            directory / runstore.METRICS,
            f"holds epochs {[r['epoch'] for r in rows]} before checkpoint.pt's next epoch "
            f"{start}, not 0..{start - 1}",
        )
    older = runstore.older_code(directory)
    if older is not None:
        _note(
            f"{_label(cfg)}: resuming a run started with older code ({older}); its numbers "
            "mix two versions (--rerun-stale starts it over with this code)"
        )
    return start, rows


def _train(
    cfg: RunConfig,
    directory: Path,
    data_root: Path,
    progress: bool | None,
    on_epoch: Callable[[dict[str, Any]], None] | None,
    extra_config: dict[str, Any] | None,
) -> dict[str, Any]:
    """The training loop of one run, its lock held (see `train_run`)."""
    show = sys.stderr.isatty() if progress is None else progress

    ds, _ = open_dataset(cfg.dataset_path, data_root)
    device = resolve_device(cfg.settings["device"])
    seed_everything(cfg.seed)
    configure_backends(device)
    data = RunData(ds, cfg.settings, cfg.seed, device)
    directory.mkdir(parents=True, exist_ok=True)
    method = build_method(cfg, ds, device, steps_per_epoch=len(data.train), run_dir=directory)
    heads = ["fused", *ds.modalities]

    start, rows = _resume(cfg, directory, method)
    env = environment()
    code = {"fingerprint": code_fingerprint(cfg.method), "commit": env["git_commit"]}
    if start == 0:
        config = {
            **cfg.to_json(),
            "dataset_meta": {"classes": ds.classes, "splits": ds.meta["splits"]},
            "device": str(device),
            "environment": env,
            "code": code,
            **(extra_config or {}),
        }
        runstore.write_json(directory / runstore.CONFIG, config)

    epochs = cfg.settings["epochs"]
    bar = tqdm(
        total=epochs,
        initial=start,
        desc=f"{cfg.method}/{cfg.dataset}/s{cfg.seed}",
        unit="epoch",
        disable=not show,
        dynamic_ncols=True,
    )
    step = start * len(data.train)
    for epoch in range(start, epochs):
        t0 = time.perf_counter()
        method.train()
        method.on_epoch_start(epoch, data)
        sums: dict[str, torch.Tensor] = {}
        batches = tqdm(
            data.train.epoch(epoch),
            total=len(data.train),
            leave=False,
            desc=f"epoch {epoch}",
            unit="batch",
            disable=not show,
            dynamic_ncols=True,
        )
        for number, batch in enumerate(batches):
            with autocast(device):
                logs = method.update(batch, StepInfo(epoch=epoch, step=step, batch=number))
            for key, value in logs.items():
                value = value.detach().float()
                sums[key] = sums[key] + value if key in sums else value
            step += 1
        lr = method.lr
        diagnostics = method.on_epoch_end(epoch, data)
        seconds = time.perf_counter() - t0
        row: dict[str, Any] = {
            "epoch": epoch,
            "lr": lr,
            "seconds": seconds,
            "samples_per_s": len(data.train) * cfg.settings["batch_size"] / max(seconds, 1e-9),
        }
        row.update({f"train/{k}": float(v.cpu()) / len(data.train) for k, v in sums.items()})
        row.update({f"train/{k}": float(v) for k, v in diagnostics.items()})
        evaluated = {}
        for split in ("val", "test"):
            found: dict[str, Any] = {}
            row.update(evaluate(method, data, split, device, features=found))
            evaluated[split] = (found["features"], found["label"])
        improves = all(row[SELECT_KEY] > r[SELECT_KEY] for r in rows)
        if probe_due(epoch, epochs, cfg.settings["probe_every"], improves):
            t_probe = time.perf_counter()
            train_part = data.batches("train", fraction=cfg.settings["probe_fraction"])
            train_feats = encoder_features(method.encoders, train_part, lambda: autocast(device))
            row.update(probe_row(train_feats, evaluated, ds.num_classes))
            row["probe_seconds"] = time.perf_counter() - t_probe
        del evaluated
        rows.append(row)
        runstore.write_metrics(directory, rows)
        runstore.save_checkpoint(
            directory, {"epoch": epoch, "method": method.training_state(), "rng": rng_state()}
        )
        bar.update(1)
        message = (
            f"epoch {epoch + 1}/{epochs} loss {row.get('train/loss', float('nan')):.3f} val acc "
            + " ".join(f"{h} {row[f'val/{h}/acc']:.3f}" for h in heads)
            + f" ({seconds:.1f} s)"
        )
        if show:
            bar.set_postfix_str(f"val fused {row['val/fused/acc']:.3f}")
        else:
            print(
                f"[{cfg.method}/{cfg.dataset}/seed {cfg.seed}] {message}",
                file=sys.stderr,
                flush=True,
            )
        if on_epoch is not None:
            on_epoch(row)
    bar.close()
    summary = {
        **summarise(cfg, rows, heads),
        "data_fingerprint": cfg.data_fingerprint,
        "code": code["fingerprint"],
        "commit": code["commit"],
    }
    first = next(iter(data.batches("train", augment=True)))
    summary["cost"] = cost_block(method, rows, first, device, lambda: autocast(device))
    runstore.write_json(directory / runstore.SUMMARY, summary)
    return summary
