"""One way through: each task is prepared once into a frozen Job, then run once.

    job = jobs.prepare_generate("a red circle moving right on a blue background", frames=32, seed=1)
    result = jobs.run(job)                          # loads the model (cached) unless one is given
    video_io.write_outputs("clip.mp4", result)      # the clip and its sidecar, atomically

`prepare_<task>` resolves every option from the caller's arguments, the model folder's validated
defaults and its family, checks them, reads and fits the inputs (images, source clips) and checks the
memory with the options the run will really use, all before any weights load: a bad option is a
one-line `KinemaError` here. `run` loads the model if none is given, calls the task's driver and
returns the frames with the sidecar's record. The CLI, the Python API, the UI and the batch runner
all call these two functions. Option names are the CLI's flags in snake case.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from . import resources, video_io
from .errors import KinemaError, require
from .models.family import Model, ModelInfo, describe, family_of, load_model, valid_interval
from .pipelines.common import Result as DriverResult
from .pipelines.common import Settings

TASKS = ("generate", "animate", "restyle", "extend")
MAX_STEPS = 1000  # the training schedule's timesteps; more only costs time (and the schedule's memory)
# option groups, by the names of the CLI's flags
SAMPLING = ("frames", "height", "width", "steps", "guidance", "seed", "negative_prompt", "scheduler", "shift", "fps",
            "decode_chunk_size", "motion_length", "cache", "guidance_interval")
PLACEMENT = ("device", "dtype", "attention", "offload", "threads", "lora", "lora_strict", "quantize", "compile",
             "transformer")
WINDOWS = ("context_length", "context_stride", "window_weights")
LONG = (*WINDOWS, "mode", "prompt_schedule", "prompt_transition", "adain", "follow_motion")
EXTEND_LONG = ("context_length", "context_stride", "prompt_schedule", "prompt_transition", "adain")
RESTYLE = ("strength", "flow", "flow_steps", "flow_strength", "pixel_fusion", "structure", "method", "source_prompt",
           "n_avg", "tail")
SOURCE = ("max_frames", "stride", "start", "resize")
CONTROL = ("control", "control_scale")  # generate/animate: a control VIDEO; restyle: edges|none (from the source)
MAX_CONTROL_SCALE = 5.0

#################################################################################
#                                  Jobs, results                                #
#################################################################################


@dataclass(frozen=True)
class Placement:
    """Where a job runs: device, dtype, attention backend, offload mode."""

    device: torch.device
    dtype: torch.dtype
    attention: str = "sdpa"
    offload: str = "none"
    threads: int = 1  # torch's CPU threads while the job runs (resources.pick_threads)
    dtype_reason: str = ""  # why this dtype (resources.auto_dtype for --dtype auto)
    loras: tuple = ()  # (path, scale) LoRAs loaded onto the denoiser, stacked (`models/lora.py`)
    lora_strict: bool = True  # a LoRA layer this denoiser lacks is an error (else it is skipped)
    quantize: str = "none"  # the denoiser's weights: none, int8, fp8, nf4 (`models/runtime.py`)
    compile: bool = False  # torch.compile of the denoiser's repeated blocks
    transformer: str | None = None  # a GGUF file in place of the folder's transformer

    @property
    def dtype_bytes(self) -> int:
        return torch.empty(0, dtype=self.dtype).element_size()


@dataclass(frozen=True, eq=False)
class Job:
    """A task with every option resolved and validated, its inputs read and fitted, its memory checked."""

    task: str
    prompt: str
    info: ModelInfo
    settings: Settings
    placement: Placement
    long: object = None  # LongOptions (resolved) when the clip runs in windows or continues a source
    restyle: object = None  # RestyleOptions (resolved) for restyle
    image: np.ndarray | None = None  # animate: the anchor at the clip's size
    last_image: np.ndarray | None = None
    image_noise: float = 0.0
    source: np.ndarray | None = None  # restyle, extend: uint8 (F, H, W, 3) at the clip's size
    inputs: Mapping = field(default_factory=dict)  # what the sidecar records of the inputs (paths, policies)
    warnings: tuple[str, ...] = ()

    @property
    def needs_model(self) -> bool:
        """Restyle at strength 0 returns the source as it is: no model is loaded."""
        return not (self.task == "restyle" and self.restyle.strength == 0)


@dataclass
class Result(DriverResult):
    """A driver's result (frames, latents, timings, info) with the clip's fps and the sidecar's record."""

    fps: float = 8.0
    record: dict = field(default_factory=dict)


#################################################################################
#                             Checks shared by tasks                            #
#################################################################################


