"""Steps every driver shares: settings, prompt encoding, noise, sampling, decoding."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields, replace

import numpy as np
import torch

from kinema.models.cache import StepCache
from kinema.models.seams import DenoiserInputs, FrameCondition, TextEmbeds, to_uint8, to_unit

from .loop import Hook, KnownFrames, Predict, Timings, denoise, guided, make_scheduler, set_timesteps
from .parameterisation import initial_latents, prediction_of, step_levels


@dataclass
class Settings:
    """Everything that decides a clip besides the prompt and the model."""

    frames: int = 16
    height: int = 64
    width: int = 64
    steps: int = 25
    guidance: float = 5.0
    seed: int = 0
    negative_prompt: str = ""
    scheduler: str = "euler"
    shift: float | None = None
    fps: float = 8.0
    decode_chunk_size: int = 16
    # the clip length the denoiser is told (models with a length embedding pace the motion by it, as the
    # world does: longer clips move more slowly); None: the clip's own frames
    motion_length: int | None = None
    # structure control on the latent grid (1, r*r, F, h, w) (`models/control.py`), for a denoiser with a control
    # input; every denoiser call of the clip gets it (each window its frames); None: no control
    control: torch.Tensor | None = field(default=None, repr=False, compare=False)
    control_scale: float = 1.0
    # a step cache (`models/cache.py`): "none", "first-block:0.1", "taylorseer:2", ...; each trajectory its own
    cache: str = "none"
    # (lo, hi): classifier-free guidance only at noise levels t / 1000 in (lo, hi] (`loop.guided`); None: every step
    guidance_interval: tuple[float, float] | None = None

    def as_dict(self) -> dict:
        """The settings as plain values (the control as its shape, or None)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "control"}
        out["control"] = None if self.control is None else list(self.control.shape)
        return out


@dataclass
class Result:
    """Frames as uint8 (F, H, W, 3), the final latents, and where the time went."""

    frames: np.ndarray
    latents: torch.Tensor
    timings: Timings
    info: dict = field(default_factory=dict)  # driver details for the sidecar (e.g. the window plan)


def encode_prompts(model, prompt: str, settings: Settings, timings: Timings) -> tuple[TextEmbeds, TextEmbeds | None]:
    """Token states of the prompt, and of the negative prompt when guidance is on."""
    t0 = time.perf_counter()
    prompts = [prompt] + ([settings.negative_prompt] if settings.guidance != 1.0 else [])
    emb = model.text_encoder.encode(prompts).to(model.device, model.dtype)
    timings.add("text_encode", time.perf_counter() - t0)
    text = TextEmbeds(emb.hidden[:1], emb.mask[:1])
    uncond = TextEmbeds(emb.hidden[1:], emb.mask[1:]) if len(prompts) > 1 else None
    return text, uncond


