"""Your own clips as a training dataset: a folder of videos, each with a caption.

    DIR/clip1.mp4  DIR/clip1.txt          a caption beside each clip (same stem, .txt), or
    DIR/metadata.jsonl                    {"file": "clip1.mp4", "caption": "..."} per line, or
    DIR/metadata.csv                      a header `file,caption`, then one row per clip

Clips are mp4/webm/mov/mkv/avi, gif/webp, or folders of PNG/JPEG frames. Each is read once when the
latent cache is built: frames start, start + stride, ... (the first `frames` of them), centre-cropped
and resized to the model's size. Every clip is checked before training starts: an unreadable file, a
clip without a caption, or one shorter than `frames` at `stride` is a one-line error naming the file;
with `skip_bad`, unreadable or short clips are listed and left out instead.
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import KinemaError, require
from .video_io import ANIMATION_EXTS, CONTAINER_EXTS, IMAGE_EXTS, read_video, resize_frames, source_size

CLIP_EXTS = CONTAINER_EXTS + ANIMATION_EXTS
MAX_CAPTION = 10_000  # characters, as the CLI's prompts


def _captions_from_metadata(folder: Path) -> dict[str, str]:
    """file name -> caption from metadata.jsonl or metadata.csv (empty when neither exists)."""
    out: dict[str, str] = {}
    jsonl, table = folder / "metadata.jsonl", folder / "metadata.csv"
    if jsonl.is_file():
        for n, line in enumerate(jsonl.read_text(encoding="utf-8", errors="strict").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:
                raise KinemaError(f"{jsonl}:{n}: not JSON ({e})") from None
            require(isinstance(row, dict) and isinstance(row.get("file"), str) and isinstance(row.get("caption"), str),
                    f'{jsonl}:{n}: each line must be {{"file": "...", "caption": "..."}}')
            out[row["file"]] = row["caption"]
    if table.is_file():
        with table.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            require(reader.fieldnames is not None and {"file", "caption"} <= set(reader.fieldnames),
                    f"{table}: the first row must name the columns file,caption")
            for row in reader:
                out[row["file"]] = row["caption"]
    return out


def _is_clip(path: Path) -> bool:
    if path.is_dir():
        return any(p.suffix.lower() in IMAGE_EXTS for p in path.iterdir())
    return path.suffix.lower() in CLIP_EXTS


def scan(folder: str | Path, frames: int, stride: int = 1, skip_bad: bool = False) -> list[tuple[Path, str]]:
    """(clip, caption) of every usable clip in `folder`, sorted by name; checked from headers (or a read) first."""
    folder = Path(folder)
    require(folder.is_dir(), f"--data {folder}: no such folder")
    require(isinstance(stride, int) and stride >= 1, f"--stride must be a whole number >= 1, got {stride!r}")
    metadata = _captions_from_metadata(folder)
    clips = sorted((p for p in folder.iterdir() if not p.name.startswith(".") and _is_clip(p)), key=lambda p: p.name)
    require(clips, f"--data {folder} holds no clip kinema reads ({', '.join(CLIP_EXTS)}, or folders of frames)")
    good, bad = [], []
    need = (frames - 1) * stride + 1
    for clip in clips:
        caption = metadata.get(clip.name)
        if caption is None and clip.with_suffix(".txt").is_file() and not clip.is_dir():
            caption = clip.with_suffix(".txt").read_text(encoding="utf-8", errors="replace").strip()
        elif caption is None and clip.is_dir() and (folder / f"{clip.name}.txt").is_file():
            caption = (folder / f"{clip.name}.txt").read_text(encoding="utf-8", errors="replace").strip()
        require(caption, f"--data: {clip} has no caption: add {clip.stem}.txt beside it, or a line in metadata.jsonl")
        require(len(caption) <= MAX_CAPTION, f"--data: the caption of {clip} is {len(caption)} characters; keep it under "
                                             f"{MAX_CAPTION}")
        try:
            size = source_size(clip)
            count = size[0] if size is not None else None
            if count is None:  # the header does not say: read it
                count = len(read_video(clip))
            problem = None if count >= need else f"has {count} frames, fewer than the {need} that --frames {frames} " \
                                                 f"at --stride {stride} take"
        except KinemaError as e:
            problem = f"cannot be read ({e})"
        if problem is None:
            good.append((clip, caption))
        elif skip_bad:
            bad.append(f"{clip.name}: {problem}")
        else:
            raise KinemaError(f"--data: {clip} {problem}; fix or remove it, or pass --skip-bad")
    for line in bad:
        print(f"kinema: skipping {line}", flush=True)
    require(good, f"--data {folder}: no clip is usable ({len(bad)} skipped)")
    return good


class FolderDataset:
    """A folder of captioned clips as a ClipDataset (`kinema.train`): clip `seed` is file `seed % len`."""

    def __init__(self, folder: str | Path, size: int | tuple[int, int], frames: int, stride: int = 1,
                 skip_bad: bool = False):
        self.folder, self.size, self.stride = Path(folder), size, stride  # size: a side, or (height, width)
        self.height, self.width = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        self.items = scan(folder, frames, stride, skip_bad)

    def __len__(self) -> int:
        return len(self.items)

    def fingerprint(self) -> str:
        """A short hash of the clips' names, sizes and times, and the reading settings: the latent cache's name."""
        size = self.size if isinstance(self.size, int) else f"{self.height}x{self.width}"  # a side: as before
        h = hashlib.sha256(f"{size}-{self.stride}".encode())
        for path, caption in self.items:
            stat = path.stat()
            h.update(f"{path.name}|{stat.st_size}|{stat.st_mtime_ns}|{caption}".encode())
        return h.hexdigest()[:12]

    def clip(self, seed: int, frames: int, times: Sequence[int] | None = None) -> tuple[np.ndarray, dict]:
        path, caption = self.items[seed % len(self.items)]
        video, _ = read_video(path, max_frames=frames, stride=self.stride)
        require(len(video) == frames, f"--data: {path} gave {len(video)} frames, not {frames}")
        if times is not None:
            video = video[list(times)]
        if video.shape[1:3] != (self.height, self.width):
            video = resize_frames(video, self.height, self.width, policy="crop")
        return np.ascontiguousarray(video), dict(file=path.name, caption=caption)

    def captions(self, label: dict) -> list[str]:
        return [label["caption"]]

    def caption(self, label: dict, rng: np.random.Generator) -> str:
        return label["caption"]
