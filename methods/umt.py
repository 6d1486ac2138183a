"""UMT: uni-modal teachers distilled into a multi-modal student's encoders.

Paper: Du, Teng, Li, Liu, Yuan, Wang, Yuan, Zhao, "On Uni-Modal Feature Learning in
Supervised Multi-Modal Learning", ICML 2023 (section 4, "Uni-Modal Teacher"). No official
code was found (methods-zoo/umt_ume.md); the only implementation read is BalanceBenchmark's
``UMT_trainer.py`` (BB, GeWu-Lab/BalanceBenchmark 4c1482f). The paper's text could not be read
with the tools here, so its equation numbers are not cited; the rule below is the spec's
(methods-zoo/umt_ume.md) and BB's, numbered U1-U4. The uni-modal ensemble (UME) of the same
paper is the method ``unimodal`` (methods/unimodal.py); UMT builds its teachers with it.

  U1  Stage T (teachers), in ``on_epoch_start(0)``: a ``unimodal`` model (fresh encoders
      phi^m_T, copies of the student's initial encoders, and heads h^m) trained for
      ``teacher_epochs`` epochs on the run's training batches, with the run's optimiser
      and schedule from the shared factory (one optimiser per modality):
          L^m_T = CE(h^m(phi^m_T(x^m)), y)
      Per modality, the state of the teacher epoch with the best uni-modal val accuracy is
      kept (never the test split). Teachers are then frozen (requires_grad False) and in
      eval mode; their heads are not used again.
  U2  Stage S (student): fresh encoders phi^m and the suite's fusion head (the student is
      joint training from the same initialisation as a ``joint`` run of the same seed);
      per step, on the same augmented batch,
          z^m = phi^m(x^m),   t^m = phi^m_T(x^m)  (no gradient)
  U3      L = CE(fused, y) + lambda * sum_m mean_{B x D} (z^m - t^m)^2
      on the pooled encoder outputs, before any fusion (so the same for every fusion head);
      the distillation gradient reaches only the student encoders.
  U4  Prediction and model selection are the student's (fused and u^m of the fusion head,
      best fused val accuracy, the engine's).

Teacher storage. With a run directory (``ctx.run_dir``), stage T writes
``<run_dir>/umt/teachers.pt`` atomically after every teacher epoch ({epoch, model,
optimisers, schedules, best states, best accuracies, done}); a run killed in stage T
resumes from it, and one killed later loads the finished teachers from it (one file for
all modalities, since every teacher step trains each modality on the same batch). Once
stage T is over the teachers are buffers and parameters of this module, so the engine's
checkpoint carries them and a resumed run never retrains them. Stage T runs in a fork of
the global RNG, so the student's run is the same whether the teachers were trained or
loaded. Without a run directory (unit tests, ``benchmark speed``) teachers stay in memory.
The teacher stage reads ``data.train.epoch(e)`` where the source has it (the engine's
``RunData``: the batches a ``unimodal`` run sees in its epoch e), else
``data.batches("train", augment=True)``; with the student's initial encoders and a
``unimodal`` model built from the same RNG state, stage T on the CPU is exactly a
``unimodal`` run of the same dataset, seed and settings.

Options (``--set key=value``):
- ``lam`` (10.0): lambda of U3 (BB 4c1482f: ``scaling`` 10, configs/trainer_config.yaml, read
  at UMT_trainer.py:28 and used at :144; an earlier BB commit, 0f68d46, weighted the MSE by
  ``alpha`` 1 instead; the paper's value could not be checked).
- ``teacher_epochs`` (0 = the run's epochs): length of stage T.
- ``teacher_from`` (""): the directory of a finished ``unimodal`` run of the same dataset,
  seed and encoder; its final model (the only state a run keeps) becomes the teachers and
  stage T is skipped. A mismatch is a one-line MethodConfigError.
- ``teacher_mode`` ("eval"): "train" = BB's departure (UMT_trainer.py:140-143): teachers are
  never put in eval mode, so their BatchNorm uses batch statistics and keeps rewriting its
  running statistics during stage S.
BB distils only while ``modulation_starts <= epoch <= modulation_ends`` (0 and 80 in its
config, so in every epoch of its 70-epoch runs), as here. Other BB departures: teacher = the
newest ``unimodalTrainer_<m>`` run's first file (UMT_trainer.py:38-53; here an explicit
``teacher_from`` or stage T), MSE via nn.MSELoss (the same mean over B x D as U3).

Diagnostics: per step (averaged per epoch) ``ce`` (the fused CE), ``distill_<m>`` (the MSE of
U3), ``cos_<m>`` (mean cosine of z^m and t^m); per epoch ``teacher_acc_<m>`` (the kept
teacher's val accuracy). The student's u^m accuracy is the engine's ``val/<m>/acc``. Cost:
stage T is inside epoch 0's ``seconds``; a step is one student forward, K teacher forwards
and one backward. In FLOPs stage T is ~1x joint and stage S ~1.33x (a no-grad forward is
about a third of forward + backward), ~2.3x in all; measured on a loaded 2-core CPU (small
encoder, synth, epochs interleaved): teacher epoch 1.31x, student epoch 1.82x, 3.1x in all
(per-step overheads dominate the small encoder on the CPU). Teacher encoders are not
compiled with ``compile=true``.

Paper check: only the abstract and the opening of the introduction (arXiv 2305.01233, the
ICLR 2023 submission) could be read, so the spec's [paper?] marks stay open: the weight
lambda, whether the MSE is on pooled features, the teacher selection, and the guiding
strategy (UME vs UMT, a comparison of runs, not a method option).

Cross-check (no official code exists): BB's training step (UMTTrainer.training_step,
4c1482f) ported to plain PyTorch outside the repository and run against
``teacher_mode="train"`` from the same weights and batches for 6 steps across an epoch
boundary (StepLR), every parameter and buffer compared, teachers' BatchNorm statistics
included: identical (largest absolute difference 0).

Paper protocol: the paper reports VGGSound, Kinetics-400, UCF101 and ModelNet40, none of the
suite's datasets; no paper settings are set (``paper_settings`` is empty).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from datasets import atomic
from methods.joint import Joint
from methods.parts.base import Batch, BatchSource, StepInfo, cross_entropy
from methods.parts.registry import MethodConfigError, register_method
from methods.unimodal import Unimodal

TEACHER_MODES = ("eval", "train")
STORE = "umt"
TEACHERS = "teachers.pt"


# -- U3: the distillation term ---------------------------------------------------------------
def distillation_mse(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """mean over B x D of (z - t)^2 in float32 (U3); no gradient reaches `t`."""
    return (z.float() - t.detach().float()).pow(2).mean()


def feature_cosine(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of cos(z_i, t_i), float32, no gradient (a diagnostic)."""
    with torch.no_grad():
        return nn.functional.cosine_similarity(z.float(), t.float(), dim=1).mean()


