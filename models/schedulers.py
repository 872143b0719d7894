"""The solvers kinema runs: diffusers' flow-matching schedulers, built from a model folder's scheduler config.

A family's folder names its own (`ModelDefaults.scheduler`: Euler for kinema, UniPC for Wan); the
loop (`pipelines/loop.py`) steps whichever it is given. The names feed the CLI's `--scheduler` choices.
"""

from __future__ import annotations

from kinema.errors import KinemaError

SCHEDULERS = ("euler", "unipc")


def make_scheduler(kind: str, config: dict, shift: float | None = None):
    """A diffusers flow-matching scheduler from a model's scheduler config."""
    from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

    shift = float(config.get("shift", 1.0) if shift is None else shift)
    n = int(config.get("num_train_timesteps", 1000))
    if kind == "euler":
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=n, shift=shift)
    if kind == "unipc":
        return UniPCMultistepScheduler(
            num_train_timesteps=n, prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift
        )
    raise KinemaError(f"unknown scheduler {kind!r}; choose one of {', '.join(SCHEDULERS)}")
