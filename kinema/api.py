"""The Python front door: load a model once, generate clips, estimate memory.

    import kinema
    frames = kinema.generate("a red circle moving right on a blue background", seed=1)  # uint8 (F, H, W, 3)
    model = kinema.load("runs/default/model")
    frames = kinema.generate("...", model=model, frames=32)
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from . import loading
from .errors import KinemaError, require


def pick_device(device: str = "auto") -> torch.device:
    """`auto` is CUDA when available, else CPU; an unavailable CUDA is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise KinemaError("--device cuda was asked but no CUDA device is available; use --device cpu")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise KinemaError(f"unknown device {device!r}; use auto, cpu or cuda")
    return torch.device(device)


MAX_STEPS = 1000  # the training schedule's timesteps; more only costs time (and the schedule's memory)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


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


def peek(model: str | Path | None) -> dict:
    """A model folder's index and component configs, read without loading any weights."""
    path = loading.resolve_model_path(model)
    if loading.is_wan(path):  # a Wan diffusers folder: defaults from the checkpoint family, 4k+1 frames
        from .models import wan

        return wan.peek(path)
    index = loading.read_index(path)
    den, vae = loading.read_configs(path)
    spatial = 2 ** (len(vae["block_out_channels"]) - 1)
    multiple = spatial * 2 ** (len(den["channels"]) - 1)
    return dict(path=path, index=index, denoiser=den, vae=vae, spatial=spatial, multiple=multiple,
                defaults={**loading.DEFAULTS, **index.get("defaults", {})})


def settings_for(info: dict, **overrides):
    """Settings from the model's defaults and the caller's overrides, validated before any weights load."""
    from .pipelines.common import Settings
    from .pipelines.loop import SCHEDULERS
    from .video_io import MIN_FPS

    d = info["defaults"]
    keys = ("frames", "height", "width", "steps", "guidance", "fps")
    values = {k: d[k] for k in keys}
    if overrides.get("scheduler") is None and "scheduler" in d:
        values["scheduler"] = d["scheduler"]  # the checkpoint's own solver (UniPC for Wan)
    if overrides.get("motion_length") is None and "motion_length" in d:
        values["motion_length"] = d["motion_length"]  # the pace this model makes clips of any length at
    values.update({k: v for k, v in overrides.items() if v is not None})
    s = Settings(**values)
    m = info["multiple"]
    require(isinstance(s.frames, int) and s.frames >= 1, f"--frames must be a whole number >= 1 (got {s.frames})")
    tc = int(info.get("temporal_compression", 1))
    require(tc == 1 or (s.frames - 1) % tc == 0, f"--frames {s.frames} does not fit this model's VAE, which "
            f"compresses time by {tc}: use {tc}k+1 frames, such as {(s.frames - 1) // tc * tc + 1} or "
            f"{(s.frames - 1) // tc * tc + 1 + tc}")
    require(isinstance(s.steps, int) and 1 <= s.steps <= MAX_STEPS, f"--steps must be a whole number in [1, {MAX_STEPS}] (got {s.steps})")
    for name in ("height", "width"):
        v = getattr(s, name)
        require(isinstance(v, int) and v >= m and v % m == 0,
                f"--{name} {v} must be a positive multiple of {m} for this model; try {max(m, round(v / m) * m) if isinstance(v, int) else m}")
    require(math.isfinite(s.guidance) and 0 <= s.guidance <= 50, f"--guidance must be a number in [0, 50] (got {s.guidance})")
    require(math.isfinite(s.fps) and MIN_FPS <= s.fps <= 240, f"--fps must be in [{MIN_FPS}, 240] (got {s.fps})")
    require(0 <= s.seed < 2**63, f"--seed must be in [0, 2**63) (got {s.seed})")
    check_text(s.negative_prompt, "--negative-prompt")
    require(s.scheduler in SCHEDULERS, f"unknown --scheduler {s.scheduler!r}; choose one of {', '.join(SCHEDULERS)}")
    require(s.shift is None or (math.isfinite(s.shift) and s.shift > 0), f"--shift must be > 0 (got {s.shift})")
    require(s.decode_chunk_size >= 1, "--decode-chunk-size must be >= 1")
    require(s.motion_length is None or (isinstance(s.motion_length, int) and s.motion_length >= 1),
            f"--motion-length must be a whole number >= 1 (got {s.motion_length})")
    return s


