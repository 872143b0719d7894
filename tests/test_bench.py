"""Benchmark scripts run at their smallest size, so none rots (figures come from the scripts, not tests)."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

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


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """`bench_all --size smoke` once: every benchmark at its smallest size, and the files it writes."""
    out = tmp_path_factory.mktemp("bench")
    assert load_script("bench_all").main(["--size", "smoke", "--out", str(out)]) == 0
    return out, json.loads((out / "results.json").read_text())["results"]


def test_bench_all_writes_table_json_and_plot(smoke):
    out, results = smoke
    assert set(results) == {"generate", "wan", "flops", "memory", "scaling"}
    md = (out / "results.md").read_text()
    assert "they are not results" in md and "| time kinema / diffusers (same weights) |" in md
    assert md.count("\n## ") == 5 and "Failed" not in md
    assert (out / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_wan_vs_diffusers_smoke(smoke):
    r = smoke[1]["wan"]
    assert r["ratio"] > 0 and len(r["kinema_s"]) == len(r["diffusers_s"]) == 1
    assert r["max_abs_diff_latents"] < 1e-4 and r["max_abs_diff_uint8"] <= 1  # the same clip from the same weights


def test_flops_smoke(smoke):
    dtypes = smoke[1]["flops"]["dtypes"]
    assert [(d["dtype"], d["autocast"]) for d in dtypes] == [("float32", False), ("bfloat16", True)]
    for d in dtypes:
        assert d["flops"] > 0 and d["ratio"] > 0 and d["limit"]
        assert sum(c["time_share"] for c in d["classes"].values()) == pytest.approx(1)
        assert sum(c["flop_share"] for c in d["classes"].values()) == pytest.approx(1)  # every FLOP has a class
        assert d["classes"]["attention"]["flop_share"] > 0  # CPU attention is counted


def test_memory_smoke(smoke):
    r = smoke[1]["memory"]
    assert [x["frames"] for x in r["lengths"]] == [2, 4] and [x["attention"] for x in r["backends"]] == ["sdpa", "chunked"]
    assert all(x["peak_rss_mib"] > 100 for x in r["lengths"] + r["backends"])
    assert r["lengths"][0]["memory_ratio"] == r["backends"][0]["memory_ratio"] == 1


def test_scaling_smoke(smoke):
    presets = smoke[1]["scaling"]["presets"]
    assert set(presets) == {"tiny", "small"}
    assert all(len(p["points"]) == 4 and math.isfinite(p["slope"]) for p in presets.values())


def test_scaling_slope_is_the_power():
    slope = load_script("bench_scaling").slope
    points = [dict(tokens=x, seconds=0.01 * x**1.5) for x in (16, 64, 256, 1024)]
    assert slope(points) == pytest.approx(1.5)


def test_flop_count_of_known_ops():
    """Linear: 2 m n k; CPU attention (which torch's counter skips): 4 b h s s d, as on CUDA."""
    bf = load_script("bench_flops")
    lin, q = torch.nn.Linear(32, 16, bias=False), torch.randn(2, 4, 64, 8)
    total, by_class = bf.count_flops(lambda: (lin(torch.randn(10, 32)), F.scaled_dot_product_attention(q, q, q)))
    assert by_class["matmul"] == 2 * 10 * 32 * 16 and by_class["attention"] == 4 * 2 * 4 * 64 * 64 * 8
    assert total == sum(by_class.values())
    assert [bf.op_class(n) for n in ("aten::addmm", "aten::mkldnn_convolution", "aten::native_group_norm",
                                     "aten::_to_copy", "aten::silu", "aten.convolution")] == \
        ["matmul", "convolution", "norms", "copies, casts, layout", "elementwise", "convolution"]


def test_gpu_check_parts_on_cpu(tmp_path, smoke, capsys):
    """gpu_check.sh parses; bench_gpu's folder, memory child and report run (CPU, tiny) — the GPU sizes do not."""
    assert subprocess.run(["bash", "-n", str(ROOT / "scripts" / "gpu_check.sh")]).returncode == 0
    gpu = load_script("bench_gpu")
    folder = tmp_path / "wan"
    gpu.main(["folder", str(folder), "--shape", "tiny", "--vae-shape", "tiny", "--device", "cpu"])
    gpu.main(["memory", str(folder), "--child", "--device", "cpu", "--frames", "5", "--height", "16", "--width", "16",
              "--tiling"])
    row = json.loads(capsys.readouterr().out.splitlines()[-1][len("BENCH "):])
    assert row["vae_tiling"] and row["timings"]["denoise"] > 0
    out = tmp_path / "out"
    out.mkdir()
    (out / "memory.json").write_text(json.dumps(dict(rows=[row], settings=dict(folder="wan", frames=5, height=16, width=16,
                                                                               steps=2, device="cpu"))))
    (out / "flops.json").write_text(json.dumps(smoke[1]["flops"]))
    (out / "stages.txt").write_text("memory exit 0 in 1 s\n")
    gpu.main(["report", str(out)])
    md = (out / "results.md").read_text()
    assert "| none, tiling on |" in md and "| float32 |" in md and "(no wan.json" in md


def test_tune_guidance_smoke(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "tune.json"
    assert load_script("tune_guidance").main(["--model", str(tiny_model_dir), "--guidance", "1", "2", "--every", "60",
                                              "--shift", "1", "3", "--json-out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["guidance"], r["shift"]) for r in rows] == [(1.0, 1.0), (1.0, 3.0), (2.0, 1.0), (2.0, 3.0)]
    assert all(r["n"] == 2 and 0 <= r["shape"] <= 1 for r in rows)
    assert "| 2 | 3.0 | every step | 2 |" in capsys.readouterr().out
    assert load_script("tune_guidance").main(["--model", str(tiny_model_dir), "--guidance", "2", "--every", "60",
                                              "--interval", "0.5", "--json-out", str(out)]) == 0
    assert json.loads(out.read_text())["rows"][0]["guidance_interval"] == [0.5, 1.0]
    assert "| 2 | model | 0.5:1.0 | 2 |" in capsys.readouterr().out


def test_readme_gifs_smoke(tiny_model_dir, tmp_path):
    from kinema.video_io import read_video, write_video

    long = tmp_path / "long.mp4"
    write_video(long, np.random.default_rng(0).integers(0, 255, (5, 16, 16, 3), dtype=np.uint8), fps=8)
    out = tmp_path / "samples"
    assert load_script("readme_gifs").main(["--model", str(tiny_model_dir), "--out", str(out),
                                            "--long-from", str(long)]) == 0
    anim, restyle, longgif = (read_video(out / f"{n}.gif")[0] for n in ("animate", "restyle", "long"))
    assert read_video(out / "source.mp4")[0].shape == (16, 64, 64, 3) and (out / "anchor.png").is_file()
    assert anim.shape[2] > 2 * anim.shape[1] - 40 and restyle.shape[2] > anim.shape[2]  # 2 and 3 panels side by side
    assert longgif.shape[0] == 5


def test_probe_direction_smoke(tiny_model):
    """The probe scores true vs swapped captions; a swap changes the text, so the two errors differ."""
    rows = load_script("probe_direction").probe(tiny_model, clips=2, sigmas=(0.9,), frames=4, size=16)
    assert [(r["mode"], r["sigma"]) for r in rows] == [("t2v", 0.9), ("i2v", 0.9)]
    assert all(r["true"] > 0 and r["swapped"] > 0 and r["ratio"] == r["swapped"] / r["true"] for r in rows)


def test_probe_pace_smoke(tiny_model):
    """One row per told length, with the world's own speed range at that length: slower when longer."""
    rows = load_script("probe_pace").probe(tiny_model, [16, 256], steps=1)
    assert [r["length"] for r in rows] == [16, 256] and all(r["clips"] == 20 for r in rows)
    assert rows[1]["world_speed"][1] < rows[0]["world_speed"][0]  # 256-frame clips creep
    assert all(0 <= r["direction"] <= 1 for r in rows)
