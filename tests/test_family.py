"""The model-family seam and the one orchestrator: describe without loading, validated defaults, prepare -> run."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

import kinema
from kinema import jobs
from kinema.cli import main
from kinema.errors import KinemaError
from kinema.models.family import ModelInfo, describe, family_for, load_model

PROMPT = "a red circle moving right on a blue background"
ROOT = Path(__file__).resolve().parents[1]


def copy_with_defaults(src: Path, dst: Path, **defaults) -> Path:
    shutil.copytree(src, dst)
    index = json.loads((dst / "kinema.json").read_text())
    index["defaults"].update(defaults)
    (dst / "kinema.json").write_text(json.dumps(index))
    return dst


def test_describe_reads_headers_not_weights(tiny_model_dir, monkeypatch):
    import torch

    monkeypatch.setattr(torch.nn.Module, "load_state_dict", lambda *a, **k: pytest.fail("weights were loaded"))
    info = describe(tiny_model_dir)
    assert isinstance(info, ModelInfo) and info.family == "kinema" and info.tasks == jobs.TASKS
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.size_multiple = 8
    with pytest.raises(TypeError):
        info.parameters["denoiser"] = 0  # read-only mapping
    monkeypatch.undo()
    model = load_model(tiny_model_dir)
    assert info.parameters["denoiser"] == sum(p.numel() for p in model.denoiser.parameters())
    assert info.parameters["vae"] == sum(p.numel() for p in model.vae.autoencoder.parameters())
    assert model.info == info and model.family is family_for(tiny_model_dir)[0]


def test_the_registry_picks_the_family_by_index(tiny_model_dir, tmp_path):
    assert family_for(tiny_model_dir)[0].name == "kinema"
    assert family_for(None)[0].name == "kinema"  # the shipped default model
    (tmp_path / "empty").mkdir()
    with pytest.raises(KinemaError, match="not a kinema model folder"):
        family_for(tmp_path / "empty")


@pytest.mark.parametrize("defaults,message", [
    (dict(restyle_strength=1.5), "defaults.restyle_strength must be a number in \\[0, 1\\]"),
    (dict(follow_motion="yes"), "defaults.follow_motion must be true or false"),
    (dict(motion_length=0), "defaults.motion_length must be a whole number >= 1"),
    (dict(frames=2.5), "defaults.frames must be a whole number >= 1"),
    (dict(scheduler="ddim"), "defaults.scheduler must be euler or unipc"),
    (dict(restyle_guidanse=7.5), "unknown default\\(s\\) restyle_guidanse"),
])
def test_folder_defaults_are_validated_before_loading(tiny_model_dir, tmp_path, defaults, message, capsys, monkeypatch):
    folder = copy_with_defaults(tiny_model_dir, tmp_path / "m", **defaults)
    with pytest.raises(KinemaError, match=message):
        describe(folder)
    monkeypatch.setattr(jobs, "load", lambda *a, **k: pytest.fail("a model was loaded"))
    assert main(["generate", PROMPT, "--model", str(folder), "-o", str(tmp_path / "x.mp4")]) == 2
    err = capsys.readouterr().err.strip()
    assert re.search(message, err) and "\n" not in err
    assert not (tmp_path / "x.mp4").exists()


def test_folder_defaults_reach_the_job(tiny_model_dir, tmp_path):
    folder = copy_with_defaults(tiny_model_dir, tmp_path / "m", restyle_strength=0.0, restyle_guidance=7.5, motion_length=24,
                                steps=3)
    source = np.zeros((4, 16, 16, 3), np.uint8)
    job = jobs.prepare_restyle(source, PROMPT, folder, height=16, width=16)
    assert job.restyle.strength == 0.0 and job.settings.guidance == 7.5 and job.settings.steps == 3
    assert not job.needs_model
    job = jobs.prepare_generate(PROMPT, folder, frames=4, height=16, width=16)
    assert job.settings.motion_length == 24 and job.long is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        job.prompt = "another"


def test_prepare_then_run_is_what_the_api_and_cli_do(tiny_model_dir, tmp_path):
    opts = dict(frames=3, height=16, width=16, steps=2, seed=5)
    job = jobs.prepare_generate(PROMPT, tiny_model_dir, **opts)
    result = jobs.run(job, progress=False)
    assert result.record["command"] == "generate" and result.record["settings"]["seed"] == 5
    assert result.record["frames_written"] == 3 and result.fps == job.settings.fps
    assert np.array_equal(result.frames, kinema.generate(PROMPT, model=tiny_model_dir, progress=False, **opts))
    out = tmp_path / "clip"
    argv = ["generate", PROMPT, "--model", str(tiny_model_dir), "-o", str(out), "--quiet"]
    assert main(argv + [f"--{k}={v}" for k, v in opts.items()]) == 0
    from kinema.video_io import read_video

    assert np.array_equal(read_video(out)[0], result.frames)


def test_a_misspelt_option_is_an_error(tiny_model_dir):
    with pytest.raises(TypeError, match="unexpected option\\(s\\) frame"):
        kinema.generate(PROMPT, model=tiny_model_dir, frame=3)


def test_no_family_checks_outside_models():
    """Family differences live behind the registry: the front door and the drivers never ask which family."""
    pattern = re.compile(r"is_wan|family ==|family\s*!=|hasattr\(model|isinstance\([^)]*Wan")
    offenders = [f"{p.relative_to(ROOT)}:{i}" for folder in ("kinema", "pipelines") for p in (ROOT / folder).rglob("*.py")
                 for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert offenders == []


def test_every_family_is_registered_in_a_fresh_process():
    """A fresh `import kinema` (which imports kinema's own family) still knows Wan and LTX-Video folders."""
    import ast
    import subprocess
    import sys

    code = "import kinema; from kinema.models.family import families; print(sorted(families()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and {"kinema", "ltx", "wan"} <= set(ast.literal_eval(out.stdout)), out.stderr
