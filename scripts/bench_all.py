"""Every benchmark at one size: a Markdown table, JSON and the scaling plot, for the README to quote and link.

    python scripts/bench_all.py --size full                          # the shipped default model -> docs/bench/
    python scripts/bench_all.py --size full --model runs/default/model --threads 2
    python scripts/bench_all.py --size smoke                         # each at its smallest size -> build/bench-smoke/
    python scripts/bench_all.py --size full --only wan scaling       # some of them (the files hold only those)

Runs, in this process (memory: in fresh subprocesses), each script's `main` with the size's arguments
(`SIZES`; the exact command lines are in results.md):
  1. loop overhead          scripts/bench_generate.py   whole call / denoiser forwards (target <= 1.10)
  2. kinema vs diffusers    scripts/bench_wan.py        time ratio (target <= 1.00), max abs diff
  3. hardware limit         scripts/bench_flops.py      denoiser FLOP/s / matmul FLOP/s, fp32 and bf16
  4. memory                 scripts/bench_memory.py     peak RSS for 16/64/256 frames; sdpa vs chunked
  5. denoiser scaling       scripts/bench_scaling.py    s/step vs frames x tokens, log-log slope
and writes OUT/results.md, OUT/results.json and OUT/scaling.png. Smoke sizes run in seconds on a fresh
tiny model; their figures only show that every benchmark runs. GPU figures: scripts/gpu_check.sh.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shlex
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TITLES = {
    "generate": "1. Loop overhead: whole `generate` call / denoiser forwards",
    "wan": "2. kinema vs diffusers on identical weights (random Wan transformer)",
    "flops": "3. Hardware limit: denoiser FLOP/s against a large matmul's, same run",
    "memory": "4. Memory vs length and attention backend (fresh process each)",
    "scaling": "5. Denoiser scaling: seconds per step vs frames x tokens per frame",
}
# {model}: "--model DIR", the kinema model (smoke: a fresh tiny one; full: --model or the shipped weights)
SIZES = {
    "smoke": {
        "generate": "{model} --frames 2 --height 8 --width 8 --steps 2 --repeats 1",
        "wan": "--shape tiny --frames 5 --height 16 --width 16 --steps 2 --pairs 1",
        "flops": "{model} --frames 2 --height 8 --width 8 --matmul-size 256 --repeats 1",
        "memory": "{model} --frames 2 4 --height 8 --width 8 --steps 1 --long-frames 2 --long-size 16 --jobs 2",
        "scaling": "--presets tiny small --frames 1 2 --sizes 4 8 --repeats 1",
    },
    "full": {
        "generate": "{model} --repeats 3",
        "wan": "--shape bench --frames 17 --height 128 --width 128 --steps 4 --pairs 2",
        "flops": "{model} --matmul-size 2048 --repeats 3",
        "memory": "{model} --frames 16 64 256 --steps 4 --long-frames 16 --long-size 256",
        "scaling": "--presets tiny small base --frames 4 8 16 --sizes 8 16 32 --repeats 3",
    },
}
SCRIPTS = {"generate": "bench_generate", "wan": "bench_wan", "flops": "bench_flops", "memory": "bench_memory",
           "scaling": "bench_scaling"}


def script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(x.split(":", 1)[1].strip() for x in Path("/proc/cpuinfo").read_text().splitlines()
                   if x.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = dict(cpu=cpu, cores=os.cpu_count(), threads=torch.get_num_threads(), torch=torch.__version__,
                python=platform.python_version(), system=platform.system())
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def summary(results: dict) -> list[str]:
    """The headline figures, one row each, with their targets."""
    rows = []
    r = results.get("generate")
    if r and "error" not in r:
        rows.append(("loop overhead: whole call / denoiser forwards", f"{r['overhead_ratio']:.3f}", "<= 1.10"))
    r = results.get("wan")
    if r and "error" not in r:
        rows.append(("time kinema / diffusers (same weights)", f"{r['ratio']:.3f}", "<= 1.00"))
        rows.append(("max abs diff of latents, kinema vs diffusers", f"{r['max_abs_diff_latents']:.1e}", "~ float32 eps"))
    r = results.get("flops")
    if r and "error" not in r:
        for d in r["dtypes"]:
            rows.append((f"denoiser FLOP/s / matmul FLOP/s, {d['dtype']}", f"{d['ratio']:.3f}", "(the ceiling is 1)"))
    r = results.get("memory")
    if r and "error" not in r:
        a, b = r["lengths"][0], r["lengths"][-1]
        rows.append((f"peak RSS {b['frames']} / {a['frames']} frames", f"{b['memory_ratio']:.3f}", "<= 1.25"))
        for x in r["backends"][1:]:
            rows.append((f"peak RSS {x['attention']} / {r['backends'][0]['attention']}", f"{x['memory_ratio']:.3f}", ""))
    r = results.get("scaling")
    if r and "error" not in r:
        for name, p in r["presets"].items():
            rows.append((f"s/step ~ (frames x tokens)^slope, {name}", f"{p['slope']:.2f}", "1 = linear"))
    return ["| figure | value | target |", "|---|---|---|"] + [f"| {a} | {b} | {c} |" for a, b, c in rows]


def markdown(report: dict) -> str:
    m, size = report["machine"], report["size"]
    lines = [f"# kinema benchmarks ({size})", ""]
    if size == "smoke":
        lines += ["**Smoke sizes: these figures only show that every benchmark runs; they are not results.**", ""]
    gpu = f", {m['gpu']}" if "gpu" in m else ""
    lines += [f"Machine: {m['cpu']}, {m['cores']} cores, {m['threads']} torch threads{gpu}; torch {m['torch']}, "
              f"Python {m['python']}. Date: {report['date']}. Command: `{report['command']}`.", ""]
    lines += summary(report["results"]) + [""]
    for name, r in report["results"].items():
        lines += [f"## {TITLES[name]}", "", f"`python scripts/{SCRIPTS[name]}.py {report['argv'][name]}`", ""]
        if "error" in r:
            lines += [f"Failed: `{r['error']}`", ""]
            continue
        lines += [script(SCRIPTS[name]).markdown(r), ""]
        if name == "scaling":
            lines += ["![seconds per step against frames x tokens per frame](scaling.png)", ""]
    return "\n".join(lines)


def run(name: str, argv: list[str]) -> dict:
    print(f"\n== {TITLES[name]}\n$ python scripts/{SCRIPTS[name]}.py {' '.join(argv)}", flush=True)
    t0 = time.perf_counter()
    try:
        result = script(SCRIPTS[name]).main(argv)
    except (Exception, SystemExit) as e:  # one failing benchmark must not hide the others
        traceback.print_exc()
        return dict(error=f"{type(e).__name__}: {e}".strip()[:500])
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="full", choices=list(SIZES), help="smoke: seconds, to check; full: the figures")
    p.add_argument("--model", default=None, help="kinema model folder for full (default: the shipped weights)")
    p.add_argument("--only", nargs="+", default=list(SCRIPTS), choices=list(SCRIPTS), help="run only these")
    p.add_argument("--out", default=None, help="output folder (default: docs/bench for full, build/bench-smoke for smoke)")
    p.add_argument("--threads", type=int, default=None, help="torch threads for every benchmark (default: torch's)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the memory benchmark's subprocesses too
    out = Path(args.out or (ROOT / ("docs/bench" if args.size == "full" else "build/bench-smoke")))
    from kinema.errors import KinemaError

    with tempfile.TemporaryDirectory(prefix="bench_all_") as tmp:
        try:
            model = model_folder(args, Path(tmp))
        except KinemaError as e:
            sys.exit(f"bench_all: error: {e}")
        argvs = {k: shlex.split(SIZES[args.size][k].format(model=model)) for k in args.only}
        results = {k: run(k, v) for k, v in argvs.items()}
    report = dict(size=args.size, date=time.strftime("%Y-%m-%d %H:%M"), machine=machine(),
                  command=" ".join(["python scripts/bench_all.py"] + list(argv if argv is not None else sys.argv[1:])),
                  argv={k: shlex.join(v).replace(f"{ROOT}/", "") for k, v in argvs.items()}, results=results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=2))
    (out / "results.md").write_text(markdown(report))
    plotted = "error" not in results.get("scaling", {"error": None})
    if plotted:
        script("bench_scaling").plot(results["scaling"], out / "scaling.png")
    failed = [k for k, r in results.items() if "error" in r]
    print(f"\nwrote {out / 'results.md'}, results.json" + (", scaling.png" if plotted else "")
          + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def model_folder(args, tmp: Path) -> str:
    """The kinema model the size runs: a fresh tiny one (smoke), or --model / the shipped weights (full)."""
    import kinema
    from kinema.models.family import resolve_model_path

    if args.size == "smoke":
        return "--model " + shlex.quote(str(kinema.init(tmp / "tiny", preset="tiny", seed=0)))
    path = resolve_model_path(args.model)  # a clear error now, not five failed benchmarks later
    return "--model " + shlex.quote(str(path))


if __name__ == "__main__":
    sys.exit(main())
