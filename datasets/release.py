"""Finding a release's media files by clip id: one walk over the raw directory.

Videos, audio files and folders of extracted frames are indexed by name (file stem, or
folder name for frames); a clip id is looked up under each of its aliases (the file
naming conventions differ between downloads of the same dataset).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

VIDEO_EXTENSIONS = frozenset({".mp4", ".flv", ".mkv", ".webm", ".avi", ".mov"})
AUDIO_EXTENSIONS = frozenset({".wav", ".flac"})
FRAME_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png"})


class MediaIndex:
    """Every video, audio file and frame folder under `root`, by name."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.videos: dict[str, str] = {}
        self.audio: dict[str, str] = {}
        self.frames: dict[str, str] = {}
        for dirpath, dirnames, filenames in os.walk(self.root, followlinks=True):
            dirnames.sort()
            has_frames = False
            for name in sorted(filenames):
                stem, ext = os.path.splitext(name)
                ext = ext.lower()
                if ext in VIDEO_EXTENSIONS:
                    self.videos.setdefault(stem, os.path.join(dirpath, name))
                elif ext in AUDIO_EXTENSIONS:
                    self.audio.setdefault(stem, os.path.join(dirpath, name))
                elif ext in FRAME_EXTENSIONS:
                    has_frames = True
            if has_frames:
                self.frames.setdefault(os.path.basename(dirpath), dirpath)

    @staticmethod
    def _first(table: dict[str, str], aliases: Iterable[str]) -> str | None:
        return next((table[a] for a in aliases if a in table), None)

    def video(self, aliases: Iterable[str]) -> str | None:
        return self._first(self.videos, aliases)

    def wav(self, aliases: Iterable[str]) -> str | None:
        return self._first(self.audio, aliases)

    def frame_dir(self, aliases: Iterable[str]) -> str | None:
        return self._first(self.frames, aliases)

    def sources(
        self, aliases: list[str], visual_source: str = "auto", audio_from_video: bool = True
    ) -> tuple[str | None, str | None, str | None]:
        """(audio source, visual source, reason when something is missing) for one clip.

        Audio: a WAV/FLAC of that name, else (`audio_from_video`) the video's audio
        stream. Visual
        (`visual_source`): "auto" = a frame folder of that name, else the video;
        "frames" = the folder only; "video" = the video only."""
        video = self.video(aliases)
        audio = self.wav(aliases) or (video if audio_from_video else None)
        folder = self.frame_dir(aliases) if visual_source in ("auto", "frames") else None
        visual = folder or (video if visual_source in ("auto", "video") else None)
        missing = []
        if audio is None:
            missing.append("audio (no WAV" + (" and no video)" if audio_from_video else ")"))
        if visual is None:
            missing.append("frames folder" if visual_source == "frames" else "video")
        reason = f"missing from the release: {', '.join(missing)}" if missing else None
        return audio, visual, reason
