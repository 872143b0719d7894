"""Video-to-video: restyle a clip with a new prompt, keeping its motion along the source's optical flow.

    source, fps = read_video("clip.mp4", max_frames=16)
    source = video_io.resize_frames(source, 64, 64, "crop")                 # uint8 (F, 64, 64, 3)
    result = restyle_video(model, "a green circle moving right on a black background", source,
                           settings, RestyleOptions(strength=0.7))
    result.frames                                                           # uint8 (F, 64, 64, 3)

The steps (SDEdit for the appearance, plug-and-play injection of the source's layout, flow-guided
fusion for the motion, in the spirit of PnP, Rerender-A-Video and FRESCO):

1. the chosen, resized source frames are encoded by the VAE;
2. the latents are noised to `strength` by cutting the scheduler's timesteps (diffusers' get_timesteps,
   `loop.set_timesteps`): round(steps x strength) steps run. 1 starts from pure noise (the source then
   acts only through its layout and flow); 0 runs nothing and returns the source frames as they are,
   without the model and without a VAE round trip;
3. DIS optical flow of the source, forward and backward, gives a `FlowGuide`: the flows that carry each
   frame into the next, resized to the latent grid, and a mask of where they hold (forward-backward
   consistency and a photometric check, see `flow.py`);
4. during the first `structure` fraction of the steps that run, `SourceStructure` runs the denoiser on
   the source latents noised to the step's level (same noise, empty prompt) and lends the guided pass
   that pass's self-attention queries and keys and mid-level decoder features (a `seams.Injection`
   made for that call, `DenoiserInputs.injection`): where things are and how they move come from the
   source, what they look like from the prompt;
5. during the first `flow_steps` fraction of the steps, the `FlowFusion` hook turns the velocity into
   the predicted clean latents x0 = x_t - s v, pulls each frame t+1 of x0 toward the warp of the
   already-fused frame t (weight `flow_strength` x mask) and turns the result back into a velocity;
6. decode in chunks; with `pixel_fusion`, the same propagation once more on the decoded frames at full
   resolution (weight `flow_strength`), against residual flicker.

Defaults. `RestyleOptions` holds plain SDEdit values (strength 0.7, no structure); the front door fills
strength and structure left as None from the model folder (`resolve_restyle_options`: `restyle_strength`,
`restyle_structure`, and `restyle_guidance` for the scale, in kinema.json `defaults`). The default model's, chosen with
`scripts/bench_restyle.py --first-clip 1000` (world clips other than the benchmark's) on its
21,000-step weights, are strength 0.9, structure 0.3, guidance 7.5, flow_steps 0:
- plain SDEdit has no good strength on this model: at 0.7 the source's colour survives in the 0.3 of
  it the noised latents hold and small objects come out faint or in the source's colour (tuning clips
  92% recoloured, benchmark clips 67%), while at 0.9 the prompt wins but the layout is lost (10 px
  mean track error). With the source's layout injected, a high strength can recolour and keep the
  track: at 0.9, structure 0.3 gave 100% / 2.6 px at guidance 5 and 92% / 2.2 px at 7.5 (SDEdit at 0.7:
  92% / 3.0 px); injecting longer (0.5) or at strength 1 held the layout closer but kept more of the
  source's colour (67-83%); the 4x4 level alone held it loosely (4 px at 0.9);
- the injected level is the second-finest decoder level (8x8 latents here): without it (attention
  queries/keys alone) the layout did not follow the source at all (10 px at 0.9);
- flow_steps 0: fusing the predicted latents along the flow cost track on the 21,000-step weights
  (4.6 px against 3.0 px without, at strength 0.7), since every fusion resamples the latents
  bilinearly on a coarse grid; the pixel fusion alone cuts the warp error to ~0.4-0.5 of the
  unguided run's;
- the pixel fusion is gated by content (`flow.PIXEL_FUSION_TOLERANCE`): ungated, it smeared the
  output's object along the source's flow wherever the two did not line up (a trail, or an object
  faded out); with the gate the chosen setting gives 92% / 2.26 px on the tuning clips (figures
  above are without it; `docs/default-model/restyle-structure/`);
- flow_strength 0.8, not 1: each frame keeps a fifth of its own estimate, so a flow error the mask
  missed is copied only in part and does not run on along the chain of frames.

Long sources: beyond the model's trained length, the denoiser runs on context windows fused every step
(`long_video.window_sampler`, as long clips do: FreeNoise noise; `context_length`, `context_stride`);
the flow fusion sees the fused estimate of the whole clip, so consistency holds across window borders.
The source's layout is injected window by window: each window's pass reads its own slice of the noised
source. Peak denoiser memory is set by the window; the source, its flows and the output are held whole
(`resources.restyle_host_bytes`), and the front door refuses a clip that would not fit before anything
is read.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from kinema.errors import require

from kinema.models.seams import DenoiserInputs, Injection, TextEmbeds

from .common import (
    Result, Settings, clip_inputs, decode, encode_prompts, encode_video, initial_noise, latent_shape, sample,
)
from .flow import FlowGuide, pixel_fusion, source_flow
from .long_video import window_sampler
from .loop import Hook, Timings, guided, make_scheduler, set_timesteps
from .parameterisation import as_level, prediction_of

MIN_FLOW_SIDE = 16  # DIS needs frames of at least 16x16 (flow._check_frames)


#################################################################################
#                                   Options                                     #
#################################################################################


# Restyle settings a model folder can set in kinema.json `defaults` (restyle_strength, restyle_structure,
# restyle_guidance); a model that sets none restyles by plain SDEdit at 0.7 with the flow fusion.
MODEL_DEFAULTS = dict(strength=0.7, structure=0.0)


@dataclass(frozen=True)
class RestyleOptions:
    """How far the source is left behind, and how its latents and flow guide the denoising.

    `strength` and `structure` may be None: the model's defaults (`resolve_restyle_options`).
    """

    strength: float | None = 0.7  # 0 keeps the source, 1 ignores it (but for its layout and flow)
    flow: bool = True  # fuse along the source flow (latents during flow_steps; pixels with pixel_fusion)
    flow_steps: float = 0.0  # fraction of the steps that run, from the first, during which to fuse latents
    flow_strength: float = 0.8  # blend weight toward the warped previous frame where the flow holds
    pixel_fusion: bool | None = None  # a last fusion of the decoded frames; None: when `flow` is on
    structure: float | None = 0.0  # fraction of the steps that run, from the first, with the source's layout injected
    method: str | None = "sdedit"  # sdedit, or flowedit (inversion-free: `FlowEdit`); None: the model's
    source_prompt: str | None = None  # flowedit: what the source shows (None: the empty prompt)
    n_avg: int | None = None  # flowedit: noise draws averaged per step (None: 1)
    tail: float = 0.0  # flowedit: fraction of the steps that run, at the end, sampled plainly from the edit

    def __post_init__(self):
        if self.pixel_fusion is None:  # fixed once, as the options are made
            object.__setattr__(self, "pixel_fusion", self.flow)

    @property
    def resolved(self) -> bool:
        return self.strength is not None and self.structure is not None

    def as_dict(self) -> dict:
        return asdict(self)


METHODS = ("sdedit", "flowedit")


def resolve_restyle_options(options: RestyleOptions, model_defaults: Mapping, steps: int,
                            prediction: str = "flow") -> RestyleOptions:
    """New options: None strength/structure/method from the model's `restyle_*` defaults (else MODEL_DEFAULTS),
    checked for `steps`. FlowEdit takes no source layout: its structure is 0 unless given (an error then).

    FlowEdit is an edit of a flow ODE (the difference of two velocities integrated with Euler from the clean
    source); a model of another `prediction` (AnimateDiff's epsilon) restyles by SDEdit."""
    method = options.method if options.method is not None else model_defaults.get("restyle_method", "sdedit")
    require(method in METHODS, f"unknown restyle method {method!r}; use {' or '.join(METHODS)}")
    require(method != "flowedit" or prediction == "flow",
            f"--method flowedit edits along a flow-matching model's velocities; this model predicts {prediction}: "
            "use --method sdedit (its --strength noises the source with the scheduler's own alphas)")
    options = replace(options, method=method)
    if method == "flowedit":
        require(options.structure in (None, 0), "--structure injects the source's layout into SDEdit's passes; "
                                                "FlowEdit keeps the source without it: drop --structure or use --method sdedit")
        require(options.flow_steps == 0, "--flow-steps fuses SDEdit's predicted latents; with --method flowedit the "
                                         "decoded frames are fused (--pixel-fusion): drop --flow-steps")
        options = replace(options, structure=0.0, n_avg=1 if options.n_avg is None else options.n_avg,
                          source_prompt="" if options.source_prompt is None else options.source_prompt)
        require(isinstance(options.n_avg, int) and not isinstance(options.n_avg, bool) and options.n_avg >= 1,
                f"--n-avg must be a whole number >= 1 (noise draws averaged per step); got {options.n_avg}")
        tail = options.tail
        require(isinstance(tail, (int, float)) and not isinstance(tail, bool) and math.isfinite(tail) and 0 <= tail < 1,
                f"--tail must be a number in [0, 1) (the fraction of the steps sampled plainly at the end); got {tail}")
    else:
        for name, flag in (("source_prompt", "--source-prompt"), ("n_avg", "--n-avg")):
            require(getattr(options, name) is None, f"{flag} is read by --method flowedit only; drop it or pass --method flowedit")
        require(options.tail == 0, "--tail is read by --method flowedit only; drop it or pass --method flowedit")
    filled = {name: float(model_defaults.get(f"restyle_{name}", fallback))
              for name, fallback in MODEL_DEFAULTS.items() if getattr(options, name) is None}
    return check_options(replace(options, **filled), steps)


def denoise_steps(steps: int, strength: float) -> int:
    """Steps that run at `strength`: the rule of `loop.set_timesteps` (diffusers' get_timesteps)."""
    return min(steps, int(round(steps * strength)))


def fusion_steps(run_steps: int, flow_steps: float) -> int:
    """Loop steps (from the first that runs) during which a guide acts: ceil(fraction x run_steps)."""
    return min(run_steps, math.ceil(flow_steps * run_steps - 1e-9))


def check_options(options: RestyleOptions, steps: int | None = None) -> RestyleOptions:
    """One-line errors for weights outside [0, 1], and for a strength that runs no step at `steps`."""
    for name, hint in (("strength", "0 keeps the source, 1 ignores it"),
                       ("flow_steps", "the fraction of the denoising steps that fuse along the flow"),
                       ("structure", "the fraction of the denoising steps that take the source's layout"),
                       ("flow_strength", "the blend weight toward the flow-warped previous frame")):
        v = getattr(options, name)
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and 0 <= v <= 1
        require(ok, f"--{name.replace('_', '-')} must be a number in [0, 1] ({hint}); got {v}")
    if steps is not None and options.strength > 0:
        require(denoise_steps(steps, options.strength) >= 1,
                f"--strength {options.strength} runs no denoising step at --steps {steps} (round(steps x strength) = 0); "
                "raise --strength or --steps, or pass --strength 0 to keep the source unchanged")
    return options


#################################################################################
#                                 Flow fusion                                   #
#################################################################################


@dataclass
class FlowFusion(Hook):
    """Pull each frame's predicted clean latents toward the previous frame's, carried along the source flow."""

    guide: FlowGuide
    strength: float
    steps: int  # fuse at loop steps i < steps, counted from the first step that runs

    def on_prediction(self, i, level, latents, out):
        if i >= self.steps or self.strength == 0:
            return out
        lv = as_level(level)
        x0 = lv.x0(latents, out)  # 1. predicted clean latents (x_t - s v for flow)
        fused = self.guide.propagate(x0, self.strength)  # 2. carried frame to frame where the flow holds
        # 3. back to a model output: lv.output(latents, fused), written as a correction so that where
        #    fusion changes nothing (frame 0, unreliable pixels, a static scene) the output stays bit-exact
        return lv.correct(out, fused - x0)


def flow_guide(model, source: np.ndarray, timings: Timings, every_frame: bool = False) -> FlowGuide:
    """The source's FlowGuide on the model's latent grid: one entry per latent frame, or per frame."""
    t0 = time.perf_counter()
    s = model.vae.spatial_compression
    tc = 1 if every_frame else model.vae.temporal_compression
    require((len(source) - 1) % tc == 0, f"this model's VAE compresses time by {tc}: restyle {tc}k+1 frames "
                                         f"(got {len(source)}); adjust --max-frames")
    guide = source_flow(source, (source.shape[1] // s, source.shape[2] // s), frame_stride=tc)
    timings.add("optical_flow", time.perf_counter() - t0)
    return guide


def fuse_pixels(frames: np.ndarray, guide: FlowGuide, strength: float) -> np.ndarray:
    """`flow.pixel_fusion` on uint8 (F, H, W, 3) frames, back to uint8."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2)[None].float()  # (1, 3, F, H, W) 0..255
    out = pixel_fusion(x, guide, strength)
    return out[0].permute(1, 2, 3, 0).round().clamp(0, 255).to(torch.uint8).numpy()


#################################################################################
#                                   FlowEdit                                    #
#################################################################################


@dataclass
class FlowEdit(Hook):
    """FlowEdit (Kulikov et al. 2024), inversion-free editing for flow models, as a predict on the one loop.

    The loop's latents are the edit Z, starting at the clean source latents X (`sample(noised=False)`).
    At a step of sigma s: draw N; Z_src = (1 - s) X + s N; Z_tar = Z + Z_src - X; the velocity handed to
    the Euler step is V(Z_tar, prompt) - V(Z_src, source prompt), each guided, the two in one forward
    (`n_avg` draws averaged). Where the prompts agree and Z = X the two rows are the same, so the edit
    stays at X: the source comes back as its VAE reconstruction. The last `plain` steps sample plainly:
    after the step before them the latents become Z_tar at the next sigma (Z + s'(N - X)) and the velocity
    is the prompt's alone (the paper's n_min).
    """

    edit: object  # guided predict over rows (Z_tar, Z_src) with texts (prompt, source prompt)
    plain_predict: object  # guided predict of the prompt alone
    source: torch.Tensor  # X (1, C, F, h, w)
    generator: torch.Generator
    n_avg: int
    plain_from: int  # loop step (from the first that runs) where plain sampling starts
    plain_t: float  # its timestep (-1: none)
    train_steps: int = 1000

    def _noise(self) -> torch.Tensor:
        n = torch.randn(self.source.shape, generator=self.generator, dtype=torch.float32)
        return n.to(self.source.device)

    def predict(self, latents: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if float(t.reshape(-1)[0]) <= self.plain_t:
            return self.plain_predict(latents, t)
        sigma = float(t.reshape(-1)[0]) / self.train_steps
        delta = torch.zeros_like(latents)
        for _ in range(self.n_avg):
            z_src = (1 - sigma) * self.source + sigma * self._noise()
            v = self.edit(torch.cat([latents + z_src - self.source, z_src]), t)
            delta += v[: len(latents)] - v[len(latents):]
        return delta / self.n_avg

    def after_step(self, i, level, latents):
        if i == self.plain_from - 1:  # into the plain tail: the edit noised to the next sigma
            return latents + as_level(level).b * (self._noise() - self.source)
        return latents


def flowedit(model, prompt: str, settings: Settings, options: RestyleOptions, init: torch.Tensor, run: int,
             timings: Timings) -> FlowEdit:
    """The FlowEdit of a restyle: prompt and source prompt encoded, the plain tail's first step placed."""
    require(prediction_of(model.scheduler_config) == "flow", "FlowEdit edits along a flow-matching model's "
                                                             "velocities; restyle this model with --method sdedit")
    text, uncond = encode_prompts(model, prompt, settings, timings)
    t0 = time.perf_counter()
    src = model.text_encoder.encode([options.source_prompt]).to(model.device, model.dtype)
    timings.add("text_encode", time.perf_counter() - t0)
    inputs = clip_inputs(settings)
    pair = TextEmbeds.cat([text, TextEmbeds(src.hidden, src.mask)])
    edit = guided(model.denoiser, pair, None if uncond is None else uncond.repeat(2), settings.guidance, None,
                  timings.denoiser, inputs)
    plain = guided(model.denoiser, text, uncond, settings.guidance, None, timings.denoiser, inputs)
    plain_steps = fusion_steps(run, options.tail)
    scheduler = make_scheduler(settings.scheduler, model.scheduler_config, settings.shift)
    start = set_timesteps(scheduler, settings.steps, options.strength)
    plain_t = float(scheduler.timesteps[start + run - plain_steps]) if plain_steps else -1.0
    train_steps = int(model.scheduler_config.get("num_train_timesteps", 1000))
    generator = torch.Generator().manual_seed(settings.seed)
    return FlowEdit(edit, plain, init, generator, options.n_avg, run - plain_steps, plain_t, train_steps)


#################################################################################
#                              Source structure                                 #
#################################################################################


@dataclass(frozen=True)
class SourceStructure:
    """A denoiser whose calls down to timestep `until` take their layout from the source (plug-and-play injection).

    Each such call first runs the denoiser on the source latents noised to the same level with the
    same noise (x_s = (1 - s) source + s noise) and an empty prompt, recording its self-attention
    queries and keys and its mid-level decoder features (`seams.Injection`, made for this call), then
    runs the guided pass replaying those in place of its own; calls at lower timesteps are the plain
    denoiser. The call's timestep alone decides, so one SourceStructure serves interleaved calls.
    """

    denoiser: object
    source: torch.Tensor  # clean source latents (1, C, F, h, w)
    noise: torch.Tensor  # the noise the sample starts from
    text: TextEmbeds  # what the source pass reads: the empty prompt
    until: float  # the timestep of the last step that takes the source's layout (`structure_until`)
    train_steps: int = 1000  # timestep = sigma x train_steps (flow matching)

    @property
    def dtype(self) -> torch.dtype:
        return getattr(self.denoiser, "dtype", torch.float32)

    def predict(self, latents, timestep, text, cond=None, inputs: DenoiserInputs | None = None):
        inputs = inputs or DenoiserInputs()
        if float(timestep.reshape(-1)[0]) < self.until:
            return self.denoiser.predict(latents, timestep, text, cond, inputs)
        t = timestep.reshape(-1)[: len(self.source)]
        sigma = float(t[0]) / self.train_steps
        x = ((1 - sigma) * self.source + sigma * self.noise).to(self.dtype)
        injection = Injection.record()  # the source's pass records, the guided pass replays
        self.denoiser.predict(x, t, self.text, None, replace(inputs, injection=injection))
        return self.denoiser.predict(latents, timestep, text, cond, replace(inputs, injection=injection.replay()))


def empty_text(model, timings: Timings) -> TextEmbeds:
    """The empty prompt, which the source pass reads."""
    t0 = time.perf_counter()
    emb = model.text_encoder.encode([""]).to(model.device, model.dtype)
    timings.add("text_encode", time.perf_counter() - t0)
    return TextEmbeds(emb.hidden, emb.mask)


def structure_until(model, settings: Settings, strength: float, steps: int) -> float:
    """The timestep of the `steps`-th step that runs at `strength`: the last that takes the source's layout.

    The same scheduler settings as `common.sample`, so the timesteps are those the loop will pass.
    """
    scheduler = make_scheduler(settings.scheduler, model.scheduler_config, settings.shift)
    start = set_timesteps(scheduler, settings.steps, strength)
    return float(scheduler.timesteps[start + steps - 1])


def structure_denoiser(model, source: torch.Tensor, noise: torch.Tensor, text: TextEmbeds, until: float) -> SourceStructure:
    """`SourceStructure` around the model's denoiser (source and noise with one batch row per window)."""
    train_steps = int(model.scheduler_config.get("num_train_timesteps", 1000))
    return SourceStructure(model.denoiser, source, noise, text.repeat(len(source)), until, train_steps)


#################################################################################
#                                    Driver                                     #
#################################################################################


def prompted(model, prompt: str, settings: Settings, init: torch.Tensor, structured: int, until: float | None, long,
             timings: Timings):
    """(text, uncond, noise, predict, windows info) of a restyle: plain, the source's layout injected, or in windows.

    `noise` and `predict` None: `sample`'s seeded noise and guided denoiser (plain SDEdit).
    """
    empty = empty_text(model, timings) if structured else None

    def per_windows(spans, noise):  # the source's layout, window by window (batched windows stacked)
        pick = lambda x: torch.cat([x[:, :, s:e] for s, e in spans]).to(model.device)  # noqa: E731
        return structure_denoiser(model, pick(init), pick(noise), empty, until)

    if long is not None:  # a text per window, FreeNoise noise, windows fused before each step (each with its source slice)
        require(not long.follow_motion, "restyled windows keep the source's motion; --follow-motion does not apply")
        w = window_sampler(model, prompt, settings, long, timings, per_windows if structured else None)
        return w.text, w.uncond, w.noise, w.predict, w.info
    text, uncond = encode_prompts(model, prompt, settings, timings)  # the prompt (and negative)
    if not structured:
        return text, uncond, None, None, None
    noise = initial_noise(latent_shape(model, settings), settings.seed, model.device)  # the source's layout injected
    denoiser = structure_denoiser(model, init, noise, empty, until)
    return text, uncond, noise, guided(denoiser, text, uncond, settings.guidance, None, timings.denoiser,
                                       clip_inputs(settings)), None


def fuse_decoded(model, frames: np.ndarray, source: np.ndarray, guide: FlowGuide, strength: float,
                 timings: Timings) -> np.ndarray:
    """The last fusion, of the decoded frames at full resolution (a VAE that compresses time: flow of every frame)."""
    t0 = time.perf_counter()
    if guide.frames != len(frames):  # the latent guide skips frames
        guide = flow_guide(model, source, timings, every_frame=True)
    frames = fuse_pixels(frames, guide, strength)
    timings.add("pixel_fusion", time.perf_counter() - t0)
    return frames


def restyle_video(
    model, prompt: str, source: np.ndarray, settings: Settings, options: RestyleOptions, long=None,
    progress: bool = True,
) -> Result:
    """Restyle uint8 frames (F, H, W, 3) at the settings' size as `prompt` says, keeping their motion.

    `options` are taken as given (resolved: `resolve_restyle_options`); `long` (resolved `LongOptions`,
    window mode) runs the denoiser on context windows, None all frames at once. With strength 0 the
    source comes back unchanged and `model` is not used.
    """
    shape = (settings.frames, settings.height, settings.width, 3)
    require(source.shape == shape, f"the source is {source.shape}, not {shape}; choose and resize frames first")
    require(options.resolved, "restyle_video takes resolved options: strength and structure from "
                              "resolve_restyle_options(options, model.defaults, settings.steps)")
    timings, t0 = Timings(), time.perf_counter()
    run = denoise_steps(settings.steps, options.strength)
    fused = fusion_steps(run, options.flow_steps) if options.flow else 0
    structured = fusion_steps(run, options.structure)
    info = dict(restyle=dict(options.as_dict(), denoise_steps=run, fused_steps=fused, structure_steps=structured,
                             fps=settings.fps))
    if options.strength == 0:  # 0. nothing to change: the source as it is, no VAE round trip
        timings.add("total", time.perf_counter() - t0)
        return Result(source.copy(), torch.empty(0), timings, info)
    editing = options.method == "flowedit"
    require(not editing or long is None, "--method flowedit restyles sources up to the model's trained length; "
                                         "pass --max-frames, or --method sdedit for longer sources")
    require(not editing or settings.scheduler == "euler", "FlowEdit steps with Euler: pass --scheduler euler")
    init = encode_video(model, source, timings).to(model.device)  # 1. encode the source
    guide = flow_guide(model, source, timings) if options.flow or options.pixel_fusion else None  # 3. source flow
    if guide is not None:
        info["restyle"]["reliable_fraction"] = round(float(guide.mask.mean()), 4) if guide.frames > 1 else None
    if editing:  # 2. FlowEdit from the clean source; the decoded frames are fused below
        edit = flowedit(model, prompt, settings, options, init, run, timings)
        latents = sample(model, None, None, settings, timings, init=init, strength=options.strength, hooks=[edit],
                         progress=progress, predict=edit.predict, noised=False)
    else:
        until = structure_until(model, settings, options.strength, structured) if structured else None
        text, uncond, noise, predict, windows = prompted(model, prompt, settings, init, structured, until, long,
                                                         timings)  # 2. encode prompt; the source's layout; windows
        if windows is not None:
            info["long"] = windows
        hooks = [FlowFusion(guide, options.flow_strength, fused)] if options.flow else []  # 4-5. flow fusion
        latents = sample(model, text, uncond, settings, timings, init=init, strength=options.strength, hooks=hooks,
                         progress=progress, noise=noise, predict=predict)  # noise to strength, denoise
    frames = decode(model, latents, settings, timings)  # 6. decode in chunks
    if options.pixel_fusion:  # 7. last fusion at full resolution
        frames = fuse_decoded(model, frames, source, guide, options.flow_strength, timings)
    timings.add("total", time.perf_counter() - t0)
    return Result(frames, latents, timings, info)
