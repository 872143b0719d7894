"""Long-clip benchmark: peak memory of a long vs a short clip, and time per frame vs the plan's cost.

    python scripts/bench_long.py                                   # default model: 16 vs 256 frames
    python scripts/bench_long.py --model runs/tiny --short 4 --long 16 --height 16 --width 16 --steps 2
    python scripts/bench_long.py --json-out bench_long.json

Each length runs `kinema generate` end to end (model load, windowed denoising, chunked decoding,
writing the mp4) in a fresh subprocess with the same settings, one after the other in this one run;
each child reports its own peak resident memory (ru_maxrss) and its sidecar's timings.

- memory ratio = peak RSS (long) / peak RSS (short); target <= 1.25 (issue 6);
- time ratio = measured denoise time (long) / predicted, where predicted = denoise time (short) x
  plan_cost(long) / plan_cost(short), the latent frames the denoiser sees (per step in window mode, in
  all in continue mode, where every window runs all steps); target <= 1.3.

And what the long clip shows, read by `kinema.world.metrics` (the `kinema eval` oracle) when the prompt is a
canonical world caption:
- colour: share of frames whose object reads as the prompt's colour; target >= 95%;
- direction: the clip cut into consecutive chunks of the trained length (one window's worth); share of
  chunks whose object moves in the prompt's direction at a 16-frame clip's pace (`kinema.world.metrics`' reading,
  which follows an object across the edges of a wrapping clip); target: every chunk. Also printed: the
  same at the slower pace at which the non-wrapping world moves a clip that long (its object never
  leaves: `metrics.still_threshold`);
- seams: frame-to-frame change (mean |frame[t+1] - frame[t]|) where a window starts (window mode) or
  where a continuation window's new frames start (continue mode), over its median over the clip; the
  worst boundary is reported; target <= 1.5. Also printed: the same over a median of at least SEAM_FLOOR,
  the mean change at boundaries over the mean change elsewhere (1 when windows leave no trace), how far
  the object moves at the worst boundary, how often its centroid jumps (more than 1/8 of the frame in one
  transition, the short way round the torus: an object that vanishes on one side and reappears on the
  other), the worst seam at the boundaries more than 2 frames from a jump, and each chunk's direction read
  from the median frame-to-frame move of the object with the jumps left out: a diagnosis of where large
  changes come from, not a replacement for the targets.

The reference printed last is the world's own wrapping clip of the prompt at the long length
(`world.World(wrap=True)`: the 16-frame pace, the object leaving one side as it comes back on the other, the
stationary motion a seamless long clip at that pace would show), scored at the same boundaries.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PROMPT = "a yellow square moving right on a purple background"
SEAM_FLOOR = 0.5  # grey levels: about the frame-to-frame change of the world's own 256-frame clips, where the
# object moves ~0.19 px per frame (mp4; three prompts x seeds 0-4: median 0.21-0.29, largest 0.34-0.55); a
# window that put a 13-px object 1 px off would change its frame by ~1 level


def follow_flag(args) -> list[str]:
    """--follow-motion / --no-follow-motion when asked; none for the model folder's default (or a caller's
    own namespace without the option, as bench_memory's)."""
    follow = getattr(args, "follow_motion", None)
    return [] if follow is None else ["--follow-motion" if follow else "--no-follow-motion"]


