"""Tiny random components built once per session: a model folder written to tmp and loaded back."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# --dtype auto picks by the processor (resources.auto_dtype, tested with a stand-in probe); the suite's
# figures must not depend on which processor CI draws
os.environ.setdefault("KINEMA_DTYPE", "float32")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    import kinema

    path = tmp_path_factory.mktemp("models") / "tiny"
    kinema.init(path, preset="tiny", seed=0)
    return path


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir):
    import kinema

    return kinema.load(tiny_model_dir, device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def trained_like_model(tiny_model_dir, tmp_path_factory):
    """The tiny model with its zero-initialised outputs randomised, so predictions depend on every input."""
    import kinema
    from kinema.models.family import load_model

    model = load_model(tiny_model_dir)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.denoiser.parameters():
            if p.abs().sum() == 0 and p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    path = tmp_path_factory.mktemp("models") / "tiny-random"
    kinema.save(model, path)
    return kinema.load(path, device="cpu", dtype="float32")


