"""Hardware limit: achieved FLOP/s of one denoiser forward against a large matmul's, per dtype, in one run.

    python scripts/bench_flops.py                                   # the default model at default settings, CPU
    python scripts/bench_flops.py --model /tmp/tiny --frames 2 --height 8 --width 8 --matmul-size 256   # smoke
    python scripts/bench_flops.py --model /tmp/wan-1.3b --device cuda --load-dtype bfloat16 --dtypes bfloat16 \\
        --frames 81 --height 480 --width 832                        # MFU on a GPU (also vs the datasheet peak)

The forward is the one the loop runs: its inputs are captured from a real `kinema.generate` call (cond and
uncond in one batch under guidance), so any model folder works, kinema's own or a Wan one. Its FLOPs are
counted once with `torch.utils.flop_counter.FlopCounterMode` (CPU flash attention registered, which
torch does not count); its time is the median of `--repeats` forwards. The ceiling is an n x n matmul
timed in the same run, per dtype. A dtype other than the loaded one runs under autocast (bf16 on a CPU).
One profiled forward splits time and FLOPs by op class (matmul, convolution, attention, norms, copies,
elementwise) to say what limits it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

PROMPT = "a red circle moving right on a blue background"
# dense bf16 tensor-core peaks (TFLOP/s) from the datasheets, by device name; --peak-tflops overrides
DATASHEET_BF16_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.4, "H200": 989.4, "B200": 2250.0, "A100": 312.0,
                         "L40S": 362.0, "L4": 121.0, "A10G": 70.0, "RTX 4090": 165.2}
CLASSES = ("matmul", "convolution", "attention", "norms", "copies, casts, layout", "elementwise")
NO_FLOPS = ("norms", "copies, casts, layout", "elementwise")
COPIES = ("copy", "clone", "cat", "contiguous", "stack", "index", "pad", "repeat", "expand", "empty", "fill", "zero",
          "slice", "select", "view", "reshape", "permute", "transpose", "split", "chunk", "where", "strided",
          "squeeze", "flatten", "alias", "detach", "unbind", "narrow", "resolve")


class _Captured(Exception):
    pass


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def op_class(name: str) -> str:
    """The op class of an aten op name ("aten::addmm", "aten.convolution")."""
    n = name.split("::")[-1].split(".")[-1] if "::" in name else name.replace("aten.", "")
    if "attention" in n:
        return "attention"
    if "conv" in n:
        return "convolution"
    if "mm" in n or n in ("matmul", "linear", "einsum"):
        return "matmul"
    if "norm" in n:
        return "norms"
    if n == "t" or any(c in n for c in COPIES):
        return "copies, casts, layout"
    return "elementwise"


def register_cpu_attention_flops() -> None:
    """FlopCounterMode counts CUDA's fused attention ops but not the CPU flash kernel; count it the same way."""
    import torch.utils.flop_counter as fc

    op = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    if op in fc.flop_registry or op.default in fc.flop_registry:
        return

    @fc.register_flop_formula(op)
    def _(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return fc.sdpa_flop_count(query_shape, key_shape, value_shape)


def capture(model, frames, height, width) -> tuple:
    """The inputs of the first denoiser forward of a `generate` call (the call stops there)."""
    import kinema

    den, seen = model.denoiser, {}

    def record(*args):
        seen["args"] = args
        raise _Captured

    den.predict = record  # an instance attribute: `guided` calls denoiser.predict
    try:
        kinema.generate(PROMPT, frames=frames, height=height, width=width, model=model, progress=False)
    except _Captured:
        pass
    finally:
        del den.predict
    return seen["args"]


def count_flops(forward) -> tuple[int, dict]:
    from torch.utils.flop_counter import FlopCounterMode

    register_cpu_attention_flops()
    with FlopCounterMode(display=False) as counter:
        forward()
    by_class = dict.fromkeys(CLASSES, 0)
    for op, n in counter.get_flop_counts().get("Global", {}).items():
        by_class[op_class(str(op))] += n
    return counter.get_total_flops(), by_class


def seconds(fn, device, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_flops(n: int, dtype: torch.dtype, device, repeats: int) -> float:
    """FLOP/s of an n x n x n matmul in `dtype`: this machine's practical ceiling."""
    a, b = torch.randn(n, n, device=device).to(dtype), torch.randn(n, n, device=device).to(dtype)
    return 2 * n**3 / seconds(lambda: a @ b, device, repeats)


def profile_time(forward, device) -> dict:
    """Self time (seconds) of one forward by op class, from torch.profiler (device time on CUDA)."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        forward()
        sync(device)
    out = dict.fromkeys(CLASSES, 0.0)
    for e in prof.key_averages():
        if device.type == "cuda":
            if str(getattr(e, "device_type", "")).endswith("CPU"):  # an aten op: the kernels it launched
                us = getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0)
            else:
                continue
        else:
            us = e.self_cpu_time_total
        out[op_class(e.key)] += us / 1e6
    return out


def measure(model, args, dtype: torch.dtype, inputs, flops: int, flop_classes: dict) -> dict:
    """Forward time, achieved FLOP/s, the matmul ceiling, and the op-class split, for one dtype."""
    device = torch.device(model.device)
    ctx = nullcontext() if dtype == model.dtype else torch.autocast(device.type, dtype=dtype)

    def forward():
        with ctx:
            return model.denoiser.predict(*inputs)

    t = seconds(forward, device, args.repeats)
    peak = matmul_flops(args.matmul_size, dtype, device, args.repeats)
    split = profile_time(forward, device)
    total = sum(split.values()) or 1.0
    classes = {c: dict(time_share=split[c] / total, flop_share=flop_classes[c] / max(flops, 1),
                       of_matmul_peak=(flop_classes[c] / split[c] / peak) if split[c] and flop_classes[c] else 0.0)
               for c in CLASSES}
    r = dict(dtype=str(dtype).replace("torch.", ""), autocast=dtype != model.dtype, forward_s=t, flops=flops,
             achieved_flops=flops / t, matmul_flops=peak, ratio=flops / t / peak, classes=classes)
    r["limit"] = limit(classes)
    if device.type == "cuda" and dtype == torch.bfloat16:
        r.update(datasheet(args.peak_tflops, flops / t))
    return r


def datasheet(peak_tflops: float | None, achieved: float) -> dict:
    """MFU against the GPU's datasheet dense bf16 peak (by name, or --peak-tflops)."""
    name = torch.cuda.get_device_name()
    if peak_tflops is None:
        peak_tflops = next((v for k, v in DATASHEET_BF16_TFLOPS.items() if k in name), None)
    if peak_tflops is None:
        return dict(gpu=name, mfu_datasheet=None)
    return dict(gpu=name, datasheet_bf16_tflops=peak_tflops, mfu_datasheet=achieved / (peak_tflops * 1e12))


def limit(classes: dict) -> str:
    """One sentence: the op class that takes the most time, and why it is slow."""
    name, c = max(classes.items(), key=lambda kv: kv[1]["time_share"])
    idle = sum(classes[k]["time_share"] for k in NO_FLOPS)
    why = {"matmul": "small matrices (linear layers on few tokens)",
           "convolution": "convolutions on few channels and small feature maps (memory-bound)",
           "attention": "attention (short sequences per head, softmax and layout around the matmuls)"}
    if name in NO_FLOPS:
        head = f"memory-bound {name}: {100 * c['time_share']:.0f}% of the time with no FLOPs"
    else:
        head = f"{why[name]}: {100 * c['time_share']:.0f}% of the time at {100 * c['of_matmul_peak']:.0f}% of the matmul rate"
    return f"{head}; ops without FLOPs (norms, copies, elementwise) take {100 * idle:.0f}% in all"


def markdown(r: dict) -> str:
    s = r["settings"]
    lines = [f"| {r['model']}: {s['frames']} frames {s['width']}x{s['height']}, batch {s['batch']}, {s['device']} "
             f"| forward s | GFLOP | achieved GFLOP/s | {s['matmul_size']}² matmul GFLOP/s | **ratio** |",
             "|---|---|---|---|---|---|"]
    for d in r["dtypes"]:
        name = d["dtype"] + (" (autocast)" if d["autocast"] else "")
        lines.append(f"| {name} | {d['forward_s']:.4f} | {d['flops'] / 1e9:.2f} | {d['achieved_flops'] / 1e9:.1f} "
                     f"| {d['matmul_flops'] / 1e9:.1f} | **{d['ratio']:.3f}** |")
    for d in r["dtypes"]:
        if d.get("mfu_datasheet") is not None:
            lines.append(f"\nMFU vs the {d['gpu']} datasheet bf16 peak ({d['datasheet_bf16_tflops']:.0f} TFLOP/s): "
                         f"**{d['mfu_datasheet']:.3f}**")
    for d in r["dtypes"]:
        lines += ["", f"| {d['dtype']}: op class | % time | % FLOPs | of matmul peak |", "|---|---|---|---|"]
        lines += [f"| {c} | {100 * v['time_share']:.1f} | {100 * v['flop_share']:.1f} | {100 * v['of_matmul_peak']:.0f}% |"
                  for c, v in d["classes"].items()]
        lines.append(f"\nLimit ({d['dtype']}): {d['limit']}.")
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model folder, kinema or Wan (default: the shipped weights)")
    p.add_argument("--frames", type=int, default=None, help="frames (default: the model's)")
    p.add_argument("--height", type=int, default=None, help="height (default: the model's)")
    p.add_argument("--width", type=int, default=None, help="width (default: the model's)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where to run")
    p.add_argument("--load-dtype", default="float32", choices=["float32", "bfloat16"], help="dtype the model loads in")
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"],
                   help="dtypes to measure (others than --load-dtype under autocast)")
    p.add_argument("--matmul-size", type=int, default=None, help="n of the n x n matmul (default 2048 CPU, 8192 CUDA)")
    p.add_argument("--repeats", type=int, default=3, help="timed forwards (and matmuls) per dtype; the median counts")
    p.add_argument("--peak-tflops", type=float, default=None, help="GPU dense bf16 peak (default: from the device name)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--json-out", default=None, help="also write the figures here as JSON")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.matmul_size = args.matmul_size or (8192 if args.device == "cuda" else 2048)
    import kinema

    model = kinema.load(args.model, device=args.device, dtype=getattr(torch, args.load_dtype))
    inputs = capture(model, args.frames, args.height, args.width)
    with torch.inference_mode():
        flops, flop_classes = count_flops(lambda: model.denoiser.predict(*inputs))
        dtypes = [measure(model, args, getattr(torch, d), inputs, flops, flop_classes) for d in args.dtypes]
    x = inputs[0]
    result = dict(model=Path(str(model.path)).name, dtypes=dtypes,
                  settings=dict(frames=args.frames or model.defaults["frames"], height=args.height or model.defaults["height"],
                                width=args.width or model.defaults["width"], latents=list(x.shape), batch=x.shape[0],
                                device=args.device, load_dtype=args.load_dtype, matmul_size=args.matmul_size,
                                repeats=args.repeats, threads=torch.get_num_threads()))
    print(markdown(result))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
