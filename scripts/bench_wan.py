"""kinema vs diffusers on identical weights: one random Wan folder through `kinema.generate` and `WanPipeline`.

    python scripts/bench_wan.py                                              # ~70M transformer, 17 frames 128x128
    python scripts/bench_wan.py --shape tiny --frames 5 --height 16 --width 16 --steps 2 --pairs 1   # smoke
    python scripts/bench_wan.py --folder /tmp/wan-1.3b --device cuda --dtype bfloat16 --frames 81 --height 480 --width 832

Writes a Wan 2.1 text-to-video folder (`kinema.models.wan_testing.t2v_folder`: a random transformer of
`--shape`, a one-layer UMT5, a tiny VAE, the UniPC flow scheduler) unless `--folder` names one, loads it
once in kinema and once in diffusers, and runs the same prompt, negative prompt, seed, scheduler, steps,
guidance, frames and size through both, alternating A (kinema) B (diffusers) A B ... in this process after
one warm-up call of each. Each call is a whole text-to-video call: text encoding, the loop, VAE decode
to frames. kinema runs cond and uncond as one batch of 2, diffusers as two forwards of 1.

Prints the median seconds of each, the ratio kinema / diffusers (target <= 1.00), and the max abs
difference of the final latents (diffusers' taken by its step-end callback) and of the uint8 frames.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

PROMPT = "a red circle moving right on a blue background"  # words of wan_testing.WORDS
NEGATIVE = "the dog"


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: str):
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t0


def compare(folder: Path, args) -> dict:
    """A B A B ... on one folder: median seconds of each, their ratio, and the output differences."""
    import kinema
    from diffusers import WanPipeline

    from kinema.models.wan_testing import pipeline, without_ftfy

    dtype = getattr(torch, args.dtype)
    model = kinema.load(folder, device=args.device, dtype=dtype)
    pipe = pipeline(WanPipeline, folder, args.device, dtype)
    size = dict(frames=args.frames, height=args.height, width=args.width)
    ours = lambda: kinema.generate(PROMPT, **size, steps=args.steps, guidance=args.guidance, seed=args.seed,  # noqa: E731
                                   negative_prompt=NEGATIVE, model=model, progress=False, return_result=True)
    final = {}

    def keep_latents(p, i, t, kw):
        final["latents"] = kw["latents"]
        return kw

    theirs = lambda: pipe(PROMPT, negative_prompt=NEGATIVE, height=args.height, width=args.width,  # noqa: E731
                          num_frames=args.frames, num_inference_steps=args.steps, guidance_scale=args.guidance,
                          generator=torch.Generator("cpu").manual_seed(args.seed), output_type="np",
                          callback_on_step_end=keep_latents).frames
    with without_ftfy(), torch.inference_mode():
        ours(), theirs()  # warm-up: allocator, kernels, lazy imports
        a, b = [], []
        for _ in range(args.pairs):
            res, t = timed(ours, args.device)
            a.append(t)
            video, t = timed(theirs, args.device)
            b.append(t)
    frames = (np.asarray(video[0]) * 255).round().astype(np.uint8)  # diffusers: (F, H, W, 3) floats in [0, 1]
    latent_diff = float((res.latents.float().cpu() - final["latents"].float().cpu()).abs().max())
    params = sum(p.numel() for p in model.denoiser.transformer.parameters())
    return dict(params=params, kinema_s=a, diffusers_s=b, kinema_median_s=statistics.median(a),
                diffusers_median_s=statistics.median(b), ratio=statistics.median(a) / statistics.median(b),
                max_abs_diff_latents=latent_diff,
                max_abs_diff_uint8=int(np.abs(res.frames.astype(int) - frames.astype(int)).max()))


def markdown(r: dict) -> str:
    s = r["settings"]
    return "\n".join([
        f"| Wan {r['params'] / 1e6:.3g}M params, {s['frames']} frames {s['width']}x{s['height']}, {s['steps']} steps, "
        f"{s['device']} {s['dtype']}, {s['pairs']} pairs | kinema | diffusers |",
        "|---|---|---|",
        f"| median seconds per call | {r['kinema_median_s']:.3f} | {r['diffusers_median_s']:.3f} |",
        f"| **time ratio kinema / diffusers** (target <= 1.00) | **{r['ratio']:.3f}** | |",
        f"| max abs diff, latents / uint8 frames | {r['max_abs_diff_latents']:.2e} / {r['max_abs_diff_uint8']} | |",
    ])


def main(argv=None) -> dict:
    from kinema.models.wan_testing import SHAPES

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="bench", choices=list(SHAPES), help="transformer shape of the written folder")
    p.add_argument("--folder", default=None, help="an existing Wan folder to use instead of writing one")
    p.add_argument("--frames", type=int, default=17, help="frames (4k+1)")
    p.add_argument("--height", type=int, default=128, help="height (a multiple of 16)")
    p.add_argument("--width", type=int, default=128, help="width (a multiple of 16)")
    p.add_argument("--steps", type=int, default=4, help="denoising steps")
    p.add_argument("--guidance", type=float, default=5.0, help="guidance scale (both run cond and uncond)")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise (and of the random weights)")
    p.add_argument("--pairs", type=int, default=2, help="timed A B pairs after the warm-up")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where both run")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="transformer and UMT5 dtype")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--json-out", default=None, help="also write the figures here as JSON")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from kinema.models.family import quiet_libraries
    from kinema.models.wan_testing import t2v_folder

    quiet_libraries()
    with tempfile.TemporaryDirectory(prefix="bench_wan_") as tmp:
        folder = Path(args.folder) if args.folder else t2v_folder(Path(tmp) / "wan", args.shape, seed=args.seed)
        result = compare(folder, args)
    result["settings"] = dict(shape=None if args.folder else args.shape, frames=args.frames, height=args.height,
                              width=args.width, steps=args.steps, guidance=args.guidance, pairs=args.pairs,
                              device=args.device, dtype=args.dtype, threads=torch.get_num_threads())
    print(markdown(result))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
