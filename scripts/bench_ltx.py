"""kinema vs diffusers on identical LTX-Video weights, and the long-clip memory of kinema's windows.

    python scripts/bench_ltx.py speed                         # ~100M transformer, 25 frames 256x256, kinema / diffusers
    python scripts/bench_ltx.py memory                        # peak RSS of 17 vs 257 frames, each in a fresh process
    python scripts/bench_ltx.py speed --shape tiny --frames 9 --height 64 --width 64 --steps 2 --pairs 1   # smoke
    python scripts/bench_ltx.py speed --folder /path/LTX-Video --device cuda --dtype bfloat16 --frames 161 --height 480 --width 704

speed: writes an LTX folder (`kinema.models.ltx_testing.folder`: a random transformer of `--shape`, a small T5,
a VAE with LTX's real compression (32x space, 8x time) in tiny channels, Lightricks' scheduler config) unless
`--folder` names one, loads it once in kinema and once in diffusers (`LTXPipeline`, its VAE tiled the way
kinema tiles it: `enable_tiling` and temporal tiles), and runs the same prompt, negative prompt, seed, steps,
guidance, frames and size through both, alternating A (kinema) B (diffusers) A B ... after one warm-up call of
each. Each call is a whole text-to-video call: text encoding, the loop, VAE decode to frames. kinema runs cond
and uncond as one batch of 2, as diffusers does. Prints the median seconds of each, the ratio kinema /
diffusers (target <= 1.00), and the max abs difference of the final latents (diffusers' taken by its
step-end callback) and of the uint8 frames.

memory: the same folder, `kinema.generate` of 17 and of 257 frames, each in a fresh Python process that
reports its peak resident memory (ru_maxrss) after the clip: the long one in context windows of
`--context-length` latent frames, decoded in the VAE's temporal tiles. Target ratio 257 / 17 <= 1.25.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

PROMPT = "a red circle moving right on a blue background"  # words of ltx_testing.WORDS
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
    from diffusers import LTXPipeline

    from kinema.models.ltx_testing import pipeline

    dtype = getattr(torch, args.dtype)
    model = kinema.load(folder, device=args.device, dtype=dtype)
    pipe = pipeline(LTXPipeline, folder, args.device)
    pipe.transformer.to(dtype), pipe.text_encoder.to(dtype)
    pipe.vae.enable_tiling()
    pipe.vae.use_framewise_decoding = True  # kinema decodes in diffusers' temporal tiles
    size = dict(frames=args.frames, height=args.height, width=args.width)
    ours = lambda: kinema.generate(PROMPT, **size, steps=args.steps, guidance=args.guidance, seed=args.seed,  # noqa: E731
                                   negative_prompt=NEGATIVE, model=model, progress=False, return_result=True,
                                   threads=args.threads)  # kinema sets torch's threads per job: the same for both
    final = {}

    def keep_latents(p, i, t, kw):
        final["latents"] = kw["latents"]
        return kw

    decode = dict(decode_timestep=model.vae.decode_timestep, decode_noise_scale=model.vae.decode_noise_scale)
    theirs = lambda: pipe(PROMPT, negative_prompt=NEGATIVE, height=args.height, width=args.width,  # noqa: E731
                          num_frames=args.frames, num_inference_steps=args.steps, guidance_scale=args.guidance,
                          generator=torch.Generator("cpu").manual_seed(args.seed), output_type="np",
                          callback_on_step_end=keep_latents, **decode).frames
    with torch.inference_mode():
        ours(), theirs()  # warm-up: allocator, kernels, lazy imports
        a, b = [], []
        for _ in range(args.pairs):
            res, t = timed(ours, args.device)
            a.append(t)
            video, t = timed(theirs, args.device)
            b.append(t)
    frames = (np.asarray(video[0]) * 255).round().astype(np.uint8)  # diffusers: (F, H, W, 3) floats in [0, 1]
    s, tc = pipe.vae_spatial_compression_ratio, pipe.vae_temporal_compression_ratio
    theirs_latents = pipe._unpack_latents(final["latents"], (args.frames - 1) // tc + 1, args.height // s, args.width // s)
    latent_diff = float((res.latents.float().cpu() - theirs_latents.float().cpu()).abs().max())
    params = sum(p.numel() for p in model.denoiser.transformer.parameters())
    return dict(params=params, kinema_s=a, diffusers_s=b, kinema_median_s=statistics.median(a),
                diffusers_median_s=statistics.median(b), ratio=statistics.median(a) / statistics.median(b),
                max_abs_diff_latents=latent_diff,
                max_abs_diff_uint8=int(np.abs(res.frames.astype(int) - frames.astype(int)).max()))


def markdown(r: dict) -> str:
    s = r["settings"]
    return "\n".join([
        f"| LTX {r['params'] / 1e6:.3g}M params, {s['frames']} frames {s['width']}x{s['height']}, {s['steps']} steps, "
        f"{s['device']} {s['dtype']}, {s['threads']} threads, {s['pairs']} pairs | kinema | diffusers |",
        "|---|---|---|",
        f"| median seconds per call | {r['kinema_median_s']:.3f} | {r['diffusers_median_s']:.3f} |",
        f"| **time ratio kinema / diffusers** (target <= 1.00) | **{r['ratio']:.3f}** | |",
        f"| max abs diff, latents / uint8 frames | {r['max_abs_diff_latents']:.2e} / {r['max_abs_diff_uint8']} | |",
    ])


def ltx_long_child(args) -> None:
    """LTX's own long approach on the same folder: LTXI2VLongMultiPromptPipeline (temporal tiles with overlap, AdaIN
    toward the first tile), tiles as long as kinema's windows, one decode tile; prints its peak RSS as JSON."""
    from diffusers import FlowMatchEulerDiscreteScheduler, LTXI2VLongMultiPromptPipeline

    pipe = LTXI2VLongMultiPromptPipeline.from_pretrained(args.folder, local_files_only=True)
    pipe.scheduler = FlowMatchEulerDiscreteScheduler()  # its loop sets plain timesteps (no mu): a static shift
    pipe.set_progress_bar_config(disable=True)
    tc = pipe.vae_temporal_compression_ratio
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = pipe(prompt=PROMPT, height=args.height, width=args.width, num_frames=args.frames,
                   num_inference_steps=args.steps, guidance_scale=args.guidance, output_type="np",
                   temporal_tile_size=args.context_length * tc, temporal_overlap=(args.context_length - args.context_stride) * tc,
                   generator=torch.Generator().manual_seed(args.seed), decode_horizontal_tiles=1, decode_vertical_tiles=1)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps(dict(frames=args.frames, written=int(np.asarray(out.frames).shape[1]), peak_rss=peak,
                          seconds=seconds, windows=None)))


