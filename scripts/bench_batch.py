"""kinema batch on one vs two processes: 32 short jobs of the default model, one thread per process.

    python scripts/bench_batch.py                                  # prints the table
    python scripts/bench_batch.py --jobs 32 --steps 8 --out docs/bench/batch   # also batch.txt and batch.json

Both runs take the same jobs file (a prompt and seed per job, the default model's 16 frames at 64x64, --steps
steps) into fresh output folders, as a user would start them: `python -m kinema.cli batch` and `torchrun
--standalone --nproc-per-node 2 -m kinema.cli batch`, with OMP_NUM_THREADS=1. Wall time covers everything
(process start, imports, checking every job, model load, the jobs, the merge). From the results file and
the sidecars: throughput, and per job the process-seconds it cost (wall x processes / jobs) split into the
denoiser's forwards and the rest (text encoding, VAE decode, writing, model load and start-up amortised).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPTS = ["a red circle moving right on a blue background", "a yellow square moving up on a black background",
           "a white triangle moving left on a green background", "a purple circle standing still on an orange background"]


def write_jobs(path: Path, jobs: int, steps: int) -> Path:
    lines = [json.dumps(dict(command="generate", prompt=PROMPTS[i % len(PROMPTS)], seed=i, steps=steps, quiet=True))
             for i in range(jobs)]
    path.write_text("\n".join(lines) + "\n")
    return path


def run_batch(work: Path, jobs_file: Path, processes: int, round: int = 0) -> dict:
    """One `kinema batch` run into a fresh folder: wall seconds and its results rows."""
    out = work / f"out{processes}-{round}"
    out.mkdir()
    results = work / f"results{processes}-{round}.jsonl"
    bin = Path(sys.executable).parent
    head = [sys.executable] if processes == 1 else [str(bin / "torchrun"), "--standalone", f"--nproc-per-node={processes}"]
    cmd = [*head, "-m", "kinema.cli", "batch", str(jobs_file), "-o", f"{out}/{{index:02d}}.mp4", "--results", str(results), "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "KINEMA_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"bench_batch: the {processes}-process run failed:\n{r.stderr[-3000:]}")
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    return dict(processes=processes, wall=wall, rows=rows)


def figures(run: dict) -> dict:
    rows, n, p = run["rows"], len(run["rows"]), run["processes"]
    ok = [r for r in rows if r["status"] == "ok"]
    denoiser = sum(r["timings"].get("denoiser_forward", 0) for r in ok)
    load = sum(r["timings"].get("load", 0) for r in ok)
    busiest = max(sum(r["seconds"] for r in ok if r["rank"] == k) for k in range(p))
    cost = run["wall"] * p / n  # process-seconds per job, everything included
    return dict(processes=p, jobs=n, ok=len(ok), wall_s=run["wall"], jobs_per_s=n / run["wall"], process_s_per_job=cost,
                denoiser_s_per_job=denoiser / n, outside_denoiser_s_per_job=cost - denoiser / n,
                model_load_s_per_job=load / n, job_s_mean=sum(r["seconds"] for r in ok) / len(ok),
                startup_s=run["wall"] - busiest)


def mean(runs: list[dict]) -> dict:
    return {k: sum(r[k] for r in runs) / len(runs) if k not in ("processes", "jobs", "ok") else min(r[k] for r in runs)
            for k in runs[0]}


def table(one: dict, two: dict) -> str:
    rows = [("jobs (ok)", "{jobs} ({ok})"), ("wall, s", "{wall_s:.1f}"), ("throughput, jobs/s", "{jobs_per_s:.3f}"),
            ("process-s per job", "{process_s_per_job:.3f}"), ("  in the denoiser", "{denoiser_s_per_job:.3f}"),
            ("  outside the denoiser", "{outside_denoiser_s_per_job:.3f}"),
            ("    of it model load, amortised", "{model_load_s_per_job:.3f}"),
            ("mean job time (load included), s", "{job_s_mean:.3f}"), ("start-up, checks, merge, s", "{startup_s:.1f}")]
    lines = [f"{'':<34}{'1 process':>12}{'2 processes':>14}"]
    lines += [f"{name:<34}{fmt.format(**one):>12}{fmt.format(**two):>14}" for name, fmt in rows]
    lines.append(f"{'throughput ratio (2 / 1)':<34}{'':>12}{two['jobs_per_s'] / one['jobs_per_s']:>14.2f}")
    return "\n".join(lines)


def machine() -> str:
    import torch

    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.exists() else []
    cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), platform.processor())

    return f"{cpu}, {os.cpu_count()} CPUs, torch {torch.__version__}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=32, help="jobs in the file")
    p.add_argument("--steps", type=int, default=8, help="denoising steps per job (short jobs)")
    p.add_argument("--rounds", type=int, default=1, help="runs of each, alternating (1 2 1 2 ...); the table has their means")
    p.add_argument("--out", default=None, help="also write OUT.txt and OUT.json")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        jobs_file = write_jobs(work / "jobs.jsonl", args.jobs, args.steps)
        load_before = os.getloadavg()[0]
        runs = {1: [], 2: []}
        for r in range(args.rounds):
            for n in (1, 2):
                runs[n].append(figures(run_batch(work, jobs_file, n, r)))
        one, two = mean(runs[1]), mean(runs[2])
        load_after = os.getloadavg()[0]
    head = (f"kinema batch: {args.jobs} jobs of the default model (16 frames 64x64, {args.steps} steps), "
            f"1 thread per process, {args.rounds} round(s) of 1 then 2 processes (means)\n"
            f"machine: {machine()}; 1-minute load average {load_before:.1f} before, "
            f"{load_after:.1f} after (other work on the machine slows both runs)")
    text = head + "\n\n" + table(one, two)
    print(text)
    if args.out:
        Path(args.out).with_suffix(".txt").write_text(text + "\n")
        Path(args.out).with_suffix(".json").write_text(json.dumps(dict(jobs=args.jobs, steps=args.steps, machine=machine(),
                                                                       rounds=runs, one=one, two=two), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
