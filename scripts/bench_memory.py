"""Memory vs length, and per attention backend: peak resident memory of whole `generate` runs, each in a fresh process.

    python scripts/bench_memory.py                            # default model: 16, 64, 256 frames; sdpa vs chunked
    python scripts/bench_memory.py --model /tmp/tiny --frames 2 4 --height 8 --width 8 --steps 1 \\
        --long-frames 2 --long-size 32                        # smoke

Every run is `scripts/bench_long.py`'s child: `kinema generate` end to end (model load, windowed denoising
past the trained length, chunked decoding, writing the mp4) in a fresh subprocess that reports its own
peak RSS (and the peak CUDA memory on a GPU). Lengths run at the model's size; the backends run one clip at
`--long-size` squared, where the first attention level attends over the most tokens per frame, once per
backend. Memory does not depend on the step count, so a few steps are enough (`--steps`).

Prints peak RSS per length and its ratio to the shortest, and per backend with the ratio to sdpa.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent


def bench_long():
    spec = importlib.util.spec_from_file_location("bench_long", HERE / "bench_long.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def attention_tokens(model: str | None, frames: int, height: int | None, width: int | None) -> dict | None:
    """Sequence lengths at kinema's first attention level: tokens per frame (spatial) and frames (temporal)."""
    import kinema

    info = kinema.info(model)
    den = info.configs["denoiser"]
    if "attention_levels" not in den:  # a Wan folder: full space-time attention
        return None
    d, s = info.defaults, info.spatial_compression
    i = next((i for i, a in enumerate(den["attention_levels"]) if a), len(den["channels"]) - 1)
    h, w = (height or d.height) // s // 2**i, (width or d.width) // s // 2**i
    return dict(level=i, spatial=h * w, temporal=frames, heads=max(1, den["channels"][i] // den["head_dim"]))


def run(args, tmp: Path, frames: int, **overrides) -> dict:
    """One fresh-process `generate` through bench_long's child."""
    bl = bench_long()
    ns = argparse.Namespace(prompt=bl.PROMPT, model=args.model, height=args.height, width=args.width, steps=args.steps,
                            guidance=None, seed=0, device=args.device, context_length=None, context_stride=None,
                            mode=None, attention=None)
    vars(ns).update(overrides)
    report = bl.run_child(ns, frames, Path(tempfile.mkdtemp(dir=tmp)))  # a folder per run: no clip clashes
    windows, cost = bl.plan_of(report, frames)
    keep = dict(frames=frames, windows=windows, plan_cost=cost, peak_rss_mib=report["peak_rss_mib"],
                denoise_s=round(report["timings"]["denoise"], 3))
    if "cuda_peak_mib" in report:
        keep["cuda_peak_mib"] = report["cuda_peak_mib"]
    return keep


def markdown(r: dict) -> str:
    s = r["settings"]
    lines = [f"| frames ({s['steps']} steps, {s['device']}) | windows | peak RSS MiB | ratio to {r['lengths'][0]['frames']} |",
             "|---|---|---|---|"]
    lines += [f"| {x['frames']} | {x['windows']} | {x['peak_rss_mib']:.0f} | {x['memory_ratio']:.3f} |" for x in r["lengths"]]
    seq = r.get("sequence")
    at = f"{s['long_frames']} frames {s['long_size']}x{s['long_size']}"
    if seq:
        at += f"; {seq['spatial']} tokens/frame x {seq['heads']} heads at attention level {seq['level']}"
    lines += ["", f"| attention backend ({at}) | peak RSS MiB | denoise s | RSS ratio to sdpa |", "|---|---|---|---|"]
    lines += [f"| {x['attention']} | {x['peak_rss_mib']:.0f} | {x['denoise_s']:.2f} | {x['memory_ratio']:.3f} |"
              for x in r["backends"]]
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model folder (default: the shipped weights)")
    p.add_argument("--frames", type=int, nargs="+", default=[16, 64, 256], help="clip lengths, shortest first")
    p.add_argument("--height", type=int, default=None, help="height of the length runs (default: the model's)")
    p.add_argument("--width", type=int, default=None, help="width of the length runs (default: the model's)")
    p.add_argument("--steps", type=int, default=4, help="denoising steps of every run")
    p.add_argument("--backends", nargs="+", default=["sdpa", "chunked"], choices=["sdpa", "chunked", "xformers"],
                   help="attention backends to compare (sdpa first: the reference)")
    p.add_argument("--long-frames", type=int, default=16, help="frames of the backend runs")
    p.add_argument("--long-size", type=int, default=256, help="height and width of the backend runs")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where to run")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs at once (peak RSS is per process; times are only comparable with 1)")
    p.add_argument("--json-out", default=None, help="also write the figures here as JSON")
    args = p.parse_args(argv)

    big = dict(height=args.long_size, width=args.long_size)
    with tempfile.TemporaryDirectory(prefix="bench_memory_") as tmp, ThreadPoolExecutor(args.jobs) as pool:
        lengths = [pool.submit(run, args, Path(tmp), f) for f in args.frames]
        backends = [pool.submit(run, args, Path(tmp), args.long_frames, attention=b, **big) for b in args.backends]
        lengths = [x.result() for x in lengths]
        backends = [dict(x.result(), attention=b) for x, b in zip(backends, args.backends)]
    for rows in (lengths, backends):
        for x in rows:
            x["memory_ratio"] = round(x["peak_rss_mib"] / rows[0]["peak_rss_mib"], 3)
    result = dict(lengths=lengths, backends=backends,
                  sequence=attention_tokens(args.model, args.long_frames, args.long_size, args.long_size),
                  settings=dict(steps=args.steps, device=args.device, height=args.height, width=args.width,
                                long_frames=args.long_frames, long_size=args.long_size))
    print(markdown(result))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
