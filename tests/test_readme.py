"""The README's links and sample inputs exist in the repository (a fresh clone can run its commands)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_files_exist():
    text = (ROOT / "README.md").read_text()
    linked = set(re.findall(r"\]\(((?:docs|samples|configs|scripts)/[^)#\s]+)\)", text))
    used = set(re.findall(r"\b(samples/[\w./-]+\.(?:mp4|png|gif))", text))
    assert linked and used
    missing = sorted(p for p in linked | used if not (ROOT / p).exists())
    assert not missing, f"README names files that are not in the repository: {missing}"
