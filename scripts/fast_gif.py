"""The student's GIF: teacher (25 steps, guidance 5) | `--fast` at shift 1 | `--fast` as shipped (shift 8), one row per
prompt (held-out prompts the student at shift 1 drew in the wrong colour), seed 0.

    python scripts/fast_gif.py                      # -> docs/default-model/fast/samples.gif
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from readme_gifs import panel, side_by_side  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["a red circle moving right on a yellow background",
           "a white square standing still on an orange background",
           "a purple square moving up on a black background"]


def main(argv=None) -> int:
    import kinema
    from kinema.video_io import write_video

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ROOT / "docs/default-model/fast/samples.gif"))
    args = p.parse_args(argv)
    teacher = kinema.load()
    fast = kinema.info().index["fast"]
    student = kinema.load(loras=[(str(Path(kinema.info().path) / fast["lora"]), 1.0)])
    rows = []
    for prompt in PROMPTS:
        a = kinema.generate(prompt, model=teacher, seed=0, progress=False)
        b = kinema.generate(prompt, model=student, seed=0, fast=True, shift=1.0, progress=False)
        c = kinema.generate(prompt, model=student, seed=0, fast=True, progress=False)
        rows.append(side_by_side(panel(a, "teacher 25 steps"), panel(b, "fast, shift 1"), panel(c, "fast, shift 8")))
    write_video(args.out, np.concatenate(rows, axis=1), fps=8, overwrite=True)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
