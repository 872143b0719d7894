"""Training on the tiny preset: the loss goes down, checkpoints are atomic, resume equals uninterrupted."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from kinema.models.family import load_model
from kinema.models.kinema_family import init
from kinema.models import TextEmbeds
from kinema.train import latest_checkpoint

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "tiny.yaml"


def train_cli(model: Path, run: Path, config: Path = CONFIG, **popen) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "kinema.cli", "train", str(config), "--model", str(model), "--run", str(run)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, **popen)


@pytest.fixture(scope="module")
def fresh_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("train") / "model"
    init(path, preset="tiny", seed=0)
    return path


@pytest.fixture(scope="module")
def full_run(fresh_model, tmp_path_factory):
    """One uninterrupted run of configs/tiny.yaml."""
    root = tmp_path_factory.mktemp("full")
    model = root / "model"
    shutil.copytree(fresh_model, model)
    p = train_cli(model, root / "run")
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-2000:]
    return model, root / "run"


def test_run_writes_model_log_and_curves(full_run):
    model, run = full_run
    index = json.loads((model / "kinema.json").read_text())
    assert index["training"]["step"] == 8 and "first" in index["frame_conditions"]
    log = (run / "train.log").read_text()
    assert "steps/s=" in log and "eta=" in log and "psnr_median" in log
    assert (run / "vae_loss.png").stat().st_size > 1000 and (run / "denoiser_loss.png").stat().st_size > 1000
    assert (run / "samples.gif").stat().st_size > 1000
    assert index["defaults"]["frames"] == 4 and index["defaults"]["height"] == 16
    ckpt = latest_checkpoint(run)
    assert ckpt.name == "2-denoiser-0000008"
    meta = json.loads((ckpt / "meta.json").read_text())
    assert meta["stage"] == "denoiser" and len(meta["history"]) == 8
    assert not list((run / "checkpoints").glob(".tmp-*"))
    scale = json.loads((model / "vae" / "config.json").read_text())["scaling_factor"]
    assert scale != 1.0  # the latent scale was measured after the VAE stage


def test_loss_goes_down_on_a_fixed_batch(fresh_model):
    """Fifty steps on one batch: the flow-matching loss falls well below its starting value."""
    from kinema.config import load_yaml
    from kinema.train import TrainConfig, denoiser_batch

    cfg = load_yaml(TrainConfig, CONFIG)
    model = load_model(fresh_model)
    net = model.denoiser.train()
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3)
    caps = [""] + ["a red circle moving right on a blue background"]
    text = model.text_encoder.encode(caps)
    cache = dict(latents=torch.randn(4, model.vae.latent_channels, 4, 8, 8).half(),
                 specs=[dict(colour="red", shape="circle", direction="right", background="blue")] * 4,
                 text_hidden=text.hidden.half(), text_mask=text.mask)
    cfg.denoiser.text_dropout = 0.0
    batch = denoiser_batch(cfg, {**cache, "captions": caps}, {c: i for i, c in enumerate(caps)}, 0, 0)
    xt, t, emb, cond, target, frames, control, weight = batch
    assert control is None and weight is None  # no control input, no object weighting in this config
    assert (frames == cfg.frames).all()  # short clips only: each is a whole clip
    emb.hidden, emb.mask = text.hidden[[1] * 4], text.mask[[1] * 4]
    losses = []
    for _ in range(50):
        loss = torch.nn.functional.mse_loss(net(xt, t, emb, cond), target)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:3])


def _state(run: Path) -> dict:
    return load_file(latest_checkpoint(run) / "state.safetensors")


def test_resume_after_kill_equals_uninterrupted(full_run, fresh_model, tmp_path):
    """Kill a run with SIGKILL after its first denoiser checkpoint, resume it: same final weights."""
    model = tmp_path / "model"
    shutil.copytree(fresh_model, model)
    run = tmp_path / "run"
    p = train_cli(model, run)
    deadline = time.time() + 300
    while time.time() < deadline:
        ck = latest_checkpoint(run) if (run / "checkpoints").exists() else None
        if ck is not None and ck.name.startswith("2-denoiser"):
            break
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.communicate()
    first = latest_checkpoint(run)
    assert first is not None
    p = train_cli(model, run)
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-2000:]
    assert "resuming from" in out
    a, b = _state(full_run[1]), _state(run)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_half_written_checkpoint_is_ignored(full_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(full_run[1] / "checkpoints", run / "checkpoints")
    good = latest_checkpoint(run)
    (run / "checkpoints" / ".tmp-crashed").mkdir()
    (run / "checkpoints" / ".tmp-crashed" / "state.safetensors").write_bytes(b"\0" * 10)
    assert latest_checkpoint(run) == good


def test_object_weights_mark_the_object_not_the_texture():
    from kinema import world
    from kinema.train import object_weights

    w = world.World(split="all")
    clip = w.clip(4)
    x = torch.from_numpy(clip.video[:1]).float().div(127.5).sub(1).permute(0, 3, 1, 2)
    weights = object_weights(x, 10.0)[0, 0]
    cx, cy = clip.spec.centre(0)
    assert weights[int(cy), int(cx)] == 10.0  # the object's centre
    assert (weights == 1.0).float().mean() > 0.8  # most of the frame is background, texture included


def continue_denoiser(trained: Path, root: Path, stage: str) -> tuple[Path, subprocess.CompletedProcess]:
    """`kinema train CONFIG --stages denoiser` on a copy of `trained`, CONFIG being tiny.yaml with its
    denoiser `steps: 8` line replaced by `stage`; returns the copy and the finished process."""
    model = root / "model"
    shutil.copytree(trained, model)
    config = root / "config.yaml"
    config.write_text(CONFIG.read_text().replace("  steps: 8\n", stage))
    cmd = [sys.executable, "-m", "kinema.cli", "train", str(config), "--model", str(model), "--run", str(root / "run"),
           "--stages", "denoiser"]
    return model, subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_continue_from_a_trained_folder(full_run, tmp_path):
    """`--stages denoiser` on a trained folder with no checkpoints continues from its recorded step."""
    model, r = continue_denoiser(full_run[0], tmp_path, "  steps: 10\n")
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((model / "kinema.json").read_text())["training"]["step"] == 10
    assert latest_checkpoint(tmp_path / "run").name == "2-denoiser-0000010"
    assert "vae step" not in (tmp_path / "run" / "train.log").read_text()


def test_continue_with_grow_adds_the_motion_inputs(full_run, tmp_path):
    """`denoiser.grow` adds the per-frame text path and coordinate channels, then trains them."""
    grow = "  steps: 10\n  grow: [motion_embedding, coord_channels]\n  motion_loss: 1.0\n  grown_lr_scale: 3.0\n"
    model, r = continue_denoiser(full_run[0], tmp_path, grow)
    assert r.returncode == 0, r.stderr[-2000:]
    net = load_model(model).denoiser
    assert net.config.motion_embedding and net.config.coord_channels
    assert net.motion[-1].weight.abs().sum() > 0  # trained away from its zero start
    _, r = continue_denoiser(model, tmp_path / "bad", "  steps: 12\n  grow: [wings]\n")
    assert r.returncode == 2 and "denoiser.grow names ['wings']" in r.stderr


def test_grow_keeps_the_function_and_adds_inputs():
    from kinema.models import PRESETS, SpaceTimeUNet

    torch.manual_seed(0)
    net = SpaceTimeUNet(latent_channels=4, text_dim=16, **PRESETS["tiny"]).eval()
    for p in net.parameters():  # away from the zero-initialised start, like a trained network
        p.data.add_(0.05 * torch.randn_like(p))
    big = net.grow().eval()
    x, t = torch.randn(2, 4, 6, 8, 8), torch.tensor([100.0, 900.0])
    text = TextEmbeds(torch.randn(2, 5, 16), torch.ones(2, 5, dtype=torch.bool))
    with torch.no_grad():  # the zero filters of the coordinate channels widen conv_in: another kernel, so a tolerance
        torch.testing.assert_close(big(x, t, text), net(x, t, text), atol=1e-5, rtol=1e-5)
        for p in list(big.motion.parameters()) + [big.conv_in.weight]:
            p.add_(0.05 * torch.randn_like(p))
        moved = big(x, t, text)
        swapped = big(x, t, TextEmbeds(text.hidden.flip(0), text.mask))
    assert not torch.allclose(net(x, t, text), moved, atol=1e-4)
    # the per-frame term depends on the frame: the same input at every frame gives different frames out
    still = x[:, :, :1].expand_as(x).contiguous()
    with torch.no_grad():
        out = big(still, t, text)
    assert (out[:, :, 0] - out[:, :, -1]).abs().max() > 1e-4
    assert not torch.allclose(moved, swapped)


def test_grow_adds_the_clip_length_input():
    """The length embedding starts at zero (same function); once trained, the clip length changes the
    output, given per sample (training) or in the call's DenoiserInputs (sampling); the default is the window itself."""
    from kinema.models import PRESETS, SpaceTimeUNet
    from kinema.models.seams import DenoiserInputs

    torch.manual_seed(0)
    net = SpaceTimeUNet(latent_channels=4, text_dim=16, **PRESETS["tiny"]).eval()
    for p in net.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    big = net.grow(motion_embedding=False, coord_channels=False, length_embedding=True).eval()
    assert big.config.length_embedding and not big.config.motion_embedding
    x, t = torch.randn(2, 4, 6, 8, 8), torch.tensor([100.0, 900.0])
    text = TextEmbeds(torch.randn(2, 5, 16), torch.ones(2, 5, dtype=torch.bool))
    with torch.no_grad():
        assert torch.equal(net(x, t, text), big(x, t, text))
        for p in big.length.parameters():
            p.add_(0.05 * torch.randn_like(p))
        own = big(x, t, text)
        assert torch.equal(own, big(x, t, text, clip_frames=torch.tensor([6, 6])))  # default: the window's frames
        long = big(x, t, text, clip_frames=torch.tensor([256, 256]))
        assert torch.equal(big.predict(x, t, text, inputs=DenoiserInputs(clip_frames=256)), long)  # the sampling seam
        assert not hasattr(big, "clip_frames")  # per call, never an attribute
        mixed = big(x, t, text, clip_frames=torch.tensor([6, 256]))
    assert not torch.allclose(own, long, atol=1e-4)
    assert torch.equal(mixed[0], own[0]) and torch.allclose(mixed[1], long[1], atol=1e-6)


