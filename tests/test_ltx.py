"""LTX-Video diffusers folders through kinema, in parity with diffusers' LTX pipelines, and through every driver.

Tiny random components (`kinema.models.ltx_testing`: diffusers' own LTX test shapes, a small T5 and a WordLevel
tokenizer written to tokenizer.json, so nothing is downloaded) are saved with `save_pretrained` into folders of
the real layout, loaded back by kinema and by diffusers, and run with the same prompt, seed, steps and guidance.
Noise: both draw it from a CPU generator seeded by the seed (`randn_tensor` in the unpacked layout =
`pipelines.common.initial_noise`), so no latents are passed to either side. Image-to-video: diffusers samples the
anchor's posterior with that generator, kinema takes its mode; the parity run gives diffusers the mode too
(`retrieve_latents(..., sample_mode="argmax")`), so both draw the noise first.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import kinema
from kinema.models import ltx_testing
from kinema.models.seams import to_unit

PROMPT = "a red circle moving right on a blue background"
NEGATIVE = "the dog"
TOL = 1e-4
FRAMES, SIZE, STEPS, GUIDANCE, SEED = 9, 32, 3, 3.0, 3


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """diffusers' test shapes (its static-shift scheduler); the same with Lightricks' scheduler config and a
    timestep-conditioned decoder (0.9.1+); and the real VAE compression (32x space, 8x time) in tiny channels."""
    root = tmp_path_factory.mktemp("ltx")
    return dict(tiny=ltx_testing.folder(root / "tiny"),
                real=ltx_testing.folder(root / "real", real_scheduler=True, timestep_conditioning=True, seed=1),
                compressed=ltx_testing.folder(root / "compressed", vae_shape="ltx", real_scheduler=True))


@pytest.fixture(scope="module")
def models(folders):
    from kinema.models.family import load_model

    return {name: load_model(path) for name, path in folders.items()}


def max_diff(a, b) -> float:
    return float((torch.as_tensor(a).float() - torch.as_tensor(b).float()).abs().max())


def generator():
    return torch.Generator("cpu").manual_seed(SEED)


def image(seed: int = 0, size: int = SIZE) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def options(**kw) -> dict:
    return {**dict(frames=FRAMES, height=SIZE, width=SIZE, steps=STEPS, guidance=GUIDANCE, seed=SEED,
                   negative_prompt=NEGATIVE, progress=False, return_result=True), **kw}


def unpacked(pipe, latents, frames=FRAMES, size=SIZE):
    """diffusers' packed output latents (B, S, C) as (B, C, F, h, w)."""
    s, t = pipe.vae_spatial_compression_ratio, pipe.vae_temporal_compression_ratio
    return pipe._unpack_latents(latents, (frames - 1) // t + 1, size // s, size // s, 1, 1)


#################################################################################
#                                    Parity                                     #
#################################################################################


@pytest.mark.parametrize("name", ["tiny", "real"])
def test_text_to_video_parity(folders, models, name):
    """Latents and decoded video equal diffusers' LTXPipeline (the LTX sigmas, shift exp(mu), decode timestep)."""
    from diffusers import LTXPipeline

    model = models[name]
    ours = kinema.generate(PROMPT, model=model, **options())
    pipe = ltx_testing.pipeline(LTXPipeline, folders[name])
    call = dict(prompt=PROMPT, negative_prompt=NEGATIVE, height=SIZE, width=SIZE, num_frames=FRAMES,
                num_inference_steps=STEPS, guidance_scale=GUIDANCE, decode_timestep=model.vae.decode_timestep,
                decode_noise_scale=0.0)
    theirs = unpacked(pipe, pipe(**call, generator=generator(), output_type="latent").frames)
    assert max_diff(ours.latents, theirs) <= TOL
    video = pipe(**call, generator=generator(), output_type="pt").frames  # (1, F, 3, H, W) in [0, 1]
    saved = model.vae.decode_noise_scale
    model.vae.decode_noise_scale = 0.0  # diffusers draws the decode noise from the seed's generator; kinema cannot
    try:
        with torch.inference_mode():
            decoded = (model.vae.decode(ours.latents) + 1) / 2
    finally:
        model.vae.decode_noise_scale = saved
    assert max_diff(decoded, video.permute(0, 2, 1, 3, 4)) <= TOL
    other = kinema.generate("the green square moving up", model=model, **options())
    assert max_diff(other.latents, ours.latents) > 100 * TOL  # the prompt matters: parity is not vacuous
    if name == "real":  # the resolution-dependent shift of Lightricks' scheduler, and the 0.9.1 decode settings
        assert ours.record["settings"]["shift"] > 1.5 and model.vae.decode_timestep == 0.05


@pytest.mark.parametrize("name", ["tiny", "real"])
def test_image_to_video_parity(folders, models, name, monkeypatch):
    """Latents equal LTXImageToVideoPipeline's: frame 0 the image's latents at timestep 0, the rest denoised."""
    import diffusers.pipelines.ltx.pipeline_ltx_image2video as i2v
    from diffusers import LTXImageToVideoPipeline
    from PIL import Image

    model, im = models[name], image()
    ours = kinema.animate(im, PROMPT, model=model, **options())
    retrieve = i2v.retrieve_latents
    monkeypatch.setattr(i2v, "retrieve_latents", lambda out, generator=None, sample_mode="sample":
                        retrieve(out, generator, "argmax"))  # the posterior's mode, as kinema
    pipe = ltx_testing.pipeline(LTXImageToVideoPipeline, folders[name])
    theirs = pipe(image=Image.fromarray(im), prompt=PROMPT, negative_prompt=NEGATIVE, height=SIZE, width=SIZE,
                  num_frames=FRAMES, num_inference_steps=STEPS, guidance_scale=GUIDANCE, generator=generator(),
                  output_type="latent").frames
    assert max_diff(ours.latents, unpacked(pipe, theirs)) <= TOL
    with torch.inference_mode():
        anchor = model.vae.encode(to_unit(im[None]))
    assert max_diff(ours.latents[:, :, :1], anchor) == 0  # frame 0 is exactly the image's latents
    other = kinema.animate(image(5), PROMPT, model=model, **options())
    assert max_diff(other.latents[:, :, 1:], ours.latents[:, :, 1:]) > 100 * TOL  # the image steers the rest


def test_schedule_is_diffusers_ltx_schedule(models):
    """kinema's Euler with the LTX config: diffusers' sigmas for LTXPipeline's linspace, mu and shift_terminal."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from kinema.models import ltx
    from kinema.models.schedulers import make_scheduler

    info = models["compressed"].info  # Lightricks' scheduler config, the real VAE's 32x / 8x compression
    for frames, size, steps in [(9, 32, 3), (161, 480, 50), (97, 768, 30)]:
        shift = ltx.clip_shift(info, frames, size, size)
        ours = make_scheduler("euler", models["compressed"].scheduler_config, shift)
        ours.set_timesteps(steps)
        theirs = FlowMatchEulerDiscreteScheduler(**ltx_testing.LTX_SCHEDULER)
        tokens = info.latent_frames(frames) * (size // info.size_multiple) ** 2
        theirs.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=ltx.calculate_shift(tokens, info.configs["scheduler"]))
        assert max_diff(ours.sigmas, theirs.sigmas) <= 1e-6 and abs(float(ours.sigmas[-2]) - 0.1) <= 1e-6


#################################################################################
#                                   The seams                                   #
#################################################################################


def test_vae_streams_diffusers_temporal_tiles(models):
    """A long clip decodes tile by tile (memory of one tile) to exactly diffusers' temporal tiled decode."""
    vae = models["tiny"].vae
    latents = torch.randn(1, 8, 9, 8, 8, generator=torch.Generator().manual_seed(0))  # 33 frames: tiles of 4 latent frames
    with torch.inference_mode():
        chunks = list(vae.decode_chunks(latents))
        whole = vae.autoencoder.decode(vae.denormalise(latents)).sample.clamp(-1, 1)  # use_framewise_decoding is on
    assert len(chunks) > 2 and max(c.shape[2] for c in chunks) <= 9
    assert torch.cat(chunks, 2).shape == (1, 3, 33, 32, 32) and max_diff(torch.cat(chunks, 2), whole) <= 1e-6


def test_pack_is_diffusers_pack():
    from diffusers import LTXPipeline

    from kinema.models.ltx import pack, unpack

    x = torch.randn(2, 8, 3, 4, 6)
    for p in (1, 2):
        assert torch.equal(pack(x, p), LTXPipeline._pack_latents(x, p, 1))
        assert torch.equal(unpack(pack(x, p), 3, 4 // p, 6 // p, p), x)


def test_described_folder(models):
    info = models["compressed"].info
    assert (info.family, info.size_multiple, info.temporal_compression, info.spatial_compression) == ("ltx", 32, 8, 32)
    assert info.tasks == ("generate", "extend", "restyle", "animate") and info.frame_conditions == ("first",)
    assert (info.defaults.frames, info.defaults.width, info.defaults.height, info.defaults.fps) == (161, 704, 480, 25)
    tiny = models["tiny"].info
    assert (tiny.size_multiple, tiny.temporal_compression) == (4, 4)  # diffusers' test VAE compresses by 4


def test_step_cache_runs_through_diffusers_hooks(models):
    """taylorseer on the LTX transformer: a full pass in two, the clip close to the uncached one's scale."""
    model = models["tiny"]
    assert model.family.cache_methods(model.info) == ("none", "taylorseer")  # first-block needs two blocks
    out = kinema.generate(PROMPT, model=model, cache="taylorseer:2", **options(steps=6))
    assert out.record["cache"]["served_from_cache"] > 0 and torch.isfinite(out.latents).all()


#################################################################################
#                                  The drivers                                  #
#################################################################################


def test_long_clips_windows_continuation_and_schedules(models):
    """Context windows, continuation and a prompt schedule on the tiny LTX: the clip's length, finite, deterministic."""
    model = models["tiny"]
    kw = dict(options(frames=25), context_length=3)
    fused = kinema.generate(PROMPT, model=model, context_stride=1, **kw)
    assert fused.frames.shape == (25, SIZE, SIZE, 3) and fused.latents.shape[2] == 7
    assert fused.info["long"]["windows"] > 1
    again = kinema.generate(PROMPT, model=model, context_stride=1, **kw)
    assert max_diff(again.latents, fused.latents) == 0  # same seed, same clip
    cont = kinema.generate(PROMPT, model=model, mode="continue", **kw)
    assert cont.frames.shape == (25, SIZE, SIZE, 3) and max_diff(cont.latents, fused.latents) > 1e-3
    sched = kinema.generate(PROMPT, model=model, context_stride=1, prompt_schedule=f"0:{PROMPT}|12:the green square moving up",
                            **kw)
    assert sched.frames.shape == (25, SIZE, SIZE, 3) and max_diff(sched.latents[:, :, -2:], fused.latents[:, :, -2:]) > 1e-3


def test_extend_keeps_the_source(models):
    """Continuation from a source clip: its latent frames are known (timestep 0) and come back exactly."""
    model = models["tiny"]
    source = np.random.default_rng(0).integers(0, 256, (FRAMES, SIZE, SIZE, 3), dtype=np.uint8)
    out = kinema.extend(source, PROMPT, model=model, **{**options(frames=21), "context_length": 3})
    assert out.frames.shape == (21, SIZE, SIZE, 3)
    with torch.inference_mode():
        known = model.vae.encode(to_unit(source))
    assert max_diff(out.latents[:, :, :known.shape[2]], known) <= 1e-5


def test_animate_on_the_real_compression(models):
    """Image-to-video at 32x / 8x compression: latent frame 0 is the image's, the rest moves with the seed.

    (LTX's decoder is not causal, so the decoded frame 0 also sees the frames after it: the property is in latents.)
    """
    model, im = models["compressed"], image(size=64)
    out = kinema.animate(im, PROMPT, model=model, **options(frames=17, height=64, width=64))
    with torch.inference_mode():
        anchor = model.vae.encode(to_unit(im[None]))
    assert out.frames.shape == (17, 64, 64, 3) and max_diff(out.latents[:, :, :1], anchor) == 0
    other = kinema.animate(im, PROMPT, model=model, **options(frames=17, height=64, width=64, seed=SEED + 1))
    assert max_diff(other.latents[:, :, :1], anchor) == 0 and max_diff(other.latents, out.latents) > 1e-3


@pytest.mark.parametrize("method", ["sdedit", "flowedit"])
def test_restyle(models, method):
    """Video-to-video on the tiny LTX: SDEdit (diffusers' way) and FlowEdit, with flow fusion; strength 0 is the source."""
    model = models["tiny"]
    source = np.random.default_rng(1).integers(0, 256, (FRAMES, SIZE, SIZE, 3), dtype=np.uint8)
    kw = dict(height=SIZE, width=SIZE, steps=4, guidance=GUIDANCE, seed=SEED, progress=False, return_result=True)
    out = kinema.restyle(source, "the green square moving up", model=model, method=method, strength=0.75, **kw)
    assert out.frames.shape == source.shape and torch.isfinite(out.latents).all()
    plain = kinema.restyle(source, "the green square moving up", model=model, method=method, strength=0.75, flow=False, **kw)
    assert max_diff(plain.latents, out.latents) >= 0 and plain.frames.shape == source.shape
    assert np.array_equal(kinema.restyle(source, PROMPT, model=model, strength=0, **kw).frames, source)


def test_long_clip_memory_is_the_window_s(models):
    """The estimate does not grow with length past a window (decode is one temporal tile)."""
    model = models["compressed"]
    est = lambda f: model.family.estimate_memory(model.info, f, 480, 704)  # noqa: E731
    assert est(161)["vae_decode"] == est(1601)["vae_decode"]


#################################################################################
#                             The front door, bad input                         #
#################################################################################


def test_cli_errors_before_loading(folders, capsys, monkeypatch, tmp_path):
    """One line, exit 2, no weights loaded: frames not 8k+1, sizes not multiples of 32, a second condition image."""
    from kinema import cli
    from kinema.models import ltx

    monkeypatch.setattr(ltx, "load", lambda *a, **k: pytest.fail("weights were loaded"))
    png = tmp_path / "a.png"
    from PIL import Image

    Image.fromarray(image(size=64)).save(png)
    model = ["--model", str(folders["compressed"])]
    cases = [
        (["generate", PROMPT, *model, "--frames", "20"], "use 8k+1 frames, such as 17 or 25"),
        (["generate", PROMPT, *model, "--width", "100"], "--width 100 must be a positive multiple of 32 for this model; try 96"),
        (["generate", PROMPT, *model, "--height", "16"], "multiple of 32"),
        (["animate", str(png), PROMPT, *model, "--last-image", str(png)], "drop --last-image"),
    ]
    for argv, message in cases:
        assert cli.main(argv + ["-o", str(tmp_path / "out.mp4")]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, err


def test_not_an_ltx_pipeline(tmp_path, folders):
    import shutil

    from kinema.errors import KinemaError
    from kinema.models import ltx

    bad = tmp_path / "bad"
    shutil.copytree(folders["tiny"], bad)
    index = json.loads((bad / "model_index.json").read_text())
    (bad / "model_index.json").write_text(json.dumps({**index, "vae": ["diffusers", "AutoencoderKL"]}))
    with pytest.raises(KinemaError, match="an LTX-Video folder needs AutoencoderKLLTXVideo"):
        ltx.describe(bad)
    for f in (bad / "transformer").glob("*.safetensors"):
        f.unlink()
    (bad / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(KinemaError, match="has no \\*.safetensors weights"):
        ltx.describe(bad)


def test_cli_info_and_published_estimates(folders, capsys):
    from kinema import cli
    from kinema.models import ltx

    assert cli.main(["info", str(folders["compressed"]), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["family"] == "ltx" and set(report["params"]) == {"transformer", "vae", "text_encoder"}
    assert set(report["memory_estimate"]["offload"]) == {"none", "model", "sequential"} and report["size_multiple"] == 32
    totals = {}
    for shape, params in (("2b", 1.9e9), ("13b", 13e9)):
        info = ltx_testing.published_info(shape)
        assert abs(info.parameters["transformer"] / params - 1) < 0.1  # the published sizes
        _, lines = ltx.report(info, 161, 480, 704)
        assert any("--offload none" in line for line in lines)
        totals[shape] = ltx.estimate_memory(info, 161, 480, 704)["total"]
    assert totals["2b"] < totals["13b"]


def test_cli_generate_with_ltx(folders, tmp_path):
    """`kinema generate` runs an LTX folder end to end and writes the clip and its sidecar with the resolved shift."""
    from kinema import cli

    out = tmp_path / "clip.gif"
    argv = ["generate", PROMPT, "--model", str(folders["compressed"]), "--frames", "9", "--height", "32", "--width", "64",
            "--steps", "2", "--quiet", "-o", str(out)]
    assert cli.main(argv) == 0 and out.is_file()
    sidecar = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert sidecar["family"] == "ltx" and sidecar["frames_written"] == 9 and sidecar["settings"]["shift"] > 1


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_parity_cuda_bfloat16(folders):
    """The tiny T2V on the GPU in bfloat16 beside diffusers in bfloat16 (looser: CFG is combined in float32)."""
    from diffusers import LTXPipeline

    from kinema.models.family import load_model

    model = load_model(folders["real"], "cuda", torch.bfloat16)
    ours = kinema.generate(PROMPT, model=model, **options())
    pipe = LTXPipeline.from_pretrained(folders["real"], local_files_only=True, torch_dtype=torch.bfloat16).to("cuda")
    pipe.vae.to(torch.float32)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(prompt=PROMPT, negative_prompt=NEGATIVE, height=SIZE, width=SIZE, num_frames=FRAMES,
                  num_inference_steps=STEPS, guidance_scale=GUIDANCE, generator=generator(), output_type="latent").frames
    assert max_diff(ours.latents.cpu(), unpacked(pipe, theirs).cpu()) <= 0.1
