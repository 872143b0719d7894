"""Where the time of one `generate` goes, and the loop overhead: whole call / denoiser forwards.

    python scripts/bench_generate.py                       # the default model at default settings
    python scripts/bench_generate.py --model /tmp/tiny --frames 4 --height 16 --width 16 --steps 2 --repeats 1

Each repeat runs the whole text-to-video call in this process (text encoding, the
loop, VAE decode) and writes the clip to a temporary mp4, as `kinema generate` does.
The denoiser's share is timed inside the same calls, so the ratio is measured side by
side. Prints a Markdown table and optionally writes JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model folder (default: the shipped weights)")
    p.add_argument("--frames", type=int, default=None)
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--json-out", default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    import kinema
    from kinema.video_io import write_video

    t0 = time.perf_counter()
    model = kinema.load(args.model, device="cpu")
    load_s = time.perf_counter() - t0
    kw = dict(frames=args.frames, height=args.height, width=args.width, steps=args.steps, model=model, progress=False)
    prompt = "a red circle moving right on a blue background"
    kinema.generate(prompt, seed=99, **kw)  # warm-up (allocator, kernels)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            t0 = time.perf_counter()
            res = kinema.generate(prompt, seed=i, return_result=True, **kw)
            t1 = time.perf_counter()
            write_video(Path(tmp) / f"clip{i}.mp4", res.frames, fps=8)
            t2 = time.perf_counter()
            ph = res.timings.as_dict()
            runs.append(dict(total=t2 - t0, generate=t1 - t0, write=t2 - t1, text=ph.get("text_encode", 0.0),
                             denoise_loop=ph.get("denoise", 0.0), denoiser=ph["denoiser_forward"],
                             decode=ph.get("vae_decode", 0.0), calls=ph["denoiser_calls"]))
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    f, h, w = res.frames.shape[:3]
    result = dict(
        model=str(model.path), frames=f, height=h, width=w, steps=res_steps(kw, model), threads=torch.get_num_threads(),
        load_seconds=load_s, median=med, runs=runs,
        overhead_ratio=med["total"] / med["denoiser"],
        loop_only_ratio=med["denoise_loop"] / med["denoiser"],
    )
    print(markdown(result))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2))
    return result


def markdown(result: dict) -> str:
    med, f, h, w = result["median"], result["frames"], result["height"], result["width"]
    lines = [f"| {f} frames {w}x{h}, {result['steps']} steps, {result['threads']} threads | seconds | share |", "|---|---|---|"]
    for name, key in (("whole call + mp4 write", "total"), ("denoiser forwards", "denoiser"),
                      ("loop bookkeeping (scheduler, guidance mix)", None), ("text encoding", "text"),
                      ("VAE decode", "decode"), ("mp4 write", "write")):
        v = med["denoise_loop"] - med["denoiser"] if key is None else med[key]
        lines.append(f"| {name} | {v:.3f} | {100 * v / med['total']:.1f}% |")
    lines.append(f"\nloop overhead ratio (whole call / denoiser forwards): {result['overhead_ratio']:.3f}  (target <= 1.10)")
    lines.append(f"time not in the denoiser: {med['total'] - med['denoiser']:.3f} s per clip; "
                 f"model load (once): {result['load_seconds']:.2f} s")
    return "\n".join(lines)


def res_steps(kw, model) -> int:
    return kw["steps"] or model.defaults["steps"]


if __name__ == "__main__":
    main(sys.argv[1:])