def test_long_windows_are_frames_of_a_longer_world_clip():
    from kinema import world
    from kinema.train import DenoiserStage, TrainConfig, long_window

    cfg = TrainConfig(frames=8, size=32, denoiser=DenoiserStage(long_frames=(17, 512)))
    lengths = []
    for seed in range(40):
        video, label, length = long_window(cfg, seed)
        assert video.shape == (8, 32, 32, 3) and 17 <= length <= 512
        spec = world.World(split="train", frames=length, size=32).spec(seed)  # the clip of that length and seed
        assert label == dict(colour=spec.colour, shape=spec.shape, direction=spec.direction, background=spec.background)
        full = world.render(spec, length, 32, 32, seed=seed)
        starts = [s for s in range(length - 7) if np.array_equal(full[s:s + 8], video)]
        assert starts, "the window is 8 consecutive frames of the clip"
        lengths.append(length)
    assert min(lengths) < 60 and max(lengths) > 150  # log-uniform over the range


def test_long_wrap_windows_come_from_wrapping_clips_at_the_16_frame_pace():
    """`long_wrap`: the windows are of wrapping clips (same pace as a 16-frame clip), named apart in the cache."""
    from kinema import world
    from kinema.train import DenoiserStage, TrainConfig, long_window

    cfg = TrainConfig(frames=8, size=32, denoiser=DenoiserStage(long_frames=(17, 512), long_wrap=True))
    for seed in range(10):
        video, label, length = long_window(cfg, seed)
        spec = world.World(split="train", frames=length, size=32, wrap=True).spec(seed)
        assert spec.wrap and video.shape == (8, 32, 32, 3) and label["direction"] == spec.direction
        short = world.World(split="train", frames=8, size=32).spec(seed)
        if spec.direction != "still":
            assert np.hypot(*spec.velocity) <= 0.6 * 32 / 15 + 1e-9  # at most the 16-frame pace's fastest
        full = world.render(spec, length, 32, 32, seed=seed)
        assert any(np.array_equal(full[s:s + 8], video) for s in range(length - 7))
        assert short.wrap is False


