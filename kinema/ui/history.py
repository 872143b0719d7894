"""The output folder as a history: each clip with its sidecar, newest first, and its settings loaded back.

Only names listed from the output folder are opened; the page refers to an entry by its index in the list
it was shown, never by a path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import KinemaError
from . import forms

LIMIT = 60  # entries shown
MAX_SIDECAR = 1 << 20  # bytes: a larger .json is not a sidecar of ours


@dataclass(frozen=True)
class Entry:
    clip: Path
    preview: Path  # the GIF beside the clip where there is one, else the clip
    record: dict

    @property
    def caption(self) -> str:
        return f"{self.record.get('command', '?')}: {str(self.record.get('prompt', ''))[:80]}"


def entries(folder: Path, limit: int = LIMIT) -> list[Entry]:
    """Clips in `folder` (not below it) that have a readable sidecar, newest first."""
    found = []
    for side in Path(folder).glob("*.json"):
        clip = side.with_name(side.name[: -len(".json")])
        if not (side.is_file() and not side.is_symlink() and clip.is_file() and not clip.is_symlink()
                and clip.suffix in (".mp4", ".gif", ".webp") and side.stat().st_size <= MAX_SIDECAR):
            continue
        try:
            record = json.loads(side.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and record.get("command") in forms.FORMS:
            gif = clip.with_suffix(".gif")
            found.append((side.stat().st_mtime, Entry(clip, gif if gif.is_file() else clip, record)))
    found.sort(key=lambda e: (e[0], e[1].clip.name), reverse=True)
    return [e for _, e in found[:limit]]


def form_values(record: dict) -> tuple[str, dict]:
    """(task, form values) of a past job: from its recorded command, else from its recorded settings."""
    if isinstance(record.get("cli"), str):
        try:
            task, values = forms.from_command(record["cli"])
            return task, {**values, "random_seed": False}
        except KinemaError:
            pass
    task = record.get("command")
    if task not in forms.FORMS:
        raise KinemaError("this sidecar records no kinema task")
    known = {f.name: f for f in forms.FORMS[task]}
    given = {**record, **(record.get("settings") or {})}
    values = {"prompt": record.get("prompt", ""), "random_seed": False}
    for name, v in given.items():
        if name in known and known[name].kind not in ("image", "video", "tristate"):
            try:
                values[name] = forms.coerce(known[name], v)
            except KinemaError:
                continue
    return task, values