_CACHE: dict = {}


def load(model: str | Path | None = None, device: str = "auto", dtype: str | torch.dtype | None = "auto", attention: str = "sdpa",
         offload: str | None = None):
    """Load a model folder (default: the shipped weights); repeated calls with the same arguments reuse it."""
    from .models.attention import BACKENDS, xformers_available

    dev = pick_device(device)
    dt = pick_dtype(dtype, dev)
    require(attention in BACKENDS, f"unknown --attention {attention!r}; choose one of {', '.join(BACKENDS)}")
    if attention == "xformers" and not xformers_available():
        raise KinemaError("--attention xformers needs the xformers package: pip install 'kinema[xformers]', or use --attention sdpa")
    path = loading.resolve_model_path(model)
    key = (str(path.resolve()), str(dev), str(dt), attention, offload)
    if key not in _CACHE:
        _CACHE.clear()
        _CACHE[key] = loading.load(path, dev, dt, attention, offload)
    return _CACHE[key]


def _model_and_info(model, device, dtype, attention):
    if isinstance(model, loading.Model):
        return model, _info_of(model)
    info = peek(model)
    return (lambda: load(info["path"], device, dtype, attention)), info


def _info_of(m: loading.Model) -> dict:
    extra = getattr(m, "info", None) or {}  # a WanModel keeps its peek (tasks, temporal compression)
    return dict(extra, path=m.path, index=m.index, defaults=m.defaults, multiple=m.size_multiple)


def generate(
    prompt: str,
    frames: int | None = None,
    height: int | None = None,
    width: int | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    seed: int = 0,
    negative_prompt: str = "",
    model=None,
    device: str = "auto",
    dtype: str | torch.dtype | None = "auto",
    attention: str = "sdpa",
    scheduler: str | None = None,
    shift: float | None = None,
    progress: bool = True,
    return_result: bool = False,
    context_length: int | None = None,
    context_stride: int | None = None,
    window_weights: str = "pyramid",
    mode: str = "window",
    prompt_schedule: str | None = None,
    prompt_transition: int = 0,
    adain: bool = False,
    motion_length: int | None = None,
    follow_motion: bool | None = None,
):
    """Text-to-video: uint8 frames (F, H, W, 3) for `prompt` (or the full Result with `return_result`).

    Past the model's trained length (or when a context option or a prompt schedule is given) the clip
    is made in windows of `context_length` latent frames: fused every step (`mode="window"`) or one
    after another (`mode="continue"`); see kinema.pipelines.long_video. `follow_motion` (default: the
    model folder's `defaults.follow_motion`, else off) rolls each window's view with the clip's motion
    (`long_video.follow_path`).
    """
    from .pipelines.text_to_video import text_to_video

    check_prompt(prompt)
    loaded, info = _model_and_info(model, device, dtype, attention)
    check_task(info, "generate")
    settings = settings_for(info, frames=frames, height=height, width=width, steps=steps, guidance=guidance,
                            seed=seed, negative_prompt=negative_prompt, scheduler=scheduler, shift=shift,
                            motion_length=motion_length)
    check_memory(info, settings, context_length, True, **_placed(loaded, device, dtype))
    long = long_options(info, settings, context_length=context_length, context_stride=context_stride,
                        window_weights=window_weights, mode=mode, prompt_schedule=prompt_schedule,
                        prompt_transition=prompt_transition, adain=adain, follow_motion=follow_motion)
    m = loaded() if callable(loaded) else loaded
    if long is None:
        result = text_to_video(m, prompt, settings, progress=progress)
    else:
        from .pipelines.long_video import long_video

        result = long_video(m, prompt, settings, long, progress=progress)
    return result if return_result else result.frames


def long_options(info: dict, settings, source_frames: int = 0, **options):
    """Checked long-clip options (LongOptions fields), or None when plain text-to-video makes the clip."""
    from .pipelines.long_video import LongOptions, is_plain, resolve_options

    follow = options.pop("follow_motion", None)
    mode = options.get("mode", "window")
    if follow is None:  # the model folder's default, for context windows (continuation has its own known frames)
        follow = bool(info["defaults"].get("follow_motion", False)) and mode == "window"
    require(not (follow and mode != "window"), "--follow-motion works with context windows only (--mode window); "
                                               "drop it or use --mode window")
    opts = LongOptions(**options, follow_motion=follow)
    if opts.prompt_schedule is not None:
        check_text(opts.prompt_schedule, "--prompt-schedule")
    trained = int(info["defaults"]["frames"])
    resolved = resolve_options(opts, settings.frames, trained, int(info.get("temporal_compression", 1)), source_frames)
    return None if source_frames == 0 and is_plain(opts, settings.frames, trained) else resolved


