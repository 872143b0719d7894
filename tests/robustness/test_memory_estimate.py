"""`kinema info`'s whole-process estimate against the peak RSS a real `kinema generate` reaches (±25%)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .conftest import PROMPT

# Runs the CLI in a fresh interpreter and prints that process's own peak RSS (KiB): VmHWM, not ru_maxrss, which
# a child started by vfork + exec inherits from its parent (here pytest, often larger than the child's peak)
PEAK = ("import sys\nfrom kinema.cli import main\nrc = main(sys.argv[1:])\n"
        "print(open('/proc/self/status').read().split('VmHWM:')[1].split()[0])\nsys.exit(rc)")


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/status")
@pytest.mark.parametrize("frames", [16, 256])
def test_process_estimate_is_within_a_quarter_of_the_measured_peak(frames, tmp_path):
    info = subprocess.run([sys.executable, "-m", "kinema.cli", "info", "--frames", str(frames), "--json"],
                          capture_output=True, text=True, check=True)
    estimate = float(json.loads(info.stdout)["process_estimate"]["total"].split()[0])  # MiB
    # one step, and windows side by side (stride = length) at 256 frames: the peak is set by one window,
    # the clip and the libraries, not by how many steps or windows run
    argv = ["generate", PROMPT, "-o", str(tmp_path / "c.mp4"), "--frames", str(frames), "--steps", "1", "--quiet",
            "--threads", "2", *(["--context-stride", "16", "--no-follow-motion"] if frames > 16 else [])]
    run = subprocess.run([sys.executable, "-c", PEAK, *argv], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    peak = int(run.stdout.split()[-1]) / 1024
    assert 0.75 <= estimate / peak <= 1.25, f"estimate {estimate:.0f} MiB, measured peak {peak:.0f} MiB"
