"""Guidance in a limited interval of noise levels: guided inside, the conditional prediction alone outside."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import kinema
from kinema.cli import main
from kinema.errors import KinemaError
from kinema.models.seams import DenoiserInputs
from kinema.models.family import ModelDefaults
from kinema.pipelines.loop import Stopwatch, guided, guided_at

SMALL = dict(frames=4, height=16, width=16, steps=4, progress=False)
PROMPT = "a red circle moving right on a blue background"


def test_guided_at_is_a_half_open_band_of_noise_levels():
    t = lambda level: torch.tensor([1000.0 * level])  # noqa: E731
    assert guided_at(None, t(0.01)) and guided_at(None, t(1.0))
    assert guided_at((0.5, 1.0), t(0.75)) and guided_at((0.5, 1.0), t(1.0))
    assert not guided_at((0.5, 1.0), t(0.5)) and not guided_at((0.5, 1.0), t(0.2))
    assert not guided_at((0.0, 0.4), t(0.6))


def test_outside_the_interval_the_step_is_the_conditional_prediction_in_one_forward(trained_like_model):
    m = trained_like_model
    text, uncond = m.text_encoder.encode([PROMPT]), m.text_encoder.encode([""])
    x = torch.randn(1, m.vae.latent_channels, 3, 8, 8)
    watch = Stopwatch()
    predict = guided(m.denoiser, text, uncond, 4.0, watch=watch, inputs=DenoiserInputs(guidance_interval=(0.5, 1.0)))
    low, high = torch.tensor([300.0]), torch.tensor([800.0])
    v_cond_low = m.denoiser.predict(x, low, text, None, DenoiserInputs())
    torch.testing.assert_close(predict(x, low), v_cond_low, atol=1e-5, rtol=1e-5)
    always = guided(m.denoiser, text, uncond, 4.0)
    torch.testing.assert_close(predict(x, high), always(x, high), atol=1e-5, rtol=1e-5)
    assert watch.calls == 2


def test_interval_zero_to_one_is_plain_guidance_and_a_narrow_one_changes_the_clip(trained_like_model):
    plain = kinema.generate(PROMPT, model=trained_like_model, guidance=4.0, guidance_interval=None, **SMALL)
    whole = kinema.generate(PROMPT, model=trained_like_model, guidance=4.0, guidance_interval=(0.0, 1.0), **SMALL)
    high = kinema.generate(PROMPT, model=trained_like_model, guidance=4.0, guidance_interval=(0.6, 1.0), **SMALL)
    cond = kinema.generate(PROMPT, model=trained_like_model, guidance=1.0, **SMALL)
    assert np.abs(plain.astype(int) - whole.astype(int)).max() <= 1
    assert np.abs(high.astype(int) - plain.astype(int)).max() > 1
    assert np.abs(high.astype(int) - cond.astype(int)).max() > 1


@pytest.mark.parametrize("bad", [(0.5, 0.5), (-0.1, 1.0), (0.2, 1.5), (0.7, 0.3), (0.1,)])
def test_a_bad_interval_is_an_error_before_loading(bad):
    with pytest.raises(KinemaError, match="guidance-interval"):
        kinema.generate(PROMPT, guidance_interval=bad, progress=False)


def test_model_defaults_read_and_check_the_interval():
    assert ModelDefaults.parse({"guidance_interval": [0.5, 1]}, "x").guidance_interval == (0.5, 1.0)
    assert ModelDefaults.parse({"guidance_interval": None}, "x").guidance_interval is None
    with pytest.raises(KinemaError, match="guidance_interval"):
        ModelDefaults.parse({"guidance_interval": [1, 0.5]}, "x")


@pytest.mark.parametrize("arg", ["0.5:0.5", "1.2", "a:b", "0.1:0.2:0.3"])
def test_cli_refuses_a_bad_interval_in_one_line(arg, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["generate", PROMPT, "-o", str(tmp_path / "x.mp4"), "--guidance-interval", arg])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--guidance-interval" in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())


def test_the_sidecar_records_the_interval(tiny_model_dir, tmp_path):
    import json

    out = tmp_path / "clip.gif"
    code = main(["generate", PROMPT, "-o", str(out), "--model", str(tiny_model_dir), "--frames", "4", "--height", "16",
                 "--width", "16", "--steps", "2", "--guidance-interval", "0.3:1", "--quiet"])
    assert code in (0, None) and out.exists()
    assert json.loads((tmp_path / "clip.gif.json").read_text())["settings"]["guidance_interval"] == [0.3, 1.0]


def test_restyle_guides_every_step_unless_told(trained_like_model):
    """Restyle's defaults (strength, guidance, control scale) were chosen with every step guided, so it keeps that."""
    from kinema import jobs

    source = np.full((4, 16, 16, 3), 90, np.uint8)
    job = jobs.prepare_restyle(source, PROMPT, trained_like_model.info.path)
    assert tuple(job.settings.guidance_interval) == (0.0, 1.0)
    job = jobs.prepare_restyle(source, PROMPT, trained_like_model.info.path, guidance_interval=[0.4, 1.0])
    assert tuple(job.settings.guidance_interval) == (0.4, 1.0)
