"""Resource limits: frames x size is checked against free memory before any work, and the error names a setting
that fits (fewer frames, a smaller size, shorter context windows)."""

from __future__ import annotations

import re

import pytest

from .conftest import PROMPT, check_contract, listing

GiB = 2**30


@pytest.fixture
def free_memory(monkeypatch):
    """Set the free memory kinema sees (bytes), and make any model load fail the test: the check comes first."""
    from kinema import jobs, resources

    def set_free(n: int) -> None:
        monkeypatch.setattr(resources, "available_memory", lambda device="cpu": n)

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the memory check")

    monkeypatch.setattr(jobs, "load", no_load)
    return set_free


def interrupt(*args, **kwargs):
    raise KeyboardInterrupt  # stands for the work after the check: reaching it is what the test wants


def suggested(err: str) -> list[str]:
    """The flags and values an error suggests, e.g. ['--frames', '12']."""
    return re.findall(r"(--[a-z-]+) (\d+)", err.split("try", 1)[-1])


@pytest.mark.parametrize("extra,flag", [(["--frames", "100000"], "--frames"),
                                        (["--height", "4096", "--width", "4096"], "--height"),
                                        (["--frames", "600", "--context-length", "64"], "--context-length")])
def test_generate_refuses_what_does_not_fit_and_names_what_does(extra, flag, kinema, free_memory, tiny_model_dir, tmp_path,
                                                                monkeypatch):
    from kinema import jobs

    free_memory(352 * 2**20)  # the text encoder (87 MiB) and the window's share
    argv = ["generate", PROMPT, "--model", tiny_model_dir, "-o", tmp_path / "clip.mp4", "--steps", "1", "--quiet"]
    result = kinema(*argv, *extra)
    check_contract(result, set(), listing(tmp_path))
    assert result.code == 2 and "need more memory than is free" in result.err, result.err
    hints = dict(suggested(result.err))
    assert flag in hints, result.err
    # every suggestion passes the same check: the run gets past it to the model load (here an interrupt, exit 130)
    monkeypatch.setattr(jobs, "load", interrupt)
    for name, value in suggested(result.err):
        if name == "--width":
            continue  # goes with --height
        fixed = list(extra)
        if name in fixed:
            fixed[fixed.index(name) + 1] = value
        else:
            fixed += [name, value]
        if name == "--height":
            fixed += ["--width", hints["--width"]]
        assert kinema(*argv, *fixed).code == 130, (name, value)


def test_animate_and_extend_are_checked_too(kinema, free_memory, tiny_model_dir, bad_inputs, tmp_path):
    images, videos = bad_inputs
    free_memory(160 * 2**20)
    for args in (["animate", images["RGBA"], PROMPT, "--frames", "5000"],
                 ["extend", videos["one-frame .mp4"], PROMPT, "--frames", "100000"]):
        result = kinema(*args, "--model", tiny_model_dir, "-o", tmp_path / "clip.mp4", "--steps", "1", "--quiet")
        check_contract(result, set(), listing(tmp_path))
        assert result.code == 2 and "--frames" in result.err and "need more memory" in result.err, result.err


def test_a_clip_that_fits_is_not_refused(kinema, tiny_model_dir, tmp_path):
    """The default clip passes the check with the real free memory (capped at 2 GiB by the suite)."""
    result = kinema("generate", PROMPT, "--model", tiny_model_dir, "-o", tmp_path / "clip.gif", "--steps", "1", "--quiet")
    assert result.code == 0, result.err


def test_api_check_takes_an_injected_limit(tiny_model_dir):
    """`available` replaces the measured free memory; the estimate is the one `kinema info` prints."""
    from kinema import api, jobs, resources
    from kinema.errors import KinemaError

    info = api.info(tiny_model_dir)
    settings = jobs.settings_for(info, frames=16, height=64, width=64)
    place = jobs.placement_for(None, "cpu", "float32")
    need = api.estimate_memory(info, 16, 64, 64, 4, True, settings.decode_chunk_size)["total"] + 16 * 64 * 64 * resources.HOST_BYTES_PER_PIXEL
    jobs.check_memory(info, settings, place, available=int(need / 0.8) + 1)
    with pytest.raises(KinemaError, match=r"try --frames \d+"):
        jobs.check_memory(info, settings, place, available=int(need / 0.8) - 1)


def test_python_api_refuses_before_loading(free_memory, tiny_model_dir):
    import kinema
    from kinema.errors import KinemaError

    free_memory(GiB // 16)
    with pytest.raises(KinemaError, match="need more memory"):
        kinema.generate(PROMPT, model=str(tiny_model_dir), frames=10**6, height=64, width=64, steps=1, progress=False)


@pytest.mark.parametrize("speedup,expected", [(2.3, "bfloat16"), (1.1, "float32"), (0.004, "float32")])
def test_auto_dtype_follows_the_processor_probe(speedup, expected, monkeypatch, tmp_path):
    """--dtype auto on a CPU: bfloat16 only where the probe ran it clearly faster (AMX/AVX512-BF16); emulated
    bf16 (hundreds of times slower) gives float32; the choice and its reason reach the placement."""
    import torch

    from kinema import jobs, resources

    monkeypatch.delenv("KINEMA_DTYPE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(resources, "_SPEEDUP", None)
    monkeypatch.setattr(resources, "_probe_bf16", lambda: speedup)
    place = jobs.placement_for(None, "cpu", "auto")
    assert str(place.dtype) == f"torch.{expected}"
    assert place.dtype_reason.startswith(f"auto: bfloat16 ran {speedup:.2f}x as fast as float32 on ")
    # cached per processor and torch version: the probe runs once
    monkeypatch.setattr(resources, "_SPEEDUP", None)
    monkeypatch.setattr(resources, "_probe_bf16", lambda: 1 / 0)
    assert resources.auto_dtype(torch.device("cpu"))[0] == place.dtype
    # an explicit choice and KINEMA_DTYPE win, and say so
    assert jobs.placement_for(None, "cpu", "bfloat16").dtype_reason == "--dtype bfloat16"
    monkeypatch.setenv("KINEMA_DTYPE", "float32")
    assert resources.auto_dtype(torch.device("cpu")) == (torch.float32, "KINEMA_DTYPE=float32")
    monkeypatch.setenv("KINEMA_DTYPE", "half")
    with pytest.raises(Exception, match="KINEMA_DTYPE must be float32 or bfloat16"):
        resources.auto_dtype(torch.device("cpu"))


def test_the_real_probe_measures_both_dtypes():
    from kinema import resources

    speedup = resources._probe_bf16()
    assert 0 < speedup < 100, speedup


def test_the_sidecar_records_the_dtype_and_why(kinema, tiny_model_dir, tmp_path):
    import json

    out = tmp_path / "c.gif"
    assert kinema("generate", PROMPT, "--model", tiny_model_dir, "-o", out, "--steps", "1", "--frames", "1", "--quiet").code == 0
    record = json.loads((tmp_path / "c.gif.json").read_text())
    assert record["dtype"] == "float32" and record["dtype_reason"] == "KINEMA_DTYPE=float32"
