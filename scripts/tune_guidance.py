"""Choose the default guidance scale (and sampling shift) on *training* combinations, so the held-out evaluation stays untouched.

    python scripts/tune_guidance.py                                   # shipped weights, guidance 3 5 7.5
    python scripts/tune_guidance.py --model runs/default/model --guidance 4 6 8 --every 3
    python scripts/tune_guidance.py --guidance 5 --shift 1 3      # the scheduler's shift (more steps at high noise)
    python scripts/tune_guidance.py --guidance 5 --interval 0 0.3 0.5 0.7   # guide only above these noise levels

Scores text-to-video clips (the `kinema eval` oracle) for every `--every`-th combination of the training
split (one background each, seeds 50_000 + index: not the held-out suite's) at each guidance scale and
shift (and guidance interval), with the model's other defaults, and prints colour / background / direction
accuracy, shape accuracy and the median shape template IoU (`metrics.read_shape`) for each.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


def main(argv=None) -> int:
    import kinema
    from kinema import jobs, world
    from kinema.world import metrics
    from kinema.video_io import write_json_atomic
    from kinema.pipelines.text_to_video import text_to_video

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model folder (default: the shipped weights)")
    p.add_argument("--guidance", type=float, nargs="+", default=[3.0, 5.0, 7.5])
    p.add_argument("--shift", type=float, nargs="+", default=[None], help="sampling shifts (default: the model's)")
    p.add_argument("--interval", type=float, nargs="+", default=[None],
                   help="lower ends LO of guidance intervals LO:1 (0: every step guided; default: the model's)")
    p.add_argument("--every", type=int, default=4, help="use every N-th training combination")
    p.add_argument("--json-out", default=None)
    args = p.parse_args(argv)

    model = kinema.load(args.model, "cpu")
    info = model.info
    prompts = world.eval_prompts("train", per_combo=1, seed=5)[:: args.every]
    rows = []
    print("| guidance | shift | interval | clips | colour | background | direction | shape | shape IoU (median) |\n"
          "|---|---|---|---|---|---|---|---|---|")
    for g, shift, lo in [(g, s, lo) for g in args.guidance for s in args.shift for lo in args.interval]:
        settings = jobs.settings_for(info, guidance=g, **({} if shift is None else dict(shift=shift)),
                                     **({} if lo is None else dict(guidance_interval=(lo, 1.0))))
        scores = []
        for i, (prompt, _) in enumerate(prompts):
            settings.seed = 50_000 + i
            scores.append(metrics.score(text_to_video(model, prompt, settings, progress=False).frames, prompt))
        acc = {k: float(np.mean([s[f"{k}_ok"] for s in scores])) for k in ("colour", "background", "direction", "shape")}
        iou = float(np.nanmedian([s["shape_iou"] for s in scores]))
        band = settings.guidance_interval
        rows.append(dict(guidance=g, shift=settings.shift, guidance_interval=band, n=len(scores), shape_iou=iou, **acc))
        print(f"| {g:g} | {settings.shift or 'model'} | {'every step' if band is None else '{}:{}'.format(*band)} | {len(scores)} | "
              f"{acc['colour']:.0%} | {acc['background']:.0%} | {acc['direction']:.0%} | {acc['shape']:.0%} | {iou:.3f} |", flush=True)
    if args.json_out:
        write_json_atomic(args.json_out, dict(model=str(info.path), rows=rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
