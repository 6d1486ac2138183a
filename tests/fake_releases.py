"""Small fake releases of the real datasets, in their real layouts, with real media files.

WAVs are written with soundfile at the release's rate, videos by ffmpeg (``testsrc``-type
sources, a couple of seconds, small frames; MP4 with an AAC sine track, FLV video-only as
CREMA-D's), frame folders as JPEGs with Pillow, and the list files in the formats of
DATASETS.md. Media are made once per (pattern, length) and copied, so a release of
thousands of clips takes seconds. Each class gets its own tone and test pattern, so a
model can learn something from either modality.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image

PATTERNS = ("testsrc", "smptebars", "rgbtestsrc", "testsrc2", "yuvtestsrc", "smptehdbars")
CREMAD_EMOTIONS = ("NEU", "HAP", "SAD", "FEA", "DIS", "ANG")
CREMAD_SENTENCES = (
    "DFA",
    "IEO",
    "IOM",
    "ITH",
    "ITS",
    "IWL",
    "IWW",
    "MTI",
    "TAI",
    "TIE",
    "TSI",
    "WSI",
)


def tone(cls: int, seconds: float, rate: int, seed: int) -> np.ndarray:
    """A class-specific tone with noise, float32 in [-1, 1]."""
    t = np.arange(int(seconds * rate)) / rate
    rng = np.random.default_rng(seed)
    wave = 0.5 * np.sin(2 * np.pi * (220 + 110 * cls) * t) + 0.05 * rng.normal(size=t.size)
    return np.clip(wave, -1, 1).astype(np.float32)


def write_wav(path: Path, cls: int, seconds: float, rate: int, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, tone(cls, seconds, rate, seed), rate, subtype="PCM_16")


def make_video(path: Path, cls: int, seconds: float, size: str, audio: bool) -> None:
    """One tiny video: a test pattern per class at 5 fps (+ a sine track when `audio`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    src = PATTERNS[cls % len(PATTERNS)]
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-y"]
    cmd += ["-f", "lavfi", "-i", f"{src}=size={size}:rate=5:duration={seconds}"]
    if audio:
        freq = 220 + 110 * cls
        cmd += ["-f", "lavfi", "-i", f"sine=frequency={freq}:sample_rate=16000:duration={seconds}"]
        cmd += ["-c:a", "aac", "-b:a", "32k"]
    codec = ["-c:v", "flv1"] if path.suffix == ".flv" else ["-c:v", "mpeg4", "-pix_fmt", "yuv420p"]
    subprocess.run([*cmd, *codec, "-shortest", str(path)], check=True)


class VideoCache:
    """Make each (class, length, format) video once, copy it for every clip."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.made: dict[tuple, Path] = {}

    def copy(self, dst: Path, cls: int, seconds: float, size: str, audio: bool) -> None:
        key = (cls % len(PATTERNS), seconds, size, audio, dst.suffix)
        if key not in self.made:
            src = self.folder / f"tpl_{'_'.join(map(str, key))}{dst.suffix}"
            make_video(src, cls, seconds, size, audio)
            self.made[key] = src
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.made[key], dst)


def write_frames(folder: Path, cls: int, n: int, size: tuple[int, int]) -> None:
    """`n` JPEG frames 00001.jpg ... of a class colour, size (W, H)."""
    folder.mkdir(parents=True, exist_ok=True)
    colour = np.array([(40 * cls) % 256, 255 - 30 * cls, 100], dtype=np.uint8)
    for i in range(n):
        img = np.broadcast_to(colour, (size[1], size[0], 3)).copy()
        img[: 10 * (i + 1)] = 255  # a band that grows frame by frame
        Image.fromarray(img).save(folder / f"{i + 1:05d}.jpg", quality=90)


def corrupt(path: Path) -> None:
    """Overwrite a media file with bytes no decoder accepts."""
    path.write_bytes(b"this is not a video" * 50)


def cremad_ids(n_per_class: int, exclude: set[str], start_actor: int = 1001) -> list[str]:
    """Valid CREMA-D clip names (actor_sentence_emotion_level) not in `exclude`."""
    out = []
    for e in CREMAD_EMOTIONS:
        k = 0
        for actor in range(start_actor, 1092):
            for s in CREMAD_SENTENCES:
                cid = f"{actor}_{s}_{e}_XX"
                if cid not in exclude and k < n_per_class:
                    out.append(cid)
                    k += 1
    return out


def make_cremad(
    root: Path,
    train: list[str],
    test: list[str],
    seconds: float = 2.2,
    frame_folders: int = 0,
    cache: VideoCache | None = None,
) -> Path:
    """AudioWAV/*.wav (16 kHz), VideoFlash/*.flv (4:3), Image-01-FPS/<clip>/ for the first
    `frame_folders` clips; lists/train.csv (with a BOM, like stat.csv) and lists/test.csv."""
    cache = cache or VideoCache(root / ".tpl")
    for i, cid in enumerate(train + test):
        cls = CREMAD_EMOTIONS.index(cid.split("_")[2])
        write_wav(root / "AudioWAV" / f"{cid}.wav", cls, seconds, 16000, seed=i)
        cache.copy(root / "VideoFlash" / f"{cid}.flv", cls, seconds, "96x72", audio=False)
        if i < frame_folders:
            write_frames(root / "Image-01-FPS" / cid, cls, 2, (120, 90))
    lists = root / "lists"
    lists.mkdir(exist_ok=True)
    (lists / "train.csv").write_text(
        "\ufeff" + "".join(f"{c},{c.split('_')[2]}\n" for c in train), encoding="utf-8"
    )
    (lists / "test.csv").write_text("".join(f"{c},{c.split('_')[2]}\r\n" for c in test))
    return root


def make_ks(root: Path, n_train: int = 12, n_test: int = 6, classes: int = 3) -> Path:
    """Clips as MP4 (half with the Kinetics name <ytid>_<start:06d>_<end:06d>.mp4), WAVs for
    a few; my_train.txt in the comma format, my_test.txt in the space format."""
    cache = VideoCache(root / ".tpl")
    rows = {"train": [], "test": []}
    for i in range(n_train + n_test):
        split = "train" if i < n_train else "test"
        ytid, start, cls = f"yt{i:03d}-_x{i % 7}", 10 * i, i % classes
        cid = f"{ytid}_{start}"
        name = f"{ytid}_{start:06d}_{start + 10:06d}" if i % 2 else cid
        cache.copy(root / "videos" / split / f"{name}.mp4", cls, 2.0, "128x72", audio=True)
        if i % 5 == 0:
            write_wav(root / "wav" / f"{cid}.wav", cls, 2.0, 16000, seed=i)
        rows[split].append((cid, cls))
    (root / "my_train.txt").write_text("".join(f"{c},10,{y}\n" for c, y in rows["train"]))
    (root / "my_test.txt").write_text("".join(f"{c}.mp4 {y}\n" for c, y in rows["test"]))
    return root


AVE_CATEGORIES = ("Church bell", "Male speech, man speaking", "Bark", "Violin, fiddle")


def make_ave(root: Path, per_split: dict[str, int] | None = None) -> Path:
    """AVE_Dataset/AVE/<id>.mp4 and the `&` lists with a header in Annotations.txt."""
    per_split = per_split or {"train": 8, "val": 4, "test": 4}
    base = root / "AVE_Dataset"
    cache = VideoCache(root / ".tpl")
    header = "Category&VideoID&Quality&StartTime&EndTime\n"
    all_rows, files = [], {"train": "trainSet.txt", "val": "valSet.txt", "test": "testSet.txt"}
    i = 0
    for split, n in per_split.items():
        rows = []
        for _ in range(n):
            cls = i % len(AVE_CATEGORIES)
            vid = f"ave{i:04d}xyz"
            cache.copy(base / "AVE" / f"{vid}.mp4", cls, 3.0, "96x64", audio=True)
            rows.append(f"{AVE_CATEGORIES[cls]}&{vid}&good&{i % 2}&{2 + i % 2}\n")
            i += 1
        (base / files[split]).write_text("".join(rows))
        all_rows += rows
    (base / "Annotations.txt").write_text(header + "".join(all_rows))
    return root


def make_vggsound(root: Path, n_train: int = 12, n_test: int = 6, classes: int = 3) -> Path:
    """vggsound.csv (quoted labels with commas) and video/<ytid>_<start:06d>.mp4."""
    cache = VideoCache(root / ".tpl")
    labels = ["dog barking", "playing violin, fiddle", "rain"][:classes]
    lines = []
    for i in range(n_train + n_test):
        ytid, start, cls = f"v{i:03d}_-abc", 30 + i, i % classes
        split = "train" if i < n_train else "test"
        cache.copy(root / "video" / f"{ytid}_{start:06d}.mp4", cls, 2.0, "96x96", audio=True)
        lines.append(f'{ytid},{start},"{labels[cls]}",{split}\n')
    (root / "vggsound.csv").write_text("".join(lines))
    return root