def extend(
    video,
    prompt: str,
    frames: int | None = None,
    *,
    resize: str = "crop",
    height: int | None = None,
    width: int | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    seed: int = 0,
    negative_prompt: str = "",
    model=None,
    device: str = "auto",
    dtype: str | torch.dtype | None = "auto",
    attention: str = "sdpa",
    scheduler: str | None = None,
    shift: float | None = None,
    context_length: int | None = None,
    context_stride: int | None = None,
    prompt_schedule: str | None = None,
    prompt_transition: int = 0,
    adain: bool = False,
    motion_length: int | None = None,
    progress: bool = True,
    return_result: bool = False,
):
    """Continue a clip: uint8 frames (frames, H, W, 3) that start with `video` and go on as `prompt` says.

    `video` is a file path or uint8 (n, H, W, 3) frames, fitted to the clip's size by `resize`;
    `frames` counts the whole output, source included (default: the source plus the model's trained
    length). Windows of `context_length` latent frames move on by `context_stride`, each knowing the
    last frames made; the output is decoded from latents throughout, the source's part included.
    """
    from .pipelines.long_video import extend_video

    check_prompt(prompt)
    loaded, info = _model_and_info(model, device, dtype, attention)
    check_task(info, "extend")
    source, settings = extend_inputs(info, video, frames, resize, height=height, width=width, steps=steps,
                                     guidance=guidance, seed=seed, negative_prompt=negative_prompt,
                                     scheduler=scheduler, shift=shift, motion_length=motion_length)
    check_memory(info, settings, context_length, True, **_placed(loaded, device, dtype))
    opts = long_options(info, settings, source_frames=len(source), mode="continue", context_length=context_length,
                        context_stride=context_stride, prompt_schedule=prompt_schedule,
                        prompt_transition=prompt_transition, adain=adain)
    m = loaded() if callable(loaded) else loaded
    result = extend_video(m, source, prompt, settings, opts, progress=progress)
    return result if return_result else result.frames


def extend_inputs(info: dict, video, frames: int | None = None, resize: str = "crop", fps: float | None = None, **overrides):
    """Read and fit the clip to extend, and the settings (its fps unless given), before any weights load."""
    import numpy as np

    from . import video_io

    if isinstance(video, np.ndarray):
        require(video.dtype == np.uint8 and video.ndim == 4 and video.shape[-1] == 3 and len(video) >= 1,
                f"the clip to extend must be uint8 (F, H, W, 3) frames, got {video.dtype} {tuple(video.shape)}")
        source, source_fps = video, None
    else:
        source, source_fps = video_io.read_video(video)
    total = frames if frames is not None else len(source) + int(info["defaults"]["frames"])
    if overrides.get("motion_length") is None and "motion_length" not in info["defaults"]:
        # go on at the pace of the given clip, not of the longer output
        overrides["motion_length"] = max(len(source), int(info["defaults"]["frames"]))
    settings = settings_for(info, frames=total, fps=fps if fps is not None else source_fps, **overrides)
    if source.shape[1:3] != (settings.height, settings.width):
        source = video_io.resize_frames(source, settings.height, settings.width, policy=resize)
    return source, settings


