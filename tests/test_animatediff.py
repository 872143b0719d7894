"""AnimateDiff (SD 1.5 UNet + motion adapter) through kinema, in parity with diffusers' AnimateDiff pipelines.

Tiny random components (`kinema.models.animatediff_testing`: the shapes of diffusers' own AnimateDiff tests, a
CLIP tokenizer whose vocab.json / merges.txt the builder writes) are saved with `save_pretrained` in both layouts
kinema reads (an AnimateDiffPipeline folder; an SD 1.5 folder and a MotionAdapter folder), loaded back by kinema
and by diffusers, and run with the same prompt, seed, scheduler, steps and guidance in float32 on the CPU.
Noise: both draw the initial latents from a CPU generator seeded by the seed (`randn_tensor` =
`pipelines.common.initial_noise`, x `init_noise_sigma` on both sides); ancestral steps draw from the same
generator after it (`common.step_generator`). Video-to-video: diffusers samples the VAE posterior with its
generator before the noise; kinema takes the posterior's mean, so diffusers runs with the mean here too.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

import kinema
from kinema.errors import KinemaError
from kinema.models import animatediff_testing as adt
from kinema.models.family import describe, load_model
from kinema.models.seams import to_uint8, to_unit

PROMPT = "a red circle moving right on the blue background"
FRAMES, SIZE, STEPS, GUIDANCE, SEED = 8, 32, 4, 7.5, 3
TOL = 1e-4
RUN = dict(frames=FRAMES, height=SIZE, width=SIZE, steps=STEPS, guidance=GUIDANCE, seed=SEED)

#################################################################################
#                                   Fixtures                                    #
#################################################################################


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("animatediff")
    out = dict(pipe=adt.pipeline_folder(root / "pipe"))
    out["sd"], out["adapter"] = adt.sd_and_adapter_folders(root / "split")
    _, out["wide_adapter"] = adt.sd_and_adapter_folders(root / "wide", adapter_blocks=(8, 16))
    return out


@pytest.fixture(scope="module")
def model(folders):
    return kinema.load(folders["pipe"], device="cpu", dtype="float32")


def generator(seed: int = SEED) -> torch.Generator:
    return torch.Generator("cpu").manual_seed(seed)


def diffusers_pipeline(cls, folder):
    pipe = cls.from_pretrained(folder, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def source_clip(frames: int = FRAMES, seed: int = 0) -> np.ndarray:
    """A square moving right over a noisy background, uint8 (F, H, W, 3)."""
    rng = np.random.default_rng(seed)
    clip = np.repeat(rng.integers(0, 80, (1, SIZE, SIZE, 3), dtype=np.uint8), frames, 0)
    for f in range(frames):
        clip[f, 10:20, 4 + f:14 + f] = (220, 40, 40)
    return clip


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


#################################################################################
#                                    Loading                                    #
#################################################################################


def test_describe_both_layouts(folders):
    info = describe(folders["pipe"])
    assert (info.family, info.prediction, info.max_context, info.defaults.scheduler) == ("animatediff", "epsilon", 32, "ddim")
    assert set(info.parameters) == {"unet", "vae", "text_encoder"} and info.index["unet"] == "UNetMotionModel"
    assert (info.spatial_compression, info.size_multiple, info.temporal_compression) == (2, 4, 1)
    split = describe(folders["sd"], motion_adapter=folders["adapter"])
    assert split.family == "animatediff" and split.parts == (folders["adapter"],)
    assert set(split.parameters) == {"unet", "motion_adapter", "vae", "text_encoder"}
    assert split.parameters["unet"] + split.parameters["motion_adapter"] == info.parameters["unet"]


def test_info_reports_parameters_memory_and_tasks(folders, capsys):
    from kinema import cli

    assert cli.main(["info", str(folders["sd"]), "--motion-adapter", str(folders["adapter"]), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["family"] == "animatediff" and report["prediction"] == "epsilon"
    assert report["tasks"] == ["generate", "animate", "restyle", "extend"]
    assert set(report["memory_estimate"]["dtype"]) == {"float16", "float32"}
    assert cli.main(["info", str(folders["pipe"]), "--frames", "64"]) == 0
    text = capsys.readouterr().out
    assert "GPU peak for 64 frames" in text and "windows of at most 32 frames" in text


def test_estimate_grows_with_size_not_with_windowed_length(folders):
    info = describe(folders["pipe"])
    est = lambda f, s=512: kinema.estimate_memory(info, f, s, s, dtype_bytes=2)["total"]  # noqa: E731
    assert est(16, 768) > est(16, 512) > est(8, 512)
    assert est(256) == est(64)  # past the adapter's positions the UNet runs on windows of 16


#################################################################################
#                              Parity with diffusers                            #
#################################################################################


def _scheduler(kind: str, config):
    import diffusers

    return {"ddim": lambda: diffusers.DDIMScheduler.from_config(config),
            "euler": lambda: diffusers.EulerDiscreteScheduler.from_config(config),
            "euler-ancestral": lambda: diffusers.EulerAncestralDiscreteScheduler.from_config(config),
            "dpm++2m": lambda: diffusers.DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++",
                                                                                 solver_order=2)}[kind]()


@pytest.mark.parametrize("kind", ["ddim", "euler", "euler-ancestral", "dpm++2m"])
def test_text_to_video_parity(folders, model, kind):
    from diffusers import AnimateDiffPipeline

    ours = kinema.generate(PROMPT, model=model, scheduler=kind, return_result=True, progress=False, **RUN).latents
    pipe = diffusers_pipeline(AnimateDiffPipeline, folders["pipe"])
    pipe.scheduler = _scheduler(kind, pipe.scheduler.config)
    theirs = pipe(PROMPT, num_frames=FRAMES, height=SIZE, width=SIZE, num_inference_steps=STEPS,
                  guidance_scale=GUIDANCE, generator=generator(), output_type="latent").frames
    assert theirs.shape == ours.shape == (1, 4, FRAMES, SIZE // 2, SIZE // 2)
    diff = (ours - theirs).abs().max().item()
    print(f"text-to-video {kind}: max |kinema - diffusers| = {diff:.2e} (latents up to {theirs.abs().max():.1f})")
    assert diff <= TOL


def test_text_to_video_parity_sd_folder_with_adapter(folders):
    """The split layout: kinema puts the adapter on the SD UNet (from_unet2d) as AnimateDiffPipeline does."""
    from diffusers import AnimateDiffPipeline, MotionAdapter, StableDiffusionPipeline

    model = kinema.load(folders["sd"], device="cpu", dtype="float32", motion_adapter=folders["adapter"])
    ours = kinema.generate(PROMPT, model=model, return_result=True, progress=False, **RUN).latents
    sd = StableDiffusionPipeline.from_pretrained(folders["sd"], local_files_only=True, safety_checker=None)
    adapter = MotionAdapter.from_pretrained(folders["adapter"], local_files_only=True)
    pipe = AnimateDiffPipeline(vae=sd.vae, text_encoder=sd.text_encoder, tokenizer=sd.tokenizer, unet=sd.unet,
                               motion_adapter=adapter, scheduler=sd.scheduler)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(PROMPT, num_frames=FRAMES, height=SIZE, width=SIZE, num_inference_steps=STEPS,
                  guidance_scale=GUIDANCE, generator=generator(), output_type="latent").frames
    diff = (ours - theirs).abs().max().item()
    print(f"text-to-video, SD folder + adapter: max |kinema - diffusers| = {diff:.2e}")
    assert diff <= TOL


def test_v_prediction_parity(tmp_path):
    """A v-prediction folder (scheduler config prediction_type v_prediction): the family's parameterisation follows it."""
    from diffusers import AnimateDiffPipeline

    folder = adt.pipeline_folder(tmp_path / "v", scheduler_kw=dict(prediction_type="v_prediction"))
    model = kinema.load(folder, device="cpu", dtype="float32")
    assert model.info.prediction == "v_prediction"
    ours = kinema.generate(PROMPT, model=model, scheduler="euler", return_result=True, progress=False, **RUN).latents
    pipe = diffusers_pipeline(AnimateDiffPipeline, folder)
    pipe.scheduler = _scheduler("euler", pipe.scheduler.config)
    theirs = pipe(PROMPT, num_frames=FRAMES, height=SIZE, width=SIZE, num_inference_steps=STEPS,
                  guidance_scale=GUIDANCE, generator=generator(), output_type="latent").frames
    diff = (ours - theirs).abs().max().item()
    print(f"text-to-video v-prediction euler: max |kinema - diffusers| = {diff:.2e}")
    assert diff <= TOL


