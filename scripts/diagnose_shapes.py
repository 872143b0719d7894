"""Where the default model's blobby shapes come from: the shape reading (`metrics.read_shape`) at each stage.

    python scripts/diagnose_shapes.py --out docs/default-model/shapes            # every condition
    python scripts/diagnose_shapes.py --only gt vae teacher --per-combo 1      # a few

On the held-out prompts (`world.eval_prompts`), per condition: shape accuracy (the clip's majority template is
the caption's shape) and the median template IoU, split by shape. The conditions follow a clip from pixels
to pixels: the rendered ground truth; its VAE round trip (the VAE's share); the model's own samples at the
default settings, with guidance at every step, at more steps, at other guidance scales (sampling's share); and SDEdit of the ground truth
with its own caption from strength 0.2 to 1.0 (at which noise level the denoiser stops keeping a shape it is
given: its prior's share). Writes table.md, results.json and a sample grid (shapes.png) under --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from kinema import api, world
from kinema.models.seams import to_uint8, to_unit
from kinema.world import metrics

CONDITIONS = ("gt", "vae", "teacher", "teacher-every", "teacher-50", "teacher-g3", "teacher-g12", "student",
              "sdedit-0.2", "sdedit-0.4", "sdedit-0.6", "sdedit-0.8", "sdedit-1.0")


def student(model):
    """The model with its folder's few-step LoRA loaded (what `fast=True` asks of a loaded model)."""
    fast = model.info.index.get("fast") if model.info is not None else None
    if fast is None or model.loras:
        return model
    return api.load(model.info.path, device="cpu", dtype="float32", loras=[model.info.path / fast["lora"]])


def clips(conditon: str, prompts, model, seed0: int):
    """uint8 (F, H, W, 3) clips of one condition, one per prompt."""
    for i, (prompt, spec) in enumerate(prompts):
        gt = world.render(spec, 16, 64, 64, seed=i)
        seed = seed0 * 10_000 + i
        if conditon == "gt":
            yield gt
        elif conditon == "vae":
            with torch.inference_mode():
                yield to_uint8(model.vae.decode(model.vae.encode(to_unit(gt))))
        elif conditon.startswith("teacher") or conditon == "student":
            opts = dict(seed=seed)
            if conditon == "teacher-50":
                opts["steps"] = 50
            elif conditon == "teacher-every":  # guidance at every step (the folder's default may limit it to a band)
                opts["guidance_interval"] = (0.0, 1.0)
            elif conditon.startswith("teacher-g"):
                opts["guidance"] = float(conditon.split("-g")[1])
            elif conditon == "student":
                opts["fast"] = True
                model = student(model)
            yield api.generate(prompt, model=model, progress=False, **opts)
        else:  # sdedit-S: the ground truth noised to strength S and denoised with its own caption
            strength = float(conditon.split("-")[1])
            yield api.restyle(gt, prompt, model=model, progress=False, seed=seed, strength=strength, structure=0.0,
                              control="none", flow=False, pixel_fusion=False, method="sdedit", guidance=None)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", choices=CONDITIONS, default=list(CONDITIONS))
    ap.add_argument("--per-combo", type=int, default=2, help="held-out prompts per (colour, shape, motion) combination")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    model = api.load(args.model, device="cpu", dtype="float32")
    prompts = world.eval_prompts("heldout", args.per_combo, args.seed)
    results, grid = {}, []
    for cond in args.only:
        t0 = time.perf_counter()
        rows = []
        for (prompt, spec), video in zip(prompts, clips(cond, prompts, model, args.seed)):
            shape, iou = metrics.video_shape(video)
            rows.append(dict(prompt=prompt, shape=spec.shape, read=shape, iou=iou))
            if len(grid) < len(args.only) * 6 and len(rows) <= 6:
                grid.append(video[8])
        per = {s: [r for r in rows if r["shape"] == s] for s in world.SHAPES}
        acc = lambda rs: float(np.mean([r["read"] == r["shape"] for r in rs])) if rs else float("nan")  # noqa: E731
        med = lambda rs: float(np.nanmedian([r["iou"] for r in rs])) if rs else float("nan")  # noqa: E731
        results[cond] = dict(n=len(rows), accuracy=acc(rows), iou=med(rows),
                             **{f"accuracy_{s}": acc(rs) for s, rs in per.items()}, **{f"iou_{s}": med(rs) for s, rs in per.items()},
                             seconds=round(time.perf_counter() - t0, 1), rows=rows)
        r = results[cond]
        print(f"{cond:12s} n={r['n']} shape {r['accuracy']:.0%} IoU {r['iou']:.3f} | " +
              " ".join(f"{s} {r[f'accuracy_{s}']:.0%}/{r[f'iou_{s}']:.3f}" for s in world.SHAPES) + f"  ({r['seconds']} s)",
              file=sys.stderr, flush=True)
    table = ["| condition | clips | shape accuracy | median template IoU | circle | square | triangle |", "|---|---:|---:|---:|---|---|---|"]
    for cond, r in results.items():
        table.append(f"| {cond} | {r['n']} | {r['accuracy']:.0%} | {r['iou']:.3f} | " +
                     " | ".join(f"{r[f'accuracy_{s}']:.0%} / {r[f'iou_{s}']:.3f}" for s in world.SHAPES) + " |")
    print("\n".join(table))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "table.md").write_text("\n".join(table) + "\n")
        (args.out / "results.json").write_text(json.dumps(results, indent=1, default=float))
        import imageio.v3 as iio

        rows = [np.concatenate(grid[i:i + 6], axis=1) for i in range(0, len(grid), 6) if len(grid[i:i + 6]) == 6]
        iio.imwrite(args.out / "shapes.png", np.kron(np.concatenate(rows, axis=0), np.ones((2, 2, 1), np.uint8)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