def animate(
    image,
    prompt: str,
    *,
    last_image=None,
    resize: str = "crop",
    image_noise: float | None = None,
    frames: int | None = None,
    height: int | None = None,
    width: int | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    seed: int = 0,
    negative_prompt: str = "",
    model=None,
    device: str = "auto",
    dtype: str | torch.dtype | None = "auto",
    attention: str = "sdpa",
    scheduler: str | None = None,
    shift: float | None = None,
    progress: bool = True,
    return_result: bool = False,
):
    """Image-to-video: uint8 frames (F, H, W, 3) that start on `image` and move as `prompt` says.

    `image` and `last_image` are file paths, PIL images or uint8 (H, W, 3) arrays, fitted to the clip's
    size by `resize` (crop, pad, stretch). `last_image` also fixes the last frame and needs a model
    trained for "first_last". `image_noise` is the std of the anchor's noise augmentation in latent
    space (default: the model's, 0.02; see kinema.pipelines.image_to_video).
    """
    import warnings

    from .pipelines.image_to_video import image_to_video

    check_prompt(prompt)
    loaded, info = _model_and_info(model, device, dtype, attention)
    settings = settings_for(info, frames=frames, height=height, width=width, steps=steps, guidance=guidance,
                            seed=seed, negative_prompt=negative_prompt, scheduler=scheduler, shift=shift)
    check_memory(info, settings, **_placed(loaded, device, dtype))
    first, last, std, warning = animate_inputs(info, settings, image, last_image, resize, image_noise)
    if warning:
        warnings.warn(warning, stacklevel=2)
    m = loaded() if callable(loaded) else loaded
    if hasattr(m, "image_to_video"):  # a Wan model builds its own image condition (kinema.models.wan)
        result = m.image_to_video(prompt, first, settings, last, std, progress=progress)
    else:
        result = image_to_video(m, prompt, first, settings, last, std, progress=progress)
    return result if return_result else result.frames


def animate_inputs(info: dict, settings, image, last_image=None, resize: str = "crop",
                   image_noise: float | None = None):
    """Check and read animate's inputs before any weights load: (image, last image, noise std, warning or None)."""
    from .pipelines import image_to_video as i2v

    warning = i2v.check_frame_conditions(list(info["index"].get("frame_conditions", [])), last_image is not None)
    require(last_image is None or settings.frames >= 2, "--last-image needs --frames >= 2")
    std = i2v.check_image_noise(info["defaults"]["image_noise"] if image_noise is None else image_noise)
    first = i2v.prepare_image(image, settings.height, settings.width, resize)
    last = None
    if last_image is not None:
        last = i2v.prepare_image(last_image, settings.height, settings.width, resize, name="last image")
    return first, last, std, warning


def restyle(
    video,
    prompt: str,
    *,
    strength: float | None = None,
    flow: bool = True,
    flow_steps: float = 0.0,
    flow_strength: float = 0.8,
    pixel_fusion: bool | None = None,
    structure: float | None = None,
    max_frames: int | None = None,
    stride: int = 1,
    start: int = 0,
    fps: float | None = None,
    resize: str = "crop",
    height: int | None = None,
    width: int | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    seed: int = 0,
    negative_prompt: str = "",
    model=None,
    device: str = "auto",
    dtype: str | torch.dtype | None = "auto",
    attention: str = "sdpa",
    scheduler: str | None = None,
    shift: float | None = None,
    context_length: int | None = None,
    context_stride: int | None = None,
    window_weights: str = "pyramid",
    progress: bool = True,
    return_result: bool = False,
):
    """Video-to-video: `video` restyled as `prompt` says, its motion kept: uint8 frames (F, H, W, 3).

    `video` is a file (mp4, webm, mov, mkv, avi, gif, webp), a folder of frames or uint8 (F, H, W, 3)
    frames; frames `start`, `start + stride`, ... (at most `max_frames`) are fitted to the clip's size by
    `resize`, and the output has as many. `strength` is how far the source is noised: 0 returns the
    fitted source unchanged without loading the model, 1 ignores it but for its layout and motion.
    `structure` is the fraction of the steps that run, from the first, during which the denoiser's
    layout (self-attention queries and keys, mid-level features) comes from the noised source, so a
    high strength can recolour without losing where things are. Both default to the model's
    (`restyle_strength`, `restyle_structure` in kinema.json: 0.9 and 0.3 for the default model; 0.7
    and 0 where a model sets none). With `flow`, the decoded frames are fused along the source's
    optical flow (`pixel_fusion`, default: as `flow`) and, during the first `flow_steps` (default 0)
    of the steps, the predicted clean latents too, with weight `flow_strength`. The fps (`result.info["restyle"]["fps"]`) is the source's unless `fps` is given.
    Sources longer than the model's trained length run in context windows (`context_length`,
    `context_stride`). See kinema.pipelines.video_to_video.
    """
    from .pipelines.video_to_video import RestyleOptions, restyle_video

    check_prompt(prompt)
    loaded, info = _model_and_info(model, device, dtype, attention)
    check_task(info, "restyle")
    options = RestyleOptions(strength, flow, flow_steps, flow_strength, pixel_fusion, structure)
    placed = dict(device=device, dtype=dtype) if callable(loaded) else dict(device=loaded.device, dtype=loaded.dtype)
    source, settings, long = restyle_inputs(
        info, video, options, max_frames=max_frames, stride=stride, start=start, resize=resize, fps=fps,
        context_length=context_length, context_stride=context_stride, window_weights=window_weights, **placed,
        height=height, width=width, steps=steps, guidance=guidance, seed=seed, negative_prompt=negative_prompt,
        scheduler=scheduler, shift=shift,
    )
    m = None if options.strength == 0 else (loaded() if callable(loaded) else loaded)  # 0: no model needed
    result = restyle_video(m, prompt, source, settings, options, long, progress=progress)
    return result if return_result else result.frames


