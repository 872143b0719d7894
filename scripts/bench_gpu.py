"""GPU pieces of `scripts/gpu_check.sh`: a Wan-1.3B-shaped folder, peak GPU memory per offload / VAE tiling, the report.

    python scripts/bench_gpu.py folder /tmp/wan-1.3b                    # random 1.3B transformer, Wan 2.1 VAE (bf16)
    python scripts/bench_gpu.py memory /tmp/wan-1.3b --json-out memory.json   # each config in a fresh process
    python scripts/bench_gpu.py report OUT                              # OUT/results.md from the stages' JSON
    python scripts/bench_gpu.py folder /tmp/w --shape tiny --vae-shape tiny --device cpu    # CPU smoke of the same code

`folder` writes a Wan 2.1 text-to-video folder whose transformer has Wan2.1-T2V-1.3B's shape (30 layers,
12 heads x 128, ffn 8960, text 4096) and whose VAE has the real Wan 2.1 VAE's shape, both random; the
text encoder is a one-layer UMT5 of width 4096 (the real UMT5-XXL adds ~11 GB of bf16 weights when
resident, nothing with `--offload model` outside the text phase).

`memory` runs text-to-video at 480x832, 81 frames (21 x 60 x 104 latents, 32760 tokens), for each of
offload none / model, VAE tiling off / on, in a fresh process each, and reports the peak allocated GPU
memory after loading, while denoising (cond + uncond in one batch) and while decoding. Memory does not
depend on the step count, so two steps are run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

CONFIGS = [("none", False), ("none", True), ("model", False), ("model", True)]  # (offload, VAE tiling)
GIB = 2**30


def folder(args) -> dict:
    from kinema.models.family import quiet_libraries
    from kinema.models.wan_testing import t2v_folder

    quiet_libraries()
    t0 = time.perf_counter()
    path = t2v_folder(args.path, shape=args.shape, vae_shape=args.vae_shape, device=args.device, dtype=torch.bfloat16)
    report = dict(folder=str(path), shape=args.shape, vae_shape=args.vae_shape, seconds=round(time.perf_counter() - t0, 1))
    print(json.dumps(report))
    return report


def child(args) -> None:
    """One config in this fresh process: peak GPU memory after load, in the denoise and in the decode phase."""
    from kinema import jobs
    from kinema.models import wan
    from kinema.pipelines.common import decode, encode_prompts, sample
    from kinema.pipelines.loop import Timings

    dev = torch.device(args.device)
    peak = (lambda: torch.cuda.max_memory_allocated() / GIB) if dev.type == "cuda" else (lambda: 0.0)  # noqa: E731
    reset = torch.cuda.reset_peak_memory_stats if dev.type == "cuda" else (lambda: None)
    info = wan.describe(Path(args.path))
    model = wan.load(info, dev, torch.bfloat16 if dev.type == "cuda" else torch.float32,
                     offload=None if args.offload == "none" else args.offload, vae_tiling=args.tiling)
    s = jobs.settings_for(info, frames=args.frames, height=args.height, width=args.width, steps=args.steps)
    out, timings = dict(offload=args.offload, vae_tiling=args.tiling, load_gib=peak()), Timings()
    reset()
    text, uncond = encode_prompts(model, "a red circle moving right on a blue background", s, timings)
    latents = sample(model, text, uncond, s, timings, progress=False)
    out["denoise_gib"] = peak()
    reset()
    decode(model, latents, s, timings)
    out["decode_gib"] = peak()
    out["peak_gib"] = max(out["load_gib"], out["denoise_gib"], out["decode_gib"])
    out["timings"] = timings.as_dict()
    print("BENCH " + json.dumps(out))


def memory(args) -> dict:
    rows = []
    for offload, tiling in CONFIGS if args.device == "cuda" else CONFIGS[:2]:  # offload needs a GPU
        cmd = [sys.executable, __file__, "memory", str(args.path), "--child", "--offload", offload, "--device", args.device,
               "--frames", str(args.frames), "--height", str(args.height), "--width", str(args.width),
               "--steps", str(args.steps)] + (["--tiling"] if tiling else [])
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
        except subprocess.TimeoutExpired:
            rows.append(dict(offload=offload, vae_tiling=tiling, error=f"timed out after {args.timeout} s"))
            continue
        line = next((x for x in r.stdout.splitlines() if x.startswith("BENCH ")), None)
        rows.append(json.loads(line[6:]) if r.returncode == 0 and line else
                    dict(offload=offload, vae_tiling=tiling, error=(r.stderr.strip().splitlines() or [f"exit {r.returncode}"])[-1]))
    result = dict(rows=rows, settings=dict(folder=Path(args.path).name, frames=args.frames, height=args.height,
                                           width=args.width, steps=args.steps, device=args.device))
    print(memory_markdown(result))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2))
    return result


def memory_markdown(r: dict) -> str:
    s = r["settings"]
    lines = [f"| {s['folder']}, {s['frames']} frames {s['width']}x{s['height']}: offload, VAE tiling | after load GiB "
             "| text + denoise peak GiB | decode peak GiB | **peak GiB** | denoise s | decode s |", "|---|---|---|---|---|---|---|"]
    for x in r["rows"]:
        name = f"{x['offload']}, tiling {'on' if x['vae_tiling'] else 'off'}"
        if "error" in x:
            lines.append(f"| {name} | failed: {x['error']} | | | | | |")
            continue
        t = x["timings"]
        lines.append(f"| {name} | {x['load_gib']:.2f} | {x['denoise_gib']:.2f} | {x['decode_gib']:.2f} | **{x['peak_gib']:.2f}** "
                     f"| {t.get('denoise', 0):.1f} | {t.get('vae_decode', 0):.1f} |")
    return "\n".join(lines)


def report(args) -> Path:
    """OUT/results.md from what the stages left in OUT (a stage that failed or timed out is named as such)."""
    import importlib.util

    out = Path(args.path)

    def script(name):
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod

    def load(name):
        f = out / name
        try:
            return json.loads(f.read_text())
        except (OSError, json.JSONDecodeError):
            return None

    parts = ["# kinema GPU check", "", f"Stages (exit status, seconds):\n\n```\n{_read(out / 'stages.txt')}```"]
    gpu = _read(out / "gpu.txt").strip()
    parts += ["", f"GPU: {gpu}"] if gpu else []
    parts += ["", "## CUDA tests (`pytest -m cuda`)", "", "```", _read(out / "pytest_cuda.log")[-1500:].strip(), "```"]
    backends = load("backends.json")
    if backends:
        rows = backends.get("seconds_per_step_480x832x81", {})
        parts += ["", "## Seconds per guided step, Wan-1.3B-shaped transformer, 480x832, 81 frames (bf16)", "",
                  "| attention backend | s/step |", "|---|---|"]
        parts += [f"| {k} | {v} |" for k, v in rows.items()]
    for title, name, fn in (("MFU: denoiser forward vs a large bf16 matmul and the datasheet peak", "flops.json",
                             script("bench_flops").markdown),
                            ("Peak GPU memory: offload and VAE tiling", "memory.json", memory_markdown),
                            ("kinema vs diffusers on identical weights", "wan.json", script("bench_wan").markdown)):
        r = load(name)
        parts += ["", f"## {title}", "", fn(r) if r else f"(no {name}: the stage failed or ran out of time; see its log)"]
    path = out / "results.md"
    path.write_text("\n".join(parts) + "\n")
    print(f"wrote {path}")
    return path


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("folder", help="write the Wan-1.3B-shaped folder")
    s.add_argument("path", help="folder to write")
    s.add_argument("--shape", default="1.3b", help="transformer shape (kinema.models.wan_testing.SHAPES)")
    s.add_argument("--vae-shape", default="wan2.1", choices=["wan2.1", "tiny"], help="VAE shape")
    s.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="where the transformer is initialised")
    s = sub.add_parser("memory", help="peak GPU memory per offload mode and VAE tiling, fresh process each")
    s.add_argument("path", help="the Wan folder")
    s.add_argument("--frames", type=int, default=81, help="frames (4k+1)")
    s.add_argument("--height", type=int, default=480, help="height")
    s.add_argument("--width", type=int, default=832, help="width")
    s.add_argument("--steps", type=int, default=2, help="denoising steps (memory does not depend on them)")
    s.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu only to smoke-test the code path")
    s.add_argument("--timeout", type=int, default=120, help="seconds per config")
    s.add_argument("--json-out", default=None, help="also write the figures here as JSON")
    s.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    s.add_argument("--offload", default="none", help=argparse.SUPPRESS)
    s.add_argument("--tiling", action="store_true", help=argparse.SUPPRESS)
    s = sub.add_parser("report", help="write OUT/results.md from the stages' JSON")
    s.add_argument("path", help="the output folder of gpu_check.sh")
    args = p.parse_args(argv)
    if args.command == "folder":
        folder(args)
    elif args.command == "memory":
        child(args) if args.child else memory(args)
    else:
        report(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
