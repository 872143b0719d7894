"""Wan 2.1 / 2.2 diffusers folders through kinema, in parity with diffusers' Wan pipelines.

Tiny random components (`kinema.models.wan_testing`: diffusers / transformers classes with small
configs, a WordLevel tokenizer written to tokenizer.json so nothing is downloaded) are saved with
`save_pretrained` into folders of the real layout, loaded back by kinema and by diffusers, and run with
the same seed, scheduler (the folder's UniPC flow config), steps and guidance. Noise: both draw it from
a CPU generator seeded by the seed (`randn_tensor` = `pipelines.common.initial_noise`), so no latents
are passed to either side.
Prompts are already clean; diffusers' ftfy step is replaced by kinema's ftfy-free cleaner in the
diffusers modules so the comparison does not depend on ftfy being installed.
"""

from __future__ import annotations

import json

from dataclasses import replace

import numpy as np
import pytest
import torch

import kinema
from kinema.errors import KinemaError
from kinema.models.seams import to_uint8, to_unit
from kinema.models.wan_testing import (clip, pipeline, save, scheduler, text_encoder, tokenizer, transformer, vae,
                                       without_ftfy)

PROMPT = "a red circle moving right on a blue background"
NEGATIVE = "the dog"
TOL = 1e-4
FRAMES, SIZE, STEPS, GUIDANCE, SEED = 9, 32, 4, 5.0, 3

