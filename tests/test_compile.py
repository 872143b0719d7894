"""`--compile`: each repeated block compiled on its own (kinema's UNet and Wan's transformer), the warm-up shown and
recorded, the clip the uncompiled one; refused in one line where torch cannot compile.

Most tests compile with torch.compile's "eager" backend (Dynamo traces every block, nothing is built with a C++
compiler), so they take seconds; the inductor test on the tiny model builds kernels and is marked slow.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import kinema
from kinema import jobs
from kinema.cli import main
from kinema.errors import KinemaError
from kinema.models import runtime
from kinema.models.family import load_model

PROMPT = "a red circle moving right on a blue background"
SMALL = dict(frames=4, height=16, width=16, steps=2, seed=1, device="cpu", dtype="float32")


@pytest.fixture
def eager_backend(monkeypatch):
    monkeypatch.setattr(runtime, "COMPILE_OPTIONS", {"backend": "eager"})
    jobs._CACHE.clear()
    yield
    jobs._CACHE.clear()
    torch._dynamo.reset()


def test_unet_lists_its_repeated_blocks(tiny_model):
    blocks = runtime.repeated_blocks(tiny_model.denoiser)
    kinds = {type(b).__name__ for b in blocks}
    assert kinds == {"ResBlock", "SpaceTimeBlock"} and len(blocks) >= 4


def test_compiled_clip_equals_uncompiled_and_warm_up_is_recorded(trained_like_model, eager_backend, capfd):
    path = trained_like_model.path
    plain = kinema.generate(PROMPT, model=path, progress=False, **SMALL)
    first = kinema.generate(PROMPT, model=path, compile=True, return_result=True, **SMALL)
    assert "compile warm-up" in capfd.readouterr().err  # the progress bar of the first call
    np.testing.assert_allclose(first.frames.astype(float), plain.astype(float), atol=1)
    c = first.record["compile"]
    assert c["mode"] == "regional" and c["kinds"] == ["ResBlock", "SpaceTimeBlock"] and c["warmup_calls"] == 1
    assert c["warmup_s"] > 0
    again = kinema.generate(PROMPT, model=path, compile=True, return_result=True, progress=False, **SMALL)
    assert again.record["compile"]["warmup_calls"] == 0  # same shapes: nothing compiles again
    np.testing.assert_array_equal(again.frames, first.frames)
    bigger = kinema.generate(PROMPT, model=path, compile=True, return_result=True, progress=False,
                             **{**SMALL, "height": 24})
    assert bigger.record["compile"]["warmup_calls"] == 1  # a new size is a new warm-up


def test_wan_transformer_compiles_its_blocks(eager_backend, tmp_path):
    from kinema.models.seams import TextEmbeds
    from kinema.models.wan_testing import t2v_folder

    folder = t2v_folder(tmp_path / "t2v")
    model = load_model(folder)
    x, t = torch.randn(1, 16, 2, 8, 8), torch.tensor([500.0])
    text = TextEmbeds(torch.randn(1, 4, 16), torch.ones(1, 4, dtype=torch.bool))
    with torch.no_grad():
        ref = model.denoiser.predict(x, t, text)
        record = runtime.compile_denoiser(model.denoiser)
        out = model.denoiser.predict(x, t, text)
    assert record["kinds"] == ["WanTransformerBlock"] and record["blocks"] == 1
    assert record["watch"].snapshot()[0] == 1
    torch.testing.assert_close(out, ref)


def test_compile_without_a_compiler_is_refused(tiny_model_dir, tmp_path, capsys, monkeypatch):
    import shutil

    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)
    out = tmp_path / "clip.mp4"
    code = main(["generate", PROMPT, "--model", str(tiny_model_dir), "--device", "cpu", "--frames", "2", "--compile",
                 "-o", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "needs a C++ compiler" in err
    assert not out.exists()


def test_compile_without_inductor_is_refused(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "torch._inductor" else real(n, *a))
    with pytest.raises(KinemaError, match="needs torch.compile"):
        runtime.check_compile(torch.device("cpu"))


@pytest.mark.slow
def test_inductor_compiled_tiny_model_matches(trained_like_model):
    """The real thing: inductor builds the tiny model's blocks (a minute or more on a cold cache), the clip stays."""
    jobs._CACHE.clear()
    path = trained_like_model.path
    plain = kinema.generate(PROMPT, model=path, progress=False, **SMALL)
    result = kinema.generate(PROMPT, model=path, compile=True, progress=False, return_result=True, **SMALL)
    assert result.record["compile"]["warmup_calls"] == 1
    diff = np.abs(result.frames.astype(int) - plain.astype(int))
    assert diff.max() <= 2, diff.max()  # other kernels: float32 rounding only
    jobs._CACHE.clear()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_inductor_on_cuda_matches(trained_like_model):
    jobs._CACHE.clear()
    path = trained_like_model.path
    cuda = {**SMALL, "device": "cuda"}
    plain = kinema.generate(PROMPT, model=path, progress=False, **cuda)
    result = kinema.generate(PROMPT, model=path, compile=True, progress=False, return_result=True, **cuda)
    assert result.record["compile"]["warmup_calls"] == 1
    assert np.abs(result.frames.astype(int) - plain.astype(int)).max() <= 2
    jobs._CACHE.clear()


@pytest.mark.parametrize("family", ["ltx", "animatediff"])
def test_other_families_compile_their_blocks(family, eager_backend, tmp_path):
    """LTX's transformer blocks (its `_repeated_blocks`), AnimateDiff's UNet resnets and transformer blocks (diffusers'
    UNets list none: kinema's fallback); the clip the uncompiled one."""
    from kinema.models import animatediff_testing, ltx_testing

    folder = ltx_testing.folder(tmp_path / "m") if family == "ltx" else animatediff_testing.pipeline_folder(tmp_path / "m")
    kw = dict(frames=9, height=32, width=32, steps=2, device="cpu", dtype="float32", progress=False)
    plain = kinema.generate(PROMPT, model=folder, **kw)
    result = kinema.generate(PROMPT, model=folder, compile=True, return_result=True, **kw)
    kinds = {"ltx": ["LTXVideoTransformerBlock"], "animatediff": ["BasicTransformerBlock", "ResnetBlock2D"]}[family]
    assert result.record["compile"]["kinds"] == kinds and result.record["compile"]["warmup_calls"] == 1
    assert np.abs(result.frames.astype(int) - plain.astype(int)).max() <= 1
