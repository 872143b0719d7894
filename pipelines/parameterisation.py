"""Model outputs <-> predicted clean latents x̂0, and the noise level of every step's latents, for each scheduler.

The loop's latents at a step are always x = a x0 + b noise (a `Level`); what the model predicts from them
depends on the family's parameterisation:

    flow          (kinema, Wan)     x = (1 - s) x0 + s n,  out = n - x0             x0 = x - s out
    epsilon       (AnimateDiff)     out = n                                          x0 = (x - b out) / a
    v_prediction  (SD 2 style)      model sees x̃ = c x = α x0 + β n, out = α n - β x0   x0 = α x̃ - β out
    sample                          out = x0                                         x0 = out

with α = c a, β = c b (α² + β² = 1 for every VP/VE schedule). `c` is the scaling of the model input:
1 for flow, DDIM and DPM++ (variance preserving: a = sqrt(ᾱ), b = sqrt(1 - ᾱ)), 1 / sqrt(σ² + 1) for the
Euler-type schedulers (variance exploding: a = 1, b = σ; diffusers' `scale_model_input`). Every
conversion is affine in the model output with step-wide coefficients, so a correction of x̂0 by Δ is a
correction of the output by (∂out/∂x0) Δ (`Level.correct`): where a hook changes nothing, the output
stays bit-exact; fusing outputs of overlapping windows with weights is fusing their x̂0 with the same
weights.

`step_levels(scheduler, start)` reads each step's level from the scheduler's own numbers (its `sigmas`,
or `alphas_cumprod` at its timesteps for DDIM): the level the scheduler assumes at step i (what the
model's output is converted with) and the level its latents are at after step i (what known frames
are re-injected at). For flow schedulers these are `sigmas[i]` and `sigmas[i + 1]` as floats, so flow
families compute exactly what they computed before this module existed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from kinema.models.schedulers import PREDICTIONS, prediction_of  # noqa: F401  (what a scheduler config predicts)

EULER_TYPE = ("EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler")  # x = x0 + σ n, the model sees x / sqrt(σ² + 1)
EPS = 1e-6  # the smallest noise level divided by (flow: x0 -> velocity at s ~ 0)


@dataclass(frozen=True)
class Level:
    """Latents x = a x0 + b noise at one step; the model sees c x and predicts in `prediction`."""

    prediction: str
    a: float
    b: float
    c: float = 1.0

    @staticmethod
    def flow(sigma: float) -> "Level":
        return Level("flow", 1 - sigma, sigma)

    @staticmethod
    def vp(alpha_cumprod: float, prediction: str) -> "Level":
        """A variance-preserving level (DDIM, DPM++): a = sqrt(ᾱ), b = sqrt(1 - ᾱ)."""
        return Level(prediction, math.sqrt(alpha_cumprod), math.sqrt(1 - alpha_cumprod))

    @staticmethod
    def ve(sigma: float, prediction: str, scaled: bool = True) -> "Level":
        """A variance-exploding level (Euler): a = 1, b = σ, the model seeing x / sqrt(σ² + 1) when `scaled`."""
        return Level(prediction, 1.0, sigma, 1 / math.sqrt(sigma**2 + 1) if scaled else 1.0)

    @property
    def sigma(self) -> float:
        """The noise-to-signal ratio b / a (flow: its sigma s / (1 - s); shown in messages)."""
        return self.b if self.prediction == "flow" else self.b / max(self.a, EPS)

    def noised(self, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x0 brought to this level: a x0 + b noise."""
        return self.a * x0 + self.b * noise

    def x0(self, latents: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Predicted clean latents from the model's output at these latents."""
        p = self.prediction
        if p == "flow":
            return latents - self.b * out
        if p == "epsilon":
            return (latents - self.b * out) / max(self.a, EPS)
        if p == "v_prediction":
            alpha, beta = self.c * self.a, self.c * self.b
            return alpha * (self.c * latents) - beta * out
        return out  # sample

    def output(self, latents: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """The model output that predicts `x0` from these latents (the inverse of `x0`)."""
        p = self.prediction
        if p == "flow":
            return (latents - x0) / max(self.b, EPS)
        if p == "epsilon":
            return (latents - self.a * x0) / max(self.b, EPS)
        if p == "v_prediction":
            alpha, beta = self.c * self.a, self.c * self.b
            return (alpha * (self.c * latents) - x0) / max(beta, EPS)
        return x0

    def correct(self, out: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """`output(latents, x0(latents, out) + delta)`, written as a correction of `out` (exact where delta is 0)."""
        p = self.prediction
        if p == "flow":
            return out - delta / max(self.b, EPS)
        if p == "epsilon":
            return out - self.a * delta / max(self.b, EPS)
        if p == "v_prediction":
            return out - delta / max(self.c * self.b, EPS)
        return out + delta


def as_level(level) -> Level:
    """A Level, or a flow sigma given as a number (what hooks were handed before other parameterisations)."""
    return level if isinstance(level, Level) else Level.flow(float(level))


def step_levels(scheduler, start: int = 0) -> tuple[list[Level], list[Level]]:
    """(level of the latents at each step that runs, level after it) from the scheduler's own schedule.

    Call after `set_timesteps`. The last step's "after" level is clean for every scheduler: the loop's
    final latents are decoded as they are (DDIM with `set_alpha_to_one=False` leaves sqrt(1 - ᾱ_0) ~ 0.03 of
    noise in them, as diffusers does; known frames still go in exactly).
    """
    p = prediction_of(scheduler)
    n = len(scheduler.timesteps) - start
    name = type(scheduler).__name__
    if p == "flow":
        sig = [float(s) for s in scheduler.sigmas[start:]]
        now = [Level.flow(s) for s in sig[:n]]
        after = [Level.flow(s) for s in sig[1 : n + 1]]
        return now, after
    if name == "DDIMScheduler":  # x_t at alphas_cumprod[t]; a step lands on t - T / steps (or the final alpha)
        ac = scheduler.alphas_cumprod
        jump = scheduler.config.num_train_timesteps // scheduler.num_inference_steps
        ts = [int(t) for t in scheduler.timesteps[start:]]
        now = [Level.vp(float(ac[t]), p) for t in ts]
        after = [Level.vp(float(ac[t - jump]) if t - jump >= 0 else float(scheduler.final_alpha_cumprod), p) for t in ts]
    else:  # sigma schedules: Euler-type (variance exploding) or DPM++ / UniPC (variance preserving, sigma = b / a)
        sig = [float(s) for s in scheduler.sigmas[start : start + n + 1]]
        if name in EULER_TYPE:
            levels = [Level.ve(s, p) for s in sig]
        else:
            levels = [Level.vp(1 / (s**2 + 1), p) for s in sig]
        now, after = levels[:n], levels[1 : n + 1]
    return now, after[:-1] + [Level(p, 1.0, 0.0, 1.0)]


def model_input(scheduler, latents: torch.Tensor, t) -> torch.Tensor:
    """What the model sees at step t: `scale_model_input` for the DDPM-family schedulers; the latents for flow."""
    if prediction_of(scheduler) == "flow" or not hasattr(scheduler, "scale_model_input"):
        return latents
    return scheduler.scale_model_input(latents, t)


def initial_latents(scheduler, noise: torch.Tensor) -> torch.Tensor:
    """Latents of a clip made from noise alone: the noise (flow), or the noise x `init_noise_sigma` (diffusers)."""
    if prediction_of(scheduler) == "flow":
        return noise
    return noise * scheduler.init_noise_sigma
