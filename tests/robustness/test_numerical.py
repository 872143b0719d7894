"""Numerical faults: a denoiser or decoder that returns NaN/inf is reported with the step, never written as a clip."""

from __future__ import annotations

import pytest
import torch

from .conftest import PROMPT, check_contract, listing

SMALL = ["--height", "16", "--width", "16", "--steps", "3", "--quiet"]


def poisoned(value: float, after: int = 0):
    """A `predict` that is fine for `after` calls, then returns `value` everywhere."""
    calls = []

    def predict(self, latents, timestep, text, cond=None, inputs=None):
        calls.append(1)
        out = torch.zeros_like(latents)
        return out.fill_(value) if len(calls) > after else out

    return predict


def driver_args(driver: str, inputs, model, out) -> list:
    images, videos = inputs
    head = {"generate": ["generate", PROMPT, "--frames", "2"],
            "animate": ["animate", images["RGBA"], PROMPT, "--frames", "2"],
            "extend": ["extend", videos["one-frame .mp4"], PROMPT, "--frames", "4", "--context-length", "2"],
            "restyle": ["restyle", videos["folder of 3 frames"], PROMPT, "--strength", "1"]}[driver]
    return [*head, "--model", model, "-o", out, *SMALL]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("driver", ["generate", "animate", "extend", "restyle"])
def test_non_finite_denoiser_is_reported_with_the_step(driver, value, bad_inputs, kinema, tiny_model_dir, tmp_path,
                                                       monkeypatch):
    from kinema.models.unet import SpaceTimeUNet

    monkeypatch.setattr(SpaceTimeUNet, "predict", poisoned(value, after=1))
    result = kinema(*driver_args(driver, bad_inputs, tiny_model_dir, tmp_path / "clip.mp4"))
    check_contract(result, set(), listing(tmp_path))
    assert result.code == 2 and "non-finite latents at step" in result.err, result.err


def test_non_finite_decoder_is_an_error_not_a_black_clip(kinema, tiny_model_dir, tmp_path, monkeypatch):
    from kinema.models.vae import FrameVAE

    real = FrameVAE.decode_chunks

    def nan_decode(self, *args, **kwargs):
        for video in real(self, *args, **kwargs):
            yield video * float("nan")

    monkeypatch.setattr(FrameVAE, "decode_chunks", nan_decode)
    result = kinema("generate", PROMPT, "--model", tiny_model_dir, "-o", tmp_path / "clip.gif", "--frames", "2", *SMALL)
    check_contract(result, set(), listing(tmp_path))
    assert result.code == 2 and "non-finite pixels" in result.err


def test_api_raises_numerical_error(tiny_model, monkeypatch):
    import kinema
    from kinema.models.unet import SpaceTimeUNet
    from kinema.pipelines.loop import NumericalError

    monkeypatch.setattr(SpaceTimeUNet, "predict", poisoned(float("nan"), after=2))
    with pytest.raises(NumericalError, match=r"step 3/3"):
        kinema.generate(PROMPT, model=tiny_model, frames=2, height=16, width=16, steps=3, progress=False)
