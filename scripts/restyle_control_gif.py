"""docs/restyle-control/own.gif: clips of bench_restyle's own renderer, restyled by the default and by the method before
the control input (rows: clips; columns: source | default (the 4-step student, control on) | --no-fast (25 steps, control
on) | --control none --strength 0.9 --structure 0.3).

    python scripts/restyle_control_gif.py --clips 3
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=int, default=3)
    p.add_argument("--out", default=str(ROOT / "docs" / "restyle-control" / "own.gif"))
    args = p.parse_args()
    import kinema
    from kinema.video_io import write_video

    bench, gifs = load("bench_restyle"), load("readme_gifs")
    model = kinema.load(device="cpu")
    rows = []
    for i, (source, prompt, *_rest) in enumerate(bench.own_clips(args.clips, 16, 64)):
        common = dict(model=model, seed=i, progress=False)
        # the default: what `kinema restyle` loads (the student and its restyle LoRA, control on)
        new = kinema.restyle(source, prompt, seed=i, device="cpu", progress=False)
        full = kinema.restyle(source, prompt, fast=False, **common)  # the default before: 25 steps, control on
        old = kinema.restyle(source, prompt, control="none", strength=0.9, structure=0.3, **common)
        rows.append(gifs.side_by_side(gifs.panel(source, "source"), gifs.panel(new, "default"),
                                      gifs.panel(full, "--no-fast"), gifs.panel(old, "no control")))
        print(prompt, flush=True)
    write_video(args.out, np.concatenate(rows, axis=1), fps=8, overwrite=True)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