def test_continue_with_long_windows_trains_the_length_input(full_run, tmp_path):
    """`long_clips` windows of longer clips join the cache with their lengths; the length MLP trains."""
    stage = ("  steps: 10\n  grow: [length_embedding]\n  long_clips: 8\n  long_frames: [5, 64]\n"
             "  long_share: 0.5\n")
    model, r = continue_denoiser(full_run[0], tmp_path, stage)
    assert r.returncode == 0, r.stderr[-2000:]
    net = load_model(model).denoiser
    assert net.config.length_embedding and net.length[-1].weight.abs().sum() > 0
    cache = load_file(next((tmp_path / "run" / "cache").glob("*-long-8-5-64.safetensors")))
    assert cache["latents"].shape[0] == 16 + 8
    assert (cache["clip_frames"][:16] == 4).all() and (cache["clip_frames"][16:] >= 5).all()
    _, r = continue_denoiser(full_run[0], tmp_path / "bad", "  steps: 12\n  long_clips: 8\n  long_share: 0.5\n")
    assert r.returncode == 2 and "length_embedding" in r.stderr
    _, r = continue_denoiser(full_run[0], tmp_path / "bad2", "  steps: 12\n  long_clips: 8\n  long_frames: [2, 64]\n")
    assert r.returncode == 2 and "denoiser.long_frames must be" in r.stderr


