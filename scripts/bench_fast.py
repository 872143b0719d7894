"""The few-step student against its teacher, side by side in one run: seconds per 16-frame clip.

    python scripts/bench_fast.py --lora runs/fast/lora.safetensors --clips 4     # or the shipped folder's --fast

Clips alternate teacher, student, teacher, ... (the same prompts and seeds), so both see the same machine load;
prints the median seconds of each and their ratio (target <= 0.2).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lora", default=None, help="the student LoRA (default: the shipped folder's --fast)")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--guidance", type=float, default=1.0)
    p.add_argument("--clips", type=int, default=4)
    p.add_argument("--json-out", default=None)
    args = p.parse_args()
    import kinema

    teacher = kinema.load(device="cpu")
    if args.lora:
        student, fast = kinema.load(device="cpu", loras=[args.lora]), dict(steps=args.steps, guidance=args.guidance)
    else:
        entry = teacher.info.index["fast"]  # the folder's student: its LoRA, steps and guidance
        student = kinema.load(device="cpu", loras=[str(teacher.info.path / entry["lora"])])
        fast = dict(steps=entry["steps"], guidance=entry["guidance"])
    prompt = "a red circle moving right on a blue background"
    kinema.generate(prompt, model=teacher, progress=False, steps=1)  # warm-up
    kinema.generate(prompt, model=student, progress=False, **fast)
    times = {"teacher": [], "student": []}
    for seed in range(args.clips):
        for name, model, kw in (("teacher", teacher, {}), ("student", student, fast)):
            t0 = time.perf_counter()
            kinema.generate(prompt, model=model, seed=seed, progress=False, **kw)
            times[name].append(time.perf_counter() - t0)
    t, s = statistics.median(times["teacher"]), statistics.median(times["student"])
    print(f"teacher (the folder's defaults): {t:.2f} s per clip; student ({fast}): {s:.2f} s; ratio {s / t:.3f} "
          f"(target <= 0.2)")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(dict(teacher=times["teacher"], student=times["student"],
                                                       ratio=s / t, settings=fast), indent=2))


if __name__ == "__main__":
    main()
