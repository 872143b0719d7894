"""`kinema eval`: score video files against captions, or generate and score a fixed suite.

    kinema eval clip.mp4 --caption "a red circle moving right on a blue background"
    kinema eval edit.mp4 --source src.mp4 --caption "a green circle moving right on a blue background"  # an edit
    kinema eval --suite world --split heldout            # text-to-video on the held-out prompts
    kinema eval --suite vae --split heldout              # VAE reconstruction PSNR on world frames
    kinema eval --suite animate --split heldout          # image-to-video from world anchors (and last frames)
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np

from .. import world
from ..errors import KinemaError, require
from . import metrics


def run_eval(args) -> dict:
    """Dispatch on the arguments; print a Markdown table and optionally write JSON."""
    if args.json_out:
        from ..video_io import check_output_path

        out = Path(args.json_out)
        require(out.suffix == ".json", "--json-out must name a .json file")
        check_output_path(out.with_suffix(".mp4"))  # parent exists and is writable
        require(not out.is_dir() or out.is_symlink(), f"--json-out {out} is a folder; choose a file name")
        require(not os.path.lexists(out) or getattr(args, "overwrite", False),
                f"{out} already exists; pass --overwrite to replace it")
    if args.suite is None and getattr(args, "source", None):
        result = score_edits(args.videos, args.source, args.caption)
    elif args.suite is None:
        result = score_files(args.videos, args.caption)
    elif args.videos:
        raise KinemaError("give either video files with --caption, or --suite, not both")
    elif args.suite == "world":
        result = world_suite(args)
    elif args.suite == "animate":
        result = animate_suite(args)
    else:
        result = vae_suite(args)
    if args.json_out:
        from ..video_io import write_json_atomic

        write_json_atomic(args.json_out, result)
    return result


# The oracle reads world clips (64 px); larger frames are scaled down to this long side as they are
# decoded, so a huge file costs neither memory nor minutes. Its readings are relative to the frame size.
MAX_SIDE = 256
# Host bytes per scored pixel: the frames as read and stacked (6), one frame's palette distances at a time.
BYTES_PER_PIXEL = 8


def _read(path: str, what: str, fix: str) -> np.ndarray:
    """A clip's frames as scored: checked against memory from its header, scaled to MAX_SIDE as decoded."""
    from ..resources import read_clip

    return read_clip(path, f"{what} {path}", BYTES_PER_PIXEL, fix, max_side=MAX_SIDE)[0]


