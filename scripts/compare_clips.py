"""Same inputs, two builds of kinema: are the clips the same? A check for changes that must not change behaviour.

    python scripts/compare_clips.py run --kinema .venv/bin/kinema --out /tmp/new
    python scripts/compare_clips.py run --kinema /tmp/old/.venv/bin/kinema --out /tmp/old-clips
    python scripts/compare_clips.py compare /tmp/old-clips /tmp/new    # max |difference| per clip, uint8 levels

`run` makes one clip per case through the `kinema` command (whose flags both builds share) on the
default model, every driver and long-clip mode, written as PNG frames (lossless), and times each.
`compare` reads two such folders frame by frame.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

PROMPT = "a red circle moving right on a blue background"
SAMPLES = Path(__file__).resolve().parents[1] / "samples"
CASES = {
    "generate": ["generate", PROMPT, "--seed", "1"],
    "generate_windows_follow": ["generate", PROMPT, "--frames", "64", "--seed", "2", "--steps", "10"],
    "generate_windows_nofollow": ["generate", PROMPT, "--frames", "48", "--seed", "3", "--steps", "10", "--no-follow-motion"],
    "generate_continue": ["generate", PROMPT, "--frames", "40", "--mode", "continue", "--steps", "10"],
    "generate_schedule": ["generate", "a red circle", "--frames", "48", "--steps", "10", "--prompt-schedule",
                          "0:a red circle moving right|24:a red circle moving left"],
    "animate": ["animate", str(SAMPLES / "anchor.png"), PROMPT, "--seed", "4"],
    "animate_last": ["animate", str(SAMPLES / "anchor.png"), PROMPT, "--last-image", str(SAMPLES / "anchor.png"),
                     "--steps", "10"],
    "restyle": ["restyle", str(SAMPLES / "source.mp4"), "a green circle moving right on a black background"],
    "restyle_noflow": ["restyle", str(SAMPLES / "source.mp4"), "a yellow square moving right on a blue background",
                       "--strength", "0.7", "--structure", "0", "--no-flow", "--max-frames", "12"],
    "restyle_windows": ["restyle", str(SAMPLES / "source.mp4"), "a green circle moving right on a black background",
                        "--context-length", "8", "--context-stride", "4", "--steps", "10"],
    "extend": ["extend", str(SAMPLES / "source.mp4"), PROMPT, "--frames", "36", "--steps", "10"],
}


def run(kinema: str, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, argv in CASES.items():
        t0 = time.perf_counter()
        r = subprocess.run([kinema, *argv, "-o", str(out / name), "--overwrite", "--quiet"], capture_output=True, text=True)
        status = "ok" if r.returncode == 0 else f"exit {r.returncode}: {r.stderr.strip().splitlines()[-1:]}"
        print(f"{name:28s} {time.perf_counter() - t0:7.1f} s  {status}", flush=True)


def frames(folder: Path) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in sorted(folder.glob("frame_*.png"))])


def compare(a: Path, b: Path) -> int:
    worst = 0
    for name in CASES:
        if not (a / name).is_dir() or not (b / name).is_dir():
            print(f"{name:28s} missing in {a if not (a / name).is_dir() else b}")
            worst = 255
            continue
        x, y = frames(a / name), frames(b / name)
        if x.shape != y.shape:
            print(f"{name:28s} shapes differ: {x.shape} vs {y.shape}")
            worst = 255
            continue
        d = np.abs(x.astype(int) - y.astype(int))
        worst = max(worst, int(d.max()))
        print(f"{name:28s} {x.shape[0]:4d} frames  max |diff| {int(d.max()):3d}  mean {d.mean():.4f}  "
              f"pixels differing {100 * (d > 0).mean():.3f}%")
    return worst


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    r = sub.add_parser("run", help="make every case's clip with one build")
    r.add_argument("--kinema", default="kinema", help="the build's kinema command")
    r.add_argument("--out", type=Path, required=True, help="folder for the clips (one PNG folder per case)")
    c = sub.add_parser("compare", help="max |difference| per case of two runs")
    c.add_argument("a", type=Path)
    c.add_argument("b", type=Path)
    args = p.parse_args()
    if args.what == "run":
        run(args.kinema, args.out)
        return 0
    return 1 if compare(args.a, args.b) else 0


if __name__ == "__main__":
    sys.exit(main())
