"""Wan parity and speed check: kinema vs diffusers on tiny random Wan folders, and a 1.3B-shaped step time.

    python scripts/wan_parity.py                                  # fp32 CPU: max abs diff per pipeline
    python scripts/wan_parity.py --device cuda --dtype bfloat16   # the same on the GPU
    python scripts/wan_parity.py --device cuda --bench            # + s/step at 480x832x81, per attention backend

The parity runs are the functions of tests/test_wan.py (same folders, seeds, scheduler, steps, guidance),
so this prints the numbers the tests assert. The benchmark builds a randomly initialised transformer of
Wan2.1-T2V-1.3B's shape (30 layers, 12 heads x 128, ffn 8960, text 4096) in the chosen dtype and times
one classifier-free-guided step (cond + uncond in one batch of 2, as kinema runs it) on 21 x 60 x 104
latents, for each attention backend kinema offers (sdpa, xformers when installed).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def test_module():
    spec = importlib.util.spec_from_file_location("test_wan", ROOT / "tests" / "test_wan.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def build_folders(tw, root: Path) -> dict:
    """The test fixture's folders, outside pytest."""
    return tw.folders.__wrapped__(type("F", (), {"mktemp": staticmethod(lambda name: root / name)})())


def parity(device: str, dtype: torch.dtype) -> dict:
    from kinema.models.wan_testing import without_ftfy

    tw = test_module()
    with tempfile.TemporaryDirectory() as tmp, without_ftfy():  # as the tests: no ftfy on either side
        root = Path(tmp)
        (root / "wan").mkdir()
        f = build_folders(tw, root)
        kw = dict(device=device, dtype=dtype)
        out = dict(t2v=tw.run_text_to_video(f["t2v"], **kw), i2v=tw.run_image_to_video(f["i2v"], **kw),
                   v2v=tw.run_video_to_video(f["t2v"], **kw), two_experts=tw.run_two_experts(f["a14b"], **kw),
                   ti2v=tw.run_ti2v(f["ti2v"], **kw))
    keep = ("latents", "video", "uint8", "t2v", "i2v")
    return {k: {m: v for m, v in r.items() if m in keep} for k, r in out.items()}


def bench(device: str, dtype: torch.dtype, steps: int = 3, model=None, latent_shape=(21, 60, 104)) -> dict:
    """Seconds per guided step of a Wan transformer (default: a random 1.3B-shaped one) at 480x832x81, per backend."""
    from kinema.models.attention import xformers_available
    from kinema.models.wan import ATTENTION

    if model is None:
        from kinema.models.wan_testing import transformer

        with torch.device(device):  # initialised where it runs: seconds on a GPU, not a minute on the CPU
            model = transformer(shape="1.3b").to(dtype).eval()
    cfg = model.config
    x = torch.randn(2, cfg.in_channels, *latent_shape, device=device, dtype=dtype)
    text = torch.randn(2, 512, cfg.text_dim, device=device, dtype=dtype)
    t = torch.full((2,), 500.0, device=device)
    out = {}
    for backend, name in ATTENTION.items():
        if backend == "xformers" and not xformers_available():
            out[backend] = "not installed"
            continue
        model.set_attention_backend(name)
        with torch.inference_mode():
            model(hidden_states=x, timestep=t, encoder_hidden_states=text, return_dict=False)  # warm-up
            torch.cuda.synchronize() if device == "cuda" else None
            t0 = time.perf_counter()
            for _ in range(steps):
                model(hidden_states=x, timestep=t, encoder_hidden_states=text, return_dict=False)
            torch.cuda.synchronize() if device == "cuda" else None
        out[backend] = round((time.perf_counter() - t0) / steps, 3)
    if device == "cuda":
        out["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where to run")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="transformer and UMT5 dtype")
    p.add_argument("--bench", action="store_true", help="also time a 1.3B-shaped transformer at 480x832x81")
    p.add_argument("--no-parity", action="store_true", help="only the benchmark")
    args = p.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    report = dict(device=args.device, dtype=args.dtype)
    if not args.no_parity:
        report["max_abs_diff"] = parity(args.device, dtype)
    if args.bench:
        report["seconds_per_step_480x832x81"] = bench(args.device, dtype)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
