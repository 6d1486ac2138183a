"""The driver every real-dataset converter shares: clips -> prepared directory.

A dataset module turns its release into a list of `Clip`s (id, label, split, the media
files) and a `ConvertSpec` (recipe, frame size, ...); `convert` does the rest:

- clips whose media are absent are not decoded; clips that fail to decode are skipped;
  both are counted in one summary line and listed in meta.json under "skipped";
- clips are processed in parallel (`workers` processes, default all cores) with a
  progress bar; each worker decodes one clip (audio recipe + K frames) and returns
  the arrays, the parent writes them into memory-mapped work arrays;
- resumable: the work arrays and a done-mask (``.work/done.npy``, saved every few
  seconds and on interruption) survive an interrupted run; the same command later
  processes only the rows not yet done (the plan, ids and recipe, must be the same,
  otherwise the work starts over). ``limit=N`` stops after N clips on purpose;
- a validation split is carved from train (stratified per class, seeded) when the
  release has none; the test split is never touched;
- the result is validated by `PreparedWriter.finish`, which writes meta.json last.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import multiprocessing as mp
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from datasets.media import (
    MediaError,
    decode_audio,
    extract_frames,
    ffmpeg_path,
    load_frame_folder,
    pick_frames,
)
from datasets.prepared import (
    ModalitySpec,
    PreparedWriter,
    atomic_save_npy,
    atomic_write_text,
    check_space,
    open_array,
)
from datasets.registry import DatasetError
from datasets.spectrogram import audio_features, feature_shape

WORK_DIR = ".work"
SAVE_EVERY_S = 2.0
COPY_CHUNK = 256


@dataclass(frozen=True)
class Clip:
    """One listed sample: its media (None when absent from the release) and where it goes."""

    id: str
    label: int
    split: str  # "train" | "val" | "test"
    audio: str | None  # a WAV file or a video with an audio stream
    visual: str | None  # a video file or a folder of extracted frames
    start: float | None = None  # segment start (s) inside the media, None = whole clip
    end: float | None = None  # segment end (s)


@dataclass
class ConvertSpec:
    """How to convert one release; every field is recorded in meta.json."""

    name: str
    classes: list[str]
    recipe: dict[str, Any]  # audio recipe, see datasets/spectrogram.py
    recipe_name: str
    frames: int = 3  # K stored frames per clip
    frame_size: tuple[int, int] = (256, 341)  # H, W
    fps: float = 1.0
    source: str = ""
    workers: int | None = None  # None = all cores
    limit: int | None = None  # stop after this many clips (resumable)
    val_fraction: float = 0.1  # carved from train when the release has no val split
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def default_workers() -> int:
    """All cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS
        return os.cpu_count() or 1


def process_clip(spec: ConvertSpec, clip: Clip) -> dict[str, np.ndarray]:
    """Decode one clip: audio -> recipe spectrogram float16 [1, F, T]; visual -> K uint8
    frames [K, H, W, 3] at `spec.fps`. Raises MediaError when the clip cannot be used."""
    rec = spec.recipe
    duration = None if clip.end is None else clip.end - (clip.start or 0.0)
    wave = decode_audio(Path(clip.audio), rec["sample_rate"], clip.start, duration)
    audio = audio_features(wave, rec)
    if not np.isfinite(audio).all():
        raise MediaError(f"{clip.id}: non-finite spectrogram values")
    h, w = spec.frame_size
    visual = Path(clip.visual)
    if visual.is_dir():
        frames = load_frame_folder(visual, h, w)
        if clip.start is not None:  # frame i of a 1-fps folder shows second i
            lo = int(clip.start)
            hi = max(lo + 1, int(np.ceil(clip.end))) if clip.end is not None else None
            frames = frames[lo:hi] if len(frames) > lo else frames[-1:]
    else:
        frames = extract_frames(visual, h, w, spec.fps, clip.start, duration)
    return {"audio": audio.astype(np.float16), "visual": pick_frames(frames, spec.frames)}


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)


def _run_one(spec: ConvertSpec, row: int, clip: Clip) -> tuple[int, dict | None, str | None]:
    try:
        return row, process_clip(spec, clip), None
    except MediaError as exc:
        return row, None, str(exc)
    except Exception as exc:  # noqa: BLE001 - any failure of one clip is reported, not fatal
        return row, None, f"{type(exc).__name__}: {exc}"