def test_cooldown_factor_decays_linearly_over_the_last_steps():
    from kinema.train import cooldown_factor

    assert [cooldown_factor(s, 10, 0) for s in (0, 9)] == [1.0, 1.0]  # off
    assert [cooldown_factor(s, 10, 4) for s in range(5, 10)] == [1.0, 1.0, 0.75, 0.5, 0.25]


def test_logit_mean_schedule():
    from kinema.train import DenoiserStage, logit_mean_at

    d = DenoiserStage(logit_mean=0.0, logit_mean_from=([100, 0.8], [50, 0.4]))
    assert [logit_mean_at(d, s) for s in (0, 49, 50, 99, 100, 10_000)] == [0.0, 0.0, 0.4, 0.4, 0.8, 0.8]
    assert logit_mean_at(DenoiserStage(), 10_000) == 0.0


def test_high_noise_share_draws_noisy_levels():
    """`high_noise: [p, s]` puts a share p of the batch at noise levels in [s, 1]."""
    from kinema.train import DenoiserStage, TrainConfig, denoiser_batch

    from kinema import world

    caps = [""] + sorted(world.captions_for(colour="red", shape="circle", direction="right", background="blue"))
    cache = dict(latents=torch.zeros(2, 4, 4, 8, 8).half(), captions=caps, text_hidden=torch.zeros(len(caps), 3, 8).half(),
                 text_mask=torch.ones(len(caps), 3, dtype=torch.bool),
                 specs=[dict(colour="red", shape="circle", direction="right", background="blue")] * 2)
    index = {c: i for i, c in enumerate(caps)}

    def levels(**kw):
        cfg = TrainConfig(denoiser=DenoiserStage(batch=64, logit_mean=-3.0, **kw))  # mostly clean without the share
        return torch.cat([denoiser_batch(cfg, cache, index, s, 0)[1] / 1000 for s in range(4)])

    assert (levels() > 0.9).float().mean() < 0.05
    share = (levels(high_noise=(0.5, 0.9)) >= 0.9).float().mean()
    assert 0.35 < share < 0.65
    assert (levels(high_noise=(1.0, 0.95)) >= 0.95).all()


