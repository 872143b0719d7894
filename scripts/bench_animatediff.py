"""kinema's context windows against diffusers' FreeNoise on the same AnimateDiff weights: time and peak RSS by length.

    python scripts/bench_animatediff.py                          # 16, 64, 256 frames, 32x32, 2 steps, 2 threads
    python scripts/bench_animatediff.py --frames 16 64 --size 64 --md docs/bench/animatediff.md

One random AnimateDiffPipeline folder (`animatediff_testing.pipeline_folder(shape="bench")`: a UNet of blocks
(64, 128) with a matching motion adapter, ~7.8M parameters, large enough that its convolutions and matmuls
dominate a step) is written once and read by both sides. Each (implementation, length) runs in a fresh
process, so its peak RSS (`ru_maxrss`: libraries, weights, activations, frames) is its own:

- diffusers: `AnimateDiffPipeline.enable_free_noise(context_length=16, context_stride=4,
  weighting_scheme="pyramid")`, then the pipeline with `output_type="np"`;
- kinema: `kinema.generate(..., context_length=16, context_stride=4, window_weights="pyramid")` (FreeNoise noise,
  windows fused every step), uint8 frames.

Same prompt, seed, DDIM scheduler (the folder's), steps, guidance and size. Time is the generation call (load
excluded); time per frame is that over the frames. The table's ratio is 256 frames' peak RSS over 16 frames'.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

PROMPT = "a red circle moving right on the blue background"


def worker(impl: str, folder: str, frames: int, size: int, steps: int, guidance: float, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    if impl == "diffusers":
        from diffusers import AnimateDiffPipeline

        pipe = AnimateDiffPipeline.from_pretrained(folder, local_files_only=True)
        pipe.set_progress_bar_config(disable=True)
        pipe.enable_free_noise(context_length=16, context_stride=4, weighting_scheme="pyramid")
        load = time.perf_counter() - t0
        t1 = time.perf_counter()
        out = pipe(PROMPT, num_frames=frames, height=size, width=size, num_inference_steps=steps, guidance_scale=guidance,
                   generator=torch.Generator("cpu").manual_seed(0), output_type="np").frames[0]
    else:
        import kinema

        model = kinema.load(folder, device="cpu", dtype="float32")
        load = time.perf_counter() - t0
        t1 = time.perf_counter()
        out = kinema.generate(PROMPT, model=model, frames=frames, height=size, width=size, steps=steps, guidance=guidance,
                              seed=0, context_length=16, context_stride=4, window_weights="pyramid", progress=False)
    seconds = time.perf_counter() - t1
    assert len(out) == frames, (len(out), frames)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB (Linux)
    return dict(impl=impl, frames=frames, seconds=round(seconds, 2), per_frame=round(seconds / frames, 3),
                peak_rss_mib=round(rss), load_seconds=round(load, 2))


def table(rows: list[dict], frames: list[int]) -> list[str]:
    lines = ["| implementation | frames | time (s) | time per frame (s) | peak RSS (MiB) |",
             "|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['impl']} | {r['frames']} | {r['seconds']:.1f} | {r['per_frame']:.3f} | {r['peak_rss_mib']} |")
    lo, hi = min(frames), max(frames)
    for impl in ("diffusers", "kinema"):
        by = {r["frames"]: r for r in rows if r["impl"] == impl}
        if lo in by and hi in by:
            lines.append(f"\n{impl}: peak RSS {hi}/{lo} frames = {by[hi]['peak_rss_mib'] / by[lo]['peak_rss_mib']:.2f}x, "
                         f"time {hi}/{lo} frames = {by[hi]['seconds'] / by[lo]['seconds']:.1f}x")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--folder", default="runs/bench/animatediff", help="the bench folder (written if missing)")
    p.add_argument("--frames", type=int, nargs="+", default=[16, 64, 256])
    p.add_argument("--size", type=int, default=32, help="height and width in pixels")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--impl", nargs="+", default=["diffusers", "kinema"])
    p.add_argument("--json", default=None, help="write the rows here")
    p.add_argument("--worker", nargs=2, metavar=("IMPL", "FRAMES"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        print(json.dumps(worker(a.worker[0], a.folder, int(a.worker[1]), a.size, a.steps, a.guidance, a.threads)))
        return
    if not (Path(a.folder) / "model_index.json").is_file():
        from kinema.models.animatediff_testing import pipeline_folder

        pipeline_folder(a.folder, shape="bench")
    rows = []
    for impl in a.impl:
        for frames in a.frames:
            cmd = [sys.executable, __file__, "--worker", impl, str(frames), "--folder", a.folder, "--size", str(a.size),
                   "--steps", str(a.steps), "--guidance", str(a.guidance), "--threads", str(a.threads)]
            env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
            out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    print("\n".join(table(rows, a.frames)))
    if a.json:
        meta = dict(size=a.size, steps=a.steps, guidance=a.guidance, threads=a.threads, load_average=os.getloadavg())
        Path(a.json).write_text(json.dumps(dict(meta=meta, rows=rows), indent=2) + "\n")


if __name__ == "__main__":
    main()
