"""The sidecar is an output like the clip: checked before any work, never written through a link, replaced only as a pair."""

from __future__ import annotations

import json
import os

import pytest

from kinema.cli import main

from .conftest import PROMPT

SMALL = ["--frames", "2", "--height", "16", "--width", "16", "--steps", "1", "--quiet"]


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if a model loads: every refusal here comes before any work."""
    from kinema import jobs

    monkeypatch.setattr(jobs, "load", lambda *a, **k: pytest.fail("the model was loaded before the output check"))


def generate(model, out, *extra) -> int:
    return main(["generate", PROMPT, "--model", str(model), "-o", str(out), *SMALL, *extra])


def test_an_existing_sidecar_needs_overwrite(tiny_model_dir, tmp_path, no_work, capsys):
    notes = tmp_path / "notes.mp4.json"
    notes.write_text("my notes")
    assert generate(tiny_model_dir, tmp_path / "notes.mp4") == 2
    err = capsys.readouterr().err.strip()
    assert "notes.mp4.json (the clip's sidecar) already exists; pass --overwrite" in err and "\n" not in err
    assert notes.read_text() == "my notes" and sorted(p.name for p in tmp_path.iterdir()) == ["notes.mp4.json"]


def test_a_sidecar_that_is_a_folder_is_refused_before_work(tiny_model_dir, tmp_path, no_work, capsys):
    old = tmp_path / "keep.mp4"
    old.write_bytes(b"old clip")
    (tmp_path / "keep.mp4.json").mkdir()
    assert generate(tiny_model_dir, old, "--overwrite") == 2
    assert "(the clip's sidecar) is a folder" in capsys.readouterr().err
    assert old.read_bytes() == b"old clip"


def test_a_linked_sidecar_is_replaced_not_followed(tiny_model_dir, tmp_path, capsys):
    outside = tmp_path / "outside"
    outside.mkdir()
    precious = outside / "precious.txt"
    precious.write_text("keep me")
    work = tmp_path / "work"
    work.mkdir()
    link = work / "sl.mp4.json"
    link.symlink_to(precious)
    assert generate(tiny_model_dir, work / "sl.mp4") == 2  # an existing name, even a link: --overwrite first
    assert "already exists" in capsys.readouterr().err
    assert generate(tiny_model_dir, work / "sl.mp4", "--overwrite") == 0
    assert precious.read_text() == "keep me"
    assert not link.is_symlink() and json.loads(link.read_text())["prompt"] == PROMPT


def test_a_failed_sidecar_leaves_the_old_pair(tiny_model_dir, tmp_path, monkeypatch, capsys):
    from kinema import video_io

    out = tmp_path / "clip.gif"
    assert generate(tiny_model_dir, out) == 0
    before = (out.read_bytes(), (tmp_path / "clip.gif.json").read_text())

    def full(self, *a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(video_io.Path, "write_text", full)
    assert generate(tiny_model_dir, out, "--overwrite", "--seed", "9") == 2
    assert "No space left on device" in capsys.readouterr().err
    assert (out.read_bytes(), (tmp_path / "clip.gif.json").read_text()) == before
    assert sorted(os.listdir(tmp_path)) == ["clip.gif", "clip.gif.json"]


def test_eval_json_out_needs_overwrite(tiny_model_dir, tmp_path, no_work, capsys):
    report = tmp_path / "report.json"
    report.write_text('{"mine": true}')
    code = main(["eval", "--suite", "vae", "--model", str(tiny_model_dir), "--json-out", str(report)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "report.json already exists; pass --overwrite" in err and "\n" not in err
    assert report.read_text() == '{"mine": true}'


def test_a_truncated_mp4_never_replaces_the_old_clip(tiny_model_dir, tmp_path, monkeypatch, capsys):
    """A full disk cuts the mp4 short without an error from the encoder (no moov atom): the write reads the
    file back, refuses it, and the old clip and sidecar stay."""
    from kinema import video_io

    out = tmp_path / "old.mp4"
    assert generate(tiny_model_dir, out) == 0
    before = (out.read_bytes(), (tmp_path / "old.mp4.json").read_text())
    real = video_io._ENCODERS["mp4"]

    def cut_short(tmp, frames, fps, quality):
        real(tmp, frames, fps, quality)
        data = tmp.read_bytes()
        tmp.write_bytes(data[: len(data) // 2])  # what a full disk leaves: the start of the file

    monkeypatch.setitem(video_io._ENCODERS, "mp4", cut_short)
    assert generate(tiny_model_dir, out, "--overwrite", "--seed", "3") == 2
    err = capsys.readouterr().err.strip()
    assert "could not write" in err and "read back" in err and "\n" not in err, err
    assert (out.read_bytes(), (tmp_path / "old.mp4.json").read_text()) == before
    assert sorted(os.listdir(tmp_path)) == ["old.mp4", "old.mp4.json"]


def test_long_negative_prompts_and_schedules_are_refused(tiny_model_dir, tmp_path, no_work, capsys):
    long = "a red circle " * 1000
    for extra, what in ((["--negative-prompt", long], "--negative-prompt is"), (["--prompt-schedule", "0:" + long], "--prompt-schedule is")):
        assert generate(tiny_model_dir, tmp_path / "x.mp4", *extra) == 2
        err = capsys.readouterr().err.strip()
        assert what in err and "keep it under 10000" in err and "\n" not in err, err
    assert list(tmp_path.iterdir()) == []


def test_an_output_that_appears_during_the_run_is_not_replaced(tiny_model_dir, tmp_path, monkeypatch, capsys):
    """Two runs writing the same PNG folder: the one that finishes second finds the other's output at its rename
    and refuses (without --overwrite), leaving the other's frames and no temporary."""
    from kinema import video_io

    out = tmp_path / "frames"
    real = video_io._ENCODERS["png"]

    def meanwhile(tmp, frames, fps, quality):
        real(tmp, frames, fps, quality)
        (out).mkdir()  # the other run's output lands now
        (out / "frame_00000.png").write_bytes(b"the other run's frame")

    monkeypatch.setitem(video_io._ENCODERS, "png", meanwhile)
    assert generate(tiny_model_dir, out) == 2
    err = capsys.readouterr().err.strip()
    assert "appeared while kinema was working" in err and "\n" not in err, err
    assert sorted(os.listdir(tmp_path)) == ["frames"] and (out / "frame_00000.png").read_bytes() == b"the other run's frame"