def test_object_cells_mark_the_object_and_its_neighbours_on_the_latent_grid():
    from kinema import world
    from kinema.train import object_cells

    clip = world.World(split="all").clip(4)
    cells = object_cells(clip.video, 4)  # (F, 16, 16)
    assert cells.shape == (16, 16, 16)
    for f in (0, 15):
        cx, cy = clip.spec.centre(f)
        assert cells[f, int(cy) // 4, int(cx) // 4]  # the object's centre
    assert cells.float().mean() < 0.3  # most of the frame is background, texture included
    plain = np.full_like(clip.video, 90)
    assert not object_cells(plain, 4).any()


def test_close_pairs_and_object_weight_shape_the_batch():
    """`close_pairs: [1, d]` draws every sample from clips whose colours lie within d; `object_weight` weighs their
    object cells in the loss."""
    from kinema.train import DenoiserStage, TrainConfig, WorldDataset, denoiser_batch

    from kinema import world

    specs = [dict(colour="red", shape="circle", direction="right", background="orange"),
             dict(colour="white", shape="circle", direction="right", background="black")]
    caps = [""] + sorted({c for s in specs for c in world.captions_for(**s)})
    objects = torch.zeros(2, 1, 4, 8, 8, dtype=torch.uint8)
    objects[:, :, :, 2:4, 2:4] = 1
    cache = dict(latents=torch.zeros(2, 4, 4, 8, 8).half(), captions=caps, text_hidden=torch.zeros(len(caps), 3, 8).half(),
                 text_mask=torch.ones(len(caps), 3, dtype=torch.bool), specs=specs, objects=objects)
    index = {c: i for i, c in enumerate(caps)}
    data = WorldDataset()
    assert data.contrast(specs[0]) == pytest.approx(104.9, abs=0.1) and data.contrast(specs[1]) > 300
    cache["close"] = np.array([i for i, s in enumerate(specs) if data.contrast(s) <= 120])
    cfg = TrainConfig(denoiser=DenoiserStage(batch=32, text_dropout=0.0, close_pairs=(1.0, 120), object_weight=4.0))
    for step in range(3):
        *_, weight = denoiser_batch(cfg, cache, index, step, 0, data)
        assert weight.shape == (32, 1, 4, 8, 8) and set(weight.unique().tolist()) == {1.0, 4.0}
    drawn = set()
    cfg.denoiser = DenoiserStage(batch=32, text_dropout=0.0, close_pairs=(1.0, 120))
    caption = data.caption
    data.caption = lambda label, rng: drawn.add(label["background"]) or caption(label, rng)
    plain = {k: v for k, v in cache.items() if k != "objects"}
    assert denoiser_batch(cfg, plain, index, 0, 0, data)[-1] is None  # no objects cached: no weights
    assert drawn == {"orange"}  # every sample a close pair
    drawn.clear()
    cfg.denoiser = DenoiserStage(batch=32, text_dropout=0.0)
    denoiser_batch(cfg, plain, index, 0, 0, data)
    assert drawn == {"orange", "black"}  # uniform over the clips


@pytest.mark.parametrize("line, message", [
    ("  object_weight: 0.5\n", "object_weight must be >= 1"),
    ("  close_pairs: [1.5, 100]\n", "close_pairs must be"),
    ("  close_pairs: [0.25]\n", "close_pairs must be"),
    ("  on_policy: [0.9, 0.5]\n", "on_policy must be"),
    ("  on_policy: [1.0, 0.5, 0.7]\n", "on_policy must be"),
    ("  base_lora: student.safetensors\n", "go with a LoRA"),
    ("  lora: 4\n  base_lora: no-such.safetensors\n", "base_lora: no-such.safetensors is not a file"),
    ("  lora: 4\n  lora_targets: '^control\\.('\n", "lora_targets is not a regular expression"),
])
def test_bad_object_weight_or_close_pairs_is_an_error_before_any_work(tmp_path, line, message):
    from kinema.errors import KinemaError
    from kinema.train import train

    config = tmp_path / "c.yaml"
    config.write_text(CONFIG.read_text().replace("  steps: 8\n", "  steps: 8\n" + line, 1))
    with pytest.raises(KinemaError, match=message):
        train(config, tmp_path / "no-model", tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_on_policy_states_follow_the_students_own_steps():
    """`denoiser.on_policy`: each sample's input is where the student's Euler steps (guided on the first) reach at its
    level from the sample's noise, its target the velocity from there straight to the clip."""
    from accelerate import Accelerator

    from kinema.models import FrameCondition
    from kinema.train import DenoiserStage, on_policy_states

    levels = (1.0, 0.9418, 0.8038, 0.0602)
    d = DenoiserStage(on_policy=levels, on_policy_guidance=3.0)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(16, 2, 2, 4, 4, generator=g), torch.randn(16, 2, 2, 4, 4, generator=g)
    sigma = torch.rand(16, generator=g)
    s = sigma[:, None, None, None, None]
    xt, target = (1 - s) * x0 + s * noise, noise - x0
    text = TextEmbeds(torch.ones(16, 3, 8), torch.ones(16, 3, dtype=torch.bool))
    uncond = TextEmbeds(torch.zeros(1, 3, 8), torch.ones(1, 3, dtype=torch.bool))

    class Net(torch.nn.Module):  # velocity 1 conditioned, 0 unconditioned: a guided step moves by 3 * dt
        def forward(self, x, t, text, cond, **extra):
            return torch.ones_like(x) * text.hidden[:, :1, :1, None, None].mean()

    cond = FrameCondition(torch.zeros_like(x0), torch.zeros(16, 1, 2, 1, 1))
    states, t, want = on_policy_states(d, Net(), 7, xt, sigma * 1000, target, text, cond, {}, uncond, Accelerator(cpu=True))
    k = [levels.index(round(float(v), 4)) for v in t / 1000]
    assert len(set(k)) > 1
    reach = [0.0, 3 * (levels[1] - 1), 3 * (levels[1] - 1) + levels[2] - levels[1],
             3 * (levels[1] - 1) + levels[3] - levels[1]]
    for i, j in enumerate(k):
        assert torch.allclose(states[i], noise[i] + reach[j], atol=1e-5)
        assert torch.allclose(want[i], (states[i] - x0[i]) / levels[j], atol=1e-4)
    first = [i for i, j in enumerate(k) if j == 0]
    assert first and all(torch.allclose(want[i], target[i], atol=1e-5) for i in first)  # pure noise: flow matching


def test_motion_term_lags():
    """Lag 1 is the consecutive-frame loss; a long lag sees a slow drift that consecutive frames hardly show."""
    from kinema.train import motion_term

    t = torch.arange(16.0)[None, None, :, None, None].expand(1, 1, 16, 2, 2) * 0.01  # slow drift
    still = torch.zeros_like(t)
    assert torch.allclose(motion_term(still, t, (1,)), torch.nn.functional.mse_loss(still.diff(dim=2), t.diff(dim=2)))
    assert motion_term(still, t, (15,)) > 100 * motion_term(still, t, (1,))
    assert motion_term(t, t, (1, 15)) == 0
    assert motion_term(still, t, (16,)) == 0  # no lag fits: no term