def check_text(text: str, what: str) -> None:
    """Refuse text that is not UTF-8: non-UTF-8 bytes in argv reach Python as surrogate escapes."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise KinemaError(f"{what} holds bytes that are not UTF-8 text; retype it or set a UTF-8 locale") from None


MAX_TEXT = 10_000  # characters of a prompt, a negative prompt or a prompt schedule


def check_prompt(prompt) -> None:
    require(isinstance(prompt, str), "the prompt must be text")
    check_text(prompt, "the prompt")
    require(prompt.strip() != "", "the prompt is empty; give a description such as 'a red circle moving right on a blue background'")
    check_length(prompt, "the prompt")


def check_length(text: str, what: str) -> None:
    require(len(text) <= MAX_TEXT, f"{what} is {len(text)} characters long; keep it under {MAX_TEXT}")


def _fast(info: ModelInfo, options: dict) -> dict:
    """`fast=True`: the folder's few-step student (its `fast` entry: a LoRA in the folder, and the steps, guidance and
    optionally the sampling shift it runs at) stacked on the caller's LoRAs, its settings where the caller gives none."""
    options = dict(options)
    if not options.pop("fast", False):
        return options
    fast = info.index.get("fast") if info.index else None
    require(fast is not None, f"{info.name} ({info.path}) has no few-step student; drop --fast")
    lora = options.get("lora") or []
    lora = [lora] if isinstance(lora, (str, Path)) else list(lora)
    options["lora"] = [*lora, (str(Path(info.path) / fast["lora"]), 1.0)]
    for name in ("steps", "guidance", "shift"):
        if options.get(name) is None and name in fast:
            options[name] = fast[name]
    return options


def _restyle_fast(info: ModelInfo, model) -> bool:
    """Restyle's default for `fast`: the folder's student where its defaults say so (`restyle_fast`: the default model's
    keeps the source's object closer, docs/restyle-control); a model loaded without the student restyles without it."""
    fast = (info.index or {}).get("fast")
    if not (info.defaults.restyle_fast and fast):
        return False
    return not isinstance(model, Model) or _loaded_with(model, Path(info.path) / fast["lora"])


def _loaded_with(model: Model, path: Path) -> bool:
    """Whether the loaded `model` carries the LoRA file at `path`."""
    return any(Path(r["path"]).resolve() == path.resolve() for r in model.loras)


def _student_restyle_lora(info: ModelInfo, model, lora, name: str) -> list:
    """`lora` with the student's restyle LoRA (`fast.restyle.lora`, a file in the folder) stacked last: a LoRA of the
    backbone trained under the student with the control on, on the student's own steps (docs/restyle-control), so it
    changes restyle alone; generate and animate under the student stay as they were. A loaded model keeps the LoRAs
    it was loaded with: one loaded without this file restyles without it (kinema.load(loras=[...]) adds it)."""
    path = Path(info.path) / name
    lora = [lora] if isinstance(lora, (str, Path)) else list(lora or [])
    if isinstance(model, Model) and not _loaded_with(model, path):
        return lora
    return [*lora, (str(path), 1.0)]


def _split(options: dict, task: str, *groups: tuple[str, ...]) -> list[dict]:
    """`options` split by groups of names; a name in none of them is an error, as a wrong keyword is."""
    if "fast" in options:
        raise TypeError(f"{task}: fast= is resolved by the prepare function (jobs._fast) before the options are split")
    known = {k for g in groups for k in g}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"{task} got unexpected option(s) {', '.join(unknown)}; it takes {', '.join(sorted(known))}")
    return [{k: options[k] for k in g if k in options} for g in groups]


def placement_for(model, device="auto", dtype="auto", attention: str = "sdpa", offload: str | None = None,
                  threads: int | None = None, lora=None, lora_strict: bool = True, quantize: str | None = None,
                  compile: bool = False, transformer=None) -> Placement:
    """A loaded model's placement, or the caller's choice checked (CUDA present, the attention backend, quantizer
    and compiler there, LoRA and GGUF files that fit the model's denoiser)."""
    from .models import lora as lora_files
    from .models import runtime

    if isinstance(model, Model):
        have = tuple((r["path"], r["scale"]) for r in model.loras)
        want = tuple(lora_files.check_specs([lora] if isinstance(lora, (str, Path)) else lora)) if lora else ()
        require(not want or set(want) <= set(have),
                f"a loaded model carries the LoRAs it was loaded with ({len(have)}); load it with "
                f"kinema.load(loras=[{', '.join(repr(p) for p, _ in want)}]) (what --lora and --fast add), or pass "
                "the model folder instead")
        rt = model.runtime
        loaded = (rt.get("quantize", {}).get("method", "none"), "compile" in rt, rt.get("transformer", {}).get("path"))
        asked = (quantize or "none", bool(compile), None if transformer is None else str(Path(transformer).resolve()))
        require(all(a in (d, l) for a, l, d in zip(asked, loaded, ("none", False, None))),
                "a loaded model keeps the --quantize/--compile/--transformer it was loaded with; pass them to "
                "kinema.load, or pass the model folder instead")
        return Placement(model.device, model.dtype, model.attention, model.offload, resources.pick_threads(threads),
                         "the loaded model's", tuple((r["path"], r["scale"]) for r in model.loras), True, *loaded)
    loras = tuple(lora_files.check_specs([lora] if isinstance(lora, (str, Path)) else lora))
    if loras:
        info = info_for(model)
        lora_files.check_files(loras, info, lora_strict)
    dev = resources.pick_device(device)
    info = info_for(model)
    quantize, compile, transformer = runtime.check_runtime(info, family_of(info), dev, attention, quantize, compile,
                                                           transformer)
    offload = offload or "none"
    require(offload in resources.OFFLOAD_MODES, f"unknown --offload {offload!r}; use {', '.join(resources.OFFLOAD_MODES)}")
    threads = resources.pick_threads(threads)
    if dtype in (None, "auto"):
        torch.set_num_threads(threads)  # the probe measures the threads the job will have
        chosen, why = resources.auto_dtype(dev)
    else:
        chosen = resources.pick_dtype(dtype, dev)
        why = "--dtype " + str(chosen).replace("torch.", "")
    return Placement(dev, chosen, attention, offload, threads, why, loras, bool(lora_strict), quantize, compile,
                     transformer)


