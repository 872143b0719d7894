"""Step caches side by side: each `--cache` method against no cache, in one run.

    python scripts/bench_cache.py --steps 4 --clips 1                        # a smoke run (seconds)
    python scripts/bench_cache.py --methods first-block:0.1 first-block:0.2 taylorseer:2
    python scripts/bench_cache.py --wan --clips 2                            # a random ~70M Wan transformer, every method
    python scripts/bench_cache.py --suite --suite-methods first-block:0.1    # + the held-out world suite, cache on and off

The full measurement (a quiet 2-core machine; about 5 minutes for the clips, about 4 more per suite run):

    python scripts/bench_cache.py --threads 2 --clips 4 --suite --json-out docs/bench/cache.json > docs/bench/cache.md
    python scripts/bench_cache.py --threads 2 --wan --clips 2 --json-out docs/bench/cache-wan.json >> docs/bench/cache.md

For every clip (a held-out world prompt, seed = its index) the uncached clip runs first and last and each method in
between, all in this process on one loaded model (after a warm-up clip), so the ratios are side by side. Per method:
the whole `generate` call's speedup per clip (uncached seconds, the mean of the two, / cached seconds; median and worst
over the clips), the denoiser forwards' speedup, the calls the cache served, and how far the frames moved (max and mean
abs difference of the uint8 frames from the uncached clip's, over all clips). MagCache runs one uncounted clip first to
record the checkpoint's ratios (in a temporary cache folder). With `--suite`, `kinema eval --suite world --split
heldout` runs without the cache and with each of `--suite-methods`: colour, background and direction as clip counts,
and whether each is within 1 clip of the uncached figure (the issue's target).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model folder (default: the shipped weights)")
    p.add_argument("--wan", action="store_true", help="a random Wan 2.1 folder of the 'bench' shape (~70M transformer)")
    p.add_argument("--methods", nargs="+", default=None,
                   help="--cache values to compare (default: every method the model takes, at its default setting, and "
                        "first-block:0.2)")
    p.add_argument("--clips", type=int, default=4, help="clips per method (held-out world prompts, seeds 0..)")
    p.add_argument("--frames", type=int, default=None)
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--suite", action="store_true", help="also run the held-out world suite with and without the cache")
    p.add_argument("--suite-methods", nargs="+", default=["first-block:0.1"], help="--cache values for --suite")
    p.add_argument("--per-combo", type=int, default=2, help="--suite: clips per (colour, shape, motion)")
    p.add_argument("--json-out", default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["XDG_CACHE_HOME"] = str(Path(tmp) / "cache")  # MagCache's ratios: recorded afresh, then dropped
        model_dir = wan_folder(Path(tmp) / "wan") if args.wan else args.model
        result = compare(model_dir, args)
        if args.suite:
            result["suite"] = suite(model_dir, args, Path(tmp))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2))
    return result


def wan_folder(path: Path) -> Path:
    from kinema.models.wan_testing import t2v_folder

    return t2v_folder(path, shape="bench")


#################################################################################
#                                 Clips, side by side                           #
#################################################################################


def compare(model_dir, args) -> dict:
    import kinema
    from kinema import jobs, world
    from kinema.models.cache import parse_cache
    from kinema.models.family import family_of

    model = kinema.load(model_dir, device="cpu", dtype="float32")
    methods = [str(parse_cache(m)) for m in args.methods or default_methods(family_of(model.info).cache_methods(model.info))]
    size = dict(frames=args.frames, height=args.height, width=args.width, steps=args.steps)
    if args.wan:  # compute-bound on a CPU, as bench_wan
        size = {k: v or d for (k, v), d in zip(size.items(), (17, 128, 128, 8))}
    prompts = [prompt for prompt, _ in world.eval_prompts("heldout", 1)][: args.clips]

    def clip(prompt: str, seed: int, cache: str):
        job = jobs.prepare_generate(prompt, model, seed=seed, cache=cache, **size)
        t0 = time.perf_counter()
        r = jobs.run(job, model, progress=False)
        return r, time.perf_counter() - t0

    clip(prompts[0], 99, "none")  # warm-up: allocator, kernels
    for m in methods:
        if m.startswith("magcache"):
            clip(prompts[0], 98, m)  # records the checkpoint's magnitude ratios (every call in full)
    runs = {m: [] for m in methods}
    for k, prompt in enumerate(prompts):
        base, t_first = clip(prompt, k, "none")
        cached = {m: clip(prompt, k, m) for m in methods}
        _, t_last = clip(prompt, k, "none")
        t_base = (t_first + t_last) / 2
        for m, (r, t) in cached.items():
            d = np.abs(r.frames.astype(np.int16) - base.frames.astype(np.int16))
            w, w0 = r.timings.denoiser, base.timings.denoiser
            runs[m].append(dict(seconds=t, uncached_seconds=t_base, speedup=t_base / t,
                                denoiser_speedup=w0.seconds / max(w.seconds, 1e-9), calls=w.calls, served=w.cached,
                                max_abs_diff=int(d.max()), mean_abs_diff=float(d.mean())))
    result = dict(model=str(model.path), family=model.info.family, threads=torch.get_num_threads(),
                  settings=dict(size, steps=size["steps"] or model.info.defaults.steps), clips=len(prompts),
                  methods={m: summary(rs) for m, rs in runs.items()}, runs=runs)
    print(table(result))
    return result


def default_methods(supported: tuple[str, ...]) -> list[str]:
    from kinema.models.cache import parse_cache

    out = [str(parse_cache(m)) for m in supported if m != "none"]
    return out + (["first-block:0.2"] if "first-block" in supported else [])


def summary(rs: list[dict]) -> dict:
    speed = [r["speedup"] for r in rs]
    return dict(speedup_median=statistics.median(speed), speedup_worst=min(speed),
                denoiser_speedup_median=statistics.median(r["denoiser_speedup"] for r in rs),
                seconds_median=statistics.median(r["seconds"] for r in rs),
                uncached_seconds_median=statistics.median(r["uncached_seconds"] for r in rs),
                calls=sum(r["calls"] for r in rs), served=sum(r["served"] for r in rs),
                max_abs_diff=max(r["max_abs_diff"] for r in rs),
                mean_abs_diff=statistics.mean(r["mean_abs_diff"] for r in rs))


def table(result: dict) -> str:
    s = result["settings"]
    size = "default size" if s.get("frames") is None else f"{s['frames']} frames {s['width']}x{s['height']}"
    lines = [f"Step caches on {result['model']} ({result['family']}), {size}, {s['steps']} steps, "
             f"{result['clips']} clip(s) each, {result['threads']} threads", "",
             "| --cache | speedup per clip (median / worst) | denoiser speedup | calls served | seconds per clip "
             "(uncached) | frames: max / mean abs diff |", "|---|---:|---:|---:|---:|---:|"]
    for m, r in result["methods"].items():
        lines.append(f"| {m} | {r['speedup_median']:.2f}x / {r['speedup_worst']:.2f}x | {r['denoiser_speedup_median']:.2f}x "
                     f"| {r['served']} / {r['calls']} | {r['seconds_median']:.2f} ({r['uncached_seconds_median']:.2f}) "
                     f"| {r['max_abs_diff']} / {r['mean_abs_diff']:.3f} |")
    return "\n".join(lines)


#################################################################################
#                                 The world suite                               #
#################################################################################

METRICS = ("colour", "background", "direction")


def suite(model_dir, args, tmp: Path) -> dict:
    """`kinema eval --suite world --split heldout` without the cache and with each of `--suite-methods`."""
    from kinema.cli import main as kinema

    out = {}
    for m in ["none", *args.suite_methods]:
        file = tmp / f"suite-{len(out)}.json"
        argv = ["eval", "--suite", "world", "--split", "heldout", "--per-combo", str(args.per_combo), "--cache", m,
                "--device", "cpu", "--dtype", "float32", "--json-out", str(file)]
        argv += ["--model", str(model_dir)] if model_dir is not None else []
        argv += ["--steps", str(args.steps)] if args.steps else []
        argv += ["--threads", str(args.threads)] if args.threads else []
        t0 = time.perf_counter()
        code = kinema(argv)
        if code != 0:
            raise SystemExit(f"kinema {' '.join(argv)} failed ({code})")
        r = json.loads(file.read_text())
        out[m] = dict(n=r["n"], seconds=time.perf_counter() - t0, flicker=r["flicker"],
                      **{k: round(r[k] * r["n"]) for k in METRICS})
    base = out["none"]
    for m, r in out.items():
        r["within_1_clip"] = all(abs(r[k] - base[k]) <= 1 for k in METRICS)
    print(suite_table(out))
    return out


def suite_table(out: dict) -> str:
    lines = ["", "Held-out world suite (clips right of n):", "",
             "| --cache | n | colour | background | direction | flicker | seconds | within 1 clip of uncached |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for m, r in out.items():
        lines.append(f"| {m} | {r['n']} | {r['colour']} | {r['background']} | {r['direction']} | {r['flicker']:.2f} "
                     f"| {r['seconds']:.0f} | {'yes' if r['within_1_clip'] else 'NO'} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
    sys.exit(0)