def score_files(videos: list[str], caption: str | None) -> dict:
    require(bool(videos), "nothing to evaluate: give video files with --caption, or --suite world")
    require(caption is not None and world.parse_caption(caption) is not None,
            "--caption must be a canonical world caption such as 'a red circle moving right on a blue background'")
    rows = []
    for v in videos:
        rows.append({"video": v, **metrics.score(_read(v, "scoring", "score a shorter clip"), caption)})
    print("| video | colour | background | direction | shape (template IoU) | detected | flicker |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        det = f"{r['detected_colour']} {r['detected_shape']} on {r['detected_background']}, {r['detected_direction']}"
        print(f"| {r['video']} | {_ok(r['colour_ok'])} | {_ok(r['background_ok'])} | {_ok(r['direction_ok'])} | "
              f"{_ok(r['shape_ok'])} ({r['shape_iou']:.2f}) | {det} | {r['flicker']:.2f} |")
    return {"rows": rows}


def score_edits(videos: list[str], source: str, caption: str | None) -> dict:
    """Each video as an edit of `source` (`metrics.edit_scores`): object IoU, area, track, shape; colour and background."""
    require(bool(videos), "nothing to evaluate: give the edited videos, --source and --caption")
    require(caption is not None and world.parse_caption(caption) is not None,
            "--caption must be the canonical caption the edit should show, e.g. 'a green circle moving right on a blue background'")
    src = _read(source, "reading", "use a shorter source")
    rows = []
    for v in videos:
        frames = _read(v, "scoring", "score a shorter clip")
        require(frames.shape == src.shape, f"{v} is {frames.shape[0]} frames at {frames.shape[2]}x{frames.shape[1]} but the "
                                           f"source is {src.shape[0]} at {src.shape[2]}x{src.shape[1]}; compare an edit with its own source")
        rows.append({"video": v, **metrics.edit_scores(frames, src, caption)})
    print("| video | object IoU | area ratio | track px | shape kept | colour | background |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['video']} | {r['iou']:.3f} | {r['area_ratio']:.2f} | {r['track_px']:.2f} | {_ok(r['shape_kept'])} | "
              f"{_ok(r['colour_ok'])} ({r['detected_colour']}) | {_ok(r['background_ok'])} ({r['detected_background']}) |")
    return {"rows": rows}


def _ok(b: bool) -> str:
    return "yes" if b else "no"


def _suite_settings(info, args):
    """(settings, LoRAs) of a suite: the model's defaults and the flags, or with `--fast` the folder's student."""
    from .. import jobs

    opts = dict(lora=getattr(args, "lora", None), steps=args.steps, guidance=args.guidance, shift=None)
    opts = jobs._fast(info, {**opts, "fast": getattr(args, "fast", False)})
    settings = jobs.settings_for(info, steps=opts["steps"], guidance=opts["guidance"], shift=opts["shift"],
                                 cache=getattr(args, "cache", None))
    return settings, opts["lora"]


def world_suite(args) -> dict:
    """Generate a clip for every eval prompt of the split with the model's defaults, and score it."""
    from .. import api, jobs

    info = api.info(args.model)
    settings, loras = _suite_settings(info, args)
    model = api.load(info.path, args.device, args.dtype, args.attention, loras=loras,
                     lora_strict=getattr(args, "lora_strict", True))
    from ..pipelines.text_to_video import text_to_video

    seconds = []

    def generate(prompt: str, seed: int) -> np.ndarray:
        settings.seed = seed
        t0 = time.perf_counter()
        frames = text_to_video(model, prompt, settings, progress=False).frames
        seconds.append(time.perf_counter() - t0)
        return frames

    result = metrics.run_world_suite(generate, split=args.split, per_combo=args.per_combo)
    result.update(model=str(info.path), settings=settings.as_dict(), seconds_per_clip=float(np.mean(seconds)))
    print(metrics.format_table(result))
    print(f"\n{result['n']} clips, {result['seconds_per_clip']:.2f} s per clip "
          f"({settings.frames} frames {settings.width}x{settings.height}, {settings.steps} steps)")
    return result


def animate_suite(args) -> dict:
    """Image-to-video on world anchors: frame-0 fidelity, colour and direction, and the last frame with `--last-image`."""
    from .. import api, jobs
    from ..pipelines.image_to_video import image_to_video

    info = api.info(args.model)
    settings, loras = _suite_settings(info, args)
    model = api.load(info.path, args.device, args.dtype, args.attention, loras=loras,
                     lora_strict=getattr(args, "lora_strict", True))
    last = "first_last" in model.info.frame_conditions
    rows = []
    prompts = world.eval_prompts(args.split, args.per_combo)
    for i, (prompt, spec) in enumerate(prompts):
        clip = world.render(spec, settings.frames, settings.height, settings.width, seed=i)
        settings.seed = i
        out = image_to_video(model, prompt, clip[0], settings, progress=False).frames
        row = dict(prompt=prompt, frame0_psnr=metrics.psnr(out[0], clip[0]), **metrics.score(out, prompt))
        if last:
            both = image_to_video(model, prompt, clip[0], settings, last_image=clip[-1], progress=False).frames
            row["last_psnr"] = metrics.psnr(both[-1], clip[-1])
        rows.append(row)
        print(f"[{i + 1}/{len(prompts)}] {prompt}: frame 0 {row['frame0_psnr']:.1f} dB, "
              f"colour {_ok(row['colour_ok'])}, direction {_ok(row['direction_ok'])}", file=sys.stderr)
    med = lambda k: float(np.median([r[k] for r in rows]))  # noqa: E731
    result = dict(n=len(rows), frame0_psnr_median=med("frame0_psnr"), frame0_psnr_min=min(r["frame0_psnr"] for r in rows),
                  colour=float(np.mean([r["colour_ok"] for r in rows])), direction=float(np.mean([r["direction_ok"] for r in rows])),
                  both=float(np.mean([r["colour_ok"] and r["direction_ok"] for r in rows])), rows=rows)
    if last:
        result["last_psnr_median"] = med("last_psnr")
    print("| clips | frame 0 PSNR (median / worst) | colour | direction | colour and direction | last frame PSNR |")
    print("|---|---|---|---|---|---|")
    lp = f"{result['last_psnr_median']:.1f} dB" if last else "n/a (not trained for first+last)"
    print(f"| {result['n']} | {result['frame0_psnr_median']:.1f} / {result['frame0_psnr_min']:.1f} dB | "
          f"{result['colour']:.0%} | {result['direction']:.0%} | {result['both']:.0%} | {lp} |")
    return result


def vae_suite(args, n_clips: int = 24) -> dict:
    """PSNR of VAE reconstructions of world frames (median, 5th percentile, worst)."""
    import torch

    from .. import api
    from ..models.seams import to_uint8, to_unit

    info = api.info(args.model)
    model = api.load(info.path, args.device, args.dtype, args.attention, loras=getattr(args, "lora", None),
                     lora_strict=getattr(args, "lora_strict", True))
    w = world.World(split=args.split, frames=info.defaults.frames, size=info.defaults.height)
    values = []
    for i in range(n_clips):
        clip = w.clip(900_000 + i).video
        x = to_unit(clip)  # (1, 3, F, H, W)
        with torch.inference_mode():
            rec = model.vae.decode(model.vae.encode(x.to(model.device, model.dtype)))
        out = to_uint8(rec)
        values += [metrics.psnr(a, b) for a, b in zip(out, clip)]
    v = np.asarray(values)
    result = dict(split=args.split, frames=len(v), median=float(np.median(v)), p5=float(np.percentile(v, 5)), worst=float(v.min()))
    print("| split | frames | median PSNR | 5th percentile | worst |")
    print("|---|---|---|---|---|")
    print(f"| {args.split} | {len(v)} | {result['median']:.2f} dB | {result['p5']:.2f} dB | {result['worst']:.2f} dB |")
    return result


if __name__ == "__main__":  # pragma: no cover
    from ..cli import main

    sys.exit(main(["eval", *sys.argv[1:]]))
