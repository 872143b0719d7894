"""The solvers kinema runs, built from a model folder's scheduler config: flow-matching Euler and UniPC, and for
epsilon / v-prediction folders (AnimateDiff) diffusers' DDIM, Euler, Euler ancestral, DPM++ 2M and UniPC.

A family's folder names its own (`ModelDefaults.scheduler`: Euler for kinema, UniPC for Wan); the
loop (`pipelines/loop.py`) steps whichever it is given. The names feed the CLI's `--scheduler` choices.
Euler is kinema's own `FlowMatchEuler`: diffusers' `FlowMatchEulerDiscreteScheduler` for the one
configuration kinema builds (a static shift), the same timesteps, sigmas and steps to the last bit
(`tests/test_native.py`), without importing diffusers; UniPC is diffusers'.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from kinema.errors import KinemaError

from .pretrained import Config

SCHEDULERS = ("euler", "unipc", "ddim", "euler-ancestral", "dpm++2m")
FLOW_SCHEDULERS = ("euler", "unipc")  # flow matching (kinema, Wan)
# the DDPM family (epsilon / v prediction: AnimateDiff): kinema's name -> diffusers' class and the settings it adds
DDPM_SCHEDULERS = {
    "ddim": ("DDIMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler-ancestral": ("EulerAncestralDiscreteScheduler", {}),
    "dpm++2m": ("DPMSolverMultistepScheduler", dict(algorithm_type="dpmsolver++", solver_order=2)),
    "unipc": ("UniPCMultistepScheduler", {}),
}
DDPM_CLASSES = {cls: name for name, (cls, _) in DDPM_SCHEDULERS.items()}


PREDICTIONS = ("flow", "epsilon", "v_prediction", "sample")


def prediction_of(scheduler_or_config) -> str:
    """The parameterisation a scheduler (or its config) steps: flow, epsilon, v_prediction or sample.

    A config with betas (`beta_schedule`, `trained_betas`: the DDPM family) predicts its `prediction_type`
    (diffusers' default: epsilon) unless it uses flow sigmas; any other (kinema's FlowMatchEuler) is flow.
    """
    cfg = getattr(scheduler_or_config, "config", scheduler_or_config)
    get = cfg.get if isinstance(cfg, dict) else (lambda k, d=None: getattr(cfg, k, d))
    kind = get("prediction_type", None)
    ddpm = get("beta_schedule", None) is not None or get("trained_betas", None) is not None
    if kind == "flow_prediction" or get("use_flow_sigmas", False) or not (ddpm or kind in PREDICTIONS):
        return "flow"
    kind = kind or "epsilon"
    if kind not in PREDICTIONS:
        raise ValueError(f"unknown prediction type {kind!r}; kinema steps {', '.join(PREDICTIONS)}")
    return kind


def schedulers_for(prediction: str) -> tuple[str, ...]:
    """The `--scheduler` names a family of this parameterisation (flow, epsilon, v_prediction) can step."""
    return FLOW_SCHEDULERS if prediction == "flow" else tuple(DDPM_SCHEDULERS)
# diffusers' FlowMatchEulerDiscreteScheduler config with its defaults: what `FlowMatchEuler.config` reports
# (and `kinema init` writes), so folders and the Wan adapter's comparison read the same keys
EULER_CONFIG = dict(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False, base_shift=0.5, max_shift=1.15,
                    base_image_seq_len=256, max_image_seq_len=4096, invert_sigmas=False, shift_terminal=None,
                    use_karras_sigmas=False, use_exponential_sigmas=False, use_beta_sigmas=False,
                    time_shift_type="exponential", stochastic_sampling=False)


def make_scheduler(kind: str, config: dict, shift: float | None = None):
    """A scheduler from a model's scheduler config: flow matching (its training timesteps; `shift` overrides its
    shift), or for an epsilon / v-prediction config (AnimateDiff) diffusers' class of `kind` built from it."""
    if prediction_of(config) != "flow":
        return _ddpm_scheduler(kind, config)
    shift = float(config.get("shift", 1.0) if shift is None else shift)
    n = int(config.get("num_train_timesteps", 1000))
    if kind == "euler":  # LTX-Video folders ask for the LTX pipelines' sigmas (`models/ltx.py`)
        return FlowMatchEuler(num_train_timesteps=n, shift=shift, linear=config.get("sigma_schedule") == "linear",
                              shift_terminal=config.get("shift_terminal") if config.get("sigma_schedule") else None)
    if kind == "unipc":
        from diffusers import UniPCMultistepScheduler

        return UniPCMultistepScheduler(
            num_train_timesteps=n, prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift
        )
    raise KinemaError(f"unknown scheduler {kind!r}; choose one of {', '.join(SCHEDULERS)}")


