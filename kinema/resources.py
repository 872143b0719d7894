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
# Host bytes per output pixel of the other tasks: uint8 frames and their copy, the clip's latents, margin.
HOST_BYTES_PER_PIXEL = 16


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


def pick_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """`auto`: bfloat16 on CUDA, float32 on CPU."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
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
