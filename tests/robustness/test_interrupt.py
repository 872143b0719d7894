"""Interruptions: a signal mid-generation or mid-write leaves no output and no temporary; a killed checkpoint
writer always leaves a loadable last checkpoint; a failing disk gives one line and no half file."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from .conftest import PROMPT, check_contract, listing

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def start(args: list) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "kinema.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=ENV)


def wait_for(stream, marker: bytes, p: subprocess.Popen, timeout: float = 120) -> None:
    """Read `stream` byte by byte (progress bars end lines with \\r) until `marker` shows up."""
    seen, deadline = b"", time.time() + timeout
    while marker not in seen:
        byte = stream.read(1)
        assert byte and time.time() < deadline, f"{marker!r} never came (exit {p.poll()}): {seen[-2000:]!r}"
        seen += byte


SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def test_signal_while_denoising_leaves_nothing(tiny_model_dir, tmp_path):
    """`kinema generate` gets SIGINT, SIGTERM or SIGHUP mid-denoising: it cleans up and exits 130; no output, no temporary.

    Both runs start at once so their start-ups overlap; each is signalled once its progress bar shows.
    """
    runs = {}
    for sig in SIGNALS:
        (tmp_path / sig.name).mkdir()
        runs[sig] = start(["generate", PROMPT, "--model", tiny_model_dir, "-o", tmp_path / sig.name / "clip.mp4",
                           "--frames", "2", "--height", "16", "--width", "16", "--steps", "1000"])
    try:
        for sig, p in runs.items():
            wait_for(p.stderr, b"denoise", p)
            p.send_signal(sig)
        for sig, p in runs.items():
            _, err = p.communicate(timeout=60)
            assert p.returncode == 130 and b"Traceback" not in err, (sig, err.decode(errors="replace"))
            assert listing(tmp_path / sig.name) == set(), sig
    finally:
        for p in runs.values():
            p.kill()


@pytest.mark.parametrize("sig", SIGNALS)
def test_signal_while_writing_removes_the_temporary(sig, tiny_model_dir, tmp_path):
    """The signal lands while the encoder has half a file in the hidden temporary: both go, the old clip stays.

    The run is forked from the test process (kinema and torch already imported, so it starts at once); its
    mp4 encoder writes half a file, says so and stalls until the signal comes.
    """
    import multiprocessing

    out = tmp_path / "out"
    out.mkdir()
    (out / "clip.mp4").write_bytes(b"the previous clip")
    ctx = multiprocessing.get_context("fork")
    writing = ctx.Event()

    def generate() -> None:
        torch.set_num_threads(1)  # a forked child must not enter the parent's OpenMP pool (it can hang): --threads 1
        from kinema import video_io
        from kinema.cli import main

        def stalled(tmp, frames, fps, quality):
            tmp.write_bytes(b"half a clip")
            writing.set()
            time.sleep(120)

        video_io._ENCODERS["mp4"] = stalled
        with open(tmp_path / "stderr.txt", "w") as err, contextlib.redirect_stderr(err):
            code = main(["generate", PROMPT, "--model", str(tiny_model_dir), "-o", str(out / "clip.mp4"), "--overwrite",
                         "--frames", "2", "--height", "16", "--width", "16", "--steps", "1", "--quiet", "--threads", "1"])
        os._exit(code)

    p = ctx.Process(target=generate)
    p.start()
    try:
        assert writing.wait(120), "the run never reached the encoder"
        assert any(".tmp-" in name for name in listing(out))
        os.kill(p.pid, sig)
        p.join(60)
    finally:
        p.kill()
    err = (tmp_path / "stderr.txt").read_text()
    assert p.exitcode == 130 and "Traceback" not in err and "interrupted" in err, (p.exitcode, err)
    assert listing(out) == {"clip.mp4"} and (out / "clip.mp4").read_bytes() == b"the previous clip"


def test_killed_checkpoint_writer_leaves_a_loadable_checkpoint(tmp_path):
    """SIGKILL a loop of checkpoint writes at random moments: the last complete checkpoint always loads."""
    import multiprocessing

    import torch
    from safetensors.torch import load_file

    from kinema.train import latest_checkpoint, save_checkpoint

    run = tmp_path / "run"

    def latest():
        return latest_checkpoint(run) if (run / "checkpoints").is_dir() else None

    def write_forever(first: int) -> None:  # forked: torch is already imported, so each writer starts at once
        torch.set_num_threads(1)  # a forked child must not enter the parent's OpenMP pool (it can hang): --threads 1
        for step in range(first, first + 10**6):
            save_checkpoint(run, "vae", step, {"w": torch.full((100_000,), float(step))}, {"step": step}, keep=2)

    rng = random.Random(0)
    for attempt in range(6):
        before = latest()
        first = 0 if before is None else json.loads((before / "meta.json").read_text())["step"] + 1
        p = multiprocessing.get_context("fork").Process(target=write_forever, args=(first,))
        p.start()
        deadline = time.time() + 60
        while latest() in (None, before):  # wait until this writer has finished one checkpoint, then kill it
            assert time.time() < deadline and p.is_alive()
            time.sleep(0.005)
        time.sleep(rng.uniform(0, 0.1))
        os.kill(p.pid, signal.SIGKILL)
        p.join()
        last = latest()
        step = json.loads((last / "meta.json").read_text())["step"]
        assert step >= first and (load_file(last / "state.safetensors")["w"] == step).all()


@pytest.mark.parametrize("fail_at", ["save_file", "meta", "rename"])
def test_interrupted_checkpoint_write_keeps_the_previous_one(fail_at, tmp_path, monkeypatch):
    import torch

    from kinema import train

    run = tmp_path / "run"
    good = train.save_checkpoint(run, "vae", 10, {"w": torch.ones(4)}, {"step": 10}, keep=2)

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    if fail_at == "save_file":
        monkeypatch.setattr(train, "save_file", interrupt)
    elif fail_at == "meta":
        monkeypatch.setattr(Path, "write_text", interrupt)
    else:
        monkeypatch.setattr(train.os, "replace", interrupt)
    with pytest.raises(KeyboardInterrupt):
        train.save_checkpoint(run, "vae", 20, {"w": torch.zeros(4)}, {"step": 20}, keep=2)
    monkeypatch.undo()
    assert train.latest_checkpoint(run) == good and listing(run / "checkpoints") == {good.name, f"{good.name}/meta.json",
                                                                                       f"{good.name}/state.safetensors"}


#################################################################################
#                                  Full disk                                    #
#################################################################################


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("fmt", ["clip.mp4", "clip.gif", "clip.webp", "frames"])
def test_full_disk_while_encoding(fmt, kinema, tiny_model_dir, tmp_path, monkeypatch):
    """The encoder writes half a file, then the disk is full: one line naming the problem, nothing left."""
    from kinema import video_io

    real = video_io._ENCODERS[video_io.output_format(fmt)]

    def half_then_full(tmp, frames, fps, quality):
        real(tmp, frames[:1], fps, quality)
        no_space()

    monkeypatch.setitem(video_io._ENCODERS, video_io.output_format(fmt), half_then_full)
    result = kinema("generate", PROMPT, "--model", tiny_model_dir, "-o", tmp_path / fmt, "--frames", "2",
                    "--height", "16", "--width", "16", "--steps", "1", "--quiet")
    check_contract(result, set(), listing(tmp_path))
    assert result.code == 2 and "No space left on device" in result.err


@pytest.mark.parametrize("where", ["sidecar", "rename", "create"])
def test_full_disk_after_the_clip(where, kinema, tiny_model_dir, tmp_path, monkeypatch):
    """The disk fills while writing the sidecar, on the rename, or on creating the temporary: no half pair left."""
    from kinema import video_io

    real = {"sidecar": Path.write_text, "rename": os.replace, "create": Path.open}[where]

    def full_for_temporaries(path, *args, **kwargs):  # other files (the model's) read and write as usual
        if ".tmp-" in str(path) and str(tmp_path) in str(path):
            no_space()
        return real(path, *args, **kwargs)

    if where == "rename":
        monkeypatch.setattr(video_io.os, "replace", full_for_temporaries)
    else:
        monkeypatch.setattr(Path, {"sidecar": "write_text", "create": "open"}[where], full_for_temporaries)
    result = kinema("generate", PROMPT, "--model", tiny_model_dir, "-o", tmp_path / "clip.mp4", "--frames", "2",
                    "--height", "16", "--width", "16", "--steps", "1", "--quiet")
    monkeypatch.undo()
    check_contract(result, set(), listing(tmp_path))
    assert result.code == 2 and "No space left on device" in result.err


def test_full_disk_while_saving_a_model(kinema, tiny_model_dir, tmp_path, monkeypatch):
    """`init --overwrite` onto a model whose save fails: the old model is intact, no temporary is left."""
    import shutil

    from kinema.models import kinema_family as loading

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    before = {p: (model / p).read_bytes() for p in listing(model) if (model / p).is_file()}
    names = listing(tmp_path)
    monkeypatch.setattr(loading.os, "chmod", no_space)
    result = kinema("init", model, "--preset", "tiny", "--overwrite")
    monkeypatch.undo()
    check_contract(result, names, listing(tmp_path))
    assert result.code == 2 and {p: (model / p).read_bytes() for p in before} == before


def test_signal_while_importing_torch(tiny_model_dir, tmp_path):
    """Ctrl-C while the command is still importing torch: the one-line message and exit 130, not a traceback.

    The handlers are installed before the heavy imports, which the command makes; the signal is sent once
    the process has torch's library mapped (it is importing it) and has not yet finished.
    """
    p = start(["generate", PROMPT, "--model", tiny_model_dir, "-o", tmp_path / "clip.mp4", "--frames", "2",
               "--height", "16", "--width", "16", "--steps", "1000"])
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and p.poll() is None:
            try:
                if "libtorch" in Path(f"/proc/{p.pid}/maps").read_text():
                    break
            except OSError:
                pass
            time.sleep(0.005)
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=60)
    finally:
        p.kill()
    assert p.returncode == 130 and b"Traceback" not in err and b"interrupted" in err, err.decode(errors="replace")
    assert listing(tmp_path) == set()
