"""Where a job runs and whether it fits: device and dtype choice, free memory, the headroom rule.

Every task's memory check (`jobs.prepare_*`) goes through `check_fits`: a job whose estimated peak
exceeds HEADROOM of the free memory is refused in one line, before any weights load.
"""

from __future__ import annotations

import torch

from .errors import KinemaError, require

HEADROOM = 0.8  # use at most this share of the free memory
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEVICES = ("auto", "cpu", "cuda")
OFFLOAD_MODES = ("none", "model", "sequential")  # accelerate's hooks: per component, per layer
# Host bytes per output pixel per frame of a restyle besides the model: source and output (uint8, 6), DIS
# flows both ways (16), the guide at source size (12), consistency/warp temporaries (float64, ~40), pixel
# fusion (24).
RESTYLE_BYTES_PER_PIXEL = 96
# Host bytes per output pixel of the other tasks: uint8 frames and their copies, the clip's latents and the
# window fusion's sums, decoded float frames, the writer's buffers (measured: a 256-frame 64x64 clip peaked
# ~60 MiB above a 16-frame one).
HOST_BYTES_PER_PIXEL = 64
# Resident memory of Python with torch and kinema's generate path imported (VmHWM, CPU build of torch 2.13;
# kinema's own models need neither diffusers nor transformers, which add ~100 MiB where a family loads them):
# the floor under every run's peak. It differs between machines with the same packages: measured 321 MiB on
# an AMD EPYC, 249 MiB on a 2-core Xeon with AMX (219 MiB of it `import torch`; the first kernels run add
# ~13 MiB more), so the constant sits between the two: within 15% of the floor on either.
LIBRARY_BYTES = 285 * 2**20


