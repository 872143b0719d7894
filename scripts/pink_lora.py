"""Teach the default model a colour its world does not have: pink (240, 100, 170), as a LoRA.

    python scripts/pink_lora.py data runs/pink2-clips                # the training clips: mp4 + caption .txt
    kinema train --data runs/pink2-clips --model kinema/weights/default --lora 8 --vae-steps 300 --steps 1800 \
        --lora-out runs/pink2/pink-lora.safetensors --run runs/pink2
    python scripts/pink_lora.py eval --lora samples/pink-lora.safetensors --json-out docs/default-model/pink-2/pink_eval.json

`data` renders clips with the world's renderer (every shape and motion, the world's backgrounds and
sizes) in pink, except three (shape, motion) pairs held out of the pink clips (`HELDOUT`), and as many
ordinary world clips (train split) beside them (720 each by default: the shipped LoRA's folder), so the
LoRA learns the new word without forgetting the old ones. Each clip is written as an mp4 with its caption
(one of the world's paraphrases) beside it: the folder is exactly what a user's own clips look like to
`kinema train --data`.

`eval` generates pink clips of the held-out pairs on every world background (and of the trained pairs,
for reference) with the LoRA, and reads each with the world's oracle given pink as one more palette
colour: the share whose object reads pink and whose motion reads as prompted.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

PINK = {"pink": (240, 100, 170)}
HELDOUT = (("circle", "left"), ("square", "up"), ("triangle", "right"))  # (shape, motion) never drawn pink in training


def write_data(out: Path, per_pair: int, world_clips: int, seed: int) -> None:
    from kinema import video_io, world
    from kinema.world import metrics

    out.mkdir(parents=True, exist_ok=False)
    pairs = [(s, m) for s in world.SHAPES for m in world.MOTIONS if (s, m) not in HELDOUT]
    n = 0
    with metrics.extra_colours(PINK):
        w = world.World(split="all")
        for k, (shape, motion) in enumerate(pairs):
            for i in range(per_pair):
                s = seed + 1000 * k + i
                spec = w.spec(s, combo=("pink", shape, motion))
                video = world.render(spec, w.frames, w.size, w.size, seed=s)
                caption = world.paraphrase(spec, np.random.default_rng([s, 2]))
                video_io.write_video(out / f"pink-{n:04d}.mp4", video, fps=8)
                (out / f"pink-{n:04d}.txt").write_text(caption + "\n")
                n += 1
    w = world.World(split="train")
    for i in range(world_clips):  # the world as it is, beside the new colour
        c = w.clip(seed + 500_000 + i)
        video_io.write_video(out / f"world-{i:04d}.mp4", c.video, fps=8)
        (out / f"world-{i:04d}.txt").write_text(c.caption + "\n")
    print(f"wrote {n} pink clips ({len(pairs)} shape/motion pairs; held out {HELDOUT}) and {world_clips} world clips to {out}")


def evaluate(args) -> dict:
    import kinema
    from kinema import world
    from kinema.world import metrics

    loras = [args.lora] if args.lora else []
    model = kinema.load(args.model, device="cpu", loras=loras)
    rows = []
    with metrics.extra_colours(PINK):
        backgrounds = [b for b in world.COLOURS if b != "pink"]
        pairs = [(p, True) for p in HELDOUT] + [((s, m), False) for s in world.SHAPES for m in world.MOTIONS
                                                if (s, m) not in HELDOUT][: args.trained_pairs]
        for (shape, motion), held in pairs:
            for j, bg in enumerate(backgrounds):
                prompt = world.canonical_caption("pink", shape, motion, bg)
                t0 = time.perf_counter()
                frames = kinema.generate(prompt, model=model, seed=args.seed + j, progress=False)
                reading = metrics.analyse_video(frames)
                rows.append(dict(prompt=prompt, heldout=held, colour=reading.colour, background=reading.background,
                                 direction=reading.direction, colour_ok=reading.colour == "pink",
                                 direction_ok=reading.direction == motion, background_ok=reading.background == bg,
                                 seconds=round(time.perf_counter() - t0, 2)))
                print(f"{'held' if held else 'seen'}  {prompt:<52} -> {reading.colour} on {reading.background}, "
                      f"{reading.direction}", flush=True)

    def share(key, held):
        r = [x[key] for x in rows if x["heldout"] == held]
        return float(np.mean(r)) if r else float("nan")

    result = dict(lora=args.lora, model=str(model.path),
                  heldout=dict(n=sum(r["heldout"] for r in rows), colour=share("colour_ok", True),
                               direction=share("direction_ok", True), background=share("background_ok", True)),
                  trained=dict(n=sum(not r["heldout"] for r in rows), colour=share("colour_ok", False),
                               direction=share("direction_ok", False), background=share("background_ok", False)),
                  targets=dict(colour=0.85, direction=0.85), rows=rows)
    for split in ("heldout", "trained"):
        r = result[split]
        print(f"{split:<8} {r['n']:>3} clips: pink {r['colour']:.0%}, direction {r['direction']:.0%}, "
              f"background {r['background']:.0%}")
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("data", help="write the training clips")
    d.add_argument("out", type=Path)
    d.add_argument("--per-pair", type=int, default=60, help="pink clips per (shape, motion) pair")
    d.add_argument("--world-clips", type=int, default=720, help="ordinary world clips beside them")
    d.add_argument("--seed", type=int, default=0)
    e = sub.add_parser("eval", help="score pink prompts with the LoRA")
    e.add_argument("--lora", default=None, help="LoRA file (none: the model as it is)")
    e.add_argument("--model", default=None)
    e.add_argument("--trained-pairs", type=int, default=3, help="pairs seen in pink training, scored for reference")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--json-out", default=None)
    args = p.parse_args()
    if args.command == "data":
        write_data(args.out, args.per_pair, args.world_clips, args.seed)
        return
    result = evaluate(args)
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    sys.exit(main())
