"""`kinema train --data DIR` on Wan, LTX-Video and AnimateDiff folders: a LoRA with each family's own loss, on tiny
random components; the file loads as `--lora` loads it and lowers the loss on the clips it learnt."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from kinema import video_io

FRAMES = {"wan": 5, "ltx": 9, "animatediff": 4}


def clip(colour, frames, size=32, x0=2):
    v = np.zeros((frames, size, size, 3), np.uint8)
    v[:] = (30, 40, 160)
    for t in range(frames):
        v[t, 10:20, x0 + 2 * t:x0 + 2 * t + 10] = colour
    return v


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from kinema.models import animatediff_testing, ltx_testing, wan_testing

    root = tmp_path_factory.mktemp("families")
    data = root / "clips"
    data.mkdir()
    for i, colour in enumerate([(240, 100, 170), (240, 100, 170)]):
        video_io.write_video(data / f"c{i}.mp4", clip(colour, 9, x0=2 + 3 * i), fps=8)
        (data / f"c{i}.txt").write_text(f"a pink square moving right, take {i}")
    return dict(data=data, wan=wan_testing.t2v_folder(root / "wan"), ltx=ltx_testing.folder(root / "ltx"),
                animatediff=animatediff_testing.pipeline_folder(root / "ad"))


def fixed_loss(model, cache, seed=0):
    """The family's training loss on every cached clip at fixed noise levels and noise (no dropout)."""
    from kinema.finetune import Noising, Recipe
    from kinema.models.seams import TextEmbeds

    info = model.info
    recipe = Recipe(info.family, 4, 1, 1, 1e-3, FRAMES[info.family], 32, 32)
    noising, rng = Noising(model, recipe), np.random.default_rng(seed)
    x0 = cache["latents"].float()
    z = rng.normal(0, 1, (4, len(x0)))
    noise = torch.randn(4, *x0.shape, generator=torch.Generator().manual_seed(seed))
    text = TextEmbeds(cache["text_hidden"][cache["caption_of"]].float(), cache["text_mask"][cache["caption_of"]].bool())
    total = 0.0
    with torch.no_grad():
        for k in range(4):
            xt, t, target = noising(x0, noise[k], z[k])
            total += torch.nn.functional.mse_loss(model.denoiser.predict(xt, t, text).float(), target).item()
    return total / 4


@pytest.mark.parametrize("family", ["wan", "ltx", "animatediff"])
def test_lora_learns_the_clips_and_loads_as_lora_loads_it(folders, family, tmp_path):
    from kinema.finetune import finetune_family
    from kinema.models.family import describe, load_model
    from kinema.models.lora import load_loras

    info = describe(folders[family])
    out = finetune_family(info, folders["data"], tmp_path / "run", rank=4, steps=40, frames=FRAMES[family], batch=2,
                          lr=1e-2, height=32, width=32, samples=1 if family == "wan" else 0, sample_steps=2)
    assert out == tmp_path / "run" / "lora.safetensors"
    with safe_open(str(out), "pt") as f:
        keys, meta = list(f.keys()), json.loads(f.metadata()["kinema_finetune"])
    part = {"wan": "transformer", "ltx": "transformer", "animatediff": "unet"}[family]  # diffusers' prefixes
    assert keys and all(k.startswith(part + ".") and (".lora_A." in k or ".lora_B." in k) for k in keys)
    assert meta["family"] == family and meta["rank"] == 4 and meta["step"] == 40
    (cache_file,) = (tmp_path / "run" / "cache").glob("*.safetensors")
    cache = load_file(cache_file)
    model = load_model(info)
    before = fixed_loss(model, cache)
    records = load_loras(model.denoiser, [(str(out), 1.0)], True, model.text_encoder)  # what --lora does
    assert records[0]["layers"] == len(keys) // 2 and records[0]["unmatched"] == 0
    after = fixed_loss(model, cache)
    assert after < 0.92 * before, (before, after)  # measured: wan 0.76, ltx 0.58, animatediff 0.87
    assert (tmp_path / "run" / "lora_loss.png").is_file()
    if family == "wan":  # the samples, with the LoRA as saved: one caption, its frames
        gif = video_io.read_video(tmp_path / "run" / "samples.gif")[0]
        assert gif.shape == (FRAMES[family], 32, 32, 3)


@pytest.mark.parametrize("family,scheduler_kw", [("wan", None), ("animatediff", None),
                                                  ("animatediff", {"prediction_type": "v_prediction"})])
