"""`ks`: Kinetics-Sounds, the audio-visual subset of Kinetics-400 (31 classes as in OGM-GE).

Raw release (``--raw``): the 10-s YouTube clips as videos (``<id>.mp4``, or the Kinetics
naming ``<ytid>_<start:06d>_<end:06d>.mp4``), in any sub-folders; optionally WAV files
(``<id>.wav``, used instead of the video's audio) and folders of extracted frames
(``<id>/*.jpg``). The split lists are the OGM-GE ones, shipped in
``datasets/splits/ks/`` (from the OGM-GE repository's ``data/KineticSound/``):
``my_train.txt`` (14,799 rows ``ytid_start_end,10,label``, the Kinetics clip name) and
``my_test.txt`` (2,597 rows ``ytid_start,10,label``), label 0-30; the ``name.mp4 label``
space format is read too; a ``my_val.txt`` is used when present. Lists in
``--set lists=DIR`` or in the release folder are used instead of the shipped ones. Other
papers use other lists (32-34 classes): any list works, the counts land in meta.json.
Classes are the label values (``"0"``..``"30"``) when the labels are numbers, else the
sorted label names. No val list: 10% of train is carved per class with seed 0.

Audio recipes (``--recipe``):

- ``ogm_ge`` (default; OGM-GE Kinetics-Sounds script): 16 kHz (the rate of the
  reference's extracted WAVs; an assumption where the script reads whatever rate the
  WAV has), the clip cut to 10.24 s, mean removed, torchaudio Kaldi fbank (128 mel bins,
  10 ms shift, 25 ms Hanning window, HTK-compatible, no energy, no dither), padded with
  zero frames or cut to 1,024 frames, ``(x + 4.503877) / (2 * 5.141276)``. Stored as
  [1, 128, 1024] (mel x time, the F x T layout of the other datasets; the reference's
  array is its transpose [1024, 128]);
- ``mie`` (MIE/IGM code): 35,400 Hz, tiled to 10 s, clipped, STFT n_fft 512 hop 353,
  ``log(|S| + 1e-7)`` -> [1, 257, 1003].

Frames: 1 fps, K=3 stored, scaled to cover 256 x 341 and centre-cropped (the clips'
aspects differ); the loader takes 3 (one per third of the stored frames, random in
training, the middle one in evaluation) as the references do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from datasets.convert import COMMON_OPTIONS, build_clips, convert, make_spec
from datasets.cremad import DEFAULTS as CREMAD_DEFAULTS
from datasets.listfiles import find_list, read_rows, require_list, shipped_lists
from datasets.registry import DatasetError, register_dataset
from datasets.release import MediaIndex

RECIPES: dict[str, dict[str, Any]] = {
    "ogm_ge": {
        "sample_rate": 16000,
        "duration": 10.24,
        "fit": "cut",
        "clip": False,
        "transform": "kaldi_fbank",
        "num_mel_bins": 128,
        "frame_shift": 10.0,
        "target_frames": 1024,
        "norm_mean": -4.503877,
        "norm_std": 5.141276,
        "zscore": False,
    },
    "mie": {
        "sample_rate": 35400,
        "duration": 10.0,
        "fit": "tile",
        "clip": True,
        "transform": "stft_log",
        "n_fft": 512,
        "hop": 353,
        "pad_mode": "reflect",
        "eps": 1e-7,
        "zscore": False,
    },
}

OPTIONS: dict[str, Any] = {**COMMON_OPTIONS, "recipe": "ogm_ge"}
DEFAULTS: dict[str, Any] = {**CREMAD_DEFAULTS, "frames": 3}
LIST_NAMES = {
    "train": ["my_train.txt", "train.txt", "train.csv"],
    "val": ["my_val.txt", "val.txt", "val.csv"],
    "test": ["my_test.txt", "test.txt", "test.csv"],
}


def clip_id(field: str) -> str:
    """`-3Mwkq-7TV4_2` from `-3Mwkq-7TV4_2` or `-3Mwkq-7TV4_2.mp4`."""
    stem, dot, ext = field.rpartition(".")
    return stem if dot and ext.lower() in ("mp4", "wav", "mkv", "webm", "avi") else field


def aliases(cid: str) -> list[str]:
    """The id itself and its other spelling: `<ytid>_<start>` <-> the Kinetics file name
    `<ytid>_<start:06d>_<end:06d>` (the OGM-GE train list uses the second, test the first)."""
    head, _, end = cid.rpartition("_")
    ytid, _, start = head.rpartition("_")
    if ytid and len(start) == len(end) == 6 and start.isdigit() and end.isdigit():
        return [cid, f"{ytid}_{int(start)}"]
    ytid, _, start = cid.rpartition("_")
    if ytid and start.isdigit():
        s = int(start)
        return [cid, f"{ytid}_{s:06d}_{s + 10:06d}"]
    return [cid]


def label_classes(labels: list[str]) -> list[str]:
    """Class names: "0".."max" for numeric labels, else the sorted distinct names."""
    if all(lab.isdigit() for lab in labels):
        return [str(i) for i in range(max(int(lab) for lab in labels) + 1)]
    return sorted(set(labels))


@register_dataset(
    "ks",
    description="Kinetics-Sounds: 31 classes of 10-s YouTube clips (from videos + OGM-GE lists)",
    defaults=DEFAULTS,
    options=OPTIONS,
)
def prepare(out_dir: Path, raw: Path | None, options: dict[str, Any]) -> None:
    """Convert a Kinetics-Sounds download at `raw` into the prepared format at `out_dir`."""
    opts = {**OPTIONS, **options}
    folders = [Path(opts["lists"]) if opts["lists"] else None, raw, shipped_lists("ks")]
    files = {
        "train": require_list(folders, LIST_NAMES["train"], "ks"),
        "val": find_list(folders, LIST_NAMES["val"]),
        "test": require_list(folders, LIST_NAMES["test"], "ks"),
    }
    rows = {s: read_rows(f) if f else [] for s, f in files.items()}
    for s, rr in rows.items():
        if any(len(r) < 2 for r in rr):
            raise DatasetError(f"ks: {files[s]} has a row without a label; rows: id,10,label")
    classes = label_classes([r[-1] for rr in rows.values() for r in rr])
    entries, seen = [], set()
    for split in ("test", "val", "train"):
        for r in rows[split]:
            cid = clip_id(r[0])
            if cid not in seen:
                seen.add(cid)
                entries.append((cid, classes.index(r[-1]), split, None, None))
    spec = make_spec(
        "ks",
        classes,
        RECIPES,
        "ogm_ge",
        opts,
        source=f"Kinetics-Sounds clips at {raw}",
        extra={"lists": {s: str(f) if f else None for s, f in files.items()}},
    )
    clips, missing = build_clips(entries, MediaIndex(raw), aliases, opts["visual_source"])
    convert(out_dir, spec, clips, missing)