def umt_loss(ce: torch.Tensor, distill: Mapping[str, torch.Tensor], lam: float) -> torch.Tensor:
    """L = CE(fused, y) + lambda * sum_m distill^m (U3)."""
    return ce + lam * torch.stack(list(distill.values())).sum()


@contextlib.contextmanager
def forked_rng(device: torch.device) -> Iterator[None]:
    """Run the body with the global torch RNG (and the device's) restored afterwards."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, device_type=device.type):
        yield


@register_method("umt")
class UMT(Joint):
    """Uni-modal teachers (stage T, `unimodal`), then joint training with feature distillation."""

    DIAGNOSTICS = (
        "train/ce",
        "train/distill_{modality}",
        "train/cos_{modality}",
        "train/teacher_acc_{modality}",
    )

    defaults: dict[str, Any] = {
        "lam": 10.0,
        "teacher_epochs": 0,
        "teacher_from": "",
        "teacher_mode": "eval",
    }

    def __init__(self, encoders, num_classes, hp, ctx) -> None:
        rng = torch.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state(ctx.device) if ctx.device.type == "cuda" else None
        # The student: encoders + fusion head + one optimiser, exactly as `joint` builds it.
        super().__init__(encoders, num_classes, hp, ctx)
        if self.hp["teacher_mode"] not in TEACHER_MODES:
            raise MethodConfigError(
                f"unknown teacher_mode {self.hp['teacher_mode']!r}; choose one of "
                f"{', '.join(TEACHER_MODES)}"
            )
        if not float(self.hp["lam"]) >= 0:
            raise MethodConfigError(f"lam must be >= 0, got {self.hp['lam']!r}")
        epochs = int(self.hp["teacher_epochs"]) or ctx.epochs
        if epochs < 1:
            raise MethodConfigError(f"teacher_epochs must be >= 0, got {self.hp['teacher_epochs']}")
        self.teacher_epochs = epochs
        # The teachers (U1): a `unimodal` model on copies of the student's initial encoders,
        # its heads drawn from the RNG state a `unimodal` run of this seed would draw them from.
        with forked_rng(ctx.device):
            torch.set_rng_state(rng)
            if cuda_rng is not None:
                torch.cuda.set_rng_state(cuda_rng, ctx.device)
            teacher_ctx = dataclasses.replace(ctx, epochs=epochs, run_dir=None)
            teacher_encoders = {m: copy.deepcopy(self.encoders[m]) for m in self.modalities}
            self.teacher = Unimodal(teacher_encoders, num_classes, {}, teacher_ctx)
        self.teachers_ready = False
        self.teacher_acc: dict[str, float] = {}
        if self.hp["teacher_from"]:
            self.load_teacher_run(Path(self.hp["teacher_from"]))

    # -- stage T ------------------------------------------------------------------------
    def load_teacher_run(self, directory: Path) -> None:
        """Teachers from a finished `unimodal` run (its final model); one-line errors."""
        where = f"teacher_from={directory}"
        try:
            config = json.loads((directory / "config.json").read_text())
            state = torch.load(directory / "checkpoint.pt", map_location="cpu", weights_only=True)
        except (OSError, ValueError, RuntimeError) as exc:
            raise MethodConfigError(
                f"{where}: not a readable run directory ({type(exc).__name__}); give the "
                "directory of a finished `unimodal` run"
            ) from None
        if not (directory / "summary.json").is_file():
            raise MethodConfigError(f"{where}: that run is not finished (no summary.json)")
        mine = {"method": "unimodal", "seed": self.ctx.seed}
        mine["encoder"] = self.ctx.settings.get("encoder")
        if self.ctx.run_dir is not None:
            mine["dataset"] = Path(self.ctx.run_dir).parent.parent.name
        theirs = {
            "method": config.get("method"),
            "seed": config.get("seed"),
            "encoder": config.get("settings", {}).get("encoder"),
            "dataset": config.get("dataset"),
        }
        wrong = [f"{k} {theirs[k]!r} (this run: {v!r})" for k, v in mine.items() if theirs[k] != v]
        if wrong:
            raise MethodConfigError(
                f"{where} does not match: {', '.join(wrong)}; give a finished `unimodal` run of "
                "the same dataset, seed and encoder"
            )
        try:
            self.teacher.load_state_dict(state["method"]["model"])
        except (KeyError, RuntimeError) as exc:
            first = (str(exc).strip().splitlines() or ["?"])[0]
            raise MethodConfigError(
                f"{where}: its model does not fit this run's ({first})"
            ) from None
        self.finish_teachers()

    def teacher_file(self) -> Path | None:
        return None if self.ctx.run_dir is None else Path(self.ctx.run_dir) / STORE / TEACHERS

    def save_teachers(self, state: dict[str, Any]) -> None:
        path = self.teacher_file()
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        torch.save(state, buffer)
        atomic.write_bytes(path, buffer.getvalue())

    def teacher_batches(self, data: BatchSource, epoch: int) -> Iterator[Batch]:
        train = getattr(data, "train", None)
        if train is not None and hasattr(train, "epoch"):
            return train.epoch(epoch)  # the engine's loader: epoch e's shuffle and augmentation
        return data.batches("train", augment=True)

    @torch.no_grad()
    def teacher_val_accuracy(self, data: BatchSource) -> dict[str, float]:
        """Each teacher's uni-modal accuracy on the val split (host reads: a hook)."""
        self.teacher.eval()
        correct = {m: torch.zeros((), device=self.ctx.device) for m in self.modalities}
        total = 0
        for batch in data.batches("val"):
            with self.autocast():
                out = self.teacher.predict(batch)
            for m in self.modalities:
                correct[m] += (out[m].argmax(dim=1) == batch["label"]).sum()
            total += len(batch["label"])
        return {m: float(c) / max(total, 1) for m, c in correct.items()}

    def autocast(self) -> contextlib.AbstractContextManager:
        """What the engine wraps `update` in: bf16 autocast on CUDA."""
        if self.ctx.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def train_teachers(self, data: BatchSource) -> None:
        """Stage T (U1), resumed from <run_dir>/umt/teachers.pt when one is there."""
        teacher = self.teacher
        best_state: dict[str, dict[str, torch.Tensor]] = {}
        best_acc: dict[str, float] = {}
        start = 0
        path = self.teacher_file()
        if path is not None and path.is_file():
            saved = torch.load(path, map_location=self.ctx.device, weights_only=True)
            teacher.load_training_state(saved["training"])
            best_state, best_acc, start = saved["best_state"], saved["best_acc"], saved["epoch"] + 1
        step = start * self.ctx.steps_per_epoch
        for epoch in range(start, self.teacher_epochs):
            teacher.train()
            for number, batch in enumerate(self.teacher_batches(data, epoch)):
                with self.autocast():
                    teacher.update(batch, StepInfo(epoch=epoch, step=step, batch=number))
                step += 1
            teacher.on_epoch_end(epoch, data)
            acc = self.teacher_val_accuracy(data)
            for m in self.modalities:
                if m not in best_acc or acc[m] > best_acc[m]:
                    best_acc[m] = acc[m]
                    best_state[m] = {
                        "encoder": copy.deepcopy(teacher.encoders[m].state_dict()),
                        "head": copy.deepcopy(teacher.heads[m].state_dict()),
                    }
            self.save_teachers(
                {
                    "epoch": epoch,
                    "training": teacher.training_state(),
                    "best_state": best_state,
                    "best_acc": best_acc,
                }
            )
        for m in self.modalities:
            teacher.encoders[m].load_state_dict(best_state[m]["encoder"])
            teacher.heads[m].load_state_dict(best_state[m]["head"])
        self.teacher_acc = dict(best_acc)
        self.finish_teachers()

    def finish_teachers(self) -> None:
        """Freeze the teachers, drop their optimisers, set their mode (U1, ``teacher_mode``)."""
        self.teacher.requires_grad_(False)
        self.teacher.optimizers.clear()
        self.teacher.schedulers.clear()
        self.teachers_ready = True
        self.train(self.training)

    def train(self, mode: bool = True) -> UMT:
        super().train(mode)
        if self.teachers_ready and self.hp["teacher_mode"] == "eval" and "teacher" in self._modules:
            self.teacher.eval()
        return self

    def on_epoch_start(self, epoch: int, data: BatchSource) -> None:
        if not self.teachers_ready:
            with forked_rng(self.ctx.device):
                self.train_teachers(data)
        if not self.teacher_acc:  # teachers from `teacher_from`: their val accuracy, once
            self.teacher_acc = self.teacher_val_accuracy(data)
            self.train(self.training)

    # -- stage S --------------------------------------------------------------------------
    def compute_loss(
        self, batch: Batch, out: dict[str, Any], step: StepInfo
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """U2-U3: CE(fused, y) + lambda * sum_m MSE(z^m, t^m)."""
        ce = cross_entropy(out["fused"], batch["label"])
        with torch.no_grad():
            targets = {m: self.teacher.encoders[m](batch[m]) for m in self.modalities}
        distill = {m: distillation_mse(out["features"][m], targets[m]) for m in self.modalities}
        loss = umt_loss(ce, distill, float(self.hp["lam"]))
        logs = {"ce": ce.detach()}
        for m in self.modalities:
            logs[f"distill_{m}"] = distill[m].detach()
            logs[f"cos_{m}"] = feature_cosine(out["features"][m], targets[m])
        return loss, logs

    def on_epoch_end(self, epoch: int, data: BatchSource) -> dict[str, float]:
        logs = super().on_epoch_end(epoch, data)
        return {**logs, **{f"teacher_acc_{m}": a for m, a in self.teacher_acc.items()}}

    # -- checkpoints: the teachers themselves are in the state dict -------------------------
    def extra_state(self) -> dict[str, Any]:
        return {"teachers_ready": self.teachers_ready, "teacher_acc": dict(self.teacher_acc)}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        self.teacher_acc = dict(state.get("teacher_acc", {}))
        if state.get("teachers_ready", False):
            self.finish_teachers()
