"""Decoding media for `prepare`: audio to float waveforms, video to 1-fps uint8 frames.

Audio: WAV/FLAC/OGG files are read with soundfile (libsndfile; imported on first use) and
resampled with soxr at "HQ" quality, what the references' ``librosa.load(path, sr=...)``
does (librosa >= 0.10's default); any other container (MP4, FLV, ...) is decoded and
resampled by ffmpeg. Frames: ffmpeg's ``fps`` filter (the same filter the
references' ``ffmpeg -r 1`` extraction scripts use), scaled to cover the target box
keeping the aspect ratio and centre-cropped to it, piped as raw RGB; extracted JPEG
folders are read with Pillow and given the same scale-and-crop.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
from PIL import Image

from datasets.registry import DatasetError

SOUNDFILE_EXTENSIONS = frozenset({".wav", ".flac", ".ogg"})
FFMPEG_HINT = (
    "ffmpeg is not installed (needed to decode the release's videos): run `make install` "
    "as root, or `apt-get install ffmpeg` / `brew install ffmpeg` / `conda install ffmpeg`"
)


class MediaError(RuntimeError):
    """A clip that cannot be decoded (corrupt, empty, unreadable): skipped and reported."""


def ffmpeg_path() -> str:
    """The ffmpeg executable, or DatasetError with the fix."""
    path = shutil.which("ffmpeg")
    if path is None:
        raise DatasetError(FFMPEG_HINT)
    return path


def _run_ffmpeg(args: list[str], what: Path) -> bytes:
    cmd = [ffmpeg_path(), "-nostdin", "-v", "error", *args]
    proc = subprocess.run(cmd, capture_output=True, check=False)
    if proc.returncode != 0:
        reason = proc.stderr.decode(errors="replace").strip().splitlines()
        raise MediaError(f"ffmpeg could not decode {what.name}: {reason[-1] if reason else '?'}")
    return proc.stdout


def _segment_args(start: float | None, duration: float | None) -> list[str]:
    args = []
    if start:
        args += ["-ss", f"{start:.3f}"]
    if duration:
        args += ["-t", f"{duration:.3f}"]
    return args


def decode_audio(
    path: Path, sample_rate: int, start: float | None = None, duration: float | None = None
) -> np.ndarray:
    """Mono float32 waveform of `path` at `sample_rate`, optionally the segment
    [start, start + duration) seconds. Raises MediaError on an undecodable or empty file."""
    path = Path(path)
    if path.suffix.lower() in SOUNDFILE_EXTENSIONS:
        # Imported here: training and `speed` read prepared arrays and need no audio
        # decoder (the GPU machines' image has neither library).
        import soundfile as sf
        import soxr

        try:
            wave, rate = sf.read(path, dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError) as exc:
            raise MediaError(f"soundfile could not read {path.name}: {exc}") from None
        wave = wave.mean(axis=1)
        if start or duration:
            lo = int(round((start or 0.0) * rate))
            hi = len(wave) if duration is None else lo + int(round(duration * rate))
            wave = wave[lo:hi]
        if rate != sample_rate:
            wave = soxr.resample(wave, rate, sample_rate, quality="HQ").astype(np.float32)
    else:
        raw = _run_ffmpeg(
            [*_segment_args(start, duration), "-i", str(path), "-vn", "-ac", "1"]
            + ["-ar", str(sample_rate), "-f", "f32le", "-"],
            path,
        )
        wave = np.frombuffer(raw, dtype="<f4").astype(np.float32)
    if wave.size == 0:
        raise MediaError(f"{path.name} has no audio samples")
    return np.ascontiguousarray(wave)


def frame_filter(height: int, width: int, fps: float = 1.0) -> str:
    """The ffmpeg filter chain: `fps` frames a second, scaled to cover height x width
    keeping the aspect ratio, centre-cropped to it, square pixels."""
    return (
        f"fps={fps},scale={width}:{height}:force_original_aspect_ratio=increase,"
        f"crop={width}:{height},setsar=1"
    )


def extract_frames(
    path: Path,
    height: int,
    width: int,
    fps: float = 1.0,
    start: float | None = None,
    duration: float | None = None,
) -> np.ndarray:
    """uint8 [n, height, width, 3] frames of the video at `path`, `fps` a second."""
    path = Path(path)
    raw = _run_ffmpeg(
        [*_segment_args(start, duration), "-i", str(path), "-an"]
        + ["-vf", frame_filter(height, width, fps), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        path,
    )
    frame_bytes = height * width * 3
    if len(raw) < frame_bytes:
        raise MediaError(f"{path.name} gave no video frame")
    n = len(raw) // frame_bytes
    return np.frombuffer(raw[: n * frame_bytes], dtype=np.uint8).reshape(n, height, width, 3)


def cover_crop(image: Image.Image, height: int, width: int) -> np.ndarray:
    """Scale `image` to cover height x width keeping its aspect (bilinear), centre-crop."""
    w0, h0 = image.size
    scale = max(width / w0, height / h0)
    w1, h1 = max(width, round(w0 * scale)), max(height, round(h0 * scale))
    image = image.convert("RGB").resize((w1, h1), Image.BILINEAR)
    left, top = (w1 - width) // 2, (h1 - height) // 2
    return np.asarray(image.crop((left, top, left + width, top + height)), dtype=np.uint8)


def load_frame_folder(folder: Path, height: int, width: int) -> np.ndarray:
    """uint8 [n, height, width, 3] from a folder of extracted frames (sorted *.jpg/*.png)."""
    files = sorted(
        p for p in Path(folder).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")
    )
    if not files:
        raise MediaError(f"frame folder {folder.name} has no JPEG/PNG frame")
    frames = []
    for f in files:
        try:
            with Image.open(f) as img:
                frames.append(cover_crop(img, height, width))
        except OSError as exc:
            raise MediaError(f"cannot read frame {folder.name}/{f.name}: {exc}") from None
    return np.stack(frames)


def pick_frames(frames: np.ndarray, k: int) -> np.ndarray:
    """`k` frames evenly spaced over the clip (first to last; repeated when it is shorter)."""
    idx = np.round(np.linspace(0, len(frames) - 1, k)).astype(np.int64)
    return frames[idx]
