"""Benchmark scripts run at their smallest size, so none rots (figures come from the scripts, not tests)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_generate_smoke(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "bench.json"
    result = load_script("bench_generate").main(["--model", str(tiny_model_dir), "--frames", "2", "--height", "8",
                                                 "--width", "8", "--steps", "2", "--repeats", "1", "--json-out", str(out)])
    assert result["overhead_ratio"] > 1.0 and result["median"]["calls"] == 2
    assert json.loads(out.read_text())["frames"] == 2
    assert "loop overhead ratio" in capsys.readouterr().out
