"""Training reads clips through a ClipDataset: the world's gives the clips training read from the world before."""

from __future__ import annotations

import ast
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from kinema import train, world
from kinema.config import load_yaml
from kinema.errors import KinemaError
from kinema.train import DenoiserStage, TrainConfig, WorldDataset

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def label_of(spec: world.ClipSpec) -> dict:
    return dict(colour=spec.colour, shape=spec.shape, direction=spec.direction, background=spec.background)


class FakeModel:
    """A VAE that keeps every 4th pixel and a text encoder of zeros: enough for `build_cache`."""

    def __init__(self):
        self.vae = types.SimpleNamespace(eval=lambda: self.vae, encode=lambda x: x[..., ::4, ::4])
        self.text_encoder = types.SimpleNamespace(encode=lambda caps: types.SimpleNamespace(
            hidden=torch.zeros(len(caps), 3, 4), mask=torch.ones(len(caps), 3, dtype=torch.bool)))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_reads_the_world(path):
    assert load_yaml(TrainConfig, path).dataset == ("world-wide" if path.name == "default-control.yaml" else "world")


def test_world_clips_are_the_worlds_for_a_fixed_seed():
    """Whole clips, chosen frames and labels are World.clip's / render's for the same seed, split and length."""
    for split, frames, wrap in (("train", 16, False), ("heldout", 16, False), ("train", 40, False), ("train", 40, True)):
        data = WorldDataset(split=split, size=32, wrap=wrap)
        for seed in (0, 7, 1_234_567):
            clip = world.World(split=split, frames=frames, size=32, wrap=wrap).clip(seed)
            video, label = data.clip(seed, frames)
            assert np.array_equal(video, clip.video) and label == label_of(clip.spec)
            part, _ = data.clip(seed, frames, times=range(3, 11))
            assert np.array_equal(part, clip.video[3:11])


def test_world_captions_are_the_paraphrases_drawn_before():
    data = WorldDataset()
    for seed in range(20):
        spec = world.World(split="all").spec(seed)
        label = label_of(spec)
        assert data.captions(label) == world.captions_for(**label)
        a, b = np.random.default_rng([seed, 2]), np.random.default_rng([seed, 2])
        assert data.caption(label, a) == world.paraphrase(spec, b)
        assert a.random() == b.random()  # the step's generator is left where paraphrase left it


def test_vae_frames_and_long_windows_are_the_world_frames_of_before():
    """The VAE's frames and the long windows, for a fixed generator and seed, as train.py drew them from the world."""
    cfg = TrainConfig(frames=8, size=32, denoiser=DenoiserStage(long_frames=(17, 64), long_wrap=True))
    for split in ("train", "heldout"):
        rng, expect = np.random.default_rng([0, 1, 3]), []
        w = world.World(split=split, frames=8, size=32)
        for seed in rng.integers(0, 2**31, size=6):
            t = int(rng.integers(8))
            expect.append(world.render(w.spec(int(seed)), 8, 32, 32, seed=int(seed), times=[t])[0])
        x = train.vae_frames(cfg, np.random.default_rng([0, 1, 3]), 6, split)
        assert torch.equal(x, torch.from_numpy(np.stack(expect)).float().div(127.5).sub(1).permute(0, 3, 1, 2))
    for seed in (0, 5_000_003):
        rng = np.random.default_rng([seed, 7])
        length = int(round(float(np.exp(rng.uniform(np.log(17), np.log(64))))))
        spec = world.World(split="train", frames=length, size=32, wrap=True).spec(seed)
        start = int(rng.integers(0, length - 8 + 1))
        video, label, n = train.long_window(cfg, seed)
        assert n == length and label == label_of(spec)
        assert np.array_equal(video, world.render(spec, length, 32, 32, seed=seed, times=range(start, start + 8)))


def test_the_cache_holds_the_world_clips_of_before(tmp_path):
    cfg = load_yaml(TrainConfig, ROOT / "configs" / "tiny.yaml")
    cfg.denoiser.clips, cfg.denoiser.long_clips, cfg.denoiser.long_frames = 6, 2, (5, 12)
    cache = train.build_cache(cfg, FakeModel(), tmp_path)
    w = world.World(split="train", frames=cfg.frames, size=cfg.size)
    clips = [w.clip(cfg.seed * 10_000_000 + j) for j in range(6)]
    windows = [train.long_window(cfg, cfg.seed * 10_000_000 + 5_000_000 + j) for j in (6, 7)]
    videos = np.stack([c.video for c in clips] + [v for v, _, _ in windows])
    assert torch.equal(cache["latents"], train._to_tensor(videos)[..., ::4, ::4].half())
    specs = [label_of(c.spec) for c in clips] + [label for _, label, _ in windows]
    assert cache["specs"] == specs
    assert cache["captions"] == [""] + sorted({c for s in specs for c in world.captions_for(**s)})
    assert cache["clip_frames"].tolist() == [cfg.frames] * 6 + [n for _, _, n in windows]
    assert (tmp_path / "cache" / "latents-6-4-16-long-2-5-12.safetensors").is_file()  # the world's cache name


class Stripes:
    """A ClipDataset that is not the world: grey stripes whose brightness is the seed's, one caption per label."""

    def __init__(self, split: str = "train", size: int = 64, wrap: bool = False):
        self.size = size

    def clip(self, seed, frames, times=None):
        times = list(range(frames)) if times is None else list(times)
        video = np.full((len(times), self.size, self.size, 3), seed % 256, np.uint8)
        return video, dict(level=seed % 256)

    def captions(self, label):
        return [f"grey {label['level']}"]

    def caption(self, label, rng):
        return f"grey {label['level']}"


def test_the_config_chooses_the_dataset(tmp_path, monkeypatch):
    monkeypatch.setitem(train.DATASETS, "stripes", Stripes)
    cfg = TrainConfig(frames=4, size=16, dataset="stripes")
    x = train.vae_frames(cfg, np.random.default_rng(0), 3)
    seeds = np.random.default_rng(0).integers(0, 2**31, size=3)  # the first draws name the clips
    assert torch.equal(x[:, 0, 0, 0], torch.from_numpy(seeds % 256).float().div(127.5).sub(1))
    cfg.denoiser = DenoiserStage(clips=3, batch=2, text_dropout=0.0)
    cache = train.build_cache(cfg, FakeModel(), tmp_path)
    assert cache["captions"] == ["", "grey 0", "grey 1", "grey 2"]  # clips 0..2 of training seed 0
    assert next((tmp_path / "cache").glob("*.safetensors")).name.startswith("stripes-latents-")
    index = {c: i for i, c in enumerate(cache["captions"])}
    _, _, text, *_ = train.denoiser_batch(cfg, cache, index, 0, 0, Stripes())
    assert text.hidden.shape[0] == 2


def test_an_unknown_dataset_is_an_error_before_any_work(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("dataset: kinetics\n")
    with pytest.raises(KinemaError, match="dataset 'kinetics' is not known; choose one of: world"):
        train.train(config, tmp_path / "no-model", tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_train_does_not_import_the_world_at_module_level():
    tree = ast.parse((ROOT / "kinema" / "train.py").read_text())
    names = [a.name for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names]
    modules = [n.module or "" for n in tree.body if isinstance(n, ast.ImportFrom)]
    assert "world" not in names and not any("world" in m for m in modules)
