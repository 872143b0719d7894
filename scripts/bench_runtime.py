"""Runtime options side by side, in one run: quantized and GGUF weights of a random Wan transformer, and --compile.

    python scripts/bench_runtime.py --threads 1                              # the full run (a few minutes)
    python scripts/bench_runtime.py --threads 1 --skip-compile               # the weights only
    python scripts/bench_runtime.py --threads 2 --json-out docs/bench/runtime.json > docs/bench/runtime.md

Weights: a random Wan 2.1 folder with a transformer of `--shape` (default "bench": 16 blocks of width 512, ~70M
parameters; its rows fit GGUF's 256-value super-blocks) is written once, and its transformer as GGUF files (Q8_0 and
Q4_0 by the gguf package's quantizer, Q4_K by kinema's, `models/runtime.py`), in the original Wan key layout of the
community files. Each variant (float32, `--quantize int8`, `--transformer` Q8_0 / Q4_K / Q4_0) is loaded through
`kinema.load` in a fresh process, which runs the denoiser once on fixed inputs and reports its resident memory: the
peak over the process (VmHWM) and after the call (VmRSS), each less the process's RSS once torch, diffusers and kinema
are imported (the model's share); and how long the call took. The parent compares each output with float32's (max
and mean abs difference, and relative to the mean |output|) and the memory with float32's.

Compile: the default model (or `--model`) loaded with `--compile`; one clip warms up (its compile seconds as the
sidecar records them), then clips alternate between the compiled blocks and the same blocks run eagerly
(`torch.compiler.set_stance("force_eager")`), on one loaded model in this process: the speedup of the whole clip and of
the denoiser's forwards, and the frames' max abs difference.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

VARIANTS = ("float32", "int8", "Q8_0", "Q4_K", "Q4_0")


def rss() -> dict[str, int]:
    """This process's resident bytes now and at its peak (Linux /proc)."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


def child(args) -> None:
    """One variant in this fresh process: load, run once, report memory and time as one JSON line."""
    torch.set_num_threads(args.threads)
    import kinema
    from kinema.models.seams import TextEmbeds

    # every variant imports the same libraries before the baseline, so the model's share is the weights and their work
    import diffusers.quantizers.gguf.utils  # noqa: F401
    import gguf  # noqa: F401
    import torchao.quantization  # noqa: F401
    from diffusers import AutoencoderKLWan, WanTransformer3DModel  # noqa: F401
    from transformers import AutoTokenizer, UMT5EncoderModel  # noqa: F401

    from kinema.models import runtime, wan  # noqa: F401

    base = rss()["VmRSS"]
    kw = {"quantize": "int8"} if args.child == "int8" else {}
    if args.child not in ("float32", "int8"):
        kw = {"transformer": str(Path(args.folder) / f"transformer-{args.child}.gguf")}
    t0 = time.perf_counter()
    model = kinema.load(args.folder, device="cpu", dtype="float32", **kw)
    load_s = time.perf_counter() - t0
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(1, 16, 3, 16, 16, generator=g), torch.tensor([700.0])
    text = TextEmbeds(torch.randn(1, 8, model.denoiser.config.text_dim, generator=g), torch.ones(1, 8, dtype=torch.bool))
    with torch.inference_mode():
        model.denoiser.predict(x, t, text)  # first call: lazy set-up
        t0 = time.perf_counter()
        out = model.denoiser.predict(x, t, text)
        call_s = time.perf_counter() - t0
    np.save(args.out, out.float().numpy())
    m = rss()
    print(json.dumps(dict(variant=args.child, base=base, peak=m["VmHWM"] - base, after=m["VmRSS"] - base,
                          load_s=load_s, call_s=call_s, runtime={k: v for k, v in model.runtime.items()})))


def write_folder(root: Path, shape: str) -> Path:
    from kinema.models import runtime, wan
    from kinema.models.wan_testing import t2v_folder

    folder = t2v_folder(root / "wan", shape=shape)
    from diffusers import WanTransformer3DModel

    tr = WanTransformer3DModel.from_pretrained(folder / "transformer", local_files_only=True)
    state = wan.original_state_dict(tr.state_dict())
    for q in VARIANTS[2:]:
        runtime.save_gguf(state, folder / f"transformer-{q}.gguf", q)
    return folder