def memory_child(args) -> None:
    """One clip in this (fresh) process; prints its peak RSS and timings as JSON."""
    import kinema

    model = kinema.load(args.folder, device="cpu", dtype=torch.float32)
    long = dict(context_length=args.context_length, context_stride=args.context_stride) if args.frames > 17 else {}
    t0 = time.perf_counter()
    res = kinema.generate(PROMPT, model=model, frames=args.frames, height=args.height, width=args.width, steps=args.steps,
                          guidance=args.guidance, seed=args.seed, progress=False, return_result=True,
                          threads=args.threads, **long)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    print(json.dumps(dict(frames=args.frames, written=int(res.frames.shape[0]), peak_rss=peak, seconds=seconds,
                          windows=res.info.get("long", {}).get("windows"))))


def memory(folder: Path, args, child: str = "memory-child") -> dict:
    """17 and 257 frames, each in a fresh process: peak RSS and its ratio."""
    rows = []
    for frames in (17, 257):
        cmd = [sys.executable, __file__, child, "--folder", str(folder), "--frames", str(frames),
               "--height", str(args.height), "--width", str(args.width), "--steps", str(args.steps),
               "--guidance", str(args.guidance), "--context-length", str(args.context_length),
               "--context-stride", str(args.context_stride)] + (["--threads", str(args.threads)] if args.threads else [])
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        rows.append(json.loads(out))
    return dict(rows=rows, ratio=rows[1]["peak_rss"] / rows[0]["peak_rss"])


def memory_markdown(r: dict) -> str:
    s = r["settings"]
    how = (f"kinema, windows of {s['context_length']} latent frames every {s['context_stride']}" if s["what"] == "memory"
           else f"LTXI2VLongMultiPromptPipeline, tiles of {s['context_length']} latent frames overlapping "
                f"{s['context_length'] - s['context_stride']}")
    lines = [f"| {how}, {s['width']}x{s['height']}, {s['steps']} steps, CPU float32 | frames | windows | seconds | peak RSS |",
             "|---|---|---|---|---|"]
    for row in r["rows"]:
        lines.append(f"| | {row['written']} | {row['windows'] or '-'} | {row['seconds']:.1f} | {row['peak_rss'] / 2**20:.0f} MiB |")
    lines.append(f"| **ratio 257 / 17 frames** (target <= 1.25) | | | | **{r['ratio']:.3f}** |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    from kinema.models.ltx_testing import SHAPES

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["speed", "memory", "ltx-long", "memory-child", "ltx-long-child"],
                   help="speed; memory (kinema's windows); ltx-long (diffusers' LTXI2VLongMultiPromptPipeline, same folder)")
    p.add_argument("--shape", default="bench", choices=list(SHAPES), help="transformer shape of the written folder")
    p.add_argument("--folder", default=None, help="an existing LTX folder to use instead of writing one")
    p.add_argument("--frames", type=int, default=25, help="frames (8k+1)")
    p.add_argument("--height", type=int, default=256, help="height (a multiple of 32)")
    p.add_argument("--width", type=int, default=256, help="width (a multiple of 32)")
    p.add_argument("--steps", type=int, default=4, help="denoising steps")
    p.add_argument("--guidance", type=float, default=3.0, help="guidance scale (both run cond and uncond)")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise (and of the random weights)")
    p.add_argument("--pairs", type=int, default=3, help="timed A B pairs after the warm-up")
    p.add_argument("--context-length", type=int, default=5, help="memory: latent frames per window")
    p.add_argument("--context-stride", type=int, default=4, help="memory: latent frames between windows")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where both run")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="transformer and T5 dtype")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--json-out", default=None, help="also write the figures here as JSON")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from kinema.models.family import quiet_libraries
    from kinema.models.ltx_testing import folder as ltx_folder

    quiet_libraries()
    if args.what in ("memory-child", "ltx-long-child"):
        return memory_child(args) if args.what == "memory-child" else ltx_long_child(args)
    with tempfile.TemporaryDirectory(prefix="bench_ltx_") as tmp:
        folder = Path(args.folder) if args.folder else ltx_folder(Path(tmp) / "ltx", args.shape, vae_shape="ltx",
                                                                  seed=args.seed, real_scheduler=True)
        result = compare(folder, args) if args.what == "speed" else memory(folder, args, f"{args.what}-child")
    result["settings"] = dict(what=args.what, shape=None if args.folder else args.shape, frames=args.frames, height=args.height,
                              width=args.width, steps=args.steps, guidance=args.guidance, pairs=args.pairs,
                              context_length=args.context_length, context_stride=args.context_stride,
                              device=args.device, dtype=args.dtype, threads=torch.get_num_threads())
    print(markdown(result) if args.what == "speed" else memory_markdown(result))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
