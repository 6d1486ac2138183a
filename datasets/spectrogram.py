"""Audio recipes of the reference code: waveform -> fixed-size spectrogram [1, F, T].

A recipe is a plain dict (recorded verbatim in meta.json) with the keys:

- ``sample_rate`` (Hz) and ``duration`` (s): the waveform is decoded at that rate and
  brought to ``duration`` seconds by ``fit``: ``"tile"`` (repeat the clip, then cut, as
  ``np.tile(x, 3)[:sr * 3]`` in OGM-GE), ``"pad"`` (zero-pad or cut) or ``"cut"`` (cut
  only; the Kaldi recipe pads its frames instead);
- ``offset`` (s, optional): the window starts there in the fitted waveform
  (``fit_duration`` seconds are fitted first, then ``duration`` seconds are taken);
- ``clip``: clamp samples to [-1, 1];
- ``transform``: ``"stft_log"`` (``log(|STFT| + eps)``, Hann window, centred frames,
  ``n_fft``/``hop``/``pad_mode``; computed with torch.stft, equal to librosa.stft),
  ``"scipy_log"`` (``log(scipy.signal.spectrogram(...) + eps)`` with ``nperseg`` and
  ``noverlap``, the PMR code's call) or ``"kaldi_fbank"`` (torchaudio's Kaldi-compatible
  log-mel filterbank, mean-removed waveform, padded/cut to ``target_frames``, normalised
  ``(x - norm_mean) / (2 * norm_std)``, the OGM-GE Kinetics-Sounds script);
- ``zscore``: per-sample standardisation ``(x - mean) / (std + 1e-9)``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torchaudio.compliance.kaldi as kaldi
from scipy import signal

TRANSFORMS = ("stft_log", "scipy_log", "kaldi_fbank")


def fit_length(wave: np.ndarray, n: int, mode: str) -> np.ndarray:
    """`wave` brought to n samples: "tile" repeats it, "pad" zero-pads (both cut to
    exactly n); "cut" only cuts (a shorter clip stays shorter: the transform pads)."""
    if mode == "tile":
        return np.tile(wave, math.ceil(n / len(wave)))[:n]
    if mode == "pad":
        return np.pad(wave, (0, max(0, n - len(wave))))[:n]
    if mode == "cut":
        return wave[:n]
    raise ValueError(f"unknown fit mode {mode!r}; use tile, pad or cut")


def stft_log(
    wave: np.ndarray, n_fft: int, hop: int, pad_mode: str = "reflect", eps: float = 1e-7
) -> np.ndarray:
    """log(|STFT| + eps) [n_fft // 2 + 1, frames]: periodic Hann window of n_fft samples,
    centred frames (librosa.stft's defaults, with its `pad_mode`)."""
    spec = torch.stft(
        torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32)),
        n_fft=n_fft,
        hop_length=hop,
        window=torch.hann_window(n_fft),
        center=True,
        pad_mode=pad_mode,
        return_complex=True,
    )
    return torch.log(spec.abs() + eps).numpy()


def scipy_log(
    wave: np.ndarray, sample_rate: int, nperseg: int, noverlap: int, eps: float = 1e-7
) -> np.ndarray:
    """log(PSD + eps) [nperseg // 2 + 1, frames] from scipy.signal.spectrogram's defaults
    (Tukey(0.25) window, constant detrend, density scaling), as the PMR code calls it."""
    _, _, spec = signal.spectrogram(wave, sample_rate, nperseg=nperseg, noverlap=noverlap)
    return np.log(spec + eps).astype(np.float32)


def kaldi_log_mel(
    wave: np.ndarray,
    sample_rate: int,
    num_mel_bins: int,
    frame_shift: float,
    target_frames: int,
    norm_mean: float,
    norm_std: float,
) -> np.ndarray:
    """Kaldi fbank [num_mel_bins, target_frames] (transposed from Kaldi's [frames, bins])."""
    x = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))[None]
    fbank = kaldi.fbank(
        x - x.mean(),
        htk_compat=True,
        sample_frequency=sample_rate,
        use_energy=False,
        window_type="hanning",
        num_mel_bins=num_mel_bins,
        dither=0.0,
        frame_shift=frame_shift,
    )
    fbank = torch.nn.functional.pad(fbank, (0, 0, 0, max(0, target_frames - len(fbank))))
    fbank = (fbank[:target_frames] - norm_mean) / (2 * norm_std)
    return fbank.T.contiguous().numpy()


def audio_features(wave: np.ndarray, recipe: dict[str, Any]) -> np.ndarray:
    """The recipe's spectrogram of one decoded waveform: float32 [1, F, T]."""
    sr = recipe["sample_rate"]
    total = recipe.get("fit_duration", recipe["duration"])
    x = fit_length(wave, int(round(sr * total)), recipe["fit"])
    if recipe.get("offset"):
        lo = int(round(sr * recipe["offset"]))
        x = x[lo : lo + int(round(sr * recipe["duration"]))]
    if recipe.get("clip"):
        x = np.clip(x, -1.0, 1.0)
    kind = recipe["transform"]
    if kind == "stft_log":
        spec = stft_log(x, recipe["n_fft"], recipe["hop"], recipe["pad_mode"], recipe["eps"])
    elif kind == "scipy_log":
        spec = scipy_log(x, sr, recipe["nperseg"], recipe["noverlap"], recipe["eps"])
    elif kind == "kaldi_fbank":
        spec = kaldi_log_mel(
            x,
            sr,
            recipe["num_mel_bins"],
            recipe["frame_shift"],
            recipe["target_frames"],
            recipe["norm_mean"],
            recipe["norm_std"],
        )
    else:
        raise ValueError(f"unknown transform {kind!r}; known: {', '.join(TRANSFORMS)}")
    if recipe.get("zscore"):
        spec = (spec - spec.mean()) / (spec.std() + 1e-9)
    return spec[None].astype(np.float32)


def feature_shape(recipe: dict[str, Any]) -> tuple[int, int, int]:
    """The [1, F, T] shape the recipe produces (computed on one second of noise)."""
    noise = np.random.default_rng(0).uniform(-0.1, 0.1, recipe["sample_rate"]).astype(np.float32)
    return tuple(audio_features(noise, recipe).shape)  # type: ignore[return-value]
