"""How the edit benchmark's object mask reads ground-truth edits: each of bench_restyle's own-renderer clips redrawn
with its object in the target colour (a perfect edit), and again with that colour moved `--fade` levels toward the
background (a perfect edit drawn slightly off the palette), scored against the source with `metrics.object_masks`
and with a fixed distance of 60 from the background (the mask before). A structure metric should not fall apart
when a colour is a few levels off.

    python scripts/check_object_mask.py --clips 48 --fade 15
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    inter, union = (a & b).sum(axis=(1, 2)), (a | b).sum(axis=(1, 2))
    return float((inter[union > 0] / union[union > 0]).mean()) if (union > 0).any() else 1.0


def fixed_masks(video: np.ndarray, distance: float = 60.0) -> np.ndarray:
    x = video.astype(np.float32)
    border = np.concatenate([x[:, 0], x[:, -1], x[:, :, 0], x[:, :, -1]], axis=1)
    return np.linalg.norm(x - np.median(border, axis=1)[:, None, None], axis=-1) > distance


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=int, default=48)
    p.add_argument("--fade", type=float, default=15.0, help="RGB levels the edit's colour moves toward the background")
    args = p.parse_args()
    spec = importlib.util.spec_from_file_location("bench_restyle", ROOT / "scripts" / "bench_restyle.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    from kinema import world
    from kinema.world import metrics

    palette = dict(world.COLOURS)
    sources = bench.own_clips(args.clips, 16, 64)
    table = {"exact": ([], []), "faded": ([], [])}
    for i, (video, prompt, target, background, caption) in enumerate(sources):
        colour = caption.split()[1]
        for name, fade in (("exact", 0.0), ("faded", args.fade)):
            t, b = np.array(palette[target], float), np.array(palette[background], float)
            world.COLOURS[colour] = tuple(int(round(v)) for v in t + fade * (b - t) / np.linalg.norm(b - t))
            try:
                edit = bench.own_clips(i + 1, 16, 64)[i][0]  # the same clip, its object in the edit's colour
            finally:
                world.COLOURS.update(palette)
            new, old = iou(metrics.object_masks(edit), metrics.object_masks(video)), iou(fixed_masks(edit), fixed_masks(video))
            table[name][0].append(new), table[name][1].append(old)
            if abs(new - old) > 0.05:
                print(f"clip {i:2d} {name:<5} {target} on {background}: object_masks {new:.3f}, fixed 60 {old:.3f}")
    for name, (new, old) in table.items():
        new, old = np.array(new), np.array(old)
        print(f"{name} edits ({args.clips} clips): object_masks IoU {new.mean():.3f}, kept {np.mean(new >= 0.5):.0%}; "
              f"fixed 60: {old.mean():.3f}, kept {np.mean(old >= 0.5):.0%}")


if __name__ == "__main__":
    main()
