"""How fast the CLI starts: `kinema --help`, an argument error, and the time to the first denoising step.

    python scripts/bench_startup.py [--repeats 3] [--out docs/bench/startup.md]

Each figure is the median wall time of fresh processes, the three kinds run in turn (the machine's noise
falls on all of them alike). The time to the first step runs `kinema generate` on the default model and
stops it when its first step ends; a breakdown times the imports, the load and the first step in one more
process, and names the heavy libraries it imported (the default model needs neither diffusers nor
transformers: `models/pretrained.py`, `autoencoder.py`, `bert.py`, the Euler solver in `schedulers.py`).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

PROMPT = "a red circle moving right on a blue background"
# The child installs a step observer that prints the wall clock at the end of the first step and stops.
FIRST_STEP = """
import sys, time
from kinema.pipelines import loop
def first(step, steps, desc):
    print(f"FIRST_STEP {time.time():.6f}", flush=True)
    raise KeyboardInterrupt
loop.ON_STEP.set(first)
from kinema.cli import main
sys.exit(main(sys.argv[1:]))
"""
BREAKDOWN = """
import sys, time
t = [time.perf_counter()]
import torch; t.append(time.perf_counter())
from kinema import jobs; from kinema.pipelines import loop; t.append(time.perf_counter())
job = jobs.PREPARE["generate"]("%s", steps=1); t.append(time.perf_counter())
m = jobs.load(job.info, job.placement); t.append(time.perf_counter())
def first(step, steps, desc):
    raise KeyboardInterrupt
loop.ON_STEP.set(first)
try:
    jobs.run(job, m, progress=False)
except KeyboardInterrupt:
    pass
t.append(time.perf_counter())
names = ["import torch", "import kinema (jobs, pipelines, video I/O)", "prepare (checks)",
         "load the model (MiniLM, denoiser, VAE: kinema's own classes)", "encode the prompt, noise, the first step"]
for n, a, b in zip(names, t, t[1:]):
    print(f"{n}\t{b - a:.2f}")
libs = [name for name in ("diffusers", "transformers", "torch._dynamo") if name in sys.modules]
print(f"IMPORTED\t{', '.join(libs) or 'none of them'}")
""" % PROMPT


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def wall(argv: list[str]) -> float:
    t = time.time()
    subprocess.run(argv, capture_output=True)
    return time.time() - t


def first_step(tmp: Path) -> float:
    t = time.time()
    out = subprocess.run([sys.executable, "-c", FIRST_STEP, "generate", PROMPT, "-o", str(tmp / "c.mp4"),
                          "--overwrite", "--quiet"], capture_output=True, text=True)
    line = next((x for x in out.stdout.splitlines() if x.startswith("FIRST_STEP")), None)
    if line is None:
        raise SystemExit(f"no first step: {out.stderr.strip()}")
    return float(line.split()[1]) - t


def main() -> None:
    import tempfile

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None, help="also write the Markdown table here")
    ap.add_argument("--note", default="", help="a sentence on the conditions (e.g. other work on the machine) for the table")
    args = ap.parse_args()
    kinema = [sys.executable, "-m", "kinema.cli"]
    runs: dict[str, list[float]] = {"help": [], "error": [], "first": []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            runs["help"].append(wall(kinema + ["--help"]))
            runs["error"].append(wall(kinema + ["generate", PROMPT, "--steps", "0", "-o", f"{tmp}/x.mp4"]))
            runs["first"].append(first_step(Path(tmp)))
    parts = subprocess.run([sys.executable, "-c", BREAKDOWN], capture_output=True, text=True, check=True).stdout
    rows = [row.split("\t") for row in parts.strip().splitlines()]
    imported = dict(rows).pop("IMPORTED")
    med = {k: statistics.median(v) for k, v in runs.items()}
    threads = os.environ.get("OMP_NUM_THREADS")
    lines = [
        "# CLI start-up",
        "",
        f"Machine: {cpu_name()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
        f"{f', OMP_NUM_THREADS={threads}' if threads else ''}. Command: `python scripts/bench_startup.py --repeats "
        f"{args.repeats}` (median of fresh processes, run in turn).{f' {args.note}' if args.note else ''}",
        "",
        "| figure | seconds | target |",
        "|---|---|---|",
        f"| `kinema --help` | {med['help']:.2f} | <= 0.5 |",
        f"| an argument error (`--steps 0`) | {med['error']:.2f} | <= 0.5 |",
        f"| `kinema generate`: process start to the end of the first denoising step | {med['first']:.2f} | <= 3 |",
        "",
        "Where the time to the first step goes (one process, in order):",
        "",
        "| part | seconds |",
        "|---|---|",
        *[f"| {name} | {secs} |" for name, secs in rows if name != "IMPORTED"],
        "",
        f"Of diffusers, transformers and torch._dynamo, that process imported: {imported}.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
