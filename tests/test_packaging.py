"""`pip install .` (non-editable) gives a working package: kinema.models, kinema.pipelines, the CLI, the weights."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_installs_and_imports(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist")], check=True, capture_output=True, timeout=300)
    wheel = next((tmp_path / "dist").glob("kinema-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for must in ("kinema/cli.py", "kinema/world/metrics.py", "kinema/models/unet.py", "kinema/models/seams.py", "kinema/pipelines/loop.py"):
        assert must in names, must
    assert not any(n.startswith(("models/", "pipelines/", "tests/")) for n in names)
    shipped = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "kinema" / "weights").rglob("*") if p.is_file())
    assert all(s in names for s in shipped), "weights in the source tree must ship in the wheel"
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "kinema = kinema.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()

    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    code = "import kinema, kinema.world.metrics, kinema.models.unet, kinema.pipelines.loop; print(kinema.__file__)"
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-1000:]
    assert r.stdout.strip().startswith(str(target))