def _results(
    spec: ConvertSpec, clips: Sequence[Clip], rows: Sequence[int], workers: int
) -> Iterator[tuple[int, dict | None, str | None]]:
    """(row, arrays or None, failure reason) as clips finish, in any order."""
    if workers <= 1:
        for r in rows:
            yield _run_one(spec, r, clips[r])
        return
    ctx = mp.get_context("spawn")  # torch in the parent: never fork it
    with cf.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init) as pool:
        pending: set[cf.Future] = set()
        queue = iter(rows)
        try:
            while True:
                for r in queue:
                    pending.add(pool.submit(_run_one, spec, r, clips[r]))
                    if len(pending) >= 4 * workers:
                        break
                if not pending:
                    return
                done, pending = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
                for fut in done:
                    yield fut.result()
        finally:
            for fut in pending:
                fut.cancel()


def carve_val(
    labels: np.ndarray, rows: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split `rows` into (train, val): `fraction` of each class (rounded; at least one row
    to val and one left in train when the class has two) goes to val, seeded."""
    rng = np.random.default_rng(seed)
    val = []
    for c in np.unique(labels[rows]):
        members = rows[labels[rows] == c]
        k = min(len(members) - 1, max(1, int(round(fraction * len(members)))))
        k = k if fraction > 0 else 0
        if k > 0:
            val.append(rng.choice(members, size=k, replace=False))
    val_rows = np.sort(np.concatenate(val)) if val else np.zeros(0, np.int64)
    return np.setdiff1d(rows, val_rows), val_rows


LFS_POINTER = b"version https://git-lfs.github.com/spec/"
LFS_POINTER_MAX = 1024  # pointer files are ~130 bytes


def is_lfs_pointer(path: str | Path) -> bool:
    """Whether `path` is a git-lfs pointer file (a clone without `git lfs pull`)."""
    try:
        if os.path.getsize(path) > LFS_POINTER_MAX:
            return False
        with open(path, "rb") as fh:
            return fh.read(len(LFS_POINTER)) == LFS_POINTER
    except OSError:
        return False


def check_not_lfs_pointers(clips: Sequence[Clip]) -> None:
    """DatasetError, before anything is written, when media files of the release are
    git-lfs pointers instead of media (CREMA-D's GitHub repository, cloned without LFS)."""
    files = sorted({f for c in clips for f in (c.audio, c.visual) if f and os.path.isfile(f)})
    pointers = [f for f in files if is_lfs_pointer(f)]
    if pointers:
        folder = os.path.dirname(os.path.dirname(pointers[0])) or "."
        raise DatasetError(
            f"{len(pointers)} of the release's {len(files)} media files are git-lfs pointer "
            f"files, not media (e.g. {pointers[0]}): fetch them with `git lfs install && "
            f"git lfs pull` in the release's clone (under {folder}), then prepare again"
        )


def _plan(spec: ConvertSpec, clips: Sequence[Clip]) -> dict[str, Any]:
    cfg = asdict(spec)
    for key in ("workers", "limit", "source", "extra"):  # they do not change the arrays
        cfg.pop(key)
    blob = json.dumps({"config": cfg, "clips": [asdict(c) for c in clips]}, sort_keys=True)
    return {"hash": hashlib.sha1(blob.encode()).hexdigest()[:16], "n": len(clips)}


def _open_work(
    work: Path, plan: dict[str, Any], shapes: dict[str, tuple[tuple[int, ...], str]]
) -> tuple[dict[str, np.memmap], np.ndarray]:
    """The work arrays and done-mask: reopened when the plan is the same, else new."""
    plan_file = work / "plan.json"
    if plan_file.is_file() and json.loads(plan_file.read_text()) == plan:
        try:
            arrays = {m: np.load(work / f"{m}.npy", mmap_mode="r+") for m in shapes}
            done = np.load(work / "done.npy")
            if len(done) == plan["n"] and all(
                a.shape == (plan["n"], *shapes[m][0]) for m, a in arrays.items()
            ):
                return arrays, done
        except (OSError, ValueError):
            pass
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    full = {m: ((plan["n"], *shape), dtype) for m, (shape, dtype) in shapes.items()}
    check_space(work, full)
    arrays = {m: open_array(work / f"{m}.npy", shape, dtype) for m, (shape, dtype) in full.items()}
    done = np.zeros(plan["n"], dtype=bool)
    atomic_save_npy(work / "done.npy", done)
    atomic_write_text(plan_file, json.dumps(plan))
    return arrays, done


def _final_arrays(
    out_dir: Path,
    work: Path,
    spec: ConvertSpec,
    modalities: dict[str, ModalitySpec],
    arrays: dict[str, np.memmap],
    keep: np.ndarray,
) -> PreparedWriter:
    """A PreparedWriter over the kept rows: the work arrays moved into place when every
    row is kept, else copied in chunks."""
    for a in arrays.values():
        a.flush()
    if len(keep) == len(next(iter(arrays.values()))):
        arrays.clear()
        for m in modalities:
            os.replace(work / f"{m}.npy", out_dir / f"{m}.npy")
        return PreparedWriter(
            out_dir, spec.name, spec.classes, modalities, len(keep), spec.source, resume=True
        )
    writer = PreparedWriter(out_dir, spec.name, spec.classes, modalities, len(keep), spec.source)
    for m, src in arrays.items():
        for lo in range(0, len(keep), COPY_CHUNK):
            sel = keep[lo : lo + COPY_CHUNK]
            writer.write(m, slice(lo, lo + len(sel)), src[sel])
    arrays.clear()
    return writer


def convert(
    out_dir: Path,
    spec: ConvertSpec,
    clips: Sequence[Clip],
    missing: Sequence[tuple[str, str]] = (),
    log: Callable[[str], None] | None = None,
) -> None:
    """Decode `clips` into the prepared directory `out_dir` (see the module docstring).

    `missing` are (id, reason) of listed clips whose media are not in the release; they
    are reported with the clips that fail to decode."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    out_dir = Path(out_dir)
    if not clips:
        raise DatasetError(
            f"{spec.name}: none of the listed clips was found in the release "
            f"({len(missing)} listed, e.g. {missing[0][0] if missing else '?'}: "
            f"{missing[0][1] if missing else ''}); check --raw and the list files"
        )
    check_not_lfs_pointers(clips)
    ffmpeg_path()
    plan = _plan(spec, clips)
    meta_file = out_dir / "meta.json"
    if meta_file.is_file() and json.loads(meta_file.read_text()).get("plan") == plan["hash"]:
        log(f"{spec.name}: already prepared in {out_dir} (same clips and recipe); nothing to do")
        return
    audio_shape = feature_shape(spec.recipe)
    h, w = spec.frame_size
    shapes = {"audio": (audio_shape, "float16"), "visual": ((spec.frames, h, w, 3), "uint8")}
    out_dir.mkdir(parents=True, exist_ok=True)
    work = out_dir / WORK_DIR
    arrays, done = _open_work(work, plan, shapes)
    todo = np.flatnonzero(~done)
    already = len(clips) - len(todo)
    if spec.limit is not None:
        todo = todo[: spec.limit]
    workers = max(1, min(spec.workers or default_workers(), max(1, len(todo))))
    failed: dict[int, str] = {}
    last_save = time.monotonic()
    bar = tqdm(total=len(todo), desc=f"prepare {spec.name}", unit="clip", file=sys.stderr)
    try:
        for row, values, reason in _results(spec, clips, todo, workers):
            if values is None:
                failed[row] = reason or "unknown error"
            else:
                for m, v in values.items():
                    arrays[m][row] = v
                done[row] = True
            bar.update()
            if time.monotonic() - last_save > SAVE_EVERY_S:
                for a in arrays.values():
                    a.flush()
                atomic_save_npy(work / "done.npy", done)
                last_save = time.monotonic()
    finally:
        bar.close()
        for a in arrays.values():
            a.flush()
        atomic_save_npy(work / "done.npy", done)
    processed = f"decoded {len(todo) - len(failed)} clips this run"
    if already:
        processed += f" ({already} done by an earlier run)"
    if spec.limit is not None and (~done).sum() > len(failed):
        raise DatasetError(
            f"{spec.name}: stopped after {len(todo)} clips (limit={spec.limit}); "
            f"{int(done.sum())} of {len(clips)} done; run the same command without the "
            "limit to continue"
        )
    keep = np.flatnonzero(done)
    if len(keep) == 0:
        first = next(iter(failed.values()), "?")
        raise DatasetError(f"{spec.name}: no clip could be decoded (first error: {first})")
    skipped = [{"id": i, "reason": r} for i, r in missing] + [
        {"id": clips[r].id, "reason": f"failed to decode: {failed[r]}"} for r in sorted(failed)
    ]
    log(
        f"{spec.name}: {processed}; {len(keep)} of {len(clips) + len(missing)} listed clips "
        f"prepared; skipped {len(skipped)} ({len(missing)} missing from the release, "
        f"{len(failed)} failed to decode), listed in meta.json 'skipped'"
    )
    kept = [clips[r] for r in keep]
    labels = np.array([c.label for c in kept], dtype=np.int64)
    split_of = np.array([c.split for c in kept])
    rows = {s: np.flatnonzero(split_of == s) for s in ("train", "val", "test")}
    val_info: dict[str, Any] = {"from": "release"}
    if not any(c.split == "val" for c in clips):
        rows["train"], rows["val"] = carve_val(labels, rows["train"], spec.val_fraction, spec.seed)
        val_info = {
            "from": "train",
            "method": "stratified per class, seeded (datasets.convert.carve_val)",
            "fraction": spec.val_fraction,
            "seed": spec.seed,
        }
    modalities = {
        "audio": ModalitySpec(
            "audio",
            audio_shape,
            "float16",
            {"recipe": spec.recipe_name, **spec.recipe},
        ),
        "visual": ModalitySpec(
            "visual",
            (spec.frames, h, w, 3),
            "uint8",
            {
                "fps": spec.fps,
                "stored_frames": spec.frames,
                "selection": "evenly spaced over the clip, first to last (repeated if short)",
                "size": [h, w],
                "resize": "scaled to cover HxW keeping the aspect ratio (bilinear), centre-cropped",
                "extractor": "ffmpeg fps filter (videos) or Pillow (frame folders)",
            },
        ),
    }
    writer = _final_arrays(out_dir, work, spec, modalities, arrays, keep)
    writer.finish(
        labels,
        [c.id for c in kept],
        rows,
        extra={
            "plan": plan["hash"],
            "recipe": spec.recipe_name,
            "val_split": val_info,
            "listed": len(clips) + len(missing),
            "skipped": skipped,
            **spec.extra,
        },
    )
    shutil.rmtree(work, ignore_errors=True)


# Options every real-dataset module accepts (`--set key=value`; `--recipe`/`--workers`).
COMMON_OPTIONS: dict[str, Any] = {
    "recipe": None,  # audio recipe name (None = the dataset's default)
    "workers": None,  # parallel processes (None = all cores)
    "lists": None,  # folder with the split list files (None = shipped / in the release)
    "frames": 3,  # K frames stored per clip
    "frame_size": [256, 341],  # H, W of stored frames (short side 256, 4:3)
    "visual_source": "auto",  # auto | video | frames (extracted frame folders)
    "val_fraction": 0.1,  # of train, per class, when the release has no val split
    "seed": 0,  # for the val split
    "limit": None,  # stop after N clips this run (resume later with the same command)
}


def make_spec(
    name: str,
    classes: Sequence[str],
    recipes: dict[str, dict[str, Any]],
    default_recipe: str,
    opts: dict[str, Any],
    source: str,
    extra: dict[str, Any] | None = None,
) -> ConvertSpec:
    """A ConvertSpec from the merged options, with one-line errors for bad values."""
    recipe_name = opts.get("recipe") or default_recipe
    if recipe_name not in recipes:
        raise DatasetError(
            f"unknown recipe {recipe_name!r} for {name}; recipes: {', '.join(recipes)}"
        )
    size = opts["frame_size"]
    if not (isinstance(size, list | tuple) and len(size) == 2 and all(int(s) > 0 for s in size)):
        raise DatasetError(
            f"frame_size must be [H, W], e.g. --set frame_size=[256,341]; got {size}"
        )
    if opts["visual_source"] not in ("auto", "video", "frames"):
        raise DatasetError("visual_source must be auto, video or frames")
    if not (isinstance(opts["frames"], int) and opts["frames"] >= 1):
        raise DatasetError(f"frames must be a positive integer, got {opts['frames']!r}")
    if not 0 <= float(opts["val_fraction"]) < 1:
        raise DatasetError(f"val_fraction must be in [0, 1), got {opts['val_fraction']!r}")
    workers = opts.get("workers")
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise DatasetError(f"--workers must be a positive integer, got {workers!r}")
    recorded = {k: (str(v) if isinstance(v, Path) else v) for k, v in opts.items()}
    return ConvertSpec(
        name=name,
        classes=list(classes),
        recipe=dict(recipes[recipe_name]),
        recipe_name=recipe_name,
        frames=int(opts["frames"]),
        frame_size=(int(size[0]), int(size[1])),
        source=source,
        workers=workers,
        limit=opts.get("limit"),
        val_fraction=float(opts["val_fraction"]),
        seed=int(opts["seed"]),
        extra={**dict(extra or {}), "options": recorded},
    )


Entry = tuple[str, int, str, float | None, float | None]  # id, label, split, start, end


def build_clips(
    entries: Sequence[Entry],
    index: Any,
    aliases: Callable[[str], list[str]],
    visual_source: str = "auto",
    audio_from_video: bool = True,
) -> tuple[list[Clip], list[tuple[str, str]]]:
    """Clips with their media (from a `release.MediaIndex`), and (id, reason) of the
    listed clips whose media are absent."""
    clips, missing = [], []
    for clip_id, label, split, start, end in entries:
        audio, visual, reason = index.sources(aliases(clip_id), visual_source, audio_from_video)
        if reason:
            missing.append((clip_id, reason))
        else:
            clips.append(Clip(clip_id, label, split, audio, visual, start, end))
    return clips, missing
