"""pipelines/parameterisation.py: closed forms of the conversions, x0 round trips, and each step's noise level
checked against what the schedulers themselves compute (diffusers' DDIM, Euler, Euler ancestral, DPM++ 2M, UniPC
and kinema's flow Euler)."""

from __future__ import annotations

import math

import pytest
import torch

from kinema.models.schedulers import make_scheduler
from kinema.pipelines.loop import KnownFrames, set_timesteps, velocity_from_x0, x0_from_velocity
from kinema.pipelines.parameterisation import Level, as_level, initial_latents, model_input, prediction_of, step_levels
from kinema.models.seams import FrameCondition

SD = dict(_class_name="DDIMScheduler", num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
          beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False, steps_offset=1,
          timestep_spacing="leading")
DDPM = ("ddim", "euler", "euler-ancestral", "dpm++2m", "unipc")


def tensors(seed=0, shape=(1, 4, 3, 4, 4)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64), torch.randn(shape, generator=g, dtype=torch.float64)


def exact_output(level: Level, x0, noise):
    """What a perfect model predicts at x = a x0 + b noise."""
    if level.prediction == "flow":
        return noise - x0
    if level.prediction == "epsilon":
        return noise
    alpha, beta = level.c * level.a, level.c * level.b
    return alpha * noise - beta * x0  # v_prediction


#################################################################################
#                                  Closed forms                                 #
#################################################################################


def test_closed_forms():
    x, out = tensors()
    s = 0.3
    assert torch.equal(Level.flow(s).x0(x, out), x - s * out)
    a, b = math.sqrt(0.7), math.sqrt(0.3)
    assert torch.allclose(Level("epsilon", a, b).x0(x, out), (x - b * out) / a)
    # Euler (a=1, b=sigma): the model sees x / sqrt(sigma^2 + 1); v -> x0 as diffusers' EulerDiscreteScheduler
    sigma = 2.5
    lv = Level.ve(sigma, "v_prediction")
    assert torch.allclose(lv.x0(x, out), out * (-sigma / (sigma**2 + 1) ** 0.5) + x / (sigma**2 + 1))
    # DDIM / DPM (a=sqrt(ac), b=sqrt(1-ac)): x0 = sqrt(ac) x - sqrt(1-ac) v
    assert torch.allclose(Level.vp(0.7, "v_prediction").x0(x, out), a * x - b * out)
    assert torch.equal(Level("sample", 1.0, 0.5).x0(x, out), out)


@pytest.mark.parametrize("level", [Level.flow(0.4), Level.vp(0.35, "epsilon"), Level.vp(0.35, "v_prediction"),
                                   Level.ve(3.0, "epsilon"), Level.ve(3.0, "v_prediction"), Level("sample", 0.8, 0.6)])
def test_round_trips_and_corrections(level):
    """x0 -> output -> x0 is the identity; the exact model output gives back x0; a correction is output(x0 + delta)."""
    x0, noise = tensors(1)
    x = level.noised(x0, noise)
    out = exact_output(level, x0, noise)
    if level.prediction != "sample":
        assert torch.allclose(level.x0(x, out), x0, atol=1e-10)
    assert torch.allclose(level.output(x, level.x0(x, out)), out, atol=1e-10)
    delta = tensors(2)[0] * 0.1
    assert torch.allclose(level.correct(out, delta), level.output(x, level.x0(x, out) + delta), atol=1e-10)
    assert torch.equal(level.correct(out, torch.zeros_like(delta)), out)  # nothing moved: the output to the bit


def test_flow_helpers_are_the_old_formulas_to_the_bit():
    x, v = (t.float() for t in tensors(3))
    s = 0.7317
    assert torch.equal(x0_from_velocity(x, v, s), x - s * v)
    assert torch.equal(velocity_from_x0(x, x0_from_velocity(x, v, s), s), (x - (x - s * v)) / s)
    assert as_level(s) == Level.flow(s)
    # KnownFrames re-injects (1 - s) x0 + s noise, as before levels existed
    cond = FrameCondition(torch.randn(1, 4, 3, 4, 4), torch.tensor([[1.0, 0.0, 0.0]]))
    noise, latents = torch.randn(1, 4, 3, 4, 4), torch.randn(1, 4, 3, 4, 4)
    out = KnownFrames(cond, noise).after_step(0, s, latents)
    assert torch.equal(out[:, :, 0], ((1 - s) * cond.latents + s * noise)[:, :, 0])
    assert torch.equal(out[:, :, 1:], latents[:, :, 1:])