def restyle_inputs(
    info: dict, video, options, *, max_frames: int | None = None, stride: int = 1, start: int = 0,
    resize: str = "crop", fps: float | None = None, device="auto", dtype="auto", context_length: int | None = None,
    context_stride: int | None = None, window_weights: str = "pyramid", **overrides,
):
    """Check restyle's options, source and memory, then read and fit the source, before any weights load.

    Returns (uint8 frames (F, height, width, 3), Settings of the source's length and fps unless `fps`,
    resolved window-mode LongOptions when the clip needs context windows, else None). Memory is
    estimated from the file's header before anything is read (files that do not state their length
    are read up to the frames that fit).
    """
    from . import video_io
    from .pipelines import video_to_video as v2v

    require(resize in video_io.RESIZE_POLICIES, f"unknown --resize {resize!r}; use one of {', '.join(video_io.RESIZE_POLICIES)}")
    require(max_frames is None or (isinstance(max_frames, int) and max_frames >= 1), f"--max-frames must be >= 1 (got {max_frames})")
    require(isinstance(stride, int) and stride >= 1, f"--stride must be a whole number >= 1 (got {stride})")
    require(isinstance(start, int) and start >= 0, f"--start must be a whole number >= 0 (got {start})")
    v2v.with_model_defaults(options, info["defaults"])
    v2v.check_options(options)
    if overrides.get("guidance") is None and "restyle_guidance" in info["defaults"]:
        overrides["guidance"] = info["defaults"]["restyle_guidance"]  # the model's own scale for restyling
    base = settings_for(info, frames=1, fps=fps, **overrides)  # the caller's settings, checked
    v2v.check_options(options, base.steps)
    run = options.strength > 0
    if run and (options.flow or options.pixel_fusion):
        require(min(base.height, base.width) >= v2v.MIN_FLOW_SIDE,
                f"optical flow needs frames of at least {v2v.MIN_FLOW_SIDE}x{v2v.MIN_FLOW_SIDE} (got "
                f"{base.width}x{base.height}); raise --height/--width or pass --no-flow")
    dev = device if isinstance(device, torch.device) else pick_device(device)
    dtype_bytes = torch.empty(0, dtype=pick_dtype(dtype, dev)).element_size()
    sized = _with_parameter_counts(info) if run else None
    host_free = v2v.available_memory("cpu")
    tc = int(info.get("temporal_compression", 1))

    def plan(frames: int, source_fps: float | None, source_hw: tuple[int, int]):
        require((frames - 1) % tc == 0, f"this model's VAE compresses time by {tc}: restyle {tc}k+1 frames (the source "
                                        f"gives {frames}); pass --max-frames {max(1, (frames - 1) // tc * tc + 1)}")
        settings = settings_for(info, frames=frames, fps=fps if fps is not None else source_fps, **overrides)
        long = None
        if run:
            long = long_options(info, settings, mode="window", context_length=context_length,
                                context_stride=context_stride, window_weights=window_weights, follow_motion=False)
        need = v2v.host_bytes(frames, source_hw, settings.height, settings.width)
        window = frames if long is None else min(frames, (long.context_length - 1) * tc + 1)
        model_bytes = _model_memory(sized, window, settings, dtype_bytes)
        what = f"restyling {frames} frames at {settings.width}x{settings.height}"
        if dev.type == "cuda":
            v2v.check_memory(model_bytes, v2v.available_memory(dev), what + " on the GPU")
            model_bytes = 0
        v2v.check_memory(need + model_bytes, host_free, what)
        return settings, long

    size = v2v.source_size(video, start, stride, max_frames)
    cap = None
    if size is not None:
        count, src_h, src_w = size
        if count:  # known length: the whole plan is checked before reading
            plan(count, base.fps, (src_h, src_w))
        elif count is None:
            cap = v2v.frames_that_fit(host_free, (src_h, src_w), base.height, base.width)
    read_max = max_frames if cap is None else min(max_frames or cap + 1, cap + 1)
    source, source_fps = v2v.read_source(video, start, stride, read_max)
    require(cap is None or len(source) <= cap, f"the source has more than the {cap} frames that fit in memory at "
                                               f"{base.width}x{base.height}; pass --max-frames, a larger --stride or a smaller size")
    settings, long = plan(len(source), source_fps, source.shape[1:3])
    if source.shape[1:3] != (settings.height, settings.width):
        source = video_io.resize_frames(source, settings.height, settings.width, policy=resize)
    return source, settings, long