def pick_threads(threads: int | None = None) -> int:
    """CPU threads for torch: `threads`, else KINEMA_THREADS, else OMP_NUM_THREADS, else the CPUs this process may use.

    torch's own default counts the machine's cores, also those other work holds (or the affinity mask
    excludes): on a shared 2-core machine that made a clip 10x slower.
    """
    import os

    for value, what in ((threads, "--threads"), (os.environ.get("KINEMA_THREADS"), "KINEMA_THREADS"),
                        (os.environ.get("OMP_NUM_THREADS"), "OMP_NUM_THREADS")):
        if value in (None, ""):
            continue
        n = int(value) if isinstance(value, int) or str(value).strip().isdigit() else 0
        require(n >= 1, f"{what} must be a whole number >= 1 (got {value!r})")
        return n
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def pick_device(device: str | torch.device = "auto") -> torch.device:
    """`auto` is CUDA when available, else CPU; an unavailable CUDA is an error."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise KinemaError("--device cuda was asked but no CUDA device is available; use --device cpu")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise KinemaError(f"unknown device {device!r}; use auto, cpu or cuda")
    return torch.device(device)


# `--dtype auto` on a CPU takes bfloat16 where it ran the probe at least this much faster than float32
BF16_SPEEDUP = 1.3


def _cpu_name() -> str:
    """The processor's model name and its bf16-related flags (the probe's cache key)."""
    import platform

    name, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    name = value.strip()
                elif key.strip() == "flags":
                    flags = {x for x in value.split() if x.startswith(("amx", "avx512_bf16", "avx512f"))}
                    break
    except OSError:
        pass
    return " ".join([name, *sorted(flags)])


def _time_call(fn, budget: float) -> float:
    """Best time of `fn()` over a few calls within about `budget` seconds (one call when it is slow)."""
    import time

    best, spent = float("inf"), 0.0
    while spent < budget:
        t = time.perf_counter()
        fn()
        dt = time.perf_counter() - t
        best, spent = min(best, dt), spent + dt
    return best


def _probe_bf16() -> float:
    """How many times faster bfloat16 runs than float32 on this CPU: a 512^2 matmul and a 3x3 conv at 16x16
    (the default model's kind of work), about 0.1 s. Below 1 where bf16 is emulated."""
    g = torch.Generator().manual_seed(0)
    a, x, w = torch.randn(512, 512, generator=g), torch.randn(4, 64, 16, 16, generator=g), torch.randn(64, 64, 3, 3, generator=g)
    times = {}
    for dtype in (torch.float32, torch.bfloat16):
        aa, xx, ww = a.to(dtype), x.to(dtype), w.to(dtype)

        def work():
            aa @ aa
            torch.nn.functional.conv2d(xx, ww, padding=1)

        work()  # first call: kernels chosen, memory touched
        times[dtype] = _time_call(work, 0.03 if dtype == torch.float32 else min(0.03, 2 * times[torch.float32]))
    return times[torch.float32] / times[torch.bfloat16]


def cpu_bf16_speedup() -> tuple[float, str]:
    """(bf16 speed-up over float32 on this processor, its name), measured once per processor and torch version.

    Cached in ~/.cache/kinema/dtype-probe.json ($XDG_CACHE_HOME); where the cache cannot be written the
    probe runs again next time.
    """
    import json
    import os
    from pathlib import Path

    global _SPEEDUP
    cpu = _cpu_name()
    key = f"{cpu} | torch {torch.__version__}"
    if _SPEEDUP is not None and _SPEEDUP[0] == key:
        return _SPEEDUP[1], cpu
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kinema" / "dtype-probe.json"
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    known = known if isinstance(known, dict) else {}
    try:
        speedup = float(known[key])
    except (KeyError, ValueError, TypeError):
        speedup = _probe_bf16()
        try:  # other processors' entries kept
            from .video_io import write_json_atomic

            cache.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(cache, {**known, key: round(speedup, 3)})
        except (OSError, KinemaError):
            pass
    _SPEEDUP = (key, speedup)
    return speedup, cpu


_SPEEDUP: tuple[str, float] | None = None


def auto_dtype(device: torch.device) -> tuple[torch.dtype, str]:
    """What `--dtype auto` picks on `device`, and why (for the log and the sidecar).

    CUDA: bfloat16. CPU: bfloat16 where the processor runs it at least BF16_SPEEDUP times faster than
    float32 (AMX, AVX512-BF16), else float32 (bf16 is emulated, often hundreds of times slower, without
    them). KINEMA_DTYPE (float32 or bfloat16) fixes the choice.
    """
    import os

    env = os.environ.get("KINEMA_DTYPE", "")
    if env:
        require(env in ("float32", "bfloat16"), f"KINEMA_DTYPE must be float32 or bfloat16 (got {env!r})")
        return DTYPES[env], f"KINEMA_DTYPE={env}"
    if device.type == "cuda":
        return torch.bfloat16, "auto: bfloat16 on CUDA"
    speedup, cpu = cpu_bf16_speedup()
    pick = torch.bfloat16 if speedup >= BF16_SPEEDUP else torch.float32
    return pick, f"auto: bfloat16 ran {speedup:.2f}x as fast as float32 on {cpu}"


def pick_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """`auto` (or None): `auto_dtype`'s choice."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return auto_dtype(device)[0]
    if dtype not in DTYPES:
        raise KinemaError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16")
    if dtype == "float16" and device.type == "cpu":
        raise KinemaError("float16 is not supported on CPU; use --dtype float32 or bfloat16")
    return DTYPES[dtype]


def available_memory(device: torch.device | str = "cpu") -> int | None:
    """Free bytes on `device` (CUDA: the driver's count; CPU: MemAvailable), None when unknown."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo") as f:
            kib = next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:"))
        return kib * 1024
    except (OSError, StopIteration, ValueError):
        return None


def _gib(n: float) -> str:
    return f"{n / 2**30:,.1f} GiB"


def check_fits(need: int, available: int | None, what: str,
               fix: str = "pass --max-frames, a larger --stride or a smaller --height/--width") -> None:
    """A one-line error when `need` bytes exceed HEADROOM of `available` (no check when that is unknown)."""
    if available is None:
        return
    require(need <= HEADROOM * available, f"{what} needs ~{_gib(need)} but only {_gib(available)} is free; {fix}")


def read_clip(video, what: str, bytes_per_pixel: int, fix: str, max_side: int | None = None,
              available: int | None = -1):
    """A whole clip's uint8 frames and fps, its memory checked from the file's header before decoding.

    `bytes_per_pixel` is what the caller holds per pixel of each frame as read (after `max_side`). A
    file whose header gives no frame count is read up to the frames that fit, and refused past them.
    `available` -1: the host's free memory.
    """
    from . import video_io

    available = available_memory("cpu") if available == -1 else available
    size, cap = video_io.source_size(video), None
    if size is not None and available is not None:
        count, h, w = size
        h, w = video_io.shrunk_size(h, w, max_side)
        if count:
            check_fits(count * h * w * bytes_per_pixel, available, f"{what} ({count} frames at {w}x{h})", fix)
        else:
            cap = max(1, int(HEADROOM * available) // (h * w * bytes_per_pixel))
    frames, fps = video_io.read_video(video, max_frames=None if cap is None else cap + 1, max_side=max_side)
    require(cap is None or len(frames) <= cap, f"{what} has more than the {cap} frames that fit in memory; {fix}")
    return frames, fps



def restyle_host_bytes(frames: int, source_hw: tuple[int, int], height: int, width: int) -> int:
    """Host memory of a restyle's source as read (and its stacked copy) plus RESTYLE_BYTES_PER_PIXEL at the output size."""
    return frames * (2 * 3 * source_hw[0] * source_hw[1] + RESTYLE_BYTES_PER_PIXEL * height * width)


def restyle_frames_that_fit(available: int | None, source_hw: tuple[int, int], height: int, width: int) -> int | None:
    """The most source frames whose host memory fits (None when memory is unknown): the read cap for unsized files."""
    if available is None:
        return None
    return max(1, int(HEADROOM * available) // restyle_host_bytes(1, source_hw, height, width))


def largest(ok, high: int) -> int:
    """The largest n in [1, high] with ok(n), for ok true up to a point and false after (0 if none)."""
    low = 0
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if ok(mid) else (low, mid - 1)
    return low
