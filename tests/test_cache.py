"""Step caches (`--cache`, `models/cache.py`): kinema's UNet's own, diffusers' hooks on Wan, per trajectory.

Properties: a cache that reuses nothing gives the uncached clip exactly; one that reuses does fewer full passes
(counted) and stays near it; a cache never serves one clip, window or predictor another's features (interleaved
clips on one loaded model equal each alone; each window computes its first call in full); nothing is left on the
network; bad options are one-line errors before any model loads; the sidecar records the cache.
"""

from __future__ import annotations

import json
import threading
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import kinema
from kinema import jobs
from kinema.cli import main
from kinema.errors import KinemaError
from kinema.models import cache as C
from kinema.models.seams import DenoiserInputs
from kinema.pipelines.loop import ON_STEP

PROMPT = "a red circle moving right on a blue background"
SMALL = dict(frames=4, height=16, width=16, steps=8, seed=3)


def run(model, cache="none", task="generate", *inputs, **options):
    base = {k: v for k, v in SMALL.items() if task != "restyle" or k != "frames"}  # restyle: the source's frames
    job = jobs.PREPARE[task](*inputs, PROMPT, model, cache=cache, **{**base, **options})
    return jobs.run(job, model, progress=False)


def served(result) -> int:
    return result.timings.denoiser.cached


def diff(a, b) -> float:
    return float((a.latents - b.latents).abs().max())


#################################################################################
#                                   The option                                  #
#################################################################################


@pytest.mark.parametrize("text,normal", [
    ("none", "none"), ("first-block", "first-block:0.1"), ("first-block:0.05", "first-block:0.05"),
    ("first-block:1", "first-block:1"), (" taylorseer ", "taylorseer:2"), ("taylorseer:5", "taylorseer:5"),
    ("magcache", "magcache:0.06"), ("magcache:0.2", "magcache:0.2"), ("fastercache", "fastercache"), ("pab", "pab"),
])
def test_option_is_normalised(text, normal):
    assert str(C.parse_cache(text)) == normal


@pytest.mark.parametrize("text,message", [
    ("bogus", "unknown --cache method 'bogus'"), ("", "unknown --cache method"), ("first_block", "unknown"),
    ("first-block:0", "in (0, 1]"), ("first-block:1.5", "in (0, 1]"), ("first-block:-0.1", "in (0, 1]"),
    ("first-block:nan", "in (0, 1]"), ("first-block:inf", "in (0, 1]"), ("first-block:x", "in (0, 1]"),
    ("first-block:", "in (0, 1]"), ("magcache:2", "in (0, 1]"), ("taylorseer:0", ">= 1"), ("taylorseer:-2", ">= 1"),
    ("taylorseer:1.5", "whole number"), ("pab:2", "takes no setting"), ("fastercache:1", "takes no setting"),
])
def test_bad_option_is_one_line(text, message):
    with pytest.raises(KinemaError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                       .replace("]", r"\]")) as e:
        C.parse_cache(text)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("method", ["magcache", "fastercache", "pab"])
def test_a_method_the_family_lacks_names_what_it_supports(tiny_model_dir, method):
    with pytest.raises(KinemaError, match="supports: none, first-block, taylorseer"):
        jobs.prepare_generate(PROMPT, tiny_model_dir, cache=method)


def test_wan_family_offers_what_its_transformer_allows():
    from kinema.models.wan import FAMILY

    def info(**denoiser):
        return SimpleNamespace(configs={"denoiser": {"num_layers": 30, "image_dim": None, **denoiser}})

    assert FAMILY.cache_methods(info()) == C.METHODS
    assert "fastercache" not in FAMILY.cache_methods(info(image_dim=1280))  # I2V: CLIP states of one batch
    assert not {"first-block", "magcache"} & set(FAMILY.cache_methods(info(num_layers=1)))  # needs a first and a last


