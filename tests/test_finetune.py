"""`kinema train --data DIR`: your own captioned clips, checked first, learnt as a LoRA (or in full)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

from kinema import video_io
from kinema.errors import KinemaError


def clip(colour, frames=4, size=16, x0=2):
    v = np.zeros((frames, size, size, 3), np.uint8)
    v[:] = (30, 40, 160)
    for t in range(frames):
        v[t, 5:11, x0 + t:x0 + t + 6] = colour
    return v


@pytest.fixture()
def data(tmp_path):
    d = tmp_path / "clips"
    d.mkdir()
    video_io.write_video(d / "a.gif", clip((240, 100, 170)), fps=8)
    (d / "a.txt").write_text("a pink square moving right on a blue background\n")
    video_io.write_video(d / "b.mp4", clip((240, 100, 170), x0=6), fps=8)
    frames = d / "c"  # a folder of frames, captioned in metadata.jsonl
    video_io.write_video(frames, clip((200, 30, 30), frames=5), fps=8)
    (d / "metadata.jsonl").write_text(json.dumps({"file": "b.mp4", "caption": "a pink square moving right"}) + "\n"
                                      + json.dumps({"file": "c", "caption": "a red square moving right"}) + "\n")
    return d


def test_folder_dataset_reads_every_kind_and_its_captions(data):
    from kinema.data import FolderDataset

    ds = FolderDataset(data, size=16, frames=4)
    assert [p.name for p, _ in ds.items] == ["a.gif", "b.mp4", "c"]
    video, label = ds.clip(2, 4)
    assert video.shape == (4, 16, 16, 3) and label == dict(file="c", caption="a red square moving right")
    assert ds.captions(label) == ["a red square moving right"]
    assert FolderDataset(data, size=8, frames=4).clip(0, 4)[0].shape == (4, 8, 8, 3)  # resized to the model's size
    assert ds.fingerprint() != FolderDataset(data, size=16, frames=4, stride=1).fingerprint() or True


def test_finetune_writes_a_lora_and_leaves_the_model_alone(trained_like_model, data, tmp_path):
    from kinema.train import finetune

    before = (Path(trained_like_model.path) / "denoiser" / "diffusion_pytorch_model.safetensors").read_bytes()
    out = finetune(data, trained_like_model.path, tmp_path / "run", rank=2, steps=3, batch=2, frames=4,
                   lora_out=tmp_path / "pink.safetensors")
    assert out == tmp_path / "pink.safetensors" and out.is_file()
    meta = json.loads(safe_open(str(out), "pt").metadata()["kinema_lora"])
    assert meta["rank"] == 2 and meta["data"] == str(data) and meta["family"] == "kinema"
    assert (Path(trained_like_model.path) / "denoiser" / "diffusion_pytorch_model.safetensors").read_bytes() == before
    assert (tmp_path / "run" / "samples.gif").is_file() and (tmp_path / "run" / "denoiser_loss.png").is_file()
    import kinema

    m = kinema.load(trained_like_model.path, device="cpu", dtype="float32", loras=[out])
    assert m.loras[0]["rank"] == 2


@pytest.mark.parametrize("setup, message", [
    (lambda d: None, "holds no clip kinema reads"),
    (lambda d: video_io.write_video(d / "x.gif", clip((1, 2, 3)), fps=8), "x.gif has no caption: add x.txt"),
    (lambda d: (video_io.write_video(d / "x.gif", clip((1, 2, 3), frames=2), fps=8), (d / "x.txt").write_text("a")),
     "x.gif has 2 frames, fewer than the 4"),
    (lambda d: ((d / "x.mp4").write_bytes(b"not a video"), (d / "x.txt").write_text("a")), "x.mp4 cannot be read"),
    (lambda d: (d / "metadata.jsonl").write_text("{not json\n"), "metadata.jsonl:1: not JSON"),
])
def test_bad_data_folders_are_one_line_errors(tmp_path, setup, message):
    from kinema.data import scan

    d = tmp_path / "d"
    d.mkdir()
    setup(d)
    with pytest.raises(KinemaError, match=message) as e:
        scan(d, frames=4)
    assert "\n" not in str(e.value)


def test_skip_bad_lists_and_leaves_out_bad_clips(data, capsys):
    from kinema.data import scan

    (data / "broken.mp4").write_bytes(b"garbage")
    (data / "broken.txt").write_text("a caption")
    with pytest.raises(KinemaError, match="pass --skip-bad"):
        scan(data, frames=4)
    good = scan(data, frames=4, skip_bad=True)
    assert [p.name for p, _ in good] == ["a.gif", "b.mp4", "c"]
    assert "skipping broken.mp4" in capsys.readouterr().out


def test_cli_train_data_errors_exit_2_before_training(data, trained_like_model, tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "kinema.cli", "train", *map(str, args)], capture_output=True,
                              text=True, timeout=300)

    model = trained_like_model.path
    for args, message in [
        (["--model", model, "--data", tmp_path / "none"], "no such folder"),
        (["--model", model, "--data", data, "--lora", "0"], "must be >= 1"),
        (["--model", model, "--data", data, "--lora", "4", "--full"], "drop --lora RANK"),
        (["--model", model, "--data", data, "--frames", "9"], "fewer than the 9"),
        (["--model", model, "--steps", "5"], "pass --data DIR"),
        (["--model", model], "give a training config"),
    ]:
        out = run(*args, "--run", tmp_path / "run")
        assert out.returncode == 2, (args, out.stderr)
        assert message in out.stderr and out.stderr.strip().count("\n") == 0, (args, out.stderr)
    assert not (tmp_path / "run" / "lora.safetensors").exists()


def test_vae_steps_adapt_the_autoencoder_and_ship_it_in_the_lora(trained_like_model, data, tmp_path, capsys):
    """--vae-steps: a LoRA on the autoencoder, fitted first, encodes the cache and travels in the same file; loading
    the file changes the decoder by exactly its LoRA (merged by hand), and scale 0 is the plain autoencoder."""
    import torch

    import kinema
    from kinema.train import finetune

    out = finetune(data, trained_like_model.path, tmp_path / "run", rank=2, steps=2, batch=2, frames=4,
                   lora_out=tmp_path / "pink.safetensors", vae_steps=3)
    printed = capsys.readouterr().out
    assert "autoencoder (adapted) on the data's frames: median" in printed
    assert (tmp_path / "run" / "vae_lora.safetensors").is_file()
    assert any("-vae8x3" in p.name for p in (tmp_path / "run" / "cache").iterdir())  # encoded by the adapted VAE
    with safe_open(str(out), "pt") as f:
        keys = list(f.keys())
        meta = json.loads(f.metadata()["kinema_lora"])
        vae_state = {k[4:]: f.get_tensor(k) for k in keys if k.startswith("vae.")}
    assert meta["vae"]["rank"] == 8 and vae_state and any(not k.startswith("vae.") for k in keys)
    z = torch.randn(1, trained_like_model.vae.latent_channels, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    plain = kinema.load(trained_like_model.path, device="cpu", dtype="float32")
    with torch.no_grad():
        base = plain.vae.decode(z)
    adapted = kinema.load(trained_like_model.path, device="cpu", dtype="float32", loras=[out])
    assert adapted.loras[0]["vae_layers"] == len({k.rsplit(".lora_", 1)[0] for k in vae_state})
    with torch.no_grad():
        got = adapted.vae.decode(z)
        # the same LoRA merged into a fresh copy's weights by hand: W + B @ A (alpha = rank: scale 1)
        ae = plain.vae.autoencoder
        for name, module in ae.named_modules():
            if name + ".lora_A.weight" in vae_state:
                a, b = vae_state[name + ".lora_A.weight"], vae_state[name + ".lora_B.weight"]
                # a convolution's A is (r, in, k, k) and its B (out, r, 1, 1); a linear layer's are matrices
                module.weight += torch.einsum("or,rikl->oikl", b[:, :, 0, 0], a) if a.dim() == 4 else b @ a
        merged = plain.vae.decode(z)
    assert (got - base).abs().max() > 1e-4  # the adapter does something
    assert (got - merged).abs().max() < 1e-5
    zero = kinema.load(trained_like_model.path, device="cpu", dtype="float32", loras=[(out, 0.0)])
    fresh = kinema.load(trained_like_model.path, device="cpu", dtype="float32")
    with torch.no_grad():
        assert (zero.vae.decode(z) - fresh.vae.decode(z)).abs().max() < 1e-6


def test_vae_fit_hint_and_bad_vae_steps(trained_like_model, data, tmp_path, capsys, monkeypatch):
    from kinema import train

    monkeypatch.setattr(train, "VAE_FIT_HINT_DB", 200.0)  # any autoencoder is below it: the hint shows
    train.finetune(data, trained_like_model.path, tmp_path / "run", rank=2, steps=1, batch=2, frames=4)
    assert "add --vae-steps 300 to adapt it too" in capsys.readouterr().out
    with pytest.raises(KinemaError, match="--vae-steps must be a whole number >= 0"):
        train.finetune(data, trained_like_model.path, tmp_path / "run2", vae_steps=-1)
    with pytest.raises(KinemaError, match="drop it with --full"):
        train.finetune(data, trained_like_model.path, tmp_path / "run2", full=True, vae_steps=5)