def info_for(model) -> ModelInfo:
    """The ModelInfo of a loaded model, a described one, or a folder (None: the shipped default)."""
    if isinstance(model, Model):
        return model.info
    return model if isinstance(model, ModelInfo) else describe(model)


def settings_for(info: ModelInfo, **overrides) -> Settings:
    """Settings from the model's defaults and the caller's overrides, validated before any weights load."""
    d = info.defaults
    values = dict(frames=d.frames, height=d.height, width=d.width, steps=d.steps, guidance=d.guidance, fps=d.fps,
                  scheduler=d.scheduler, motion_length=d.motion_length, guidance_interval=d.guidance_interval)
    values.update({k: v for k, v in overrides.items() if v is not None})
    s = Settings(**values)
    require(isinstance(s.frames, int) and s.frames >= 1, f"--frames must be a whole number >= 1 (got {s.frames})")
    info.check_frames(s.frames)
    require(isinstance(s.steps, int) and 1 <= s.steps <= MAX_STEPS, f"--steps must be a whole number in [1, {MAX_STEPS}] (got {s.steps})")
    m = info.size_multiple
    for name in ("height", "width"):
        v = getattr(s, name)
        require(isinstance(v, int) and v >= m and v % m == 0,
                f"--{name} {v} must be a positive multiple of {m} for this model; try {max(m, round(v / m) * m) if isinstance(v, int) else m}")
    _check_numbers(s)
    from .models.schedulers import schedulers_for

    steppers = schedulers_for(info.prediction)  # flow solvers for flow models, diffusers' DDPM family for epsilon / v
    require(s.scheduler in steppers, f"unknown --scheduler {s.scheduler!r} for this model ({info.prediction} "
                                     f"predictions); choose one of {', '.join(steppers)}")
    return replace(s, cache=check_cache(s.cache, info))


def _check_numbers(s: Settings) -> None:
    from .models.schedulers import SCHEDULERS

    require(math.isfinite(s.guidance) and 0 <= s.guidance <= 50, f"--guidance must be a number in [0, 50] (got {s.guidance})")
    require(s.guidance_interval is None or valid_interval(s.guidance_interval),
            f"--guidance-interval must be LO:HI with 0 <= LO < HI <= 1, noise levels (got {s.guidance_interval}); 0:1 guides every step")
    require(math.isfinite(s.fps) and video_io.MIN_FPS <= s.fps <= 240, f"--fps must be in [{video_io.MIN_FPS}, 240] (got {s.fps})")
    require(isinstance(s.seed, int) and 0 <= s.seed < 2**63, f"--seed must be in [0, 2**63) (got {s.seed})")
    check_text(s.negative_prompt, "--negative-prompt")
    check_length(s.negative_prompt, "--negative-prompt")
    require(s.scheduler in SCHEDULERS, f"unknown --scheduler {s.scheduler!r}; choose one of {', '.join(SCHEDULERS)}")
    require(s.shift is None or (math.isfinite(s.shift) and s.shift > 0), f"--shift must be > 0 (got {s.shift})")
    require(s.decode_chunk_size >= 1, "--decode-chunk-size must be >= 1")
    require(s.motion_length is None or (isinstance(s.motion_length, int) and s.motion_length >= 1),
            f"--motion-length must be a whole number >= 1 (got {s.motion_length})")


def check_cache(cache, info: ModelInfo) -> str:
    """`--cache` normalised ("first-block" -> "first-block:0.1"), if this model's family takes the method."""
    from .models.cache import check_cache as check

    return check(cache, family_of(info).cache_methods(info), f"{info.name} ({info.path})")


def long_options(info: ModelInfo, settings: Settings, source_frames: int = 0, **options):
    """Resolved LongOptions, or None when plain text-to-video makes the clip."""
    from .pipelines.long_video import LongOptions, is_plain, resolve_options

    follow = options.pop("follow_motion", None)
    mode = options.get("mode", "window")
    if follow is None:  # the model folder's default, for context windows (continuation has its own known frames)
        follow = info.defaults.follow_motion and mode == "window"
    require(not (follow and mode != "window"), "--follow-motion works with context windows only (--mode window); "
                                               "drop it or use --mode window")
    opts = LongOptions(**options, follow_motion=follow)
    if opts.prompt_schedule is not None:
        check_text(opts.prompt_schedule, "--prompt-schedule")
        check_length(opts.prompt_schedule, "--prompt-schedule")
    trained = info.defaults.frames
    resolved = resolve_options(opts, settings.frames, trained, info.temporal_compression, source_frames, info.max_context)
    return None if source_frames == 0 and is_plain(opts, settings.frames, trained) else resolved