#################################################################################
#                              Tiny Wan components                              #
#################################################################################


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Wan 2.1 T2V, 2.1 I2V (with CLIP), 2.2 two-expert T2V and 2.2 TI2V folders, written once."""
    from diffusers import WanImageToVideoPipeline, WanPipeline

    root = tmp_path_factory.mktemp("wan")
    torch.manual_seed(0)
    tok, te = tokenizer(), text_encoder()
    out = {}
    out["t2v"] = save(WanPipeline(tok, te, vae(), scheduler(), transformer()), root / "t2v")
    enc, proc = clip()
    i2v = transformer(in_channels=36, image_dim=8, added_kv_proj_dim=24)
    out["i2v"] = save(WanImageToVideoPipeline(tok, te, vae(), scheduler(), image_processor=proc, image_encoder=enc,
                                              transformer=i2v), root / "i2v")
    out["a14b"] = save(WanPipeline(tok, te, vae(), scheduler(5.0), transformer(), transformer(), boundary_ratio=0.875),
                       root / "a14b")
    out["ti2v"] = save(WanPipeline(tok, te, vae(wan22=True), scheduler(5.0), transformer(48, 48), expand_timesteps=True),
                       root / "ti2v")
    return out


@pytest.fixture(scope="module", autouse=True)
def no_ftfy():
    """diffusers' Wan I2V module calls ftfy unconditionally; give every Wan module kinema's cleaner."""
    with without_ftfy():
        yield


def settings(model, **kw):
    from kinema import jobs

    base = dict(frames=FRAMES, height=SIZE, width=SIZE, steps=STEPS, guidance=GUIDANCE, seed=SEED, negative_prompt=NEGATIVE)
    return jobs.settings_for(model.info, **{**base, **kw})


def generator():
    return torch.Generator("cpu").manual_seed(SEED)


def image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)


def max_diff(a, b) -> float:
    return float((torch.as_tensor(a).float() - torch.as_tensor(b).float()).abs().max())


#################################################################################
#                                    Parity                                     #
#################################################################################
# Each run_* returns {what: max abs diff}; the tests assert them on fp32 CPU and scripts/wan_parity.py
# runs the same functions on CUDA in bf16.


def load(folder, device="cpu", dtype=torch.float32):
    from kinema.models.family import load_model

    return load_model(folder, device, dtype)


def run_text_to_video(folder, device="cpu", dtype=torch.float32, size=SIZE, steps=STEPS) -> dict:
    from diffusers import WanPipeline

    from kinema.pipelines.text_to_video import text_to_video

    model = load(folder, device, dtype)
    ours = text_to_video(model, PROMPT, settings(model, height=size, width=size, steps=steps), progress=False)
    pipe = pipeline(WanPipeline, folder, device, dtype)
    call = dict(prompt=PROMPT, negative_prompt=NEGATIVE, height=size, width=size, num_frames=FRAMES,
                num_inference_steps=steps, guidance_scale=GUIDANCE)
    theirs = pipe(**call, generator=generator(), output_type="latent").frames
    video = pipe(**call, generator=generator(), output_type="pt").frames  # (1, F, 3, H, W) in [0, 1]
    with torch.inference_mode():
        decoded = (model.vae.decode(ours.latents, chunk_size=1) + 1) / 2  # chunked, the causal cache kept
    expected = (video[0].permute(0, 2, 3, 1) * 255).round().to(torch.uint8).cpu().numpy()
    return dict(latents=max_diff(ours.latents, theirs), video=max_diff(decoded, video.permute(0, 2, 1, 3, 4)),
                uint8=int(np.abs(ours.frames.astype(int) - expected.astype(int)).max()), model=model, result=ours)


def run_image_to_video(folder, device="cpu", dtype=torch.float32, size=SIZE, im=None) -> dict:
    from diffusers import WanImageToVideoPipeline
    from PIL import Image

    model = load(folder, device, dtype)
    im = image() if im is None else im
    ours = kinema.animate(im, PROMPT, model=model, frames=FRAMES, height=size, width=size, steps=STEPS,
                          guidance=GUIDANCE, seed=SEED, negative_prompt=NEGATIVE, progress=False, return_result=True)
    pipe = pipeline(WanImageToVideoPipeline, folder, device, dtype)
    theirs = pipe(image=Image.fromarray(im), prompt=PROMPT, negative_prompt=NEGATIVE, height=size, width=size,
                  num_frames=FRAMES, num_inference_steps=STEPS, guidance_scale=GUIDANCE, generator=generator(),
                  output_type="latent").frames
    return dict(latents=max_diff(ours.latents, theirs), model=model, result=ours)


def run_video_to_video(folder, device="cpu", dtype=torch.float32, strength=0.75) -> dict:
    from diffusers import WanVideoToVideoPipeline
    from PIL import Image

    from kinema.pipelines.video_to_video import RestyleOptions, restyle_video

    model = load(folder, device, dtype)
    source = np.random.default_rng(1).integers(0, 256, (FRAMES, SIZE, SIZE, 3), dtype=np.uint8)
    ours = restyle_video(model, PROMPT, source, settings(model), RestyleOptions(strength=strength, flow=False),
                         progress=False)  # flow fusion off: plain SDEdit, what diffusers' V2V does
    pipe = pipeline(WanVideoToVideoPipeline, folder, device, dtype)
    theirs = pipe(video=[Image.fromarray(f) for f in source], prompt=PROMPT, negative_prompt=NEGATIVE, height=SIZE,
                  width=SIZE, num_inference_steps=STEPS, guidance_scale=GUIDANCE, strength=strength,
                  generator=generator(), output_type="latent").frames
    return dict(latents=max_diff(ours.latents, theirs), model=model, result=ours)


def run_two_experts(folder, device="cpu", dtype=torch.float32, steps=6) -> dict:
    from diffusers import WanPipeline

    from kinema.pipelines.text_to_video import text_to_video

    model = load(folder, device, dtype)
    used = []
    hooks = [getattr(model.denoiser, n).register_forward_pre_hook(lambda m, a, n=n: used.append(n))
             for n in ("transformer", "transformer_2")]
    ours = text_to_video(model, PROMPT, settings(model, steps=steps), progress=False)
    for h in hooks:
        h.remove()
    pipe = pipeline(WanPipeline, folder, device, dtype)
    theirs = pipe(prompt=PROMPT, negative_prompt=NEGATIVE, height=SIZE, width=SIZE, num_frames=FRAMES,
                  num_inference_steps=steps, guidance_scale=GUIDANCE, generator=generator(), output_type="latent").frames
    return dict(latents=max_diff(ours.latents, theirs), experts=used, model=model, result=ours)


def run_ti2v(folder, device="cpu", dtype=torch.float32, size=64) -> dict:
    """Wan 2.2 TI2V-5B (expand_timesteps): text-to-video, and image-to-video through kinema's own driver."""
    from diffusers import WanImageToVideoPipeline, WanPipeline
    from PIL import Image

    from kinema.pipelines.text_to_video import text_to_video

    model = load(folder, device, dtype)
    ours = text_to_video(model, PROMPT, settings(model, height=size, width=size), progress=False)
    call = dict(prompt=PROMPT, negative_prompt=NEGATIVE, height=size, width=size, num_frames=FRAMES,
                num_inference_steps=STEPS, guidance_scale=GUIDANCE, output_type="latent")
    t2v = max_diff(ours.latents, pipeline(WanPipeline, folder, device, dtype)(**call, generator=generator()).frames)
    im = np.random.default_rng(2).integers(0, 256, (size, size, 3), dtype=np.uint8)
    ours = kinema.animate(im, PROMPT, model=model, frames=FRAMES, height=size, width=size, steps=STEPS,
                          guidance=GUIDANCE, seed=SEED, negative_prompt=NEGATIVE, progress=False, return_result=True)
    pipe = pipeline(WanImageToVideoPipeline, folder, device, dtype)
    i2v = max_diff(ours.latents, pipe(image=Image.fromarray(im), **call, generator=generator()).frames)
    return dict(t2v=t2v, i2v=i2v, model=model, result=ours, image=im)


