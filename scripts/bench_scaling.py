"""Denoiser scaling: seconds per step against latent frames x tokens per frame, per preset, with the log-log slope.

    python scripts/bench_scaling.py                                        # tiny, small, base on a 3 x 3 grid
    python scripts/bench_scaling.py --presets tiny small --frames 1 2 --sizes 8 16 --repeats 1   # smoke
    python scripts/bench_scaling.py --plot scaling.png

One step is one guided denoiser forward as the loop runs it: cond and uncond in a batch of 2, random
weights of each preset (`models.unet.PRESETS`; time does not depend on the values), random latents of
(frames, size, size) and a 32-token text. Tokens per frame are the latent pixels (size x size); the
slope of log(seconds) on log(frames x tokens) is fitted per preset by least squares: 1 is linear (convs,
per-token layers), 2 would be attention-bound (spatial attention grows with tokens per frame squared,
temporal with frames squared).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

TEXT_TOKENS = 32


def denoiser(preset: str):
    """A randomly initialised SpaceTimeUNet of the preset, with the latent channels and text width `init` gives it."""
    from kinema.models import PRESETS, VAE_PRESETS, SpaceTimeUNet

    vae = VAE_PRESETS[preset if preset in VAE_PRESETS else "small"]  # as kinema.init pairs them
    return SpaceTimeUNet(latent_channels=vae["latent_channels"], text_dim=384, **PRESETS[preset]).eval()


def step_seconds(model, frames: int, size: int, repeats: int) -> float:
    from kinema.models.seams import TextEmbeds

    c = model.config
    x = torch.randn(2, c.latent_channels, frames, size, size)
    t = torch.full((2,), 500.0)
    text = TextEmbeds(torch.randn(2, TEXT_TOKENS, c.text_dim), torch.ones(2, TEXT_TOKENS, dtype=torch.bool))
    with torch.inference_mode():
        model.predict(x, t, text)  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model.predict(x, t, text)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def slope(points: list[dict]) -> float:
    x = np.log([p["tokens"] for p in points])
    y = np.log([p["seconds"] for p in points])
    return float(np.polyfit(x, y, 1)[0])


def plot(result: dict, path: str | Path) -> Path:
    """Log-log plot of seconds per step against frames x tokens per frame, one line per preset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    for name, r in result["presets"].items():
        pts = sorted(r["points"], key=lambda p: p["tokens"])
        ax.loglog([p["tokens"] for p in pts], [p["seconds"] for p in pts], "o-", label=f"{name} (slope {r['slope']:.2f})")
    s = result["settings"]
    ax.set_xlabel("latent frames x tokens per frame")
    ax.set_ylabel("seconds per step (guided forward, batch 2)")
    ax.set_title(f"kinema denoiser scaling ({s['device']}, {s['threads']} threads)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def markdown(r: dict) -> str:
    lines = ["| preset | params | frames x tokens: seconds per step | log-log slope |", "|---|---|---|---|"]
    for name, p in r["presets"].items():
        pts = ", ".join(f"{q['frames']}x{q['size']}²={q['tokens']}: {q['seconds']:.4f}" for q in p["points"])
        lines.append(f"| {name} | {p['params'] / 1e6:.2f}M | {pts} | **{p['slope']:.2f}** |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    from kinema.models import PRESETS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS), help="backbone presets")
    p.add_argument("--frames", type=int, nargs="+", default=[4, 8, 16], help="latent frames")
    p.add_argument("--sizes", type=int, nargs="+", default=[8, 16, 32], help="latent height = width (multiples of 4)")
    p.add_argument("--repeats", type=int, default=3, help="timed steps per point; the median counts")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--plot", default=None, help="also draw the log-log plot here (PNG)")
    p.add_argument("--json-out", default=None, help="also write the figures here as JSON")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    presets = {}
    for name in args.presets:
        model = denoiser(name)
        points = [dict(frames=f, size=s, tokens=f * s * s, seconds=step_seconds(model, f, s, args.repeats))
                  for f in args.frames for s in args.sizes]
        presets[name] = dict(params=sum(q.numel() for q in model.parameters()), points=points, slope=slope(points))
    result = dict(presets=presets, settings=dict(device="cpu", threads=torch.get_num_threads(), repeats=args.repeats,
                                                 text_tokens=TEXT_TOKENS))
    print(markdown(result))
    for name, r in presets.items():
        print(f"{name}: seconds per step ~ (frames x tokens)^{r['slope']:.2f}")
    if args.plot:
        plot(result, args.plot)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