def weights(args, tmp: Path) -> list[dict]:
    folder = write_folder(tmp, args.shape)
    rows = {}
    for v in args.variants:
        out = tmp / f"{v}.npy"
        cmd = [sys.executable, __file__, "--child", v, "--folder", str(folder), "--out", str(out), "--threads",
               str(args.threads)]
        res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
        if res.returncode != 0:
            raise SystemExit(f"{v} failed:\n{res.stderr[-2000:]}")
        rows[v] = json.loads(res.stdout.strip().splitlines()[-1])
        rows[v]["output"] = np.load(out)
    ref = rows["float32"]
    table = []
    for v, r in rows.items():
        d = np.abs(r["output"] - ref["output"])
        scale = float(np.abs(ref["output"]).mean())
        table.append(dict(variant=v, peak_mib=r["peak"] / 2**20, after_mib=r["after"] / 2**20,
                          peak_ratio=r["peak"] / ref["peak"], after_ratio=r["after"] / ref["after"],
                          max_abs=float(d.max()), mean_abs=float(d.mean()), mean_rel=float(d.mean()) / scale,
                          call_s=r["call_s"], load_s=r["load_s"], runtime=r["runtime"]))
    return table


def compile_speed(args) -> dict:
    from kinema import jobs

    torch.set_num_threads(args.threads)
    prompt = "a red circle moving right on a blue background"
    job = jobs.prepare_generate(prompt, args.model, steps=args.steps, compile=True, threads=args.threads, seed=1)
    t0 = time.perf_counter()
    first = jobs.run(job, progress=False)
    warm_clip = time.perf_counter() - t0
    eager, compiled, den_e, den_c, diff = [], [], [], [], 0
    for _ in range(args.clips):
        with torch.compiler.set_stance("force_eager"):
            t0 = time.perf_counter()
            a = jobs.run(job, progress=False)
            eager.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        b = jobs.run(job, progress=False)
        compiled.append(time.perf_counter() - t0)
        den_e.append(a.timings.denoiser.seconds)
        den_c.append(b.timings.denoiser.seconds)
        diff = max(diff, int(np.abs(a.frames.astype(int) - b.frames.astype(int)).max()))
    e, c = statistics.median(eager), statistics.median(compiled)
    return dict(model=str(job.info.path), steps=job.settings.steps, clips=args.clips, threads=args.threads,
                warmup_s=first.record["compile"]["warmup_s"], warmup_clip_s=warm_clip, blocks=first.record["compile"]["blocks"],
                eager_s=e, compiled_s=c, speedup=e / c, denoiser_speedup=statistics.median(den_e) / statistics.median(den_c),
                frames_max_abs_diff=diff)


def report(table: list[dict], comp: dict | None, args) -> None:
    if table:
        print(f"Random Wan transformer ({args.shape}), float32 on the CPU, {args.threads} thread(s); memory is the "
              "model's share of the process's RSS (less the RSS after imports), each variant in a fresh process.\n")
        print("| weights | peak RSS (MiB) | ratio | RSS after the call (MiB) | ratio | output max / mean abs diff | "
              "mean diff / mean abs output | one forward (s) |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for r in table:
            print(f"| {r['variant']} | {r['peak_mib']:.0f} | {r['peak_ratio']:.2f} | {r['after_mib']:.0f} | "
                  f"{r['after_ratio']:.2f} | {r['max_abs']:.4f} / {r['mean_abs']:.5f} | {r['mean_rel']:.4f} | "
                  f"{r['call_s']:.2f} |")
    if comp:
        print(f"\n--compile on {comp['model']} ({comp['steps']} steps, {comp['threads']} thread(s), {comp['blocks']} "
              f"blocks compiled): warm-up {comp['warmup_s']:.1f} s (the first clip {comp['warmup_clip_s']:.1f} s); "
              f"then, median of {comp['clips']} clips each way on one loaded model:\n")
        print("| | eager | compiled | speedup |")
        print("|---|---:|---:|---:|")
        print(f"| clip (s) | {comp['eager_s']:.2f} | {comp['compiled_s']:.2f} | {comp['speedup']:.2f}x |")
        print(f"| denoiser forwards | | | {comp['denoiser_speedup']:.2f}x |")
        print(f"\nframes: max abs difference compiled vs eager {comp['frames_max_abs_diff']} (0..255)")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--shape", default="bench", help="the Wan transformer's shape (kinema.models.wan_testing.SHAPES)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--model", default=None, help="--compile: model folder (default: the shipped weights)")
    p.add_argument("--steps", type=int, default=None, help="--compile: steps (default: the model's)")
    p.add_argument("--clips", type=int, default=3, help="--compile: clips each way after the warm-up")
    p.add_argument("--skip-weights", action="store_true")
    p.add_argument("--skip-compile", action="store_true")
    p.add_argument("--json-out", default=None)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--folder", default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(args)
    if "float32" not in args.variants:
        args.variants = ["float32", *args.variants]
    table, comp = [], None
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_weights:
            table = weights(args, Path(tmp))
    if not args.skip_compile:
        comp = compile_speed(args)
    report(table, comp, args)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(dict(weights=table, compile=comp), indent=2, default=str))


if __name__ == "__main__":
    main()