def test_text_to_video_parity(folders):
    from kinema.pipelines.text_to_video import text_to_video

    r = run_text_to_video(folders["t2v"])
    assert r["latents"] <= TOL and r["video"] <= TOL and r["uint8"] <= 1
    model, s = r["model"], settings(r["model"])
    assert (s.scheduler, s.shift, model.scheduler_config["shift"]) == ("unipc", None, 3.0)  # the folder's UniPC
    assert r["result"].frames.shape == (FRAMES, SIZE, SIZE, 3)
    other = text_to_video(model, "the green square moving up", s, progress=False)
    assert max_diff(other.latents, r["result"].latents) > 100 * TOL  # the prompt matters: parity is not vacuous


def test_image_to_video_parity(folders):
    r = run_image_to_video(folders["i2v"])
    assert r["latents"] <= TOL
    model = r["model"]
    assert model.image_encoder is not None and model.info.frame_conditions == ("first",)
    other = kinema.animate(image(5), PROMPT, model=model, frames=FRAMES, height=SIZE, width=SIZE, steps=STEPS,
                           guidance=GUIDANCE, seed=SEED, negative_prompt=NEGATIVE, progress=False, return_result=True)
    assert max_diff(other.latents, r["result"].latents) > 100 * TOL  # the image matters


def test_video_to_video_parity(folders):
    assert run_video_to_video(folders["t2v"])["latents"] <= TOL


def test_two_experts_parity(folders):
    r = run_two_experts(folders["a14b"])
    assert r["latents"] <= TOL
    assert r["experts"][0] == "transformer" and r["experts"][-1] == "transformer_2"  # high noise first, then low


def test_ti2v_parity(folders):
    r = run_ti2v(folders["ti2v"])
    assert r["t2v"] <= TOL and r["i2v"] <= TOL
    model = r["model"]
    assert model.info.size_multiple == 32 and model.info.frame_conditions == ("first",)
    first = torch.from_numpy(r["result"].frames[0]).float()
    with torch.inference_mode():  # frame 0 is the image's own latents, decoded (no drift from the condition)
        alone = torch.from_numpy(to_uint8(model.vae.decode(model.vae.encode(to_unit(r["image"][None]))))[0]).float()
    assert (first - alone).abs().max() <= 1


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_parity_cuda_bfloat16(folders):
    """The same parity runs on the GPU in bfloat16 (written for the CUDA check; looser: CFG is combined in fp32)."""
    args = dict(device="cuda", dtype=torch.bfloat16)
    assert run_text_to_video(folders["t2v"], **args)["latents"] <= 0.1
    assert run_image_to_video(folders["i2v"], **args)["latents"] <= 0.1
    assert run_video_to_video(folders["t2v"], **args)["latents"] <= 0.1
    assert run_two_experts(folders["a14b"], **args)["latents"] <= 0.1
    r = run_ti2v(folders["ti2v"], **args)
    assert r["t2v"] <= 0.1 and r["i2v"] <= 0.1


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("offload", ["model", "sequential"])
def test_offload_cuda(folders, offload):
    """Offloaded weights give the clip the resident ones give, and start on the CPU."""
    from kinema.models.family import load_model
    from kinema.pipelines.text_to_video import text_to_video

    model = load_model(folders["i2v" if offload == "model" else "t2v"], "cuda", torch.float32)
    resident = kinema.animate(image(), PROMPT, model=model, frames=FRAMES, height=SIZE, width=SIZE, steps=STEPS,
                              seed=SEED, progress=False, return_result=True) if offload == "model" else \
        text_to_video(model, PROMPT, settings(model), progress=False)
    model = load_model(folders["i2v" if offload == "model" else "t2v"], "cuda", torch.float32, offload=offload)
    assert next(model.denoiser.transformer.parameters()).device.type in ("cpu", "meta")
    moved = kinema.animate(image(), PROMPT, model=model, frames=FRAMES, height=SIZE, width=SIZE, steps=STEPS,
                           seed=SEED, progress=False, return_result=True) if offload == "model" else \
        text_to_video(model, PROMPT, settings(model), progress=False)
    assert max_diff(moved.latents, resident.latents) <= 1e-5