def test_video_to_video_parity(folders, model, monkeypatch):
    """SDEdit: the source encoded (posterior mean), noised to strength 0.5 by add_noise, denoised: 2 of 4 steps.

    diffusers' default video-to-video path draws the noise in its (B, F, C, h, w) layout of the encoded frames;
    its `enforce_inference_steps` path draws it in the (B, C, F, h, w) layout of the latents, as kinema does, and
    runs the same last round(4 x 0.5) = 2 of 4 timesteps from latents it is given. So: (1) diffusers' encoding
    (the posterior's mean) is kinema's, (2) from those latents the noising and the loop are the same.
    """
    import diffusers.pipelines.animatediff.pipeline_animatediff_video2video as v2v
    from diffusers import AnimateDiffVideoToVideoPipeline
    from PIL import Image

    from kinema.pipelines.common import encode_video
    from kinema.pipelines.loop import Timings

    source = source_clip()
    res = kinema.restyle(source, PROMPT, model=model, strength=0.5, flow=False, pixel_fusion=False, steps=STEPS,
                         guidance=GUIDANCE, seed=SEED, height=SIZE, width=SIZE, return_result=True, progress=False)
    assert res.record["restyle"]["denoise_steps"] == 2
    monkeypatch.setattr(v2v, "retrieve_latents", lambda out, generator=None, sample_mode="sample": out.latent_dist.mode())
    pipe = diffusers_pipeline(AnimateDiffVideoToVideoPipeline, folders["pipe"])
    frames = pipe.video_processor.preprocess_video([Image.fromarray(f) for f in source], height=SIZE, width=SIZE)
    theirs_init = pipe.encode_video(frames.permute(0, 2, 1, 3, 4)[0], None).permute(1, 0, 2, 3)[None] * pipe.vae.config.scaling_factor
    init = encode_video(model, source, Timings())  # (1, C, F, h, w)
    assert (init - theirs_init).abs().max().item() <= TOL
    theirs = pipe(prompt=PROMPT, latents=init, enforce_inference_steps=True, height=SIZE, width=SIZE, strength=0.5,
                  num_inference_steps=STEPS // 2, guidance_scale=GUIDANCE, generator=generator(),
                  output_type="latent").frames
    assert theirs.shape == res.latents.shape
    diff = (res.latents - theirs).abs().max().item()
    print(f"video-to-video (strength 0.5): encode {(init - theirs_init).abs().max():.2e}, latents {diff:.2e}")
    assert diff <= TOL


