"""The one denoising loop, classifier-free guidance as a wrapper, and the hooks drivers plug in.

The loop steps any parameterisation: flow matching (kinema, Wan: x_t = (1 - s) x_0 + s noise, the
denoiser predicts v = noise - x_0) and the DDPM family's epsilon or v prediction (AnimateDiff, with
diffusers' DDIM, Euler, Euler ancestral, DPM++ 2M, UniPC). `parameterisation.py` gives each step's
noise level (x = a x_0 + b noise) from the scheduler's own numbers and converts the model output to
predicted clean latents and back, so hooks work in one space for every family. The loop is written once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field, replace

import torch
from tqdm.auto import tqdm

from kinema.errors import KinemaError, NumericalError
from kinema.models.schedulers import SCHEDULERS, make_scheduler  # noqa: F401  (the solvers the loop runs)
from kinema.models.seams import DenoiserInputs, FrameCondition, TextEmbeds

from .parameterisation import Level, as_level, model_input, prediction_of, step_levels

Predict = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (model input, timestep) -> model output

# Who watches the steps of this call (the web UI's progress bar and Stop button): called after every step of
# every loop as on_step(step, steps, desc); what it raises ends the run. A context variable, not a model
# attribute, so a shared model stays re-entrant.
ON_STEP: ContextVar[Callable[[int, int, str], None] | None] = ContextVar("kinema_on_step", default=None)


@dataclass
class Stopwatch:
    """Seconds spent inside denoiser forwards (for the loop-overhead benchmark)."""

    seconds: float = 0.0
    calls: int = 0
    cached: int = 0  # calls a step cache served (the network past its first block left out)


def set_timesteps(scheduler, steps: int, strength: float = 1.0, device=None) -> int:
    """Set `steps` timesteps and skip the first (1 - strength) of them, as diffusers' get_timesteps.

    Returns the index of the first step that runs; its sigma is where the input is noised to.
    """
    scheduler.set_timesteps(steps, device=device)
    start = steps - min(steps, int(round(steps * strength)))
    if start >= steps:
        raise KinemaError(f"strength {strength} leaves no denoising steps at {steps} steps; raise --strength or --steps")
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start)
    return start


def guided(
    denoiser,
    text: TextEmbeds,
    uncond: TextEmbeds | None,
    scale: float,
    cond: FrameCondition | None = None,
    watch: Stopwatch | None = None,
    inputs: DenoiserInputs | None = None,
) -> Predict:
    """Classifier-free guidance around a denoiser: cond and uncond batched in one forward.

    `inputs` (clip length, structure injection, image context) go to every call of the denoiser; a step cache in
    them is made fresh for this predictor, so it reuses features of its own trajectory only. Their
    `guidance_interval` limits guidance to a band of noise levels (Kynkäänniemi et al. 2024, "Applying guidance
    in a limited interval"): outside it a step runs the conditional prediction alone, one forward instead of
    two. The band is one run of steps, so a step cache serves the guided steps and the others run uncached.
    """
    use_cfg = uncond is not None and scale != 1.0
    interval = inputs.guidance_interval if inputs is not None else None
    plain_inputs = inputs
    if inputs is not None and inputs.cache is not None:
        inputs = replace(inputs, cache=inputs.cache.fresh(watch, paired=use_cfg))
        plain_inputs = replace(inputs, cache=None) if use_cfg and interval is not None else inputs
    both = TextEmbeds.cat([text, uncond]) if use_cfg else text
    pair = cond
    if cond is not None and use_cfg:
        pair = FrameCondition(torch.cat([cond.latents, cond.latents]), torch.cat([cond.mask, cond.mask]))

    def predict(latents: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        guide = use_cfg and guided_at(interval, t)
        x = torch.cat([latents, latents]) if guide else latents
        tt = t.reshape(-1).expand(x.shape[0]).to(x.device, torch.float32)
        t0 = time.perf_counter()
        if guide or not use_cfg:
            v = denoiser.predict(x.to(_dtype(denoiser)), tt, both, pair, inputs).float()
        else:  # outside the guidance interval: the conditional prediction alone
            v = denoiser.predict(x.to(_dtype(denoiser)), tt, text, cond, plain_inputs).float()
        if watch is not None:
            watch.seconds += time.perf_counter() - t0
            watch.calls += 1
        if not guide:
            return v
        v_cond, v_uncond = v.chunk(2)
        return v_uncond + scale * (v_cond - v_uncond)

    return predict


TRAIN_TIMESTEPS = 1000  # every scheduler kinema runs trains over 1000 timesteps (flow: t = 1000 sigma)


def guided_at(interval: tuple[float, float] | None, t: torch.Tensor) -> bool:
    """Whether guidance applies at timestep `t`: lo < t / 1000 <= hi, or always without an interval."""
    if interval is None:
        return True
    level = float(t.reshape(-1)[0]) / TRAIN_TIMESTEPS
    return interval[0] < level <= interval[1]


def _dtype(module) -> torch.dtype:
    return getattr(module, "dtype", torch.float32)


class Hook:
    """How drivers differ: a correction of the prediction, and of the latents after each step.

    `level` is the step's `parameterisation.Level` (a flow sigma given as a number is read as one):
    `level.x0(latents, out)` the predicted clean latents, `level.correct(out, delta)` the output moved
    by delta in x0, `level.noised(x0, noise)` clean latents at the level.
    """

    def on_prediction(self, i: int, level: Level | float, latents: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return out

    def after_step(self, i: int, level_next: Level | float, latents: torch.Tensor) -> torch.Tensor:
        return latents


@dataclass
class KnownFrames(Hook):
    """Re-inject known latent frames at the current noise level after every step (continuation, I2V)."""

    cond: FrameCondition
    noise: torch.Tensor  # the initial noise, so known frames follow the same path as the others
    final_exact: bool = True  # at the clean level the known frames are exactly the given latents

    def after_step(self, i, level_next, latents):
        lv = as_level(level_next)
        m = self.cond.mask[:, None, :, None, None].to(latents.dtype)  # (B, 1, F, 1, 1)
        known = lv.noised(self.cond.latents, self.noise)  # a x0 + b noise ((1 - s) x0 + s noise for flow)
        if lv.b == 0 and not self.final_exact:
            return latents
        return latents * (1 - m) + known.to(latents.dtype) * m


def x0_from_velocity(latents: torch.Tensor, velocity: torch.Tensor, sigma: float) -> torch.Tensor:
    """Predicted clean latents x_0 = x_t - s v (flow matching; `Level.x0` for any parameterisation)."""
    return Level.flow(sigma).x0(latents, velocity)


def velocity_from_x0(latents: torch.Tensor, x0: torch.Tensor, sigma: float) -> torch.Tensor:
    """The velocity that leads to `x0` from x_t at noise level s: v = (x_t - x_0) / s (`Level.output` for any)."""
    return Level.flow(sigma).output(latents, x0)


def _step_kwargs(scheduler, generator: torch.Generator | None) -> dict:
    """The ancestral schedulers' step noise comes from `generator` (diffusers passes the pipeline's generator)."""
    import inspect

    if generator is None or prediction_of(scheduler) == "flow":
        return {}
    return {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}


def denoise(
    predict: Predict,
    latents: torch.Tensor,
    scheduler,
    start: int = 0,
    hooks: Sequence[Hook] = (),
    progress: bool = True,
    desc: str = "denoise",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Step the scheduler from its step `start` down to clean latents (any parameterisation)."""
    timesteps = scheduler.timesteps[start:]
    now, after = step_levels(scheduler, start)  # x = a x_0 + b noise before and after each step
    kwargs = _step_kwargs(scheduler, generator)
    on_step = ON_STEP.get()
    for i, t in enumerate(tqdm(timesteps, desc=desc, disable=not progress, leave=False)):
        out = predict(model_input(scheduler, latents, t), t)  # 1. model output at this noise level (guided)
        for h in hooks:  # 2. driver corrections of the prediction (flow fusion, window fusion)
            out = h.on_prediction(i, now[i], latents, out)
        latents = scheduler.step(out, t, latents, return_dict=False, **kwargs)[0]  # 3. one solver step
        if not torch.isfinite(latents).all():  # 4. fail loudly instead of writing a black video
            raise NumericalError(
                f"non-finite latents at step {i + 1}/{len(timesteps)} (sigma {now[i].sigma:.3f}); "
                "try --dtype float32 or fewer --guidance"
            )
        for h in hooks:  # 5. re-inject what is known (frame conditions)
            latents = h.after_step(i, after[i], latents)
        if on_step is not None:  # 6. report the step (a progress bar; a Stop button raises here)
            on_step(i + 1, len(timesteps), desc)
    return latents


@dataclass
class Timings:
    """Wall-clock seconds of each phase of a run."""

    phases: dict = field(default_factory=dict)
    denoiser: Stopwatch = field(default_factory=Stopwatch)

    def add(self, name: str, seconds: float) -> None:
        self.phases[name] = self.phases.get(name, 0.0) + seconds

    def as_dict(self) -> dict:
        out = {k: round(v, 4) for k, v in self.phases.items()}
        out["denoiser_forward"] = round(self.denoiser.seconds, 4)
        out["denoiser_calls"] = self.denoiser.calls
        out["denoiser_cached"] = self.denoiser.cached
        return out