def test_training_targets_are_what_sampling_converts(folders, family, scheduler_kw, tmp_path):
    """x0 recovered from (noised latents, target) by the loop's own parameterisation (`Level.x0`) is the clean latent:
    training teaches exactly the output the sampler reads."""
    from kinema.finetune import Noising, Recipe
    from kinema.models import animatediff_testing
    from kinema.models.family import describe
    from kinema.pipelines.parameterisation import Level

    folder = folders[family] if scheduler_kw is None else animatediff_testing.pipeline_folder(tmp_path / "v", scheduler_kw=scheduler_kw)
    info = describe(folder)
    sched = dict(info.configs["scheduler"], shift=info.defaults.shift)
    noising = Noising(SimpleNamespace(info=info, scheduler_config=sched), Recipe(family, 4, 1, 1, 1e-3, 5, 32, 32))
    x0, noise = torch.randn(6, 4, 2, 4, 4), torch.randn(6, 4, 2, 4, 4)
    z = np.linspace(-2.5, 2.5, 6)
    xt, t, target = noising(x0, noise, z)
    for i in range(6):
        if info.prediction == "flow":
            level = Level.flow(float(t[i]) / 1000)
        else:
            level = Level.vp(float(noising.alphas_cumprod[int(t[i])]), info.prediction)
        assert torch.allclose(level.x0(xt[i], target[i]), x0[i], atol=1e-4)
    assert info.prediction == (scheduler_kw or {}).get("prediction_type", "flow" if family == "wan" else "epsilon")
    assert len(set(t.tolist())) == 6  # the draws spread over noise levels


def test_a_run_resumes_from_its_checkpoint(folders, tmp_path, capsys):
    from kinema.finetune import finetune_family
    from kinema.models.family import describe

    info = describe(folders["wan"])
    kw = dict(rank=2, frames=5, batch=2, height=32, width=32, samples=0)
    finetune_family(info, folders["data"], tmp_path / "run", steps=3, **kw)
    out = finetune_family(info, folders["data"], tmp_path / "run", steps=5, **kw)
    assert "resuming from" in capsys.readouterr().out
    meta = json.loads(safe_open(str(out), "pt").metadata()["kinema_finetune"])
    assert meta["step"] == 5
    (ckpt,) = sorted((tmp_path / "run" / "checkpoints").glob("*-0000005"))
    assert [h[0] for h in json.loads((ckpt / "meta.json").read_text())["history"]] == [1, 2, 3, 4, 5]
    with pytest.raises(Exception, match="other settings"):  # another rank in the same run folder
        finetune_family(info, folders["data"], tmp_path / "run", steps=6, **{**kw, "rank": 3})


def cli(*args, launcher=None):
    cmd = [*(launcher or [sys.executable]), "-m", "kinema.cli", "train", *map(str, args)]
    return subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("family,args,message", [
    ("wan", ["--full"], "is adapted with a LoRA: pass --lora RANK"),
    ("wan", ["--vae-steps", "10"], "--vae-steps adapts kinema's own autoencoder"),
    ("wan", ["--frames", "8"], "compresses time by 4: use 4k+1 frames"),
    ("wan", ["--frames", "5", "--height", "40"], "multiples of 16"),
    ("ltx", ["--frames", "6"], "compresses time by 4: use 4k+1 frames"),
    ("animatediff", ["--frames", "40"], "exceeds the motion adapter's 32 positions"),
])
def test_cli_refuses_bad_family_runs_in_one_line_before_loading(folders, family, args, message, tmp_path):
    r = cli("--data", folders["data"], "--model", folders[family], "--run", tmp_path / "run", *args)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines
    assert not (tmp_path / "run" / "cache").exists()  # nothing encoded


def test_cli_trains_a_wan_lora_with_two_processes_as_with_one(folders, tmp_path):
    """`accelerate launch` (2 CPU processes, gloo): each takes half the batch, gradients averaged: the LoRA of one."""
    bin = Path(sys.executable).parent
    two = [str(bin / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"]
    files = {}
    for name, launcher in (("one", None), ("two", two)):
        r = cli("--data", folders["data"], "--model", folders["wan"], "--run", tmp_path / name, "--lora", "2",
                "--frames", "5", "--height", "32", "--width", "32", "--steps", "4", "--batch", "4", "--lr", "0.01",
                launcher=launcher)
        assert r.returncode == 0, r.stderr[-3000:]
        files[name] = load_file(tmp_path / name / "lora.safetensors")
    assert files["one"].keys() == files["two"].keys()
    worst = max((files["one"][k] - files["two"][k]).abs().max().item() for k in files["one"])
    moved = max(files["one"][k].abs().max().item() for k in files["one"] if ".lora_B." in k)
    assert worst < 1e-4 < moved, (worst, moved)
