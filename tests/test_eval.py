"""`kinema eval`: files against captions, and each suite at its smallest size on the tiny model."""

from __future__ import annotations

import json

import pytest

from kinema import world
from kinema.cli import main
from kinema.video_io import write_video


def test_score_files(tmp_path, capsys):
    clip = world.World(split="all", canonical=True).clip(2)
    path = tmp_path / "clip.mp4"
    write_video(path, clip.video, fps=8)
    assert main(["eval", str(path), "--caption", clip.caption, "--json-out", str(tmp_path / "r.json")]) == 0
    row = json.loads((tmp_path / "r.json").read_text())["rows"][0]
    assert row["colour_ok"] and row["background_ok"] and row["direction_ok"]
    assert "| yes | yes | yes |" in capsys.readouterr().out


def test_bad_caption_is_a_clear_error(tmp_path, capsys):
    path = tmp_path / "clip.gif"
    write_video(path, world.World().clip(1).video, fps=8)
    assert main(["eval", str(path), "--caption", "a cat surfing"]) == 2
    assert "canonical world caption" in capsys.readouterr().err


@pytest.mark.parametrize("suite", ["world", "animate", "vae"])
def test_suites_run(tiny_model_dir, tmp_path, suite):
    out = tmp_path / "r.json"
    args = ["eval", "--suite", suite, "--model", str(tiny_model_dir), "--per-combo", "1", "--steps", "1",
            "--json-out", str(out)]
    assert main(args) == 0
    result = json.loads(out.read_text())
    if suite == "vae":
        assert result["frames"] > 0 and result["worst"] <= result["median"]
    else:
        assert result["n"] == len(world.HELDOUT) and 0 <= result["colour"] <= 1
