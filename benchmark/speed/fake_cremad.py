"""A fake CREMA-D-shaped prepared dataset from random data, for speed checks without the
release or a network: `python -m benchmark.speed.fake_cremad OUT [--train N] [--val N] [--test N]`.

Same format, shapes and dtypes as `prepare cremad` (recipe ogm_ge) writes: audio float16
[1, 257, 188] log-spectrograms, visual uint8 [3, 256, 341, 3] (K=3 frames of 256 x 341),
six classes; meta.json says registered "cremad", so runs and `speed` on it get CREMA-D's
run defaults (ResNet18 encoders, 224 crops, batch 64). The values are noise: only the
timings mean anything.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from datasets import PreparedDataset
from datasets.cremad import CLASSES
from datasets.prepared import ModalitySpec, PreparedWriter

AUDIO_SHAPE = (1, 257, 188)
VISUAL_SHAPE = (3, 256, 341, 3)
CHUNK = 256  # rows generated and written at a time


def write_fake_cremad(
    out_dir: Path,
    train: int = 2048,
    val: int = 256,
    test: int = 256,
    audio_shape: Sequence[int] = AUDIO_SHAPE,
    visual_shape: Sequence[int] = VISUAL_SHAPE,
    seed: int = 0,
    progress: bool = True,
) -> PreparedDataset:
    """Write random CREMA-D-shaped data to `out_dir` (overwriting); return it opened."""
    n = train + val + test
    modalities = {
        "audio": ModalitySpec("audio", tuple(audio_shape), "float16", {"fake": True}),
        "visual": ModalitySpec("visual", tuple(visual_shape), "uint8", {"fake": True}),
    }
    writer = PreparedWriter(out_dir, "cremad_fake", CLASSES, modalities, n, "random (speed)")
    rng = np.random.default_rng(seed)
    for start in tqdm(range(0, n, CHUNK), desc="fake cremad", unit="chunk", disable=not progress):
        rows = slice(start, min(start + CHUNK, n))
        size = rows.stop - rows.start
        audio = rng.standard_normal((size, *audio_shape), dtype=np.float32) - 4.0
        writer.write("audio", rows, audio.astype(np.float16))
        writer.write("visual", rows, rng.integers(0, 256, (size, *visual_shape), dtype=np.uint8))
    labels = np.arange(n) % len(CLASSES)
    rng.shuffle(labels)
    splits = {
        "train": np.arange(train),
        "val": np.arange(train, train + val),
        "test": np.arange(train + val, n),
    }
    ids = [f"fake_{i:05d}" for i in range(n)]
    # "registered": runs and `speed` on this directory get CREMA-D's run defaults.
    return writer.finish(labels, ids, splits, extra={"registered": "cremad"})


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmark.speed.fake_cremad", description=__doc__
    )
    parser.add_argument("out", help="directory to write")
    parser.add_argument("--train", type=int, default=2048)
    parser.add_argument("--val", type=int, default=256)
    parser.add_argument("--test", type=int, default=256)
    args = parser.parse_args(argv)
    ds = write_fake_cremad(Path(args.out), args.train, args.val, args.test)
    print(f"wrote {ds.root}: {ds.meta['splits']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