#################################################################################
#                                     Memory                                    #
#################################################################################


def model_memory(info: ModelInfo, placement: Placement, settings: Settings, frames: int | None = None) -> int:
    """The family's estimate of the model's peak bytes on `frames` frames (default: the settings')."""
    est = family_of(info).estimate_memory(info, frames or settings.frames, settings.height, settings.width,
                                          placement.dtype_bytes, settings.guidance != 1, settings.decode_chunk_size)
    return est["total"]


def process_memory(info: ModelInfo, frames: int, height: int, width: int, dtype_bytes: int = 4) -> dict:
    """The whole process's estimated peak host bytes for `kinema generate` on CPU (what `kinema info` prints).

    Libraries (Python with torch and what the family imports), the model on one context window
    (the family's estimate: weights, text encoder, activations, a decode chunk), and the clip on the host
    (HOST_BYTES_PER_PIXEL per output pixel). Tested against a measured peak RSS at 16 and 256 frames.
    """
    trained = info.defaults.frames
    tc = info.temporal_compression
    window = frames if frames <= trained else min(frames, (info.latent_frames(trained) - 1) * tc + 1)
    model = family_of(info).estimate_memory(info, window, height, width, dtype_bytes)["total"]
    host = frames * height * width * resources.HOST_BYTES_PER_PIXEL
    return dict(libraries=resources.LIBRARY_BYTES, model=model, clip=host, total=resources.LIBRARY_BYTES + model + host)


def check_memory(info: ModelInfo, settings: Settings, placement: Placement, context_length: int | None = None,
                 windows: bool = False, available: int | None = None) -> None:
    """Refuse, before any work, a clip whose estimated peak memory exceeds the free memory; name a setting that fits.

    The model's peak is taken on one context window of `context_length` latent frames (None: the whole
    clip, or with `windows` the trained length when the clip is longer), plus HOST_BYTES_PER_PIXEL per
    output pixel. `available` (bytes) replaces the measured free memory; where that is unknown nothing
    is checked.
    """
    tc, dev = info.temporal_compression, placement.device
    trained = info.latent_frames(info.defaults.frames)
    if windows and context_length is None and settings.frames > info.defaults.frames:
        context_length = trained  # what long_options will choose
    host_free = resources.available_memory("cpu") if available is None else available
    gpu_free = (resources.available_memory(dev) if available is None else available) if dev.type == "cuda" else None
    if host_free is None:
        return

    def fits(frames: int, height: int, width: int, length: int | None = context_length) -> bool:
        window = frames if length is None else min(frames, (length - 1) * tc + 1)
        model = model_memory(info, placement, replace(settings, height=height, width=width), window)
        host = frames * height * width * resources.HOST_BYTES_PER_PIXEL
        if dev.type == "cuda":  # the model's share on the GPU (unless offloaded), the clip on the host
            gpu_ok = placement.offload != "none" or model <= resources.HEADROOM * gpu_free
            return gpu_ok and host <= resources.HEADROOM * host_free
        return model + host <= resources.HEADROOM * host_free

    if not fits(settings.frames, settings.height, settings.width):
        hints = _memory_hints(fits, info, settings, placement, context_length, windows)
        free = f"{host_free / 2**30:.1f} GiB on the host" + (f", {gpu_free / 2**30:.1f} GiB on the GPU" if gpu_free else "")
        raise KinemaError(f"{settings.frames} frames at {settings.width}x{settings.height} need more memory than is "
                          f"free ({free}); try " + (" or ".join(hints) or "a smaller clip"))