#################################################################################
#                            Pieces, checked alone                              #
#################################################################################


def test_pixel_mask_is_diffusers_mask():
    """Wan's I2V mask: frame 0 fills 4 channels of latent frame 0; a last frame the 4th of the last."""
    from kinema.models.wan import pixel_mask

    m = pixel_mask(9, last=False)[0, :, :, 0, 0]  # (4, 3)
    assert m.tolist() == [[1, 0, 0], [1, 0, 0], [1, 0, 0], [1, 0, 0]]
    m = pixel_mask(9, last=True)[0, :, :, 0, 0]
    assert m.tolist() == [[1, 0, 0], [1, 0, 0], [1, 0, 0], [1, 0, 1]]


def test_clean_prompt_without_ftfy():
    from kinema.models.wan import clean_prompt

    assert clean_prompt("  a &amp;amp; b\n\t c  ") == "a & b c"


@pytest.mark.parametrize("name, spatial, channels", [("t2v", 8, 16), ("ti2v", 16, 48)])
def test_vae_seam(folders, name, spatial, channels):
    """4k+1 frames; chunked decoding equals the whole decode (2.2's patchified VAE too); checks come first."""
    vae = load(folders[name]).vae
    assert (vae.temporal_compression, vae.spatial_compression, vae.latent_channels) == (4, spatial, channels)
    assert [vae.latent_frames(f) for f in (1, 5, 9, 81)] == [1, 2, 3, 21]
    video = torch.rand(1, 3, 9, 32, 32) * 2 - 1
    with torch.inference_mode():
        z = vae.encode(video)
        assert z.shape == (1, channels, 3, 32 // spatial, 32 // spatial)
        whole = vae.autoencoder.decode(vae.denormalise(z)).sample
        chunks = list(vae.decode_chunks(z, chunk_size=2))
        assert [c.shape[2] for c in chunks] == [5, 4]  # latent frames (0, 1) -> 1 + 4 frames, (2,) -> 4
        assert whole.shape == video.shape and max_diff(torch.cat(chunks, 2), whole) <= 1e-6
    with pytest.raises(KinemaError, match="4k\\+1 frames.*use 9 or 13"):
        vae.encode(torch.zeros(1, 3, 10, 32, 32))
    with pytest.raises(KinemaError, match="multiple"):
        vae.encode(torch.zeros(1, 3, 9, 20, 32))


def test_structure_injection_is_refused_clearly(folders):
    """Wan's transformer cannot take a source's layout: restyle with structure says so (the front door checks first)."""
    from kinema.pipelines.video_to_video import RestyleOptions, restyle_video

    model = load(folders["t2v"])
    source = np.random.default_rng(0).integers(0, 256, (FRAMES, SIZE, SIZE, 3), dtype=np.uint8)
    with pytest.raises(KinemaError, match="pass --structure 0"):
        restyle_video(model, PROMPT, source, settings(model, steps=2), RestyleOptions(strength=1.0, structure=0.5),
                      progress=False)


def test_flowedit_with_the_source_prompt_returns_the_source_reconstruction(folders):
    """FlowEdit on a flow backbone of another family: with the source prompt equal to the prompt, the edit stays
    at the source's latents (within 1e-5); with another prompt it moves. Wan's own UniPC is replaced by Euler."""
    from kinema.pipelines.common import encode_video
    from kinema.pipelines.loop import Timings
    from kinema.pipelines.video_to_video import RestyleOptions, resolve_restyle_options, restyle_video

    model = load(folders["t2v"])
    source = np.random.default_rng(2).integers(0, 256, (FRAMES, SIZE, SIZE, 3), dtype=np.uint8)
    x = encode_video(model, source, Timings())
    s = replace(settings(model), scheduler="euler")
    for prompt, moved in ((PROMPT, False), ("a completely different scene", True)):
        opts = resolve_restyle_options(RestyleOptions(strength=0.75, flow=False, method="flowedit", source_prompt=PROMPT),
                                       {}, s.steps)
        out = restyle_video(model, prompt, source, s, opts, progress=False)
        diff = float((out.latents - x).abs().max())
        assert (diff > 1e-3) if moved else (diff <= 1e-5), (prompt, diff)


def test_every_driver_runs_a_wan_folder(folders):
    """Long clips (fused windows, continuation), extend, animate through known frames, flow-guided restyle."""
    model = load(folders["t2v"])
    kw = dict(model=model, height=SIZE, width=SIZE, steps=2, progress=False)
    source = np.random.default_rng(0).integers(0, 256, (FRAMES, SIZE, SIZE, 3), dtype=np.uint8)
    assert kinema.generate(PROMPT, frames=25, context_length=3, context_stride=1, **kw).shape == (25, SIZE, SIZE, 3)
    assert kinema.generate(PROMPT, frames=25, context_length=3, mode="continue", **kw).shape == (25, SIZE, SIZE, 3)
    assert kinema.extend(source, PROMPT, frames=21, context_length=3, **kw).shape == (21, SIZE, SIZE, 3)
    with pytest.warns(UserWarning, match="not trained with a first-frame condition"):
        assert kinema.animate(source[0], PROMPT, frames=FRAMES, **kw).shape == (FRAMES, SIZE, SIZE, 3)
    assert kinema.restyle(source, PROMPT, **kw).shape == (FRAMES, SIZE, SIZE, 3)


def test_described_defaults_from_the_checkpoint(folders):
    from kinema import api, jobs

    info = api.info(folders["t2v"])
    d = info.defaults
    assert (d.frames, d.height, d.width, d.fps, d.scheduler, d.shift) == (81, 480, 832, 16, "unipc", 3.0)
    assert info.family == "wan" and info.size_multiple == 16 and info.temporal_compression == 4
    assert api.info(folders["a14b"]).index["family"] == "a14b"
    assert api.info(folders["i2v"]).tasks == ("animate",)
    s = jobs.settings_for(info)
    assert (s.frames, s.height, s.width, s.scheduler) == (81, 480, 832, "unipc")
    with pytest.raises(KinemaError, match="4k\\+1 frames, such as 77 or 81"):
        jobs.settings_for(info, frames=80)
    with pytest.raises(KinemaError, match="multiple of 16"):
        jobs.settings_for(info, height=100)


def test_scheduler_is_the_folders(folders):
    """kinema's UniPC from the folder's config has the folder's sigmas; a setting it drops is warned about."""
    from diffusers import UniPCMultistepScheduler

    from kinema.models.wan import check_scheduler
    from kinema.pipelines.loop import make_scheduler

    model = load(folders["t2v"])
    ours = make_scheduler("unipc", model.scheduler_config)
    theirs = UniPCMultistepScheduler.from_pretrained(folders["t2v"] / "scheduler", local_files_only=True)
    for s in (ours, theirs):
        s.set_timesteps(STEPS)
    assert torch.equal(ours.timesteps, theirs.timesteps) and torch.equal(ours.sigmas, theirs.sigmas)
    with pytest.warns(UserWarning, match="solver_order differently"):
        check_scheduler(dict(model.scheduler_config, solver_order=3))


def test_text_seam(folders):
    """UMT5 states padded to 512 tokens with zeros past each prompt, as diffusers' _get_t5_prompt_embeds."""
    model = load(folders["t2v"])
    emb = model.text_encoder.encode([PROMPT, ""])
    assert emb.hidden.shape == (2, 512, 16) and emb.mask.sum(1).tolist() == [10, 1]
    assert emb.hidden[0, 10:].abs().max() == 0 and emb.hidden[1, 1:].abs().max() == 0


#################################################################################
#                                   Bad input                                   #
#################################################################################


@pytest.fixture
def broken(folders, tmp_path):
    """A copy of the T2V folder to break."""
    import shutil

    path = tmp_path / "wan"
    shutil.copytree(folders["t2v"], path)
    return path


def _index(path, **changes):
    index = json.loads((path / "model_index.json").read_text())
    index.update(changes)
    (path / "model_index.json").write_text(json.dumps(index))


def _fails(path, match):
    from kinema import api

    with pytest.raises(KinemaError, match=match):
        api.info(path)


def test_not_a_wan_pipeline(broken):
    _index(broken, _class_name="FluxPipeline")  # (StableDiffusionPipeline folders are AnimateDiff's, with an adapter)
    _fails(broken, "not a Wan pipeline")


def test_component_outside_the_folder_is_refused(broken):
    _index(broken, **{"../evil": ["diffusers", "WanTransformer3DModel"]})
    _fails(broken, "outside the folder")


def test_missing_component_folder(broken):
    import shutil

    shutil.rmtree(broken / "vae")
    _fails(broken, "missing component folder vae/")


def test_wrong_component_class(broken):
    _index(broken, transformer=["diffusers", "UNet2DConditionModel"])
    _fails(broken, "transformer of class UNet2DConditionModel")


def test_pickle_only_weights(broken):
    weights = broken / "transformer" / "diffusion_pytorch_model.safetensors"
    weights.rename(weights.with_suffix(".bin"))
    _fails(broken, "only pickle weights")


def test_missing_weight_shard(broken):
    folder = broken / "transformer"
    (folder / "diffusion_pytorch_model.safetensors").rename(folder / "diffusion_pytorch_model-00001-of-00002.safetensors")
    shards = {"weight_map": {"a": "diffusion_pytorch_model-00001-of-00002.safetensors",
                             "b": "diffusion_pytorch_model-00002-of-00002.safetensors"}}
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(shards))
    _fails(broken, "missing weight shards: diffusion_pytorch_model-00002-of-00002")


