"""`ave`: AVE, the Audio-Visual Event dataset (Tian et al. 2018): 4,143 ten-second clips,
28 event classes, each with an annotated event segment.

Raw release (``--raw``, the unpacked ``AVE_Dataset``)::

    AVE/<VideoID>.mp4
    Annotations.txt   trainSet.txt   valSet.txt   testSet.txt

List rows ``Category&VideoID&Quality&Start&End`` (3,339 / 402 / 402 rows; a header
row is skipped). The release's own train/val/test split is used as is. Classes: the
sorted category names of ``Annotations.txt`` (of the lists when it is absent).

Audio recipe ``pmr`` (the PMR code, the only reference): the annotated segment
[Start, End) decoded at 16 kHz, tiled to 10 s, ``scipy.signal.spectrogram`` nperseg 512
noverlap 353, ``log(S + 1e-7)``, per-sample z-score -> [1, 257, 1004]. Frames: 1 fps
inside the segment, K=3 stored evenly spaced (the reference keeps >= 10 and uses 3-4),
256 x 341 centre crops.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from datasets.convert import COMMON_OPTIONS, build_clips, convert, make_spec
from datasets.cremad import DEFAULTS as CREMAD_DEFAULTS
from datasets.cremad import RECIPES as CREMAD_RECIPES
from datasets.listfiles import find_list, read_rows, require_list
from datasets.registry import DatasetError, register_dataset
from datasets.release import MediaIndex

RECIPES: dict[str, dict[str, Any]] = {"pmr": CREMAD_RECIPES["pmr"]}
OPTIONS: dict[str, Any] = {**COMMON_OPTIONS, "recipe": "pmr"}
DEFAULTS: dict[str, Any] = {**CREMAD_DEFAULTS, "frames": 3}
LIST_NAMES = {"train": "trainSet.txt", "val": "valSet.txt", "test": "testSet.txt"}


def parse_rows(path: Path) -> list[tuple[str, str, float, float]]:
    """(category, video id, start, end) of an AVE list, header rows skipped."""
    out = []
    for row in read_rows(path):
        if len(row) < 5:
            raise DatasetError(f"ave: {path} row {'&'.join(row)!r} is not Category&ID&Q&Start&End")
        try:
            start, end = float(row[3]), float(row[4])
        except ValueError:
            continue  # header
        out.append((row[0], row[1], start, end))
    return out


@register_dataset(
    "ave",
    description="AVE: 28 audio-visual event classes, 4,143 ten-second clips (from the release)",
    defaults=DEFAULTS,
    options=OPTIONS,
)
def prepare(out_dir: Path, raw: Path | None, options: dict[str, Any]) -> None:
    """Convert the AVE release at `raw` into the prepared format at `out_dir`."""
    opts = {**OPTIONS, **options}
    folders = [Path(opts["lists"]) if opts["lists"] else None, raw]
    files = {s: require_list(folders, [n], "ave") for s, n in LIST_NAMES.items()}
    rows = {s: parse_rows(f) for s, f in files.items()}
    annotations = find_list(folders, ["Annotations.txt"])
    names = [r[0] for r in parse_rows(annotations)] if annotations else []
    classes = sorted(set(names) | {r[0] for rr in rows.values() for r in rr})
    entries, seen = [], set()
    for split in ("test", "val", "train"):
        for cat, vid, start, end in rows[split]:
            if vid not in seen:
                seen.add(vid)
                entries.append((vid, classes.index(cat), split, start, end))
    spec = make_spec(
        "ave",
        classes,
        RECIPES,
        "pmr",
        opts,
        source=f"AVE release at {raw}",
        extra={
            "lists": {s: str(f) for s, f in files.items()},
            "segment": "annotated event segment [Start, End) of each clip",
        },
    )
    clips, missing = build_clips(entries, MediaIndex(raw), lambda i: [i], opts["visual_source"])
    convert(out_dir, spec, clips, missing)
