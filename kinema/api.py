"""The Python front door: load a model once, generate clips, estimate memory.

    import kinema
    frames = kinema.generate("a red circle moving right on a blue background", seed=1)  # uint8 (F, H, W, 3)
    model = kinema.load("runs/default/model")
    frames = kinema.generate("...", model=model, frames=32)
    frames = kinema.animate("photo.png", "a red circle moving right", model=model)
    frames = kinema.restyle("clip.mp4", "a green circle moving right on a black background", strength=0.8)
    frames = kinema.extend("clip.mp4", "a red circle moving right", frames=64)

Each function is `jobs.prepare_<task>` then `jobs.run`, as the CLI's commands are; options are the
CLI's flags in snake case (a misspelt one is a TypeError), every one checked before weights load:

- sampling (every task): frames, height, width, steps, guidance, seed, negative_prompt, scheduler,
  shift, fps, decode_chunk_size, motion_length, cache (a step cache: "first-block:0.1", "taylorseer:2", ...;
  docs/runtime.md);
- placement (every task, ignored with a loaded `model`): device, dtype, attention, offload, lora, lora_strict,
  quantize ("int8"; "fp8", "nf4" on CUDA), compile, transformer (a GGUF file; docs/runtime.md);
- long clips (generate): context_length, context_stride, window_weights, mode ("window" or
  "continue"), prompt_schedule, prompt_transition, adain, follow_motion; extend takes the same but
  mode, window_weights and follow_motion;
- animate: last_image, resize, image_noise; restyle: strength, structure, flow, flow_steps,
  flow_strength, pixel_fusion, max_frames, stride, start, resize, context_length, context_stride,
  window_weights; extend: frames (the whole output, source included), resize.

`model` is a folder (None: the shipped default model) or a model from `kinema.load`. With
`return_result=True` a `jobs.Result` comes back: frames, fps, latents, timings, driver info and the
sidecar's record.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from . import jobs
from .models.family import Model, ModelInfo, describe, family_of


def load(model: str | Path | None = None, device: str = "auto", dtype="auto", attention: str = "sdpa",
         offload: str | None = None, loras=None, lora_strict: bool = True, motion_adapter: str | Path | None = None,
         quantize: str | None = None, compile: bool = False, transformer: str | Path | None = None) -> Model:
    """Load a model folder (default: the shipped weights); repeated calls with the same arguments reuse it.

    `loras`: LoRA files as paths, `"FILE:SCALE"` strings or (path, scale) pairs, stacked on the denoiser.
    `motion_adapter`: a MotionAdapter folder put on a Stable Diffusion 1.5 `model` folder (AnimateDiff).
    `quantize` ("int8"; "fp8", "nf4" on CUDA), `compile` and `transformer` (a GGUF file): docs/runtime.md."""
    info = describe(model, motion_adapter)
    placement = jobs.placement_for(info, device, dtype, attention, offload, lora=loras, lora_strict=lora_strict,
                                   quantize=quantize, compile=compile, transformer=transformer)
    return jobs.load(info, placement)


def _run(job: jobs.Job, model, progress: bool, return_result: bool):
    for warning in job.warnings:
        warnings.warn(warning, stacklevel=3)
    result = jobs.run(job, model if isinstance(model, Model) else None, progress=progress)
    return result if return_result else result.frames


def generate(prompt: str, *, model=None, progress: bool = True, return_result: bool = False, **options):
    """Text-to-video: uint8 frames (F, H, W, 3) for `prompt`.

    Past the model's trained length (or when a context option or a prompt schedule is given) the clip
    is made in windows of `context_length` latent frames: fused every step (`mode="window"`, following
    the clip's motion where the model folder says so) or one after another (`mode="continue"`).
    """
    return _run(jobs.prepare_generate(prompt, model, **options), model, progress, return_result)


def animate(image, prompt: str, *, model=None, progress: bool = True, return_result: bool = False, **options):
    """Image-to-video: uint8 frames that start on `image` (a path, PIL image or uint8 (H, W, 3)) and move as `prompt` says.

    `last_image` also fixes the last frame (models trained for "first_last"); `resize` fits the images
    to the clip (crop, pad, stretch); `image_noise` is the anchor's noise augmentation (default: the model's).
    """
    return _run(jobs.prepare_animate(image, prompt, model, **options), model, progress, return_result)


def restyle(video, prompt: str, *, model=None, progress: bool = True, return_result: bool = False, **options):
    """Video-to-video: `video` (a file, a folder of frames or uint8 (F, H, W, 3)) restyled as `prompt` says.

    Frames `start`, `start + stride`, ... (at most `max_frames`) are fitted to the clip's size; the
    output has as many, at the source's fps unless `fps` is given. `strength` 0 returns the fitted
    source without loading the model; `structure` is the fraction of the steps that take the source's
    layout; both default to the model folder's (see kinema.pipelines.video_to_video). `method="flowedit"`
    edits without inversion, from `source_prompt` (what the source shows) to `prompt`.
    """
    return _run(jobs.prepare_restyle(video, prompt, model, **options), model, progress, return_result)


def extend(video, prompt: str, *, model=None, progress: bool = True, return_result: bool = False, **options):
    """Continue a clip: uint8 frames that start with `video` and go on as `prompt` says (`frames` in all)."""
    return _run(jobs.prepare_extend(video, prompt, model, **options), model, progress, return_result)


def info(model: str | Path | None = None, motion_adapter: str | Path | None = None) -> ModelInfo:
    """A model folder's description (family, parameters, tasks, defaults) without loading any weights; it can be
    passed as `model=` to the task functions (an SD 1.5 folder with its `motion_adapter`, for one)."""
    return describe(model, motion_adapter)


def estimate_memory(model: str | Path | ModelInfo | None = None, frames: int | None = None, height: int | None = None,
                    width: int | None = None, dtype_bytes: int = 4, cfg: bool = True, decode_chunk_size: int = 16,
                    offload: str | None = None) -> dict:
    """Rough peak bytes of a clip (weights, denoiser activations, VAE decode, total): the family's estimate."""
    mi = model if isinstance(model, ModelInfo) else describe(model)
    d = mi.defaults
    return family_of(mi).estimate_memory(mi, frames or d.frames, height or d.height, width or d.width, dtype_bytes, cfg,
                                         decode_chunk_size, offload)
