"""`vggsound`: VGGSound (Chen et al. 2020), ~200K ten-second YouTube clips, 309-310 classes.

Raw release (``--raw``): ``vggsound.csv`` (rows ``ytid,start_s,label,train|test``, no
header) and the clips as videos named ``<ytid>_<start:06d>.mp4`` (the common download
layout, e.g. ``video/``), ``<ytid>_<start>.mp4`` or
``<ytid>_<start:06d>_<end:06d>.mp4``, in any sub-folders; WAV files and extracted frame
folders of the same names are used when present. Classes: the sorted distinct labels of
the csv (OGM-GE uses the 309 that its download had; the count lands in meta.json).
The csv's test split is kept; 10% of train is carved per class as val (seed 0).

Audio recipe ``ogm_ge`` (OGM-GE VGGSound code): 16 kHz, tiled to 10 s, a 5-s window,
clipped to [-1, 1], STFT n_fft 256 hop 128 (Hann, centred, reflect padding),
``log(|S| + 1e-7)`` -> [1, 129, 626]. The reference draws the 5-s window at random each
time a clip is read; a prepared dataset is fixed, so the window is the one in the middle
of the reference's range (offset 2.5 s), recorded as ``offset``. Frames: 1 fps, K=3,
256 x 341 centre crops.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from datasets.convert import COMMON_OPTIONS, build_clips, convert, make_spec
from datasets.cremad import DEFAULTS as CREMAD_DEFAULTS
from datasets.listfiles import read_rows, require_list
from datasets.registry import DatasetError, register_dataset
from datasets.release import MediaIndex

RECIPES: dict[str, dict[str, Any]] = {
    "ogm_ge": {
        "sample_rate": 16000,
        "fit_duration": 10.0,
        "offset": 2.5,
        "duration": 5.0,
        "fit": "tile",
        "clip": True,
        "transform": "stft_log",
        "n_fft": 256,
        "hop": 128,
        "pad_mode": "reflect",
        "eps": 1e-7,
        "zscore": False,
    },
}
OPTIONS: dict[str, Any] = {**COMMON_OPTIONS, "recipe": "ogm_ge"}
DEFAULTS: dict[str, Any] = {**CREMAD_DEFAULTS, "frames": 3}


def aliases(cid: str) -> list[str]:
    """File names a clip `<ytid>_<start:06d>` may have."""
    ytid, _, start = cid.rpartition("_")
    s = int(start)
    return [cid, f"{ytid}_{s}", f"{ytid}_{s:06d}_{s + 10:06d}"]


@register_dataset(
    "vggsound",
    description="VGGSound: ~200K ten-second YouTube clips, 309 classes (from videos + csv)",
    defaults=DEFAULTS,
    options=OPTIONS,
)
def prepare(out_dir: Path, raw: Path | None, options: dict[str, Any]) -> None:
    """Convert a VGGSound download at `raw` into the prepared format at `out_dir`."""
    opts = {**OPTIONS, **options}
    folders = [Path(opts["lists"]) if opts["lists"] else None, raw]
    csv_file = require_list(folders, ["vggsound.csv"], "vggsound")
    rows = read_rows(csv_file)
    bad = [r for r in rows if len(r) < 4 or r[3] not in ("train", "test") or not r[1].isdigit()]
    if bad:
        raise DatasetError(
            f"vggsound: {csv_file} row {','.join(bad[0])!r} is not ytid,start_s,label,train|test"
        )
    classes = sorted({r[2] for r in rows})
    entries, seen = [], set()
    for ytid, start, label, split in (r[:4] for r in rows):
        cid = f"{ytid}_{int(start):06d}"
        if cid not in seen:
            seen.add(cid)
            entries.append((cid, classes.index(label), split, None, None))
    spec = make_spec(
        "vggsound",
        classes,
        RECIPES,
        "ogm_ge",
        opts,
        source=f"VGGSound clips at {raw}",
        extra={"lists": str(csv_file)},
    )
    clips, missing = build_clips(entries, MediaIndex(raw), aliases, opts["visual_source"])
    convert(out_dir, spec, clips, missing)
