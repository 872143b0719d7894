"""The `kinema` command end to end: a playable mp4, the sidecar, and every bad input's one-line error."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from kinema.cli import main
from kinema.video_io import read_video

PROMPT = "a red circle moving right on a blue background"


def run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kinema.cli", *map(str, args)], capture_output=True, text=True, timeout=300)


def test_generate_writes_playable_mp4_and_sidecar(tiny_model_dir, tmp_path):
    out = tmp_path / "clip.mp4"
    r = run_cli("generate", PROMPT, "--model", tiny_model_dir, "-o", out, "--frames", 6, "--height", 24,
                "--width", 32, "--steps", 2, "--fps", 12, "--quiet")
    assert r.returncode == 0, r.stderr
    frames, fps = read_video(out)
    assert frames.shape == (6, 24, 32, 3) and fps == pytest.approx(12)
    side = json.loads((tmp_path / "clip.mp4.json").read_text())
    assert side["prompt"] == PROMPT and side["seed"] == 0 and side["settings"]["steps"] == 2
    assert side["timings"]["denoiser_calls"] == 2 and side["kinema_version"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4", "clip.mp4.json"]


@pytest.mark.parametrize("ext", ["gif", "webp", "frames"])
def test_generate_other_formats(tiny_model_dir, tmp_path, ext):
    out = tmp_path / ("clip." + ext if ext != "frames" else "frames")
    code = main(["generate", PROMPT, "--model", str(tiny_model_dir), "-o", str(out), "--frames", "3",
                 "--height", "16", "--width", "16", "--steps", "1", "--quiet"])
    assert code == 0
    frames, _ = read_video(out)
    assert frames.shape[1:] == (16, 16, 3) and frames.shape[0] >= 1


BAD = [
    (["--height", "30"], "multiple of 4"),
    (["--width", "18"], "multiple of 4"),
    (["--frames", "0"], "must be >= 1"),
    (["--steps", "0"], "must be >= 1"),
    (["--steps", "two"], "whole number"),
    (["--guidance", "nan"], "finite"),
    (["--guidance", "-1"], "guidance"),
    (["--fps", "0"], "fps"),
    (["--seed", "-3"], ">= 0"),
]


@pytest.mark.parametrize("extra,message", BAD)
def test_bad_settings_one_line_error_no_file(tiny_model_dir, tmp_path, extra, message):
    out = tmp_path / "clip.mp4"
    r = run_cli("generate", PROMPT, "--model", tiny_model_dir, "-o", out, *extra)
    assert r.returncode == 2
    assert message in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_bad_paths(tiny_model_dir, tmp_path):
    cases = [
        (["-o", tmp_path / "missing" / "clip.mp4"], "does not exist"),
        (["-o", tmp_path / "clip.avi"], "extension"),
        (["-o", tmp_path / "x.mp4", "--model", tmp_path / "nope"], "does not exist"),
        (["-o", tmp_path / "x.mp4", "--model", tmp_path], "kinema.json"),
    ]
    for extra, message in cases:
        args = ["generate", PROMPT, *extra]
        if "--model" not in extra:
            args += ["--model", tiny_model_dir]
        r = run_cli(*args)
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, (extra, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_existing_output_needs_overwrite(tiny_model_dir, tmp_path):
    out = tmp_path / "clip.gif"
    out.write_bytes(b"precious")
    args = ["generate", PROMPT, "--model", str(tiny_model_dir), "-o", str(out), "--frames", "2", "--height", "8",
            "--width", "8", "--steps", "1", "--quiet"]
    assert main(args) == 2
    assert out.read_bytes() == b"precious"
    assert main(args + ["--overwrite"]) == 0
    assert read_video(out)[0].shape == (2, 8, 8, 3)


def test_incomplete_model_folder(tiny_model_dir, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    for f in (broken / "denoiser").glob("*.safetensors"):
        f.unlink()
    (broken / "denoiser" / "diffusion_pytorch_model.bin").write_bytes(b"pickle")
    r = run_cli("generate", PROMPT, "--model", broken, "-o", tmp_path / "x.mp4")
    assert r.returncode == 2 and "safetensors" in r.stderr
    assert not (tmp_path / "x.mp4").exists()


def test_empty_prompt(tiny_model_dir, tmp_path):
    r = run_cli("generate", "   ", "--model", tiny_model_dir, "-o", tmp_path / "x.mp4")
    assert r.returncode == 2 and "prompt is empty" in r.stderr


def test_info(tiny_model_dir, capsys):
    assert main(["info", str(tiny_model_dir), "--frames", "32", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["denoiser"]["params"] > 1000 and report["memory_estimate"]["frames"] == 32
    assert report["size_multiple"] == 4


def test_init_refuses_existing(tmp_path):
    (tmp_path / "m").mkdir()
    assert main(["init", str(tmp_path / "m"), "--preset", "tiny"]) == 2


def test_generate_same_seed_same_file_content(tiny_model_dir, tmp_path):
    outs = []
    for name in ("a", "b"):
        out = tmp_path / name
        assert main(["generate", PROMPT, "--model", str(tiny_model_dir), "-o", str(out), "--frames", "2",
                     "--height", "8", "--width", "8", "--steps", "2", "--seed", "5", "--quiet"]) == 0
        outs.append(read_video(out)[0])
    assert np.array_equal(*outs)


@pytest.mark.parametrize("argv", [["generate", "x", "-o", "x.mp4"], ["serve", "--port", "8000"], ["batch", "jobs.jsonl"]])
def test_parsing_imports_no_torch(argv):
    """`kinema --help`, argument errors and signal handling come before torch, diffusers, gradio and the networks load."""
    code = (f"import sys, kinema.cli; kinema.cli.build_parser().parse_args({argv!r}); "
            "print(sorted(m for m in ('torch', 'diffusers', 'transformers', 'cv2', 'gradio') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr


@pytest.fixture
def keep_threads():
    import torch

    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_threads_flag_env_and_sidecar(tiny_model_dir, tmp_path, monkeypatch, keep_threads, capsys):
    """--threads, else KINEMA_THREADS, else OMP_NUM_THREADS; the count the run used is in the sidecar."""
    argv = ["generate", PROMPT, "--model", str(tiny_model_dir), "--frames", "2", "--height", "16", "--width", "16",
            "--steps", "1", "--quiet"]
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    monkeypatch.setenv("KINEMA_THREADS", "1")
    assert main(argv + ["-o", str(tmp_path / "a.gif")]) == 0
    assert json.loads((tmp_path / "a.gif.json").read_text())["threads"] == 1
    assert main(argv + ["-o", str(tmp_path / "b.gif"), "--threads", "2"]) == 0
    assert json.loads((tmp_path / "b.gif.json").read_text())["threads"] == 2
    monkeypatch.delenv("KINEMA_THREADS")
    assert main(argv + ["-o", str(tmp_path / "c.gif")]) == 0
    assert json.loads((tmp_path / "c.gif.json").read_text())["threads"] == 2
    monkeypatch.setenv("KINEMA_THREADS", "many")
    capsys.readouterr()
    assert main(argv + ["-o", str(tmp_path / "d.gif")]) == 2
    assert "KINEMA_THREADS must be a whole number >= 1 (got 'many')" in capsys.readouterr().err