def _ddpm_scheduler(kind: str, config: dict):
    """diffusers' `kind` scheduler from an SD-style config (betas, prediction type, spacing, offset carry over)."""
    import diffusers

    if kind not in DDPM_SCHEDULERS:
        raise KinemaError(f"unknown scheduler {kind!r} for this epsilon / v-prediction model; choose one of "
                          f"{', '.join(DDPM_SCHEDULERS)}")
    cls, extra = DDPM_SCHEDULERS[kind]
    own = {k: v for k, v in config.items() if not k.startswith("_")}
    if config.get("_class_name") != cls:  # another class's settings: keep what they share, drop the rest
        own = {k: v for k, v in own.items() if k not in ("algorithm_type", "solver_order", "use_karras_sigmas")}
    return getattr(diffusers, cls).from_config({**own, **extra})


@dataclass
class SchedulerOutput:
    prev_sample: torch.Tensor


class FlowMatchEuler:
    """Euler steps of the flow x_t = (1 - sigma) x0 + sigma noise, sigma shifted as sigma' = s sigma / (1 + (s - 1) sigma).

    diffusers' FlowMatchEulerDiscreteScheduler with a static shift (no dynamic shifting, Karras,
    exponential or beta sigmas, stochastic sampling): the same numbers, computed the same way.
    """

    order = 1
    init_noise_sigma = 1.0

    def __init__(self, num_train_timesteps: int = 1000, shift: float = 1.0, linear: bool = False,
                 shift_terminal: float | None = None):
        self.config = Config(EULER_CONFIG, num_train_timesteps=num_train_timesteps, shift=shift,
                             shift_terminal=shift_terminal)
        self.shift = shift
        self.linear = linear  # sigmas linspace(1, 1/N, N) before the shift, as diffusers' LTX pipelines pass them
        n = num_train_timesteps
        t = torch.from_numpy(np.linspace(1, n, n, dtype=np.float32)[::-1].copy()).to(dtype=torch.float32)
        sigmas = self._shifted(t / n)  # the training schedule (float32), as diffusers computes it
        self.timesteps, self.sigmas = sigmas * n, sigmas
        self.sigma_min, self.sigma_max = self.sigmas[-1].item(), self.sigmas[0].item()
        self.num_inference_steps = None
        self._step_index = self._begin_index = None

    def _shifted(self, sigmas):
        return self.shift * sigmas / (1 + (self.shift - 1) * sigmas)

    @property
    def step_index(self) -> int | None:
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """The index of the first step that runs (a restyle skips the first ones)."""
        self._begin_index = begin_index

    def set_timesteps(self, num_inference_steps: int, device: torch.device | str | None = None) -> None:
        """`num_inference_steps` timesteps evenly spaced from the first training one to the last, then shifted."""
        n = self.config.num_train_timesteps
        if self.linear:  # the LTX pipelines' sigmas (float32), shifted, stretched to end at shift_terminal
            sigmas = self._shifted(np.linspace(1.0, 1 / num_inference_steps, num_inference_steps).astype(np.float32))
            if self.config.shift_terminal:
                one_minus = 1 - sigmas
                sigmas = 1 - one_minus / (one_minus[-1] / (1 - self.config.shift_terminal))
        else:
            timesteps = np.linspace(self.sigma_max * n, self.sigma_min * n, num_inference_steps)  # float64, as diffusers
            sigmas = self._shifted(timesteps / n)
        sigmas = torch.from_numpy(sigmas).to(dtype=torch.float32, device=device)
        self.num_inference_steps = num_inference_steps
        self.timesteps = sigmas * n
        self.sigmas = torch.cat([sigmas, torch.zeros(1, device=sigmas.device)])
        self._step_index = self._begin_index = None

    def index_for_timestep(self, timestep, schedule_timesteps: torch.Tensor | None = None) -> int:
        indices = ((self.timesteps if schedule_timesteps is None else schedule_timesteps) == timestep).nonzero()
        return indices[1 if len(indices) > 1 else 0].item()

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, return_dict: bool = True):
        """x_{t_next} = x_t + (sigma_next - sigma) v, in float32, returned in the model output's dtype."""
        if isinstance(timestep, int) or (isinstance(timestep, torch.Tensor) and not timestep.is_floating_point()):
            raise ValueError("pass one of `scheduler.timesteps` as the timestep, not an integer index")
        if self._step_index is None:
            if self._begin_index is None:
                timestep = timestep.to(self.timesteps.device) if isinstance(timestep, torch.Tensor) else timestep
                self._step_index = self.index_for_timestep(timestep)
            else:
                self._step_index = self._begin_index
        sample = sample.to(torch.float32)
        dt = self.sigmas[self._step_index + 1] - self.sigmas[self._step_index]
        prev = (sample + dt * model_output).to(model_output.dtype)
        self._step_index += 1
        return SchedulerOutput(prev) if return_dict else (prev,)