#################################################################################
#                                  Every driver                                 #
#################################################################################


def test_image_to_video_keeps_frame_zero(model):
    """AnimateDiff has no image-to-video in diffusers: kinema re-injects the anchor's latents at every step's level."""
    image = source_clip(1, seed=4)[0]
    res = kinema.animate(image, PROMPT, model=model, return_result=True, progress=False, **RUN)
    with torch.inference_mode():
        z = model.vae.encode(to_unit(image[None]))
        recon = to_uint8(model.vae.decode(z))[0]
    assert torch.equal(res.latents[:, :, :1], z)  # exactly the anchor's latents at the end
    fidelity = psnr(res.frames[0], recon)
    print(f"frame-0 PSNR against the VAE reconstruction: {fidelity:.1f} dB; against the image: "
          f"{psnr(res.frames[0], image):.1f} dB (a random VAE)")
    assert fidelity >= 40
    assert not np.array_equal(res.frames[1], res.frames[0])


def test_long_clip_in_windows(model, monkeypatch):
    """Past 16 frames: windows of 16 every 4 (the defaults), FreeNoise noise, no call longer than a window."""
    seen = []
    predict = model.denoiser.predict
    monkeypatch.setattr(model.denoiser, "predict", lambda x, *a, **k: seen.append(x.shape[2]) or predict(x, *a, **k))
    res = kinema.generate(PROMPT, model=model, return_result=True, progress=False, **{**RUN, "frames": 28, "steps": 2})
    assert res.frames.shape == (28, SIZE, SIZE, 3)
    long = res.record["long"]
    assert (long["context_length"], long["context_stride"], long["window_weights"]) == (16, 4, "pyramid")
    assert long["windows"] == 4 and max(seen) == 16
    assert torch.isfinite(res.latents).all()


def test_prompt_schedule_and_continuation(model):
    sched = kinema.generate(PROMPT, model=model, return_result=True, progress=False,
                            prompt_schedule="0:a red circle|12:a green square moving left", **{**RUN, "frames": 24, "steps": 2})
    assert sched.frames.shape[0] == 24 and sched.record["long"]["prompt_schedule"].startswith("0:")
    source = source_clip(8)
    ext = kinema.extend(source, PROMPT, model=model, frames=20, context_length=8, return_result=True, progress=False,
                        **{k: v for k, v in RUN.items() if k != "frames"})
    with torch.inference_mode():
        z = model.vae.encode(to_unit(source))
    assert ext.frames.shape[0] == 20
    assert torch.equal(ext.latents[:, :, :8], z)  # the given clip's latents kept exactly


def test_restyle_with_flow_fusion_and_windows(model):
    source = source_clip(20)
    res = kinema.restyle(source, PROMPT, model=model, strength=0.6, flow_steps=1.0, steps=STEPS, seed=SEED,
                         height=SIZE, width=SIZE, return_result=True, progress=False)
    assert res.record["restyle"]["fused_steps"] == res.record["restyle"]["denoise_steps"] == 2
    assert res.record["long"]["windows"] >= 2 and res.frames.shape == source.shape