def latent_shape(model, settings: Settings, batch: int = 1) -> tuple[int, ...]:
    s = model.vae.spatial_compression
    f = model.vae.latent_frames(settings.frames)
    return (batch, model.vae.latent_channels, f, settings.height // s, settings.width // s)


def initial_noise(shape, seed: int, device) -> torch.Tensor:
    """Gaussian noise from a CPU generator: the same seed gives the same noise on every device.

    This is diffusers' `randn_tensor(shape, generator=torch.Generator("cpu").manual_seed(seed))`, the draw its
    pipelines make for the initial latents (Wan, AnimateDiff), so a seed gives both the same noise.
    """
    g = torch.Generator("cpu").manual_seed(int(seed))
    return torch.randn(shape, generator=g, dtype=torch.float32).to(device)


def step_generator(shape, seed: int) -> torch.Generator:
    """The generator of an ancestral scheduler's step noise: the seed's stream after the initial noise's draw.

    diffusers hands its one generator first to the initial noise, then to every `scheduler.step`; drawing
    the noise's shape from a fresh generator puts this one where diffusers' is when the steps begin.
    """
    g = torch.Generator("cpu").manual_seed(int(seed))
    torch.randn(shape, generator=g, dtype=torch.float32)
    return g


def clip_inputs(settings: Settings, inputs: DenoiserInputs | None = None) -> DenoiserInputs:
    """`inputs` with the whole clip's length the denoiser is told (`motion_length`, else the clip's frames), the
    settings' control, a new step cache and the guidance interval.

    Every denoiser call of a clip, each window's included, gets it (denoisers without a length input ignore it);
    the step cache is made fresh by each guided predictor (`loop.guided`): one per clip, window group or window.
    """
    inputs = replace(inputs or DenoiserInputs(), clip_frames=settings.motion_length or settings.frames)
    if settings.control is not None and inputs.control is None:
        inputs = replace(inputs, control=settings.control, control_scale=settings.control_scale)
    if settings.cache != "none" and inputs.cache is None:
        inputs = replace(inputs, cache=StepCache(settings.cache, settings.steps))
    if settings.guidance_interval is not None and inputs.guidance_interval is None:
        inputs = replace(inputs, guidance_interval=tuple(settings.guidance_interval))
    return inputs


def sample(
    model,
    text: TextEmbeds,
    uncond: TextEmbeds | None,
    settings: Settings,
    timings: Timings,
    cond: FrameCondition | None = None,
    init: torch.Tensor | None = None,
    strength: float = 1.0,
    hooks: list[Hook] | tuple = (),
    progress: bool = True,
    known: FrameCondition | None = None,
    noise: torch.Tensor | None = None,
    predict: Predict | None = None,
    desc: str = "denoise",
    inputs: DenoiserInputs | None = None,
    noised: bool = True,
) -> torch.Tensor:
    """Noise (or `init` latents noised to `strength`) -> clean latents, through the one loop.

    `cond` is what the denoiser sees; `known` is what KnownFrames re-injects after every step (None:
    nothing), so a driver can show the denoiser noise-augmented latents yet keep the clean ones
    (image-to-video). `inputs` are the denoiser's per-call inputs, told the clip's length here
    (`clip_inputs`). `noise` replaces the seeded Gaussian (FreeNoise, continuation windows) and
    `predict` the guided denoiser (window fusion; built with `clip_inputs(settings)`); both default to
    plain text-to-video. `noised` False starts the loop at `init` itself (an edit that carries the clean
    source down the schedule: FlowEdit).
    """
    t0 = time.perf_counter()
    if noise is None:
        noise = initial_noise(latent_shape(model, settings), settings.seed, model.device)
    noise = noise.to(model.device)
    scheduler = make_scheduler(settings.scheduler, model.scheduler_config, settings.shift)
    start = set_timesteps(scheduler, settings.steps, strength, device=model.device)
    level0 = step_levels(scheduler, start)[0][0]  # x = a x0 + b noise at the first step that runs
    if init is None:  # noise alone (x init_noise_sigma for the DDPM family, as diffusers)
        latents = initial_latents(scheduler, noise)
    else:  # the source noised to the first step's level (SDEdit), or the clean source (FlowEdit)
        latents = level0.noised(init, noise) if noised else init.clone()
    hooks = list(hooks)
    if known is not None and known.any:
        hooks.append(KnownFrames(known, noise))
        latents = hooks[-1].after_step(-1, level0, latents)
    if predict is None:
        inputs = clip_inputs(settings, inputs)
        predict = guided(model.denoiser, text, uncond, settings.guidance, cond, timings.denoiser, inputs)
    elif inputs is not None:
        raise ValueError("a given `predict` carries its own inputs (guided / fused_predict with clip_inputs)")
    ancestral = prediction_of(scheduler) != "flow"  # ancestral steps' noise (DDPM family only)
    generator = step_generator(noise.shape, settings.seed) if ancestral else None
    with torch.inference_mode():
        latents = denoise(predict, latents, scheduler, start, hooks, progress, desc, generator)
    timings.add("denoise", time.perf_counter() - t0)
    return latents


def encode_video(model, frames: np.ndarray, timings: Timings) -> torch.Tensor:
    """uint8 (F, H, W, 3) -> latents (1, C, f, h, w), float32, in the model's dtype on its device.

    A frame-wise VAE sees chunks of `encode_chunk_size` frames (memory bounded by the chunk); a causal
    VAE that compresses time (Wan) needs the clip whole.
    """
    t0 = time.perf_counter()
    tc = model.vae.temporal_compression
    chunk = model.vae.encode_chunk_size if tc == 1 else len(frames)  # a causal VAE encodes the clip whole
    out = []
    with torch.inference_mode():
        for i in range(0, len(frames), chunk):
            x = to_unit(frames[i : i + chunk], model.dtype, model.device)  # (1, 3, n, H, W) in [-1, 1]
            out.append(model.vae.encode(x).float())
    timings.add("vae_encode", time.perf_counter() - t0)
    return torch.cat(out, dim=2)


def decode(model, latents: torch.Tensor, settings: Settings, timings: Timings) -> np.ndarray:
    """Latents -> uint8 frames, decoded `decode_chunk_size` latent frames at a time."""
    t0 = time.perf_counter()
    with torch.inference_mode():
        chunks = [to_uint8(v) for v in model.vae.decode_chunks(latents, settings.decode_chunk_size)]
    timings.add("vae_decode", time.perf_counter() - t0)
    return np.concatenate(chunks)[: settings.frames]
