"""Text-to-video on tiny random components: determinism, shapes, guidance, save/load, VAE, attention."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

import kinema
from kinema.models import FrameCondition, TextEmbeds, attention
from kinema.pipelines.common import Settings, initial_noise, sample
from kinema.pipelines.loop import Timings, denoise, guided, make_scheduler, set_timesteps

SMALL = dict(frames=4, height=16, width=16, steps=3, progress=False)


def test_same_seed_same_clip_different_seed_differs(trained_like_model):
    a = kinema.generate("a red circle moving right on a blue background", seed=3, model=trained_like_model, **SMALL)
    b = kinema.generate("a red circle moving right on a blue background", seed=3, model=trained_like_model, **SMALL)
    c = kinema.generate("a red circle moving right on a blue background", seed=4, model=trained_like_model, **SMALL)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("frames,height,width", [(1, 16, 16), (5, 16, 24), (7, 24, 16)])
def test_requested_shape(tiny_model, frames, height, width):
    out = kinema.generate("a green square", frames=frames, height=height, width=width, steps=2, model=tiny_model, progress=False)
    assert out.shape == (frames, height, width, 3) and out.dtype == np.uint8


def test_guidance_one_equals_conditional_prediction(trained_like_model):
    m = trained_like_model
    text = m.text_encoder.encode(["a red circle"])
    uncond = m.text_encoder.encode(["something else entirely"])
    x = torch.randn(1, m.vae.latent_channels, 3, 8, 8)
    t = torch.tensor([500.0])
    v_guided = guided(m.denoiser, text, uncond, 1.0)(x, t)
    v_cond = m.denoiser.predict(x, t, text, None)
    assert torch.equal(v_guided, v_cond)
    v_cfg = guided(m.denoiser, text, uncond, 3.0)(x, t)
    v_unc = m.denoiser.predict(x, t, uncond, None)
    torch.testing.assert_close(v_cfg, v_unc + 3.0 * (v_cond - v_unc), atol=1e-5, rtol=1e-5)


def test_save_load_round_trip_same_output(trained_like_model, tmp_path):
    kinema.save(trained_like_model, tmp_path / "copy")
    again = kinema.load(tmp_path / "copy", device="cpu")
    a = kinema.generate("a blue triangle", seed=1, model=trained_like_model, **SMALL)
    b = kinema.generate("a blue triangle", seed=1, model=again, **SMALL)
    assert np.array_equal(a, b)


def test_chunked_vae_decode_equals_one_shot(tiny_model):
    vae = tiny_model.vae
    z = torch.randn(2, vae.latent_channels, 7, 8, 8)
    with torch.no_grad():
        whole = vae.decode(z, chunk_size=7)
        chunked = vae.decode(z, chunk_size=2)
    torch.testing.assert_close(whole, chunked, atol=1e-5, rtol=1e-5)  # other batch sizes may take other conv kernels


def test_framewise_encode_equals_batched(tiny_model):
    vae = tiny_model.vae
    x = torch.rand(2, 3, 5, 16, 16) * 2 - 1
    with torch.no_grad():
        batched = vae.encode(x)
        framewise = torch.cat([vae.encode(x[:, :, i : i + 1]) for i in range(5)], dim=2)
    torch.testing.assert_close(batched, framewise, atol=1e-5, rtol=1e-5)


def test_attention_backends_agree():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 2, 37, 8, generator=g) for _ in range(3))
    mask = torch.rand(3, 1, 1, 37, generator=g) > 0.3
    mask[..., 0] = True
    A = importlib.import_module("kinema.models.attention")

    old = A.CHUNK_ELEMENTS
    A.CHUNK_ELEMENTS = 2 * 37 * 5  # force many chunks
    try:
        for m in (None, mask):
            torch.testing.assert_close(attention(q, k, v, m, "sdpa"), attention(q, k, v, m, "chunked"), atol=1e-5, rtol=0)
    finally:
        A.CHUNK_ELEMENTS = old


def test_model_forward_sdpa_equals_chunked(trained_like_model):
    m = trained_like_model.denoiser
    text = trained_like_model.text_encoder.encode(["a white square"])
    x = torch.randn(1, trained_like_model.vae.latent_channels, 4, 8, 8)
    with torch.no_grad():
        m.set_attention_backend("chunked")
        a = m.predict(x, torch.tensor([300.0]), text, None)
        m.set_attention_backend("sdpa")
        b = m.predict(x, torch.tensor([300.0]), text, None)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_xformers_missing_is_a_clear_error(tiny_model_dir):
    from kinema.models.attention import xformers_available

    if xformers_available():
        pytest.skip("xformers is installed")
    with pytest.raises(kinema.KinemaError, match="xformers"):
        kinema.load(tiny_model_dir, attention="xformers")


def test_euler_step_matches_closed_form():
    sched = make_scheduler("euler", {"num_train_timesteps": 1000, "shift": 1.0})
    set_timesteps(sched, 4)
    x = torch.randn(1, 2, 1, 3, 3)
    v = torch.randn_like(x)
    s0, s1 = float(sched.sigmas[0]), float(sched.sigmas[1])
    out = sched.step(v, sched.timesteps[0], x, return_dict=False)[0]
    torch.testing.assert_close(out, x + (s1 - s0) * v)


def test_exact_velocity_recovers_data():
    """With the true velocity (noise - x0), the loop lands on x0: the loop and convention agree."""
    x0 = torch.randn(1, 4, 3, 4, 4)
    noise = torch.randn_like(x0)
    sched = make_scheduler("euler", {"num_train_timesteps": 1000})
    set_timesteps(sched, 5)
    out = denoise(lambda x, t: noise - x0, noise.clone(), sched, progress=False)
    torch.testing.assert_close(out, x0, atol=1e-5, rtol=1e-5)


def test_strength_cuts_timesteps():
    sched = make_scheduler("euler", {"num_train_timesteps": 1000})
    assert set_timesteps(sched, 10, strength=1.0) == 0
    assert set_timesteps(sched, 10, strength=0.5) == 5
    with pytest.raises(kinema.KinemaError):
        set_timesteps(sched, 10, strength=0.0)


def test_known_frames_are_kept(trained_like_model):
    m = trained_like_model
    settings = Settings(frames=4, height=16, width=16, steps=3, guidance=2.0)
    text = m.text_encoder.encode(["a red circle"])
    uncond = m.text_encoder.encode([""])
    known = torch.randn(1, m.vae.latent_channels, 4, 8, 8)
    mask = torch.tensor([[1.0, 0, 0, 1.0]])
    cond = FrameCondition(known, mask)
    out = sample(m, text, uncond, settings, Timings(), cond=cond, known=cond, progress=False)
    torch.testing.assert_close(out[:, :, [0, 3]], known[:, :, [0, 3]])
    assert not torch.allclose(out[:, :, 1], known[:, :, 1])


def _alternating(model):
    """Wrap the model's forward so that two threads' calls strictly alternate while both are running.

    Returns (order of the threads' calls, `done(name)` to call when a thread has finished).
    """
    import threading

    original, order, finished, cv = model.denoiser.forward, [], set(), threading.Condition()
    turn = {"who": "a"}

    def forward(*args, **kwargs):
        me = threading.current_thread().name
        with cv:  # wait for this thread's turn, unless the other one has finished
            cv.wait_for(lambda: turn["who"] == me or finished - {me}, timeout=60)
        out = original(*args, **kwargs)
        with cv:
            order.append(me)
            turn["who"] = "b" if me == "a" else "a"
            cv.notify_all()
        return out

    def done(name):
        with cv:
            finished.add(name)
            cv.notify_all()

    model.denoiser.forward = forward
    return order, done


def test_one_model_serves_two_threads_at_once(trained_like_model):
    """A loaded model is re-entrant: a restyle taking the source's layout and a plain generate, their
    denoiser calls interleaved one by one, give the frames each gives alone."""
    import threading

    from kinema.models.family import load_model
    from kinema.pipelines.text_to_video import text_to_video
    from kinema.pipelines.video_to_video import RestyleOptions, restyle_video

    source = (np.random.default_rng(0).random((4, 16, 16, 3)) * 255).astype(np.uint8)
    settings = Settings(frames=4, height=16, width=16, steps=4, guidance=3.0, seed=1)
    jobs = dict(
        a=lambda m: restyle_video(m, "a green square", source, settings, RestyleOptions(strength=1.0, structure=0.75),
                                  progress=False).frames,
        b=lambda m: text_to_video(m, "a red circle moving right", settings, progress=False).frames,
    )
    model = load_model(trained_like_model.path)  # a copy, whose forward the test wraps
    alone = {k: job(model) for k, job in jobs.items()}  # one after the other
    order, done = _alternating(model)
    out = {}

    def run(name):
        try:
            out[name] = jobs[name](model)
        finally:
            done(name)

    threads = [threading.Thread(target=run, args=(k,), name=k) for k in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    switches = sum(x != y for x, y in zip(order, order[1:]))
    assert switches >= 6, order  # the calls did interleave: the restyle's source pass, then the other, then its replay
    for k in jobs:
        assert np.array_equal(out[k], alone[k]), k


def test_nan_latents_are_reported_with_the_step():
    from kinema.errors import NumericalError

    sched = make_scheduler("euler", {"num_train_timesteps": 1000})
    set_timesteps(sched, 4)
    calls = []

    def bad(x, t):
        calls.append(1)
        return torch.full_like(x, float("nan")) if len(calls) == 2 else torch.zeros_like(x)

    with pytest.raises(NumericalError, match="step 2/4"):
        denoise(bad, torch.randn(1, 2, 1, 2, 2), sched, progress=False)


def test_noise_is_seeded_and_device_independent():
    a = initial_noise((1, 2, 3, 4, 4), 7, "cpu")
    b = initial_noise((1, 2, 3, 4, 4), 7, "cpu")
    assert torch.equal(a, b)


def test_text_embeds_cat_pads():
    a = TextEmbeds(torch.ones(1, 3, 4), torch.ones(1, 3, dtype=torch.bool))
    b = TextEmbeds(torch.ones(2, 5, 4), torch.ones(2, 5, dtype=torch.bool))
    c = TextEmbeds.cat([a, b])
    assert c.hidden.shape == (3, 5, 4) and c.mask[0].tolist() == [True] * 3 + [False] * 2