def _with_parameter_counts(info: dict) -> dict | None:
    """`info` with the parameter counts the memory estimates need (None for a model without a folder)."""
    if info.get("family") == "wan":
        from .models import wan

        return dict(info, params=wan.parameter_counts(info["path"], info["index"]["components"]))
    full = info if "denoiser" in info else (peek(info["path"]) if info.get("path") else None)
    if full is None:
        return None
    sizes = {n: sum(f.stat().st_size for f in (full["path"] / n).glob("*.safetensors")) for n in ("denoiser", "vae")}
    return dict(full, denoiser_params=sizes["denoiser"] // 4, vae_params=sizes["vae"] // 4)  # saved as float32


def _model_memory(info: dict | None, frames: int, settings, dtype_bytes: int) -> int:
    """Rough peak bytes of the model on `frames` frames (kinema's or Wan's estimate), 0 when unknown."""
    if info is None:
        return 0
    cfg = settings.guidance != 1
    if info.get("family") == "wan":
        from .models import wan

        return wan.estimate_memory(info, frames, settings.height, settings.width, dtype_bytes, cfg)["total"]
    return estimate_memory(info, frames, settings.height, settings.width, dtype_bytes, cfg, settings.decode_chunk_size)["total"]


HOST_BYTES_PER_PIXEL = 16  # per output pixel on the host: uint8 frames and their copy, the clip's latents, margin


def check_memory(info: dict, settings, context_length: int | None = None, windows: bool = False, device="auto",
                 dtype="auto", offload: str | None = None, available: int | None = None) -> None:
    """Refuse, before any work, a clip whose estimated peak memory exceeds the free memory; name a setting that fits.

    The model's peak (`estimate_memory`, as `kinema info` shows it) is taken on one context window of
    `context_length` latent frames (None: the whole clip, or with `windows` the trained length when the
    clip is longer), plus HOST_BYTES_PER_PIXEL per output pixel. `available` (bytes) replaces the
    measured free memory; where that is unknown nothing is checked.
    """
    from dataclasses import replace

    from .pipelines import video_to_video as v2v

    dev = device if isinstance(device, torch.device) else pick_device(device)
    dtype_bytes = torch.empty(0, dtype=pick_dtype(dtype, dev)).element_size()
    sized = _with_parameter_counts(info)
    tc = int(info.get("temporal_compression", 1))
    trained = (int(info["defaults"]["frames"]) - 1) // tc + 1  # latent frames
    if windows and context_length is None and settings.frames > int(info["defaults"]["frames"]):
        context_length = trained  # what long_options will choose
    host_free = v2v.available_memory("cpu") if available is None else available
    gpu_free = (v2v.available_memory(dev) if available is None else available) if dev.type == "cuda" else None
    if host_free is None:
        return

    def fits(frames: int, height: int, width: int, length: int | None = context_length) -> bool:
        window = frames if length is None else min(frames, (length - 1) * tc + 1)
        model = _model_memory(sized, window, replace(settings, frames=frames, height=height, width=width), dtype_bytes)
        host = frames * height * width * HOST_BYTES_PER_PIXEL
        if dev.type == "cuda":  # the model's share on the GPU (unless offloaded), the clip on the host
            return (offload not in (None, "none") or model <= v2v.HEADROOM * gpu_free) and host <= v2v.HEADROOM * host_free
        return model + host <= v2v.HEADROOM * host_free

    f, h, w, m = settings.frames, settings.height, settings.width, int(info["multiple"])
    if fits(f, h, w):
        return
    hints = []
    frames = _largest(lambda n: fits(n, h, w), f - 1)
    if frames:
        hints.append(f"--frames {(frames - 1) // tc * tc + 1}")
    q = _largest(lambda k: fits(f, k * m, max(m, round(w * k / h) * m)), h // m - 1)
    if q:
        hints.append(f"--height {q * m} --width {max(m, round(w * q / h) * m)}")
    if windows:
        length = _largest(lambda n: fits(f, h, w, n), min(context_length or (f - 1) // tc + 1, 4 * trained) - 1)
        if length:
            hints.append(f"--context-length {length}")
    if dev.type == "cuda" and offload in (None, "none"):
        hints.append("--offload model")
    free = f"{host_free / 2**30:.1f} GiB on the host" + (f", {gpu_free / 2**30:.1f} GiB on the GPU" if gpu_free else "")
    raise KinemaError(f"{f} frames at {w}x{h} need more memory than is free ({free}); try "
                      + (" or ".join(hints) or "a smaller clip"))


def _placed(loaded, device, dtype) -> dict:
    """Where a clip will run: the loaded model's device and dtype, else the caller's choice."""
    return dict(device=device, dtype=dtype) if callable(loaded) else dict(device=loaded.device, dtype=loaded.dtype)


def _largest(ok, high: int) -> int:
    """The largest n in [1, high] with ok(n), for ok true up to a point and false after (0 if none)."""
    low = 0
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if ok(mid) else (low, mid - 1)
    return low


def check_task(info: dict, task: str) -> None:
    """Refuse a command the checkpoint cannot run (a Wan image-to-video checkpoint only animates)."""
    tasks = info.get("tasks")
    require(tasks is None or task in tasks, f"this checkpoint ({info['index'].get('pipeline', 'model')}) cannot "
            f"{task}; it supports: {', '.join(tasks or [])}")


def check_text(text: str, what: str) -> None:
    """Refuse text that is not UTF-8: non-UTF-8 bytes in argv reach Python as surrogate escapes."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise KinemaError(f"{what} holds bytes that are not UTF-8 text; retype it or set a UTF-8 locale") from None


def check_prompt(prompt) -> None:
    require(isinstance(prompt, str), "the prompt must be text")
    check_text(prompt, "the prompt")
    require(prompt.strip() != "", "the prompt is empty; give a description such as 'a red circle moving right on a blue background'")
    require(len(prompt) <= 10_000, f"the prompt is {len(prompt)} characters long; keep it under 10000")


def estimate_memory(info: dict, frames: int, height: int, width: int, dtype_bytes: int = 4, cfg: bool = True,
                    decode_chunk_size: int = 16) -> dict:
    """Rough peak memory (bytes) of a generate call: weights + denoiser activations + VAE decode chunk.

    Activations: the widest level holds ~12 live tensors of (2B, C, F, h, w); attention adds the
    spatial score matrix of the first attention level. The VAE decoder holds ~8 tensors of its widest
    block at full resolution for one chunk. An estimate to choose settings by, not a measurement.
    """
    den, vae = info["denoiser"], info["vae"]
    s = info["spatial"]
    h, w = height // s, width // s
    b = 2 if cfg else 1
    weights = (info.get("denoiser_params", 0) + info.get("vae_params", 0)) * dtype_bytes
    chans = den["channels"]
    level_act = max(c * frames * (h // 2**i) * (w // 2**i) for i, c in enumerate(chans)) * b * 12 * dtype_bytes
    first_attn = next((i for i, a in enumerate(den["attention_levels"]) if a), len(chans) - 1)
    tokens = (h // 2**first_attn) * (w // 2**first_attn)
    heads = max(1, chans[first_attn] // den["head_dim"])
    attn = b * frames * heads * tokens * tokens * dtype_bytes
    dec = 8 * max(vae["block_out_channels"]) * min(frames, decode_chunk_size) * height * width * dtype_bytes
    total = weights + level_act + attn + max(dec, 0)
    return dict(weights=weights, denoiser_activations=level_act + attn, vae_decode=dec, total=total)
