"""Resolving a run's configuration: one flat namespace of run settings and method
hyper-parameters, each with a default, overridable by `--set key=value`.

Precedence (lowest first): RUN_DEFAULTS < the dataset's defaults < the method's
`paper_settings` (protocol "paper" only) < its `variant_paper_settings[variant]` (protocol
"paper" only) < `--set`; method hyper-parameters: the method's `defaults` < its
`presets[dataset]` < `variant_defaults[variant]` < `variant_presets[variant][dataset]` <
`--set`, where `variant` is the run's value of the method's `variant` key (from `--set` or
the defaults). Unknown keys are errors.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from benchmark.errors import UserError
from methods import get_method_class, list_encoders, list_fusions
from methods.parts.optim import OPTIMIZERS, SCHEDULERS

# Run settings shared by every method: the fair comparison's knobs. Datasets override
# these per dataset (their module's DEFAULTS); `--set` overrides both.
RUN_DEFAULTS: dict[str, Any] = {
    "protocol": "benchmark",  # benchmark (same settings for all) | paper (each method's own)
    "epochs": 100,
    "batch_size": 64,
    "eval_batch_size": 256,
    "optimizer": "sgd",  # sgd | adam | adamw
    "lr": 1e-3,
    "momentum": 0.9,
    "weight_decay": 1e-4,
    "scheduler": "step",  # step | cosine | none
    "lr_step": 70,  # StepLR period in epochs
    "lr_gamma": 0.1,  # StepLR factor
    "encoder": "resnet18",  # see `list encoders`
    "fusion": "concat",  # concat | sum | film | gated
    "frames": 1,  # frames per clip fed to the visual encoder
    "crop_size": 224,  # RandomResizedCrop output size (train) / Resize (eval)
    "crop_scale": [0.08, 1.0],  # RandomResizedCrop area range
    "hflip": True,  # random horizontal flip in training
    "workers": "auto",  # loader worker processes, or auto: 0 on CPU, up to 8 on CUDA
    # (does not change results)
    "compile": False,  # torch.compile the encoders (speed only; float rounding may differ)
    "compile_mode": "default",  # torch.compile mode; reduce-overhead adds CUDA graphs
    "device": "auto",  # auto | cpu | cuda | cuda:N (does not change the run id)
    # linear probes of each encoder (benchmark/probes.py; evaluation only, not in the run id):
    "probe_every": "last",  # every N-th epoch | "last" | 0 = never (+ last and new-best epochs)
    "probe_fraction": 0.2,  # stratified part of the train split the probes are fitted on
}
# Settings that do not change what a run computes: left out of the run id.
NOT_IN_RUN_ID = frozenset(
    {
        "workers",
        "device",
        "eval_batch_size",
        "compile",
        "compile_mode",
        "probe_every",
        "probe_fraction",
    }
)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CHOICES: dict[str, Sequence[str]] = {
    "protocol": ("benchmark", "paper"),
    "optimizer": OPTIMIZERS,
    "scheduler": SCHEDULERS,
    "compile_mode": COMPILE_MODES,
}


@dataclass(frozen=True)
class RunConfig:
    """A fully resolved run: what config.json records and the run id hashes."""

    method: str
    dataset: str  # the dataset's name (meta.json), the directory name under runs/
    dataset_path: str  # the prepared directory
    seed: int
    settings: dict[str, Any] = field(default_factory=dict)
    hp: dict[str, Any] = field(default_factory=dict)
    data_fingerprint: str = ""  # benchmark.train.fingerprint.data_fingerprint of the directory

    @property
    def run_id(self) -> str:
        """A short hash of what the run computes: method, dataset name and content (its
        fingerprint), seed, the settings that change results, hyper-parameters."""
        identity = {
            "method": self.method,
            "dataset": self.dataset,
            "data": self.data_fingerprint,
            "seed": self.seed,
            "settings": {k: v for k, v in self.settings.items() if k not in NOT_IN_RUN_ID},
            "hp": self.hp,
        }
        blob = json.dumps(identity, sort_keys=True, separators=(",", ":"))
        return hashlib.sha1(blob.encode()).hexdigest()[:12]

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "run_id": self.run_id}


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """`["lr=0.01", "schedule=[[\\"audio\\", 5]]", "fusion=sum"]` -> dict; values are
    JSON where they parse as JSON, plain strings otherwise."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise UserError(f"--set expects key=value, got {pair!r} (e.g. --set lr=0.01)")
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out


