"""Does the clip-length input set the pace? 16-frame clips told they are windows of longer clips.

    python scripts/probe_pace.py                                  # shipped weights
    python scripts/probe_pace.py --model runs/long/model --lengths 16 64 256 --json-out pace.json

For each moving held-out prompt (`world.eval_prompts`, the `kinema eval` suite's), one 16-frame clip is
generated per told length (`motion_length`: same seed, same noise), and `kinema.world.metrics` reads the
object's speed (px per frame, the robust fit of its centroid) and direction at that length's world pace
(`metrics.still_threshold`). Printed per length: the median speed beside the world's own speed range at
that length (`World(frames=L)` specs of the same prompts), and the share of clips read in the prompted
direction. A model without the length input gives the same clip at every length.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np


def world_speeds(prompts, length: int) -> list[float]:
    """The world's own speeds (px per frame) for these prompts' specs at clip length `length`."""
    from kinema import world

    w = world.World(split="all", frames=length)
    out = []
    for i, (prompt, spec) in enumerate(prompts):
        s = w.spec(10_000 + i, (spec.colour, spec.shape, spec.direction), spec.background)
        out.append(float(math.hypot(*s.velocity)))
    return out


def probe(model, lengths, split: str = "heldout", steps: int | None = None) -> list[dict]:
    from tqdm import tqdm

    import kinema
    from kinema import world
    from kinema.world import metrics

    prompts = [(p, s) for p, s in world.eval_prompts(split) if s.direction != "still"]
    rows = []
    for length in lengths:
        speeds, right = [], []
        for i, (prompt, spec) in enumerate(tqdm(prompts, desc=f"told {length} frames", file=sys.stderr)):
            video = kinema.generate(prompt, model=model, seed=i, steps=steps, motion_length=length, progress=False)
            reading = metrics.analyse_video(video, clip_frames=length)
            if reading.displacement is not None:
                speeds.append(math.hypot(*reading.displacement) / (len(video) - 1))
            right.append(reading.direction == spec.direction)
        truth = world_speeds(prompts, length)
        rows.append(dict(length=length, clips=len(prompts), median_speed=round(float(np.median(speeds)), 3) if speeds else None,
                         world_speed=[round(min(truth), 3), round(max(truth), 3)],
                         direction=round(float(np.mean(right)), 3)))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model folder (default: the shipped weights)")
    p.add_argument("--lengths", type=int, nargs="+", default=[16, 64, 256], help="clip lengths to tell the model")
    p.add_argument("--split", default="heldout", choices=["heldout", "train"], help="prompts of this split")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's)")
    p.add_argument("--json-out", default=None, help="also write the rows here as JSON")
    args = p.parse_args()
    import kinema

    model = kinema.load(args.model, device="cpu")
    if not model.denoiser.config.get("length_embedding", False):
        print("note: this denoiser has no length input; every length gives the same clips", file=sys.stderr)
    rows = probe(model, args.lengths, args.split, args.steps)
    for r in rows:
        speed = "n/a (no object found)" if r["median_speed"] is None else f"{r['median_speed']:.3f} px/frame"
        print(f"told {r['length']:>4} frames: median speed {speed} (world at that length: "
              f"{r['world_speed'][0]:.3f}-{r['world_speed'][1]:.3f}) | direction correct in {r['direction']:.0%} "
              f"of {r['clips']} clips (read at that length's pace)")
    if args.json_out:
        from kinema.video_io import write_json_atomic

        write_json_atomic(Path(args.json_out), rows)


if __name__ == "__main__":
    main()
