"""Every config in configs/ loads; unknown keys and wrong types are errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from kinema.config import load_yaml
from kinema.errors import KinemaError
from kinema.train import TrainConfig

CONFIGS = sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.yaml"))


def test_there_are_configs():
    assert any(p.name == "default.yaml" for p in CONFIGS)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_loads(path):
    cfg = load_yaml(TrainConfig, path)
    assert cfg.vae.steps >= 1 and cfg.denoiser.steps >= 1 and len(cfg.denoiser.cond_probs) == 4


@pytest.mark.parametrize("text,message", [
    ("vae:\n  stepz: 3\n", "unknown key"),
    ("colour: red\n", "unknown key"),
    ("vae:\n  steps: three\n", "expected int"),
    ("denoiser:\n  cond_probs: 0.5\n", "expected a list"),
    ("vae: [1, 2\n", "not valid YAML"),
    ("!!python/object/apply:os.system ['echo hi']\n", "not valid YAML"),
])
def test_bad_configs(tmp_path, text, message):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(KinemaError, match=message):
        load_yaml(TrainConfig, p)


def test_missing_config(tmp_path):
    with pytest.raises(KinemaError, match="does not exist"):
        load_yaml(TrainConfig, tmp_path / "nope.yaml")