def test_boundary_without_second_expert(broken):
    _index(broken, boundary_ratio=0.875)
    _fails(broken, "no transformer_2")


def test_cli_errors_before_loading(folders, broken, capsys, monkeypatch):
    """One line, exit 2, no weights loaded: bad frames, bad size, an image-to-video-only checkpoint."""
    from kinema import cli
    from kinema.models import wan

    monkeypatch.setattr(wan, "load", lambda *a, **k: pytest.fail("weights were loaded"))
    cases = [
        (["generate", PROMPT, "--model", str(folders["t2v"]), "--frames", "10"], "4k+1 frames, such as 9 or 13"),
        (["generate", PROMPT, "--model", str(folders["t2v"]), "--width", "40"], "multiple of 16"),
        (["generate", PROMPT, "--model", str(folders["i2v"])], "cannot generate; it supports: animate"),
        (["generate", PROMPT, "--model", str(broken.parent / "nothing")], "does not exist"),
    ]
    for argv, message in cases:
        assert cli.main(argv + ["-o", str(broken.parent / "out.mp4")]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, err


def test_cli_info(folders, capsys):
    from kinema import cli

    assert cli.main(["info", str(folders["a14b"]), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["family"] == "a14b" and set(report["params"]) == {"transformer", "transformer_2", "vae", "text_encoder"}
    assert set(report["memory_estimate"]["offload"]) == {"none", "model", "sequential"}
    assert cli.main(["info", str(folders["i2v"])]) == 0
    assert "image_encoder" in capsys.readouterr().out


def test_cli_generate_with_wan(folders, tmp_path):
    """`kinema generate` runs a Wan folder end to end and writes the clip and its sidecar."""
    from kinema import cli

    out = tmp_path / "clip.gif"
    argv = ["generate", PROMPT, "--model", str(folders["t2v"]), "--frames", "5", "--height", "32", "--width", "32",
            "--steps", "2", "--quiet", "-o", str(out)]
    assert cli.main(argv) == 0 and out.is_file()
    sidecar = json.loads(out.with_name(out.name + ".json").read_text()) if out.with_name(out.name + ".json").is_file() \
        else json.loads(next(tmp_path.glob("*.json")).read_text())
    assert sidecar["settings"]["scheduler"] == "unipc" and sidecar["frames_written"] == 5