def _check_value(key: str, default: Any, value: Any) -> None:
    if isinstance(default, bool):
        ok = isinstance(value, bool)
        want = "true or false"
    elif isinstance(default, int | float):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        want = "a number"
    else:
        return
    if not ok:
        raise UserError(
            f"{key} expects {want}, got {value!r} (e.g. --set {key}={json.dumps(default)})"
        )


def _check_settings(settings: Mapping[str, Any]) -> None:
    choices = {**CHOICES, "encoder": list_encoders(), "fusion": list_fusions()}
    for key, allowed in choices.items():
        if settings[key] not in allowed:
            raise UserError(f"unknown {key} {settings[key]!r}; choose one of {', '.join(allowed)}")
    device = str(settings["device"])
    if device not in ("auto", "cpu") and not device.startswith("cuda"):
        raise UserError(f"unknown device {device!r}; choose auto, cpu, cuda or cuda:N")
    workers = settings["workers"]
    if workers != "auto" and (
        isinstance(workers, bool) or not isinstance(workers, int) or workers < 0
    ):
        raise UserError(
            f"workers must be auto or a number >= 0, got {workers!r} (e.g. --set workers=8)"
        )
    every = settings["probe_every"]
    if every != "last" and (isinstance(every, bool) or not isinstance(every, int) or every < 0):
        raise UserError(
            f"probe_every must be last or an epoch count >= 0, got {every!r} "
            "(e.g. --set probe_every=5)"
        )
    if not 0.0 < settings["probe_fraction"] <= 1.0:
        raise UserError(f"probe_fraction must be in (0, 1], got {settings['probe_fraction']!r}")
    for key in ("epochs", "batch_size", "eval_batch_size", "frames", "crop_size"):
        if not isinstance(settings[key], int) or settings[key] < 1:
            raise UserError(f"{key} must be a positive integer, got {settings[key]!r}")


def resolve(
    method: str,
    dataset: str,
    dataset_path: str,
    dataset_defaults: Mapping[str, Any],
    seed: int,
    overrides: Mapping[str, Any],
    data_fingerprint: str = "",
) -> RunConfig:
    """The resolved config of one run; raises UserError/MethodConfigError on bad input."""
    cls = get_method_class(method)
    unknown = set(dataset_defaults) - set(RUN_DEFAULTS)
    if unknown:  # a dataset module's mistake, not the user's
        raise RuntimeError(f"dataset {dataset} sets unknown run settings {sorted(unknown)}")
    settings = {**RUN_DEFAULTS, **dataset_defaults}
    hp = {**cls.defaults, **cls.presets.get(dataset, {})}
    variant = overrides.get("variant", hp.get("variant"))
    if isinstance(variant, str):
        hp.update(cls.variant_defaults.get(variant, {}))
        hp.update(cls.variant_presets.get(variant, {}).get(dataset, {}))
    protocol = overrides.get("protocol", settings["protocol"])
    if protocol == "paper":
        settings.update(cls.paper_settings)
        if isinstance(variant, str):
            settings.update(cls.variant_paper_settings.get(variant, {}))
    for key, value in overrides.items():
        if key in settings:
            _check_value(key, RUN_DEFAULTS[key], value)
            settings[key] = value
        elif key in hp:
            _check_value(key, cls.defaults[key], value)
            hp[key] = value
        else:
            raise UserError(
                f"unknown key {key!r} for method {method!r}; run settings: "
                f"{', '.join(sorted(RUN_DEFAULTS))}; {method} hyper-parameters: "
                f"{', '.join(sorted(cls.defaults)) or 'none'}"
            )
    _check_settings(settings)
    return RunConfig(method, dataset, dataset_path, int(seed), settings, hp, data_fingerprint)