def test_prediction_of():
    assert prediction_of({"shift": 3.0}) == "flow"  # kinema's FlowMatchEuler config
    assert prediction_of({"prediction_type": "flow_prediction", "use_flow_sigmas": True}) == "flow"  # Wan's UniPC
    assert prediction_of(SD) == "epsilon"
    assert prediction_of(dict(SD, prediction_type="v_prediction")) == "v_prediction"
    with pytest.raises(ValueError):
        prediction_of(dict(SD, prediction_type="nonsense"))


#################################################################################
#                        Levels against the schedulers                          #
#################################################################################


@pytest.mark.parametrize("kind", DDPM)
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_levels_give_the_schedulers_x0(kind, prediction):
    """At every step, Level.x0 of the exact output is x0, and equals the scheduler's own x0 where it reports one."""
    sched = make_scheduler(kind, dict(SD, prediction_type=prediction))
    set_timesteps(sched, 8)
    now, after = step_levels(sched)
    assert len(now) == len(after) == 8 and after[-1].b == 0
    x0, noise = tensors(4)
    x0, noise = x0.float(), noise.float()
    for i, t in enumerate(sched.timesteps):
        x = now[i].noised(x0, noise)
        out = exact_output(now[i], x0, noise)
        assert torch.allclose(now[i].x0(x, out), x0, atol=2e-4)
        if kind in ("ddim", "euler"):  # their step returns the x0 it computed
            fresh = make_scheduler(kind, dict(SD, prediction_type=prediction))
            set_timesteps(fresh, 8)
            fresh.set_begin_index(i) if kind == "euler" else None
            res = fresh.step(out, t, x, return_dict=True)
            assert torch.allclose(res.pred_original_sample, now[i].x0(x, out), atol=1e-4)


@pytest.mark.parametrize("kind", ["ddim", "euler", "dpm++2m"])
def test_a_step_of_the_exact_output_lands_on_the_next_level(kind):
    """Deterministic steps with the exact prediction move x = a x0 + b n to after[i] = a' x0 + b' n."""
    sched = make_scheduler(kind, dict(SD, set_alpha_to_one=True))
    start = set_timesteps(sched, 6, strength=0.8)
    now, after = step_levels(sched, start)
    x0, noise = (t.float() for t in tensors(5))
    x = now[0].noised(x0, noise)
    for i, t in enumerate(sched.timesteps[start:]):
        assert torch.allclose(x, now[i].noised(x0, noise), atol=2e-4)
        x = sched.step(exact_output(now[i], x0, noise), t, x, return_dict=False)[0]
    assert torch.allclose(x, x0, atol=2e-4)


def test_model_input_and_initial_latents():
    x = torch.randn(1, 4, 2, 4, 4)
    euler = make_scheduler("euler", SD)
    euler.set_timesteps(5)
    lv = step_levels(euler)[0][0]
    assert torch.allclose(model_input(euler, x, euler.timesteps[0]), lv.c * x)
    assert torch.allclose(initial_latents(euler, x), x * euler.init_noise_sigma)
    flow = make_scheduler("euler", {"num_train_timesteps": 1000})
    flow.set_timesteps(5)
    assert model_input(flow, x, flow.timesteps[0]) is x and initial_latents(flow, x) is x
    levels = step_levels(flow)
    assert [lv.b for lv in levels[0]] == [float(s) for s in flow.sigmas[:5]]
    assert [lv.b for lv in levels[1]] == [float(s) for s in flow.sigmas[1:]]


def test_ddim_linspace_lands_where_the_step_goes():
    """DDIM's step goes to t - T/steps, which linspace spacing does not put on the next timestep: after[i] follows it."""
    sched = make_scheduler("ddim", dict(SD, timestep_spacing="linspace", steps_offset=0))
    sched.set_timesteps(4)
    now, after = step_levels(sched)
    ac = sched.alphas_cumprod
    t0 = int(sched.timesteps[0])
    assert after[0].a == pytest.approx(math.sqrt(float(ac[t0 - 250])))
    assert now[1].a == pytest.approx(math.sqrt(float(ac[int(sched.timesteps[1])])))