def _memory_hints(fits, info: ModelInfo, settings: Settings, placement: Placement, context_length, windows) -> list[str]:
    """Settings that would fit: fewer frames, a smaller size, shorter windows, offload."""
    f, h, w, m, tc = settings.frames, settings.height, settings.width, info.size_multiple, info.temporal_compression
    hints = []
    frames = resources.largest(lambda n: fits(n, h, w), f - 1)
    if frames:
        hints.append(f"--frames {(frames - 1) // tc * tc + 1}")
    q = resources.largest(lambda k: fits(f, k * m, max(m, round(w * k / h) * m)), h // m - 1)
    if q:
        hints.append(f"--height {q * m} --width {max(m, round(w * q / h) * m)}")
    if windows:
        trained = info.latent_frames(info.defaults.frames)
        length = resources.largest(lambda n: fits(f, h, w, n), min(context_length or (f - 1) // tc + 1, 4 * trained) - 1)
        if length:
            hints.append(f"--context-length {length}")
    if placement.device.type == "cuda" and placement.offload == "none":
        hints.append("--offload model")
    return hints


#################################################################################
#                                    Prepare                                    #
#################################################################################


def prepare_generate(prompt: str, model=None, **options) -> Job:
    """Text-to-video; past the model's trained length (or with a context option or a prompt schedule) in windows.

    `control` (a clip's path or uint8 frames) gives the structure, the prompt the appearance (a model with a
    control input only)."""
    check_prompt(prompt)
    options = _fast(info_for(model), options)
    sampling, where, long, control = _split(options, "generate", SAMPLING, PLACEMENT, LONG, CONTROL)
    info, placement = info_for(model), placement_for(model, **where)
    info.check_task("generate")
    frames = _control_frames(info, sampling, **control)
    settings = settings_for(info, **sampling)
    check_memory(info, settings, placement, long.get("context_length"), windows=True)
    opts = long_options(info, settings, **long)
    settings, inputs = with_control(info, settings, frames, opts, **control)
    return Job("generate", prompt, info, settings, placement, long=opts, inputs=inputs)


def _check_control_scale(scale) -> None:
    require(scale is None or (isinstance(scale, (int, float)) and not isinstance(scale, bool) and math.isfinite(scale)
                              and 0 <= scale <= MAX_CONTROL_SCALE),
            f"--control-scale must be a number in [0, {MAX_CONTROL_SCALE:g}] (how strongly the control steers; 1 as "
            f"trained); got {scale}")


def _control_frames(info: ModelInfo, sampling: dict, control=None, control_scale=None) -> np.ndarray | None:
    """The control clip of generate/animate, read and checked (the clip's frames default to the control's)."""
    _check_control_scale(control_scale)
    if control is None:
        require(control_scale is None, "--control-scale scales a control clip; pass --control VIDEO too, or drop it")
        return None
    require("control" in info.features, f"{info.name} ({info.path}) has no structure control input; drop --control")
    if isinstance(control, np.ndarray):
        frames, _ = _read_clip(control, "the control video")
    else:
        frames, _ = resources.read_clip(control, "the control video", EXTEND_BYTES_PER_PIXEL,
                                        "pass a shorter or smaller control clip")
    if sampling.get("frames") is None:
        sampling["frames"] = len(frames)
    return frames


def with_control(info: ModelInfo, settings: Settings, frames: np.ndarray | None, long=None, control=None,
                 control_scale=None) -> tuple[Settings, dict]:
    """`settings` carrying the control maps of `frames` (None: unchanged), and what the sidecar records of it."""
    from .models.control import control_input

    if frames is None:
        return settings, {}
    require(len(frames) == settings.frames, f"the control video has {len(frames)} frames and the clip {settings.frames}; "
                                            f"pass --frames {len(frames)} or a control of {settings.frames} frames")
    h, w = frames.shape[1:3]
    require((h, w) == (settings.height, settings.width),
            f"the control video is {w}x{h} and the clip {settings.width}x{settings.height}; pass --width {w} --height {h} "
            "or resize the control")
    require(long is None or (long.mode == "window" and not long.follow_motion),
            "--control steers context windows in place: drop --follow-motion (and --mode continue)")
    scale = 1.0 if control_scale is None else float(control_scale)
    grid = control_input(frames, info.spatial_compression)
    return replace(settings, control=grid, control_scale=scale), dict(control=_describe_input(control), control_scale=scale)


def prepare_extend(video, prompt: str, model=None, frames: int | None = None, resize: str = "crop", **options) -> Job:
    """Continue a clip: `frames` counts the whole output, source included (default: source + trained length)."""
    check_prompt(prompt)
    options = _fast(info_for(model), options)
    sampling, where, long = _split(options, "extend", SAMPLING, PLACEMENT, EXTEND_LONG)
    info, placement = info_for(model), placement_for(model, **where)
    info.check_task("extend")
    require(resize in video_io.RESIZE_POLICIES, f"unknown --resize {resize!r}; use one of {', '.join(video_io.RESIZE_POLICIES)}")
    source, source_fps = _read_clip(video, "the clip to extend")
    total = frames if frames is not None else len(source) + info.defaults.frames
    if sampling.get("motion_length") is None and info.defaults.motion_length is None:
        sampling["motion_length"] = max(len(source), info.defaults.frames)  # go on at the pace of the given clip
    sampling["fps"] = sampling.get("fps") or source_fps
    settings = settings_for(info, **{**sampling, "frames": total})
    check_memory(info, settings, placement, long.get("context_length"), windows=True)
    opts = long_options(info, settings, source_frames=len(source), mode="continue", **long)
    if source.shape[1:3] != (settings.height, settings.width):
        source = video_io.resize_frames(source, settings.height, settings.width, policy=resize)
    return Job("extend", prompt, info, settings, placement, long=opts, source=source,
               inputs=dict(video=_describe_input(video), resize=resize))


# Host bytes per source pixel of a clip to extend: the frames as read, their stacked copy, the resize's input.
EXTEND_BYTES_PER_PIXEL = 9


def _read_clip(video, what: str) -> tuple[np.ndarray, float | None]:
    """uint8 (F, H, W, 3) frames from a path or an array, and the file's fps (None for an array)."""
    if isinstance(video, np.ndarray):
        require(video.dtype == np.uint8 and video.ndim == 4 and video.shape[-1] == 3 and len(video) >= 1,
                f"{what} must be uint8 (F, H, W, 3) frames, got {video.dtype} {tuple(video.shape)}")
        return video, None
    return resources.read_clip(video, what, EXTEND_BYTES_PER_PIXEL,
                               "extend a shorter or smaller clip (it is kept whole, at its size until resized)")


def _describe_input(x) -> str:
    return "array" if isinstance(x, np.ndarray) else str(x)


def prepare_animate(image, prompt: str, model=None, last_image=None, resize: str = "crop",
                    image_noise: float | None = None, **options) -> Job:
    """Image-to-video: a clip that starts on `image` (and ends on `last_image`)."""
    from .pipelines import image_to_video as i2v

    check_prompt(prompt)
    options = _fast(info_for(model), options)
    sampling, where, control = _split(options, "animate", SAMPLING, PLACEMENT, CONTROL)
    info, placement = info_for(model), placement_for(model, **where)
    info.check_task("animate")
    control_frames = _control_frames(info, sampling, **control)
    settings = settings_for(info, **sampling)
    check_memory(info, settings, placement)
    warning = i2v.check_frame_conditions(list(info.frame_conditions), last_image is not None)
    require(last_image is None or settings.frames >= 2, "--last-image needs --frames >= 2")
    std = i2v.check_image_noise(info.defaults.image_noise if image_noise is None else image_noise)
    first = i2v.prepare_image(image, settings.height, settings.width, resize)
    last = None if last_image is None else i2v.prepare_image(last_image, settings.height, settings.width, resize, name="last image")
    inputs = dict(image=_describe_input(image), last_image=None if last_image is None else _describe_input(last_image),
                  resize=resize, image_noise=std)
    settings, recorded = with_control(info, settings, control_frames, **control)
    inputs.update(recorded)
    return Job("animate", prompt, info, settings, placement, image=first, last_image=last, image_noise=std,
               inputs=inputs, warnings=(warning,) if warning else ())


def prepare_restyle(video, prompt: str, model=None, max_frames: int | None = None, stride: int = 1, start: int = 0,
                    resize: str = "crop", **options) -> Job:
    """Video-to-video: `video` restyled as `prompt` says, its motion kept (length and fps from the source)."""
    check_prompt(prompt)
    info = info_for(model)
    if options.get("fast") is None:  # left out: the model folder's choice for restyling
        options = {**options, "fast": _restyle_fast(info, model)}
    # the student's own restyle settings (its `fast.restyle` entry) where the caller gives none
    student = ((info.index or {}).get("fast") or {}).get("restyle", {}) if options["fast"] else {}
    for name in ("guidance", "guidance_interval"):
        if options.get(name) is None and name in student:
            options = {**options, name: tuple(student[name]) if isinstance(student[name], list) else student[name]}
    options = _fast(info, options)
    sampling, where, windows, restyle, control = _split(options, "restyle", SAMPLING, PLACEMENT, WINDOWS, RESTYLE, CONTROL)
    require(sampling.get("frames") is None,
            "restyle takes its length from the source; choose frames with --max-frames, --stride and --start")
    info.check_task("restyle")
    kind = restyle_control(info, **control)
    if student.get("lora") and kind == "edges":  # the student's own LoRA for restyling under the control
        where["lora"] = _student_restyle_lora(info, model, where.get("lora"), student["lora"])
    placement = placement_for(model, **where)
    require(resize in video_io.RESIZE_POLICIES, f"unknown --resize {resize!r}; use one of {', '.join(video_io.RESIZE_POLICIES)}")
    require(max_frames is None or (isinstance(max_frames, int) and max_frames >= 1), f"--max-frames must be >= 1 (got {max_frames})")
    require(isinstance(stride, int) and stride >= 1, f"--stride must be a whole number >= 1 (got {stride})")
    require(isinstance(start, int) and start >= 0, f"--start must be a whole number >= 0 (got {start})")
    if sampling.get("guidance") is None and info.defaults.restyle_guidance is not None:
        sampling["guidance"] = info.defaults.restyle_guidance  # the model's own scale for restyling
    if sampling.get("guidance_interval") is None:  # restyle's settings were chosen with every step guided
        sampling["guidance_interval"] = (0.0, 1.0)
    base = settings_for(info, **{**sampling, "frames": 1})  # the caller's settings, checked
    opts = restyle_options(info, base.steps, **restyle)
    if opts.method == "flowedit":  # its update is an Euler step of the velocity difference
        require(sampling.get("scheduler") in (None, "euler"), "FlowEdit steps with Euler; drop --scheduler or pass euler")
        sampling["scheduler"] = "euler"
    plan = _RestylePlan(info, placement, sampling, windows, opts)
    source, settings, long = plan.read(video, start, stride, max_frames, base)
    require(opts.method != "flowedit" or long is None,
            f"--method flowedit restyles up to the model's trained {info.defaults.frames} frames (the source gives "
            f"{settings.frames}); pass --max-frames {info.defaults.frames}, or --method sdedit for longer sources")
    if source.shape[1:3] != (settings.height, settings.width):
        source = video_io.resize_frames(source, settings.height, settings.width, policy=resize)
    inputs = dict(video=_describe_input(video), resize=resize, start=start, stride=stride, max_frames=max_frames,
                  control=kind)
    if kind == "edges" and opts.strength > 0:  # the source's edge maps steer every denoiser call
        from .models.control import control_input

        given = control.get("control_scale")  # else the model's scale for restyling (its student's, when it runs)
        scale = float(student.get("control_scale", info.defaults.restyle_control_scale) if given is None else given)
        settings = replace(settings, control=control_input(source, info.spatial_compression), control_scale=scale)
        inputs["control_scale"] = scale
    return Job("restyle", prompt, info, settings, placement, long=long, restyle=opts, source=source, inputs=inputs)


def restyle_control(info: ModelInfo, control=None, control_scale=None) -> str:
    """Restyle's control kind: `control` (edges or none) or, left out, edges where the model reads them."""
    from .models.control import KINDS

    _check_control_scale(control_scale)
    kind = control if control is not None else ("edges" if "control" in info.features else "none")
    require(isinstance(kind, str) and kind in KINDS,
            f"restyle's --control is {' or '.join(KINDS)} (its structure comes from the source), got {kind!r}")
    require(kind == "none" or "control" in info.features,
            f"{info.name} ({info.path}) has no structure control input; pass --control none or drop --control")
    require(control_scale is None or kind != "none", "--control-scale scales the control; drop it with --control none")
    return kind


def restyle_options(info: ModelInfo, steps: int, strength=None, flow: bool = True, flow_steps: float = 0.0,
                    flow_strength: float = 0.8, pixel_fusion=None, structure=None, method=None, source_prompt=None,
                    n_avg=None, tail: float = 0.0):
    """RestyleOptions with the model's `restyle_*` defaults for what is left out, checked once."""
    from .pipelines import video_to_video as v2v

    if source_prompt is not None:
        check_text(source_prompt, "--source-prompt")
        check_length(source_prompt, "--source-prompt")
    given = v2v.RestyleOptions(strength, flow, flow_steps, flow_strength, pixel_fusion, structure, method,
                               source_prompt, n_avg, tail)
    opts = v2v.resolve_restyle_options(given, info.defaults.as_dict(), steps, info.prediction)
    require(opts.structure == 0 or opts.strength == 0 or "structure" in info.features,
            "this model's denoiser cannot take the source's layout; pass --structure 0")
    return opts


@dataclass
class _RestylePlan:
    """Restyle's source read within memory: the whole plan checked from the file's header before reading."""

    info: ModelInfo
    placement: Placement
    sampling: dict
    windows: dict
    options: object

    def read(self, video, start: int, stride: int, max_frames: int | None, base: Settings):
        from .pipelines import video_to_video as v2v

        run = self.options.strength > 0
        if run and (self.options.flow or self.options.pixel_fusion):
            require(min(base.height, base.width) >= v2v.MIN_FLOW_SIDE,
                    f"optical flow needs frames of at least {v2v.MIN_FLOW_SIDE}x{v2v.MIN_FLOW_SIDE} (got "
                    f"{base.width}x{base.height}); raise --height/--width or pass --no-flow")
        self.host_free = resources.available_memory("cpu")
        size, cap = video_io.source_size(video, start, stride, max_frames), None
        if size is not None:
            count, src_h, src_w = size
            if count:  # known length: the whole plan is checked before reading
                self.plan(count, base.fps, (src_h, src_w))
            elif count is None:
                cap = resources.restyle_frames_that_fit(self.host_free, (src_h, src_w), base.height, base.width)
        read_max = max_frames if cap is None else min(max_frames or cap + 1, cap + 1)
        source, source_fps = video_io.read_frames(video, start, stride, read_max)
        require(cap is None or len(source) <= cap, f"the source has more than the {cap} frames that fit in memory at "
                                                   f"{base.width}x{base.height}; pass --max-frames, a larger --stride or a smaller size")
        settings, long = self.plan(len(source), source_fps, source.shape[1:3])
        return source, settings, long

    def plan(self, frames: int, source_fps: float | None, source_hw: tuple[int, int]):
        info, tc = self.info, self.info.temporal_compression
        require((frames - 1) % tc == 0, f"this model's VAE compresses time by {tc}: restyle {tc}k+1 frames (the source "
                                        f"gives {frames}); pass --max-frames {max(1, (frames - 1) // tc * tc + 1)}")
        fps = self.sampling.get("fps") or source_fps
        settings = settings_for(info, **{**self.sampling, "frames": frames, "fps": fps})
        run, long = self.options.strength > 0, None
        if run:
            long = long_options(info, settings, mode="window", follow_motion=False, **self.windows)
        need = resources.restyle_host_bytes(frames, source_hw, settings.height, settings.width)
        window = frames if long is None else min(frames, (long.context_length - 1) * tc + 1)
        model_bytes = model_memory(info, self.placement, settings, window) if run else 0
        what = f"restyling {frames} frames at {settings.width}x{settings.height}"
        if self.placement.device.type == "cuda":
            resources.check_fits(model_bytes, resources.available_memory(self.placement.device), what + " on the GPU")
            model_bytes = 0
        resources.check_fits(need + model_bytes, self.host_free, what)
        return settings, long


PREPARE = dict(generate=prepare_generate, animate=prepare_animate, restyle=prepare_restyle, extend=prepare_extend)

#################################################################################
#                                       Run                                     #
#################################################################################

_CACHE: dict = {}


def load(info: ModelInfo, placement: Placement) -> Model:
    """The model of `info` at `placement`, loaded once: a repeated call with the same arguments reuses it."""
    key = (str(Path(info.path).resolve()), str(placement.device), str(placement.dtype), placement.attention, placement.offload,
           placement.loras, placement.lora_strict, placement.quantize, placement.compile, placement.transformer, info.parts)
    if key not in _CACHE:
        from .models import runtime

        _CACHE.clear()
        model = load_model(info, placement.device, placement.dtype, placement.attention, placement.offload,
                           placement.transformer)
        if placement.loras:  # PEFT adapters on the denoiser, each at its scale, stacked
            from .models.lora import load_loras

            model.loras = tuple(load_loras(model.denoiser, placement.loras, placement.lora_strict, model.text_encoder,
                                           vae=model.vae, merge=placement.offload in (None, "none")))
        model.runtime = runtime.apply(model, placement.quantize, placement.compile, placement.transformer)
        _CACHE[key] = model
    return _CACHE[key]


def run(job: Job, model: Model | None = None, progress: bool = True) -> Result:
    """Run a prepared job: load the model unless given (and needed), call the task's driver, build the record."""
    from .models import runtime

    torch.set_num_threads(job.placement.threads)
    t0 = time.perf_counter()
    if model is None and job.needs_model:
        model = load(job.info, job.placement)
    load_s = time.perf_counter() - t0
    watch = model.runtime.get("compile", {}).get("watch") if model is not None else None
    warm = watch.snapshot() if watch is not None else None  # this run's compile warm-up, for the sidecar
    shown = runtime.SHOW_PROGRESS.set(progress)
    job = replace(job, settings=family_of(job.info).settings(job.info, job.settings))  # size-dependent (LTX's shift)
    try:
        out = _DRIVERS[job.task](job, model, progress)
    finally:
        runtime.SHOW_PROGRESS.reset(shown)
    result = Result(out.frames, out.latents, out.timings, out.info, fps=job.settings.fps)
    result.record = _record(job, model, result, load_s)
    if model is not None and model.runtime:  # quantized weights, a GGUF transformer, compiled blocks
        result.record.update(runtime.sidecar(model.runtime, warm))
    return result


def _run_generate(job: Job, model: Model, progress: bool) -> DriverResult:
    from .pipelines.long_video import long_video
    from .pipelines.text_to_video import text_to_video

    if job.long is None:
        return text_to_video(model, job.prompt, job.settings, progress=progress)
    return long_video(model, job.prompt, job.settings, job.long, progress=progress)


def _run_animate(job: Job, model: Model, progress: bool) -> DriverResult:
    from .pipelines.image_to_video import image_to_video

    return image_to_video(model, job.prompt, job.image, job.settings, job.last_image, job.image_noise, progress=progress)


def _run_restyle(job: Job, model: Model | None, progress: bool) -> DriverResult:
    from .pipelines.video_to_video import restyle_video

    return restyle_video(model, job.prompt, job.source, job.settings, job.restyle, job.long, progress=progress)


def _run_extend(job: Job, model: Model, progress: bool) -> DriverResult:
    from .pipelines.long_video import extend_video

    return extend_video(model, job.source, job.prompt, job.settings, job.long, progress=progress)


_DRIVERS = dict(generate=_run_generate, animate=_run_animate, restyle=_run_restyle, extend=_run_extend)


def _record(job: Job, model: Model | None, result: Result, load_s: float) -> dict:
    """The sidecar's record: what made the clip (version, command, prompt, model, settings, inputs, timings)."""
    from . import __version__

    p = job.placement
    record = dict(
        kinema_version=__version__, command=job.task, prompt=job.prompt, model=str(job.info.path), family=job.info.family,
        seed=job.settings.seed, settings=job.settings.as_dict(),
        device=str(p.device) if model is not None else "none", dtype=str(p.dtype).replace("torch.", "") if model is not None else "none",
        dtype_reason=p.dtype_reason if model is not None else "", attention=p.attention, threads=p.threads, frames_written=int(result.frames.shape[0]),
        size=[int(result.frames.shape[1]), int(result.frames.shape[2])],
        timings={"load": round(load_s, 3), **result.timings.as_dict()},
    )
    if model is not None and model.loras:
        record["loras"] = [dict(r) for r in model.loras]
    if job.settings.cache != "none" and model is not None:  # the step cache, and how many calls it served
        watch = result.timings.denoiser
        record["cache"] = dict(method=job.settings.cache, denoiser_calls=watch.calls, served_from_cache=watch.cached)
    if job.info.parts:  # folders read besides the model's (AnimateDiff's --motion-adapter)
        record["model_parts"] = [str(p) for p in job.info.parts]
    record.update(job.inputs)
    record.update(result.info)  # what a driver reports besides the frames (the window plan, restyle figures)
    return record
