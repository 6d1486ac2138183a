"""`cremad`: CREMA-D (Cao et al. 2014), 7,442 clips of 91 actors, 6 emotions.

Raw release (``--raw`` is the folder that holds these)::

    AudioWAV/<clip>.wav          16 kHz mono, ~2-3 s
    VideoFlash/<clip>.flv        480x360
    Image-01-FPS/<clip>/*.jpg    optional: frames already extracted at 1 fps

Split: the OGM-GE lists, shipped in ``datasets/splits/cremad/`` (``train.csv`` 6,698 rows
and ``test.csv`` 744 rows, ``clip,EMO``). With ``--set lists=DIR`` the lists of DIR are
used; when DIR has no ``train.csv``, train is every other clip of the release.
Labels are the emotion code of the list; the class order is the reference code's:
NEU, HAP, SAD, FEA, DIS, ANG. The release has no val split: 10% of train is carved
per class with seed 0 (``val_fraction``, ``seed``). The split is not speaker-disjoint.

Audio recipes (``--recipe``):

- ``ogm_ge`` (default; OGM-GE and AGM code): 22,050 Hz, tiled to 3 s, clipped to
  [-1, 1], STFT n_fft 512 hop 353 (Hann, centred, reflect padding as in the librosa
  of the time), ``log(|S| + 1e-7)``, no normalisation -> [1, 257, 188];
- ``pmr`` (PMR code): 16 kHz, tiled to 10 s, ``scipy.signal.spectrogram`` nperseg 512
  noverlap 353, ``log(S + 1e-7)``, per-sample z-score -> [1, 257, 1004].

Frames: 1 fps, K=3 stored (evenly spaced, first to last), 256 x 341 (the release's 4:3
kept, short side 256). The reference code uses one frame (OGM-GE ``fps=1``) and always
the first listed file despite drawing a random index; here the loader draws a frame at
random in training (``frames=1``), the intended behaviour.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from datasets.convert import COMMON_OPTIONS, build_clips, convert, make_spec
from datasets.listfiles import find_list, read_rows, require_list, shipped_lists
from datasets.registry import DatasetError, register_dataset
from datasets.release import MediaIndex

CLASSES = ["NEU", "HAP", "SAD", "FEA", "DIS", "ANG"]

RECIPES: dict[str, dict[str, Any]] = {
    "ogm_ge": {
        "sample_rate": 22050,
        "duration": 3.0,
        "fit": "tile",
        "clip": True,
        "transform": "stft_log",
        "n_fft": 512,
        "hop": 353,
        "pad_mode": "reflect",
        "eps": 1e-7,
        "zscore": False,
    },
    "pmr": {
        "sample_rate": 16000,
        "duration": 10.0,
        "fit": "tile",
        "clip": False,
        "transform": "scipy_log",
        "nperseg": 512,
        "noverlap": 353,
        "eps": 1e-7,
        "zscore": True,
    },
}

OPTIONS: dict[str, Any] = {**COMMON_OPTIONS, "recipe": "ogm_ge", "frame_size": [256, 341]}

# OGM-GE defaults (docs/methods.md): ResNet18 from scratch, 224 crops, SGD 1e-3, step 70 / 0.1.
DEFAULTS: dict[str, Any] = {
    "encoder": "resnet18",
    "crop_size": 224,
    "batch_size": 64,
    "epochs": 100,
    "optimizer": "sgd",
    "lr": 1e-3,
    "momentum": 0.9,
    "weight_decay": 1e-4,
    "scheduler": "step",
    "lr_step": 70,
    "lr_gamma": 0.1,
    "frames": 1,
}


def read_entries(raw: Path, lists: Path) -> tuple[list[tuple], str]:
    """(id, label, split, None, None) rows and a note saying where train came from."""
    test_file = require_list([lists], ["test.csv"], "cremad")
    train_file = find_list([lists], ["train.csv"])
    entries, seen = [], set()
    for split, path in (("test", test_file), ("train", train_file)):
        if path is None:
            continue
        for row in read_rows(path):
            clip_id, emo = row[0], row[-1]
            if emo not in CLASSES:
                raise DatasetError(f"{path}: unknown emotion {emo!r} for {clip_id}; {CLASSES}")
            if clip_id not in seen:
                seen.add(clip_id)
                entries.append((clip_id, CLASSES.index(emo), split, None, None))
    if train_file is not None:
        return entries, f"train list {train_file}"
    # Train = every clip of the release not in test (the OGM-GE train.csv is that list).
    names = {p.stem for p in (raw / "AudioWAV").glob("*.wav")}
    names |= {p.stem for p in (raw / "VideoFlash").glob("*.flv")}
    frames_dir = raw / "Image-01-FPS"
    if frames_dir.is_dir():
        names |= {p.name for p in frames_dir.iterdir() if p.is_dir()}
    for clip_id in sorted(names - seen):
        emo = clip_id.split("_")[2] if clip_id.count("_") >= 3 else None
        if emo in CLASSES:
            entries.append((clip_id, CLASSES.index(emo), "train", None, None))
    return entries, "train = every release clip not in test.csv (label from the clip name)"


@register_dataset(
    "cremad",
    description="CREMA-D: 6 emotions, 7,442 audio-visual clips of 91 actors (from the release)",
    defaults=DEFAULTS,
    options=OPTIONS,
)
def prepare(out_dir: Path, raw: Path | None, options: dict[str, Any]) -> None:
    """Convert the CREMA-D release at `raw` into the prepared format at `out_dir`."""
    opts = {**OPTIONS, **options}
    if raw is None or not ((raw / "AudioWAV").is_dir() or (raw / "VideoFlash").is_dir()):
        raise DatasetError(
            f"{raw} holds neither AudioWAV/ nor VideoFlash/; give the CREMA-D release's "
            "root folder with --raw"
        )
    lists = Path(opts["lists"]) if opts["lists"] else shipped_lists("cremad")
    entries, train_note = read_entries(raw, lists)
    spec = make_spec(
        "cremad",
        CLASSES,
        RECIPES,
        "ogm_ge",
        opts,
        source=f"CREMA-D release at {raw}",
        extra={"lists": str(lists), "train_list": train_note},
    )
    # The audio is the release's AudioWAV (as in the references), never the FLV's track.
    index = MediaIndex(raw)
    clips, missing = build_clips(entries, index, lambda i: [i], opts["visual_source"], False)
    convert(out_dir, spec, clips, missing)