def test_flow_fusion_moves_epsilon_by_x0():
    """FlowFusion on an epsilon level: the corrected output predicts exactly the propagated x0."""
    from kinema.pipelines.flow import source_flow
    from kinema.pipelines.parameterisation import Level
    from kinema.pipelines.video_to_video import FlowFusion

    guide = source_flow(source_clip(4), (SIZE // 2, SIZE // 2))
    latents, out = torch.randn(1, 4, 4, 16, 16), torch.randn(1, 4, 4, 16, 16)
    lv = Level.vp(0.4, "epsilon")
    fused = FlowFusion(guide, 0.8, steps=3).on_prediction(0, lv, latents, out)
    assert torch.allclose(lv.x0(latents, fused), guide.propagate(lv.x0(latents, out), 0.8), atol=1e-5)
    assert torch.equal(fused[:, :, 0], out[:, :, 0])  # frame 0 has no predecessor: unchanged


def test_one_pass_longer_than_the_adapter_is_refused(folders):
    from kinema.pipelines.common import Settings
    from kinema.pipelines.text_to_video import text_to_video

    short = load_model(describe(folders["pipe"]))
    short.denoiser.positions = 8  # an adapter with 8 positions
    with pytest.raises(KinemaError, match="--context-length"):
        text_to_video(short, PROMPT, Settings(frames=12, height=SIZE, width=SIZE, steps=1, scheduler="ddim"), progress=False)


#################################################################################
#                                   Bad input                                   #
#################################################################################


@pytest.fixture(scope="module")
def neither(folders, tmp_path_factory):
    path = tmp_path_factory.mktemp("neither") / "pipe"
    path.mkdir()
    shutil.copy(folders["pipe"] / "model_index.json", path / "model_index.json")  # the index, no components
    return path


def test_cli_bad_input_is_one_line_before_loading(folders, neither, tmp_path, capsys, monkeypatch):
    from kinema import cli
    from kinema.models import animatediff

    monkeypatch.setattr(animatediff, "load", lambda *a, **k: pytest.fail("weights were loaded"))
    pipe, sd, adapter = str(folders["pipe"]), str(folders["sd"]), str(folders["adapter"])
    clip = tmp_path / "clip"
    clip.mkdir()
    from PIL import Image

    for i, f in enumerate(source_clip()):
        Image.fromarray(f).save(clip / f"{i:03d}.png")
    small = ["--height", "32", "--width", "32"]
    cases = [
        (["generate", PROMPT, "--model", str(neither)], "neither an AnimateDiff nor an SD 1.5 folder"),
        (["generate", PROMPT, "--model", sd], "pass --motion-adapter DIR"),
        (["generate", PROMPT, "--model", adapter], "is a motion adapter, not a model folder"),
        (["generate", PROMPT, "--model", sd, "--motion-adapter", str(folders["wide_adapter"])],
         "block sizes [8, 16] do not match the UNet's [8, 8]"),
        (["generate", PROMPT, "--model", pipe, "--motion-adapter", adapter], "drop --motion-adapter"),
        (["generate", PROMPT, "--model", pipe, "--frames", "64", "--context-length", "40", *small],
         "at most 32 latent frames (its motion modules' positions); lower --context-length"),
        (["restyle", str(clip), PROMPT, "--model", pipe, "--method", "flowedit", "--strength", "0.5", *small],
         "this model predicts epsilon: use --method sdedit"),
    ]
    for argv, message in cases:
        assert cli.main(argv + ["-o", str(tmp_path / "out.mp4")]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, err


def test_flow_schedulers_only_for_flow_models(tiny_model_dir, folders):
    from kinema import jobs

    with pytest.raises(KinemaError, match=r"unknown --scheduler 'ddim' for this model \(flow predictions\)"):
        jobs.settings_for(describe(tiny_model_dir), scheduler="ddim")
    assert jobs.settings_for(describe(folders["pipe"]), scheduler="dpm++2m").scheduler == "dpm++2m"


def test_cli_generate_split_layout(folders, tmp_path):
    from kinema import cli

    out = tmp_path / "clip.mp4"
    argv = ["generate", PROMPT, "--model", str(folders["sd"]), "--motion-adapter", str(folders["adapter"]),
            "--frames", "8", "--height", "32", "--width", "32", "--steps", "2", "--quiet", "-o", str(out)]
    assert cli.main(argv) == 0 and out.is_file()
    record = json.loads((tmp_path / "clip.mp4.json").read_text())  # the sidecar
    assert record["family"] == "animatediff" and record["settings"]["scheduler"] == "ddim"
    assert record["model_parts"] == [str(folders["adapter"])]
