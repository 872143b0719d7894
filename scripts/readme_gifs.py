"""The README's example GIFs and the sample inputs its commands use, made with the default model.

    python scripts/readme_gifs.py                                  # all of them -> samples/
    python scripts/readme_gifs.py --long-from build/long256.mp4    # the long GIF from an existing clip
    python scripts/readme_gifs.py --only animate restyle

Writes (each panel upscaled 2x, nearest, with a label strip):
  samples/source.mp4    a world clip (16 frames, 64x64, 8 fps): the input of the README's restyle/extend commands
  samples/anchor.png    a world frame: the input of the README's animate command
  samples/animate.gif   anchor | `kinema animate samples/anchor.png "<prompt>"`
  samples/restyle.gif   source | restyle (defaults: the 4-step student with the control input, where the folder ships
                        one) | --no-fast (the 25-step model, the default before) | --no-flow (same seed)
  samples/long.gif      a 256-frame clip (`kinema generate ... --frames 256`), or the clip given by --long-from
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"
SOURCE_CAPTION = "a red circle moving right on a blue background"
RESTYLE_PROMPT = "a yellow circle moving right on a blue background"
ANCHOR_CAPTION = "a yellow square moving left on a purple background"
ANIMATE_PROMPT = "a yellow square moving left on a purple background"
LONG_PROMPT = "a yellow square moving right on a purple background"


def world_clip(caption: str, seed: int) -> np.ndarray:
    """A rendered world clip for a canonical caption (16 frames, 64x64)."""
    from kinema import world

    colour, shape, direction, background = world.parse_caption(caption)
    rng = np.random.default_rng(seed)
    spec = world._sample_spec(rng, (colour, shape, direction), background, 64, 16)
    return world.render(spec, 16, 64, 64, seed=seed)


def panel(frames: np.ndarray, label: str, scale: int = 2) -> np.ndarray:
    """Frames upscaled `scale`x (nearest) under a white label strip."""
    big = frames.repeat(scale, axis=1).repeat(scale, axis=2)
    strip = np.full((len(big), 16, big.shape[2], 3), 255, np.uint8)
    for s in strip:
        cv2.putText(s, label, (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([strip, big], axis=1)


def side_by_side(*panels: np.ndarray) -> np.ndarray:
    n = max(len(p) for p in panels)
    padded = [np.concatenate([p, np.repeat(p[-1:], n - len(p), 0)]) if len(p) < n else p for p in panels]
    gap = np.full((n, padded[0].shape[1], 4, 3), 255, np.uint8)
    out = [padded[0]]
    for p in padded[1:]:
        out += [gap, p]
    return np.concatenate(out, axis=2)


def main(argv=None) -> int:
    import kinema
    from kinema.video_io import read_video, write_video

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", default=["animate", "restyle", "long"], choices=["animate", "restyle", "long"])
    p.add_argument("--long-from", default=None, help="make long.gif from this clip instead of generating 256 frames")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default=None, help="model folder (default: the shipped weights)")
    p.add_argument("--out", default=str(SAMPLES), help="output folder (default: samples/)")
    args = p.parse_args(argv)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = kinema.load(args.model, device="cpu")

    source = world_clip(SOURCE_CAPTION, seed=3)
    write_video(out_dir / "source.mp4", source, fps=8, overwrite=True)
    anchor = world_clip(ANCHOR_CAPTION, seed=5)[0]
    cv2.imwrite(str(out_dir / "anchor.png"), cv2.cvtColor(anchor, cv2.COLOR_RGB2BGR))

    if "animate" in args.only:
        out = kinema.animate(out_dir / "anchor.png", ANIMATE_PROMPT, seed=args.seed, model=model, progress=False)
        gif = side_by_side(panel(np.repeat(anchor[None], len(out), 0), "anchor"), panel(out, "animate"))
        write_video(out_dir / "animate.gif", gif, fps=8, overwrite=True)
        print(f"wrote {out_dir}/animate.gif", flush=True)
    if "restyle" in args.only:
        src, _ = read_video(out_dir / "source.mp4")
        # the folder, not a loaded model: restyle loads what `kinema restyle` does (the folder's student where its
        # defaults say so, with the student's restyle LoRA under the control)
        common = dict(seed=args.seed, model=args.model, device="cpu", progress=False)
        restyled = kinema.restyle(out_dir / "source.mp4", RESTYLE_PROMPT, **common)
        # the default before: the full model (25 steps, guidance 7.5) with the control input
        previous = kinema.restyle(out_dir / "source.mp4", RESTYLE_PROMPT, **{**common, "model": model}, fast=False)
        no_flow = kinema.restyle(out_dir / "source.mp4", RESTYLE_PROMPT, flow=False, **common)
        gif = side_by_side(panel(src, "source"), panel(restyled, "restyle"), panel(previous, "--no-fast"),
                           panel(no_flow, "no flow"))
        write_video(out_dir / "restyle.gif", gif, fps=8, overwrite=True)
        print(f"wrote {out_dir}/restyle.gif", flush=True)
    if "long" in args.only:
        if args.long_from:
            clip, _ = read_video(args.long_from)
        else:
            clip = kinema.generate(LONG_PROMPT, frames=256, seed=args.seed, model=model, progress=True)
        write_video(out_dir / "long.gif", panel(clip, f"{len(clip)} frames"), fps=8, overwrite=True)
        print(f"wrote {out_dir}/long.gif", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