def child(args) -> None:
    """One generate call in this fresh process; print its peak memory and timings as JSON."""
    from kinema.cli import main

    out = Path(args.child_out)
    argv = ["generate", args.prompt, "-o", str(out), "--frames", str(args.child),
            "--seed", str(args.seed), "--device", args.device, "--quiet"]
    argv += ["--steps", str(args.steps)] if args.steps is not None else []
    argv += ["--fast"] if getattr(args, "fast", False) else []
    for flag in ("model", "height", "width", "guidance", "context_length", "context_stride", "mode", "attention",
                 "motion_length"):
        value = getattr(args, flag, None)
        if value is not None:
            argv += [f"--{flag.replace('_', '-')}", str(value)]
    argv += follow_flag(args)
    code = main(argv)
    if code != 0:
        sys.exit(code)
    side = json.loads(out.with_name(out.name + ".json").read_text())
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_mib = rss / 2**20 if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB on Linux
    report = dict(frames=args.child, peak_rss_mib=round(rss_mib, 1), timings=side["timings"],
                  settings=side["settings"], long=side.get("long"))
    report["quality"] = quality(out, args.prompt, side.get("long"))  # after the RSS reading: not counted
    try:
        import torch

        if torch.cuda.is_available() and args.device != "cpu":
            report["cuda_peak_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    except ImportError:
        pass
    print("BENCH " + json.dumps(report))


def boundaries(long: dict | None, frames: int) -> list[int]:
    """Output frames where a window's contribution starts: window starts (window mode) or new frames (continue)."""
    from kinema.pipelines.windows import continuation_plan, window_plan

    if not long:
        return []
    length, stride = long.get("context_length") or 16, long.get("context_stride") or 4
    if long.get("mode") == "continue":
        return [s + known for s, _, known in continuation_plan(frames, length, length - stride)[1:]]
    return sorted({b for s, e in window_plan(frames, length, stride) for b in (s, e) if 0 < b < frames})


def quality(path: Path, prompt: str, long: dict | None) -> dict | None:
    """Colour per frame, direction per trained-length chunk, and the worst seam of the clip at `path`."""
    import numpy as np

    from kinema import world
    from kinema.world import metrics
    from kinema.video_io import read_video

    # 1. the prompt's colour and direction, the clip, the trained length
    parsed = world.parse_caption(prompt)
    if parsed is None:
        return None
    colour, _, direction, _ = parsed
    video, _ = read_video(path)
    chunk = (long or {}).get("context_length") or 16
    # 2. colour per frame, direction per chunk
    reading = metrics.analyse_video(video)
    colours = [r.colour == colour for r in reading.frames]
    chunks, slow = chunk_directions(video, chunk)
    # 3. seams: the change at each window boundary over the clip's median change
    bounds = boundaries(long, len(video))
    median, seams, floored, mean_ratio = seam_ratios(video, bounds)
    # 4. where the object jumps, the seams away from the jumps, its direction between them
    jump, jumps, away, step_dirs = jump_figures(video, reading, chunk, bounds, seams)
    return dict(boundary_mean_ratio=None if mean_ratio is None else round(mean_ratio, 3), worst_seam_jump_px=jump,
                jumps=len(jumps), worst_seam_away_from_jumps=round(max(away), 3) if away else None,
                boundaries_away_from_jumps=len(away), chunk_step_directions=step_dirs,
                direction_chunks_between_jumps=round(float(np.mean([d == direction for d in step_dirs])), 3)
                if step_dirs else None,
                colour_frames=round(float(np.mean(colours)), 3),
                direction_chunks=round(float(np.mean([d == direction for d in chunks])) if chunks else float("nan"), 3),
                chunk_directions=chunks,
                direction_chunks_clip_pace=round(float(np.mean([d == direction for d in slow])), 3) if slow else None,
                worst_seam_ratio=round(max(seams), 3) if seams else None,
                worst_seam_ratio_floored=round(max(floored), 3) if floored else None,
                median_change=round(median, 3), boundaries=len(seams))


def chunk_directions(video, chunk: int) -> tuple[list, list]:
    """Direction of each consecutive `chunk`-frame piece: at a 16-frame clip's pace, and at the pace of a
    non-wrapping world clip of the whole clip's length (~8x slower at 256 frames)."""
    from kinema.world import metrics

    starts = range(0, len(video) - chunk + 1, chunk)
    chunks = [metrics.analyse_video(video[i:i + chunk]).direction for i in starts]  # at a 16-frame clip's pace
    slow = [metrics.analyse_video(video[i:i + chunk], clip_frames=len(video)).direction for i in starts]
    return chunks, slow


def seam_ratios(video, bounds: list[int]) -> tuple[float, list[float], list[float], float | None]:
    """(median frame-to-frame change, change at each boundary over it, the same over a median of at least
    SEAM_FLOOR, mean change at boundaries over mean change elsewhere or None)."""
    import numpy as np

    change = np.abs(np.diff(video.astype(np.int16), axis=0)).mean(axis=(1, 2, 3))  # change[t]: t -> t+1
    median = float(np.median(change))
    seams = [float(change[b - 1]) / max(median, 1e-6) for b in bounds]
    # the same over a median of at least SEAM_FLOOR grey levels: below it, changes are the sub-pixel steps of
    # a slowly moving object, which the non-wrapping world's own long clips show at every frame
    floored = [float(change[b - 1]) / max(median, SEAM_FLOOR) for b in bounds]
    # is a boundary different from any other frame? mean change at boundaries over mean change elsewhere
    at = np.zeros(len(change), bool)
    at[[b - 1 for b in bounds]] = True
    mean_ratio = float(change[at].mean() / max(change[~at].mean(), 1e-6)) if at.any() and (~at).any() else None
    return median, seams, floored, mean_ratio


def centroid_steps(video, reading) -> list[tuple[float, float] | None]:
    """How far the object's centroid moves in each transition (px, the short way round the frame's torus:
    crossing an edge of a wrapping clip is a small move; None where the object is not found)."""
    h, w = video.shape[1:3]
    cs = [f.centroid for f in reading.frames]

    def step(a, b):
        return ((b[0] - a[0] + w / 2) % w - w / 2, (b[1] - a[1] + h / 2) % h - h / 2)

    return [None if a is None or b is None else step(a, b) for a, b in zip(cs, cs[1:])]


def jump_figures(video, reading, chunk: int, bounds: list[int],
                 seams: list[float]) -> tuple[float | None, list[int], list[float], list[str | None]]:
    """(the object's move at the worst boundary, the transitions where it jumps, the seams of the boundaries
    away from the jumps, each chunk's direction from its moves with the jumps left out)."""
    import numpy as np

    steps_all = centroid_steps(video, reading)
    moves = [None if m is None else float(np.hypot(*m)) for m in steps_all]
    # what happens at the worst boundary: how far the object jumps there
    jump = None
    if seams:
        move = moves[bounds[int(np.argmax(seams))] - 1]
        jump = None if move is None else round(move, 1)
    # where the object jumps: its centroid moves more than 1/8 of the frame side in one transition (world
    # objects move at most ~3 px per frame at 64x64); boundaries within 2 transitions of a jump are where the
    # clip's content changes most, so the worst seam is also given for the boundaries away from them
    side = min(video.shape[1:3])
    jumps = [t for t, m in enumerate(moves) if m is not None and m > side / 8]
    away = [s for b, s in zip(bounds, seams) if all(abs(b - 1 - j) > 2 for j in jumps)]
    # direction within each chunk from the median frame-to-frame move, jumps left out: does the object move
    # the prompt's way between them?
    steps = [None if t in jumps else m for t, m in enumerate(steps_all)]
    return jump, jumps, away, step_directions(steps, video, chunk)


def step_directions(steps: list, video, chunk: int) -> list[str | None]:
    """Each `chunk`-frame piece's direction from the median of its frame-to-frame moves (None where fewer
    than 2 are known): "still" below `metrics.still_threshold`, else the larger axis's way."""
    import numpy as np

    from kinema.world import metrics

    side = min(video.shape[1:3])
    step_dirs = []
    for i in range(0, len(video) - chunk + 1, chunk):
        d = [m for m in steps[i:i + chunk - 1] if m is not None]
        if len(d) < 2:
            step_dirs.append(None)
            continue
        mx, my = float(np.median([m[0] for m in d])), float(np.median([m[1] for m in d]))
        fx, fy = mx * (chunk - 1) / video.shape[2], my * (chunk - 1) / video.shape[1]
        if max(abs(fx), abs(fy)) < metrics.still_threshold(chunk - 1, None, side):
            step_dirs.append("still")
        elif abs(fx) >= abs(fy):
            step_dirs.append("right" if mx > 0 else "left")
        else:
            step_dirs.append("down" if my > 0 else "up")
    return step_dirs


def reference(prompt: str, frames: int, seed: int, long: dict | None, tmp: Path) -> dict | None:
    """The figures of the world's own wrapping clip of a canonical prompt at this length, written as mp4 like the output."""
    from kinema import world
    from kinema.video_io import write_video

    parsed = world.parse_caption(prompt)
    if parsed is None or parsed[0] == parsed[3]:
        return None
    colour, shape, direction, background = parsed
    clip = world.World(split="all", frames=frames, canonical=True, wrap=True).clip(seed, (colour, shape, direction),
                                                                                    background)
    path = write_video(tmp / "reference.mp4", clip.video, fps=8, overwrite=True)
    return quality(path, prompt, long)


def print_quality(q: dict, label: str) -> None:
    seam = "n/a (one window)" if q["worst_seam_ratio"] is None else f"{q['worst_seam_ratio']:.2f}"
    print(f"{label}: object colour right in {q['colour_frames']:.1%} of frames (target >= 95%) | "
          f"direction right in {q['direction_chunks']:.0%} of {len(q['chunk_directions'])} chunks (target: all; "
          f"{q['direction_chunks_clip_pace']:.0%} at the slower pace of a non-wrapping world clip that long) | "
          f"worst seam {seam} x median change over {q['boundaries']} window boundaries (target <= 1.5)")
    if q.get("worst_seam_ratio_floored") is not None:
        print(f"  worst seam over a median of at least {SEAM_FLOOR} grey levels: {q['worst_seam_ratio_floored']:.2f} "
              f"(median change {q['median_change']:.3f})")
    if q.get("boundary_mean_ratio") is not None:
        print(f"  mean change at window boundaries / elsewhere: {q['boundary_mean_ratio']:.3f}; "
              f"the object's centroid moves {q['worst_seam_jump_px']} px at the worst boundary")
    if q.get("worst_seam_away_from_jumps") is not None:
        print(f"  the object's centroid jumps (> 1/8 frame in one transition) {q['jumps']} times; worst seam at the "
              f"{q['boundaries_away_from_jumps']} boundaries more than 2 frames from a jump: "
              f"{q['worst_seam_away_from_jumps']:.2f}")
    if q.get("direction_chunks_between_jumps") is not None:
        print(f"  direction from each chunk's median frame-to-frame move (jumps left out): right in "
              f"{q['direction_chunks_between_jumps']:.0%} of chunks ({q['chunk_step_directions']})")


def run_child(args, frames: int, tmp: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", str(frames), "--child-out", str(tmp / f"clip{frames}.mp4")]
    for flag in ("prompt", "model", "height", "width", "steps", "guidance", "seed", "device", "context_length",
                 "context_stride", "mode", "attention", "motion_length"):
        value = getattr(args, flag, None)
        if value is not None:
            cmd += [f"--{flag.replace('_', '-')}", str(value)]
    cmd += follow_flag(args) + (["--fast"] if getattr(args, "fast", False) else [])
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"bench_long: the {frames}-frame run failed (exit {r.returncode}):\n{r.stderr.strip()}")
    line = next(x for x in r.stdout.splitlines() if x.startswith("BENCH "))
    return json.loads(line[len("BENCH "):])


def plan_of(report: dict, trained: int) -> tuple[int, int]:
    """(windows, latent frames per step) of a run: its sidecar's plan, or one window for a plain run."""
    if report["long"]:
        return report["long"]["windows"], report["long"]["plan_cost"]
    return 1, report["settings"]["frames"]


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's options, and the hidden ones of a child run."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model folder (default: the shipped weights)")
    p.add_argument("--short", type=int, default=16, help="frames of the short clip")
    p.add_argument("--long", type=int, default=256, help="frames of the long clip")
    p.add_argument("--height", type=int, default=None, help="frame height (default: the model's)")
    p.add_argument("--width", type=int, default=None, help="frame width (default: the model's)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's, 25; --fast: 4)")
    p.add_argument("--fast", action="store_true", help="the folder's few-step student (kinema generate --fast)")
    p.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the model's)")
    p.add_argument("--seed", type=int, default=0, help="seed")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"], help="where to run")
    p.add_argument("--context-length", type=int, default=None, help="latent frames per window (default: the model's)")
    p.add_argument("--context-stride", type=int, default=None, help="window stride (default: a quarter window)")
    p.add_argument("--mode", default=None, choices=["window", "continue"], help="long-clip mode (default: window)")
    p.add_argument("--motion-length", type=int, default=None,
                   help="pace the motion as in a clip of this many frames (default: each clip's own frames)")
    p.add_argument("--follow-motion", action=argparse.BooleanOptionalAction, default=None,
                   help="windows follow the clip's motion (default: the model folder's defaults.follow_motion)")
    p.add_argument("--attention", default=None, choices=["sdpa", "xformers", "chunked"], help="attention backend")
    p.add_argument("--prompt", default=PROMPT, help="prompt of both clips")
    p.add_argument("--json-out", default=None, help="also write the figures here as JSON")
    p.add_argument("--keep", default=None, help="also keep the long clip here (mp4)")
    p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--child-out", default=None, help=argparse.SUPPRESS)
    return p


def run_both(args) -> tuple[dict, dict]:
    """The short and the long clip, one after the other, each in a fresh process; the long clip kept if asked."""
    with tempfile.TemporaryDirectory(prefix="bench_long_") as tmp:
        short = run_child(args, args.short, Path(tmp))
        long = run_child(args, args.long, Path(tmp))
        if args.keep:
            shutil.copyfile(Path(tmp) / f"clip{args.long}.mp4", args.keep)
    return short, long


def speed_and_memory(args, short: dict, long: dict) -> dict:
    """Peak memory and denoise time of both runs, their ratios (the time's against the plans' cost), printed."""
    (ws, cost_s), (wl, cost_l) = plan_of(short, args.short), plan_of(long, args.long)
    t_s, t_l = short["timings"]["denoise"], long["timings"]["denoise"]
    predicted = t_s * cost_l / cost_s
    figures = dict(
        short=dict(frames=args.short, windows=ws, plan_cost=cost_s, peak_rss_mib=short["peak_rss_mib"],
                   denoise_s=round(t_s, 3), total_s=short["timings"].get("total"), s_per_frame=round(t_s / args.short, 4)),
        long=dict(frames=args.long, windows=wl, plan_cost=cost_l, peak_rss_mib=long["peak_rss_mib"],
                  denoise_s=round(t_l, 3), total_s=long["timings"].get("total"), s_per_frame=round(t_l / args.long, 4),
                  predicted_denoise_s=round(predicted, 3)),
        memory_ratio=round(long["peak_rss_mib"] / short["peak_rss_mib"], 3),
        time_ratio=round(t_l / predicted, 3),
        settings=long["settings"],
    )
    if "cuda_peak_mib" in long:
        figures["cuda_memory_ratio"] = round(long["cuda_peak_mib"] / short["cuda_peak_mib"], 3)
    print(f"peak RSS   {args.short:>4} frames {short['peak_rss_mib']:8.1f} MiB | {args.long:>4} frames "
          f"{long['peak_rss_mib']:8.1f} MiB | ratio {figures['memory_ratio']:.3f} (target <= 1.25)")
    print(f"denoise    {args.short:>4} frames {t_s:8.2f} s ({cost_s} latent frames/step) | {args.long:>4} frames "
          f"{t_l:8.2f} s ({cost_l}/step, predicted {predicted:.2f} s) | ratio {figures['time_ratio']:.3f} (target <= 1.3)")
    print(f"per frame  {t_s / args.short:.4f} s | {t_l / args.long:.4f} s measured, {predicted / args.long:.4f} s predicted")
    return figures


def add_quality(args, long: dict, figures: dict) -> None:
    """What the long clip shows and what the world's own wrapping clip at its length shows, printed and added to
    `figures` (nothing when the prompt is not a world caption)."""
    q = long.get("quality")
    if q:
        figures["quality"] = q
        print_quality(q, f"{args.long}-frame clip")
        ref = reference(args.prompt, args.long, args.seed, long["long"], Path(tmp_ref := tempfile.mkdtemp()))
        shutil.rmtree(tmp_ref, ignore_errors=True)
        if ref:
            figures["reference_world_clip"] = ref
            print_quality(ref, f"the world's own wrapping {args.long}-frame clip of the prompt (no model, same boundaries)")


def main() -> None:
    args = build_parser().parse_args()
    if args.child is not None:
        return child(args)
    # 1. the short and the long clip, each in a fresh process
    short, long = run_both(args)
    # 2. memory and time
    figures = speed_and_memory(args, short, long)
    # 3. what the long clip shows, beside the world's own clip
    add_quality(args, long, figures)
    # 4. the figures as JSON
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