@pytest.mark.parametrize("extra,message", [
    (["--cache", "bogus"], "unknown --cache method"), (["--cache", "first-block:0"], "(0, 1]"),
    (["--cache", "first-block:2"], "(0, 1]"), (["--cache", "taylorseer:0"], ">= 1"),
    (["--cache", "pab"], "supports: none, first-block, taylorseer"),
])
@pytest.mark.parametrize("command", ["generate", "animate", "restyle", "extend"])
def test_cli_refuses_before_any_model_loads(tiny_model_dir, tmp_path, monkeypatch, capsys, command, extra, message):
    from PIL import Image

    from kinema.video_io import write_video

    def no_load(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(jobs, "load", no_load)
    inputs = []
    if command == "animate":
        inputs = [str(tmp_path / "a.png")]
        Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(inputs[0])
    elif command in ("restyle", "extend"):
        inputs = [str(tmp_path / "v.gif")]
        write_video(inputs[0], np.zeros((3, 16, 16, 3), np.uint8), fps=8)
    out = tmp_path / "out.mp4"
    code = main([command, *inputs, PROMPT, "--model", str(tiny_model_dir), "-o", str(out), "--steps", "1", *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


#################################################################################
#                                 kinema's UNet                                 #
#################################################################################


@pytest.mark.parametrize("cache", ["first-block:1e-9", "taylorseer:1"])
def test_a_cache_that_reuses_nothing_is_the_uncached_clip(trained_like_model, cache):
    base, cached = run(trained_like_model), run(trained_like_model, cache)
    assert served(cached) == 0 and cached.timings.denoiser.calls == SMALL["steps"]
    assert torch.equal(cached.latents, base.latents) and np.array_equal(cached.frames, base.frames)  # the same path


def test_first_block_reuses_more_as_the_threshold_rises_and_stays_near(trained_like_model):
    base = run(trained_like_model)
    other_seed = run(trained_like_model, seed=4)
    counts = {t: served(run(trained_like_model, f"first-block:{t}")) for t in (0.01, 0.05, 0.2, 1.0)}
    assert list(counts.values()) == sorted(counts.values()) and counts[1.0] == SMALL["steps"] - 1  # the first is full
    mid = next(t for t, n in counts.items() if 0 < n < SMALL["steps"] - 1)
    near = run(trained_like_model, f"first-block:{mid}")
    assert 0 < diff(near, base) < 0.5 * diff(other_seed, base)


def test_taylorseer_runs_one_call_in_interval(trained_like_model):
    # two full calls, then one every 2: full at 0, 1, 3, 5, 7 of 8, extrapolated at 2, 4, 6
    r = run(trained_like_model, "taylorseer:2")
    assert served(r) == 3 and r.record["cache"] == dict(method="taylorseer:2", denoiser_calls=8, served_from_cache=3)
    assert torch.isfinite(r.latents).all()


def test_interleaved_clips_on_one_model_equal_each_alone(trained_like_model):
    """Two requests at once on one loaded model (a UI, a batch runner), stepping in lockstep: no shared features."""
    alone = [run(trained_like_model, "first-block:0.3", seed=s, guidance=g) for s, g in ((3, 5.0), (9, 1.0))]
    barrier, out = threading.Barrier(2, timeout=60), [None, None]

    def worker(k, seed, guidance):
        ON_STEP.set(lambda *_: barrier.wait())  # each thread's own context: both at step i before either goes on
        out[k] = run(trained_like_model, "first-block:0.3", seed=seed, guidance=guidance)

    threads = [threading.Thread(target=worker, args=(k, s, g)) for k, (s, g) in enumerate(((3, 5.0), (9, 1.0)))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a, b in zip(alone, out):
        assert served(a) > 0 and served(b) == served(a)
        assert diff(a, b) < 1e-6 and np.array_equal(a.frames, b.frames)
    assert not any(hasattr(m, "_diffusers_hook") for m in trained_like_model.denoiser.modules())


@pytest.fixture
def trajectories(monkeypatch):
    """Every StepCache a guided predictor made, in order."""
    made, fresh = [], C.StepCache.fresh

    def spy(self, *a, **k):
        made.append(fresh(self, *a, **k))
        return made[-1]

    monkeypatch.setattr(C.StepCache, "fresh", spy)
    return made


def test_each_context_window_has_its_own_cache(trained_like_model, trajectories):
    # with threshold 1 every call but a trajectory's first is served: each window computes its first call in full
    long = dict(frames=12, context_length=4, context_stride=2, follow_motion=False)
    r = run(trained_like_model, "first-block:1", **long)
    windows = r.record["long"]["windows"]
    assert windows == 5 and r.timings.denoiser.calls == windows * SMALL["steps"]
    assert served(r) == r.timings.denoiser.calls - windows
    assert len(trajectories) == windows and all(c.calls == SMALL["steps"] for c in trajectories)
    exact, base = run(trained_like_model, "first-block:1e-9", **long), run(trained_like_model, **long)
    assert served(exact) == 0 and torch.equal(exact.latents, base.latents)


def test_continuation_windows_and_extend_start_fresh(trained_like_model, trajectories):
    src = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    r = run(trained_like_model, "first-block:1", "extend", src, frames=10, context_length=4, context_stride=3)
    windows = r.record["long"]["windows"]
    assert windows >= 2 and served(r) == r.timings.denoiser.calls - windows
    assert len(trajectories) == windows


def test_structure_passes_run_in_full_and_leave_the_cache_alone(trained_like_model):
    src = np.random.default_rng(1).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    opts = dict(strength=1.0, structure=0.5, flow=False)
    base = run(trained_like_model, "none", "restyle", src, **opts)
    exact = run(trained_like_model, "first-block:1e-9", "restyle", src, **opts)
    assert torch.equal(exact.latents, base.latents)
    full = run(trained_like_model, "first-block:1", "restyle", src, **opts)
    structured = full.record["restyle"]["structure_steps"]
    assert structured == 4 and served(full) == SMALL["steps"] - structured - 1  # after them: one full, then reused


def test_animate_and_flowedit_take_it(trained_like_model):
    image = np.random.default_rng(2).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    a = run(trained_like_model, "taylorseer:2", "animate", image)
    assert served(a) == 3 and a.record["cache"]["method"] == "taylorseer:2"
    src = np.random.default_rng(3).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    e = run(trained_like_model, "first-block:1", "restyle", src, method="flowedit", strength=0.75, tail=0.5, flow=False)
    assert served(e) > 0  # the edit and the plain tail: two predictors, each its own first call in full


def test_sidecar_and_api_record_the_cache(tiny_model_dir, tmp_path):
    out = tmp_path / "clip.mp4"
    assert main(["generate", PROMPT, "--model", str(tiny_model_dir), "-o", str(out), "--frames", "3", "--height", "16",
                 "--width", "16", "--steps", "3", "--cache", "first-block", "--quiet"]) == 0
    side = json.loads((tmp_path / "clip.mp4.json").read_text())
    assert side["settings"]["cache"] == "first-block:0.1"
    assert side["cache"]["method"] == "first-block:0.1" and side["cache"]["denoiser_calls"] == 3
    assert side["timings"]["denoiser_cached"] == side["cache"]["served_from_cache"]
    r = kinema.generate(PROMPT, model=kinema.load(tiny_model_dir), frames=3, height=16, width=16, steps=2,
                        cache="taylorseer:1", return_result=True, progress=False)
    assert r.record["settings"]["cache"] == "taylorseer:1" and r.record["cache"]["served_from_cache"] == 0
    plain = kinema.generate(PROMPT, model=kinema.load(tiny_model_dir), frames=3, height=16, width=16, steps=2,
                            return_result=True, progress=False)
    assert plain.record["settings"]["cache"] == "none" and "cache" not in plain.record


#################################################################################
#                              Wan: diffusers' hooks                            #
#################################################################################

WAN = dict(frames=9, height=32, width=32, steps=8, seed=3, negative_prompt="the dog")


@pytest.fixture(scope="module")
def wan(tmp_path_factory):
    """A tiny Wan 2.1 T2V folder with three transformer blocks (FirstBlockCache needs a first and a last)."""
    from diffusers import WanPipeline

    from kinema.models.wan_testing import save, scheduler, text_encoder, tokenizer, transformer, vae, without_ftfy

    torch.manual_seed(0)
    path = save(WanPipeline(tokenizer(), text_encoder(), vae(), scheduler(), transformer(num_layers=3)),
                tmp_path_factory.mktemp("wan") / "t2v")
    with without_ftfy():
        yield kinema.load(path, device="cpu", dtype="float32")


@pytest.fixture
def calibration(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "kinema" / "magcache.json"


def wan_run(model, cache="none", **options):
    return run(model, cache, **{**WAN, **options})


def no_hooks_left(model) -> bool:
    tr = model.denoiser.transformer
    return tr._cache_config is None and not any(getattr(m, "_diffusers_hook", None) and m._diffusers_hook.hooks
                                                for m in tr.modules())


@pytest.mark.parametrize("cache", ["first-block:1e-9", "taylorseer:1"])
def test_wan_hooks_that_reuse_nothing_are_the_uncached_clip(wan, cache):
    base, cached = wan_run(wan), wan_run(wan, cache)
    assert served(cached) == 0 and torch.equal(cached.latents, base.latents) and no_hooks_left(wan)


@pytest.mark.parametrize("cache,count", [("first-block:1", 7), ("taylorseer:3", 4), ("fastercache", None), ("pab", None)])
def test_wan_hooks_reuse_and_stay_near(wan, cache, count):
    base, other_seed, cached = wan_run(wan), wan_run(wan, seed=4), wan_run(wan, cache)
    if count is not None:  # FasterCache and PAB leave parts of a call out, not whole calls: nothing to count
        assert served(cached) == count
    assert 0 < diff(cached, base) < diff(other_seed, base) and no_hooks_left(wan)


def test_wan_fastercache_without_a_guided_pair(wan):
    """No guidance, or one half of the pair (a CFG-parallel rank): FasterCache runs as for a guidance-distilled model."""
    r = wan_run(wan, "fastercache", guidance=1.0)
    assert torch.isfinite(r.latents).all() and r.timings.denoiser.calls == WAN["steps"]
    text = wan.text_encoder.encode([PROMPT])
    cache = C.StepCache("fastercache", WAN["steps"], paired=True)
    x = torch.randn(1, 16, 3, 4, 4)
    for t in (900.0, 500.0, 300.0):
        v = wan.denoiser.predict(x, torch.tensor([t]), text, None, DenoiserInputs(cache=cache))
        assert v.shape == x.shape and torch.isfinite(v).all()
    assert no_hooks_left(wan)


def test_wan_magcache_calibrates_once_then_skips(wan, calibration):
    base = wan_run(wan)
    first = wan_run(wan, "magcache")
    assert served(first) == 0 and torch.equal(first.latents, base.latents)  # calibration: every call in full
    ratios = json.loads(calibration.read_text())
    assert len(ratios) == 1 and len(next(iter(ratios.values()))) == WAN["steps"]
    second = wan_run(wan, "magcache:0.2")
    assert served(second) > 0 and 0 < diff(second, base) and no_hooks_left(wan)


@pytest.mark.parametrize("cache", ["first-block:0.3", "pab"])
def test_wan_interleaved_clips_equal_each_alone(wan, cache):
    alone = [wan_run(wan, cache, seed=s) for s in (3, 9)]
    barrier, out = threading.Barrier(2, timeout=60), [None, None]

    def worker(k, seed):
        ON_STEP.set(lambda *_: barrier.wait())
        out[k] = wan_run(wan, cache, seed=seed)

    threads = [threading.Thread(target=worker, args=(k, s)) for k, s in enumerate((3, 9))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a, b in zip(alone, out):
        assert served(b) == served(a) and diff(a, b) < 1e-6
    assert no_hooks_left(wan)


@pytest.mark.parametrize("cache", ["first-block:1", "pab"])
def test_wan_each_context_window_has_its_own_hook_state(wan, cache, trajectories):
    long = dict(frames=33, context_length=5, context_stride=2)
    r = wan_run(wan, cache, **long)
    windows = r.record["long"]["windows"]
    assert windows == 3 and r.timings.denoiser.calls == windows * WAN["steps"]
    if cache == "first-block:1":
        assert served(r) == r.timings.denoiser.calls - windows
    assert len(trajectories) == windows and all(c.calls == WAN["steps"] for c in trajectories)
    states = [id(s) for c in trajectories for s in C._states(next(iter(c.slots.values())))]
    assert states and len(states) == len(set(states))  # no hook state object shared by two windows
    assert no_hooks_left(wan)


#################################################################################
#                                   The benchmark                               #
#################################################################################


def test_bench_cache_smoke(tiny_model_dir, tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("bench_cache", Path(__file__).parents[1] / "scripts" / "bench_cache.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "cache.json"
    r = bench.main(["--model", str(tiny_model_dir), "--steps", "2", "--clips", "1", "--frames", "4", "--height", "16",
                    "--width", "16", "--methods", "first-block:1e-9", "taylorseer:1", "first-block:1", "--suite",
                    "--suite-methods", "first-block:1", "--per-combo", "1", "--json-out", str(out)])
    m = r["methods"]
    assert m["first-block:1e-09"]["max_abs_diff"] == 0 and m["taylorseer:1"]["served"] == 0
    assert m["first-block:1"]["served"] == 1 and m["first-block:1"]["calls"] == 2
    assert set(r["suite"]) == {"none", "first-block:1"} and r["suite"]["none"]["within_1_clip"]
    assert json.loads(out.read_text())["clips"] == 1
    text = capsys.readouterr().out
    assert "| first-block:1 |" in text and "within 1 clip of uncached" in text


def test_a_none_cache_handed_to_the_unet_reuses_nothing(trained_like_model):
    x, t = torch.randn(1, 4, 4, 4, 4), torch.tensor([500.0])
    text = trained_like_model.text_encoder.encode([PROMPT])
    plain = trained_like_model.denoiser.predict(x, t, text)
    cache = C.StepCache("none")
    for _ in range(3):
        assert torch.equal(trained_like_model.denoiser.predict(x, t, text, None, DenoiserInputs(cache=cache)), plain)
