"""Training under accelerate launch with 2 CPU processes (gloo) equals one process with the same global batch."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from kinema.models.kinema_family import init
from safetensors.torch import load_file

from kinema.train import latest_checkpoint

# both stages, a few steps each; `batch` is the global batch, split 2 + 2 over two processes
CONFIG = """seed: 0
frames: 4
size: 16
bf16: false
log_every: 2
checkpoint_every: 2
keep_checkpoints: 2
sample_steps: 1
vae: {steps: 2, batch: 4, lr: 0.001, warmup: 1}
denoiser: {steps: 4, batch: 4, lr: 0.001, warmup: 1, ema: 0.9, clips: 8}
"""


def train(config: Path, model: Path, run: Path, processes: int) -> subprocess.CompletedProcess:
    bin = Path(sys.executable).parent
    launcher = [str(bin / "accelerate"), "launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
                "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"] if processes > 1 else [sys.executable]
    cmd = [*launcher, "-m", "kinema.cli", "train", str(config), "--model", str(model), "--run", str(run)]
    return subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(config, fresh model, the one-process run's root, the two-process run's root)."""
    root = tmp_path_factory.mktemp("multi")
    config = root / "small.yaml"
    config.write_text(CONFIG)
    init(root / "fresh", preset="tiny", seed=0)
    for name, n in (("one", 1), ("two", 2)):
        shutil.copytree(root / "fresh", root / name / "model")
        r = train(config, root / name / "model", root / name / "run", n)
        assert r.returncode == 0, r.stderr[-3000:]
    return config, root / "fresh", root / "one", root / "two"


def assert_close(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys(), what
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst < 1e-3, f"{what}: max |diff| {worst}"


def test_two_processes_train_the_weights_of_one(runs):
    _, fresh, one, two = runs
    a, b = load_file(latest_checkpoint(one / "run") / "state.safetensors"), load_file(latest_checkpoint(two / "run") / "state.safetensors")
    assert latest_checkpoint(one / "run").name == latest_checkpoint(two / "run").name == "2-denoiser-0000004"
    assert_close(a, b, "denoiser, EMA and optimizer state")
    for part in ("vae", "denoiser"):  # the model folders, the VAE stage's result included
        [wa] = (one / "model" / part).glob("*.safetensors")
        [wb] = (two / "model" / part).glob("*.safetensors")
        assert_close(load_file(wa), load_file(wb), part)
        [w0] = (fresh / part).glob("*.safetensors")
        start = load_file(w0)
        assert max((start[k] - v).abs().max().item() for k, v in load_file(wa).items()) > 1e-3, f"{part} did not train"
    assert (two / "run" / "samples.gif").is_file() and not list((two / "run" / "checkpoints").glob(".tmp-*"))


@pytest.mark.slow
def test_resume_with_another_process_count(runs, tmp_path):
    """The two-process run's step-2 checkpoint resumed by one process ends where the one-process run ended."""
    config, _, one, two = runs
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copytree(two / "run" / "checkpoints" / "2-denoiser-0000002", run / "checkpoints" / "2-denoiser-0000002")
    shutil.copytree(two / "model", tmp_path / "model")  # its VAE is the trained one; the denoiser comes from the checkpoint
    assert train(config, tmp_path / "model", run, 1).returncode == 0
    assert latest_checkpoint(run).name == "2-denoiser-0000004"
    assert_close(load_file(latest_checkpoint(one / "run") / "state.safetensors"),
                 load_file(latest_checkpoint(run) / "state.safetensors"), "resumed")


def test_a_batch_that_does_not_split_is_refused():
    from types import SimpleNamespace

    from kinema.errors import KinemaError
    from kinema.train import shard

    assert [shard(4, SimpleNamespace(num_processes=2, process_index=r)) for r in (0, 1)] == [slice(0, 2), slice(2, 4)]
    assert shard(3, SimpleNamespace(num_processes=1, process_index=0)) == slice(0, 3)
    with pytest.raises(KinemaError, match="a batch of 3 does not split evenly over 2 processes"):
        shard(3, SimpleNamespace(num_processes=2, process_index=1))
