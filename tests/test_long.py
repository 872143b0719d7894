"""Long clips on tiny random components: windowed and continued generation, extend, errors, the benchmark."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import kinema
from kinema import api, jobs
from kinema.cli import main
from kinema.models import TextEmbeds
from kinema.models.seams import to_unit
from kinema.pipelines import long_video as lv
from kinema.pipelines.common import Settings
from kinema.pipelines.loop import Timings
from kinema.pipelines.text_to_video import text_to_video
from kinema.pipelines.windows import continuation_plan, window_plan
from kinema.video_io import read_video, write_video

PROMPT = "a red circle moving right on a blue background"
ROOT = Path(__file__).resolve().parents[1]


def small(frames: int, **kw) -> Settings:
    return Settings(**{**dict(frames=frames, height=16, width=16, steps=2, guidance=3.0, seed=3), **kw})


#################################################################################
#                                Pure helpers                                   #
#################################################################################

def test_resolve_options_defaults():
    o = lv.resolve_options(lv.LongOptions(), 256, 16)
    assert (o.context_length, o.context_stride) == (16, 4)
    o = lv.resolve_options(lv.LongOptions(mode="continue"), 256, 16)
    assert (o.context_length, o.context_stride) == (16, 12)
    assert lv.is_plain(lv.LongOptions(), 16, 16) and not lv.is_plain(lv.LongOptions(), 17, 16)
    assert not lv.is_plain(lv.LongOptions(context_length=8), 16, 16)
    assert lv.latent_count(81, 4) == 21 and lv.latent_count(17, 1) == 17


@pytest.mark.parametrize("options,frames,source,match", [
    (dict(context_length=8, context_stride=9), 64, 0, "--context-stride"),
    (dict(context_length=65), 128, 0, "--context-length 65 is longer than this model supports"),
    (dict(mode="continue"), 8, 0, "fewer than --context-length"),
    (dict(mode="continue", context_length=8, context_stride=8), 32, 0, "must be < --context-length"),
    (dict(mode="continue", context_length=8), 32, 32, "more than the 32 frames"),
    (dict(prompt_schedule="a red circle"), 32, 0, "not <frame>:<prompt>"),
    (dict(prompt_schedule="0:a|20:b|10:c"), 32, 0, "strictly increase"),
    (dict(prompt_schedule="0:a|40:b"), 32, 0, "outside the clip"),
    (dict(mode="sideways"), 32, 0, "--mode"),
    (dict(window_weights="gauss"), 32, 0, "weighting"),
])
def test_resolve_options_errors(options, frames, source, match):
    with pytest.raises(kinema.KinemaError, match=match):
        lv.resolve_options(lv.LongOptions(**options), frames, 16, source_frames=source)


def test_mix_text():
    a = TextEmbeds(torch.ones(1, 2, 3), torch.ones(1, 2, dtype=torch.bool))
    b = TextEmbeds(torch.full((1, 4, 3), 3.0), torch.ones(1, 4, dtype=torch.bool))
    assert lv.mix_text([a, b], torch.tensor([1.0, 0.0])) is a
    m = lv.mix_text([a, b], torch.tensor([0.5, 0.5]))
    assert m.hidden.shape == (1, 4, 3) and m.mask.all()
    assert torch.allclose(m.hidden[0, :2], torch.full((2, 3), 2.0)) and torch.allclose(m.hidden[0, 2:], torch.full((2, 3), 1.5))


class Doubler:
    """A denoiser whose velocity is twice its input: fused windows must give exactly that on every frame."""

    def __init__(self):
        self.frames_seen = []

    def predict(self, x, t, text, cond, inputs=None):
        assert len(text) == x.shape[0]  # texts line up with the (guided, batched) windows
        self.frames_seen.append(x.shape[2])
        return 2 * x


@pytest.mark.parametrize("batch", [1, 3])
def test_fused_predict_covers_every_frame_and_stays_in_the_window(batch):
    plan = window_plan(11, 4, 3)
    texts = [TextEmbeds(torch.randn(1, 2, 5), torch.ones(1, 2, dtype=torch.bool)) for _ in plan]
    uncond = TextEmbeds(torch.randn(1, 3, 5), torch.ones(1, 3, dtype=torch.bool))
    den = Doubler()
    predict = lv.fused_predict(den, texts, uncond, 4.0, plan, "pyramid", batch)
    x = torch.randn(1, 2, 11, 3, 3)
    torch.testing.assert_close(predict(x, torch.tensor(500.0)), 2 * x)
    assert set(den.frames_seen) == {4}  # the denoiser never sees more than one window's frames


#################################################################################
#                                  Drivers                                      #
#################################################################################

@pytest.mark.parametrize("mode", ["window", "continue"])
def test_one_window_equals_plain_generation(trained_like_model, mode):
    s = small(6)
    plain = text_to_video(trained_like_model, PROMPT, s, progress=False)
    long = lv.long_video(trained_like_model, PROMPT, s, lv.LongOptions(mode=mode, context_length=6), progress=False)
    assert torch.equal(plain.latents, long.latents) and np.array_equal(plain.frames, long.frames)
    assert long.info["long"]["windows"] == 1


def test_windowed_generation_bounded_by_the_window(trained_like_model, monkeypatch):
    m = trained_like_model
    seen = []
    original = m.denoiser.predict
    monkeypatch.setattr(m.denoiser, "predict", lambda x, *a: seen.append(x.shape[2]) or original(x, *a))
    r = lv.long_video(m, PROMPT, small(13), lv.LongOptions(context_length=4, context_stride=3), progress=False)
    plan = window_plan(13, 4, 3)
    assert r.frames.shape == (13, 16, 16, 3) and r.info["long"]["windows"] == len(plan)
    assert seen == [4] * (2 * len(plan))  # 2 steps, one (CFG-batched) call per window, 4 frames each
    assert r.frames[-1].std() > 0 and torch.isfinite(r.latents).all()


@pytest.fixture(scope="module")
def length_model(tiny_model_dir):
    """The tiny model grown a length embedding, randomised so the clip length changes its predictions."""
    from kinema.models.family import load_model

    model = load_model(tiny_model_dir)
    model.denoiser = model.denoiser.grow(motion_embedding=False, coord_channels=False, length_embedding=True).eval()
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in model.denoiser.parameters():
            if p.abs().sum() == 0 and p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model


@pytest.mark.parametrize("mode", ["window", "continue"])
def test_every_window_is_told_the_whole_clip_length(length_model, monkeypatch, mode):
    m = length_model
    seen = []
    original = m.denoiser.forward
    told = lambda k: None if k.get("clip_frames") is None else int(k["clip_frames"][0])  # noqa: E731
    monkeypatch.setattr(m.denoiser, "forward", lambda x, *a, **k: seen.append(told(k)) or original(x, *a, **k))
    options = lv.LongOptions(mode=mode, context_length=4, context_stride=3)
    r = lv.long_video(m, PROMPT, small(13), options, progress=False)
    assert seen and set(seen) == {13}
    seen.clear()
    paced = lv.long_video(m, PROMPT, small(13, motion_length=4), options, progress=False)
    assert set(seen) == {4} and not torch.equal(r.latents, paced.latents)
    seen.clear()
    text_to_video(m, PROMPT, small(4), progress=False)
    assert set(seen) == {4} and not hasattr(m.denoiser, "clip_frames")  # told per call, never set on the network
    seen.clear()  # extend goes on at the pace of the given clip (at least the model's trained length)
    kinema.extend(r.frames[:10], PROMPT, frames=13, height=16, width=16, steps=2, model=m, context_length=4,
                  progress=False)
    assert set(seen) == {max(10, int(m.defaults["frames"]))} != {13}


def test_motion_length_is_checked_before_loading(tiny_model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(jobs, "load", lambda *a, **k: pytest.fail("loaded the model"))
    with pytest.raises(SystemExit) as e:
        main(["generate", PROMPT, "-o", str(tmp_path / "x.mp4"), "--model", str(tiny_model_dir), "--motion-length", "0"])
    assert e.value.code == 2 and "--motion-length" in capsys.readouterr().err
    with pytest.raises(kinema.KinemaError, match="--motion-length must be a whole number >= 1"):
        kinema.generate(PROMPT, model=tiny_model_dir, motion_length=0)
    assert list(tmp_path.iterdir()) == []


def test_continuation_reinjects_the_known_frames(trained_like_model, monkeypatch):
    m = trained_like_model
    calls = []
    original = lv.sample

    def spy(*a, **kw):
        out = original(*a, **kw)
        calls.append((kw.get("cond"), out))
        return out

    monkeypatch.setattr(lv, "sample", spy)
    source = (np.random.default_rng(0).random((3, 16, 16, 3)) * 255).astype(np.uint8)
    r = lv.extend_video(m, source, PROMPT, small(10), lv.LongOptions(context_length=4), progress=False)
    with torch.no_grad():
        z = m.vae.encode(to_unit(source))
    assert r.frames.shape == (10, 16, 16, 3) and torch.equal(r.latents[:, :, :3], z)
    plan = continuation_plan(10, 4, 1, known=3)
    assert [c.mask.sum().item() for c, _ in calls] == [k for _, _, k in plan]
    k0 = plan[0][2]
    assert torch.equal(calls[0][0].latents[:, :, :k0], z[:, :, 3 - k0:])  # the first window knows the source's last frames
    for cond, out in calls:
        k = int(cond.mask.sum())
        assert torch.equal(out[:, :, :k], cond.latents[:, :, :k])


def test_continue_with_adain_and_prompt_schedule(trained_like_model):
    o = lv.LongOptions(mode="continue", context_length=4, adain=True, prompt_schedule="0:a red circle|6:a blue square",
                       prompt_transition=2)
    r = lv.long_video(trained_like_model, PROMPT, small(12), o, progress=False)
    assert r.frames.shape == (12, 16, 16, 3) and torch.isfinite(r.latents).all()
    s, e, k = continuation_plan(12, 4, 1)[-1]
    first, last = r.latents[:, :, :4], r.latents[:, :, s + k:e]
    torch.testing.assert_close(last.mean((2, 3, 4)), first.mean((2, 3, 4)), atol=1e-4, rtol=0)  # anchored


def test_window_texts_follow_the_schedule(trained_like_model):
    m = trained_like_model
    plan = window_plan(12, 4, 2)
    o = lv.LongOptions(prompt_schedule="0:a red circle|6:a blue square")
    texts, _ = lv.window_texts(m, "ignored", small(12), o, plan, Timings())
    # each prompt alone; the driver encodes it in one batch with the negative, which moves the 7th digit on some CPUs
    red, blue = (m.text_encoder.encode([p]) for p in ("a red circle", "a blue square"))
    torch.testing.assert_close(texts[0].hidden, red.hidden, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(texts[-1].hidden, blue.hidden, atol=1e-5, rtol=1e-5)
    mid = texts[2]  # frames 4..8 straddle the switch: half and half
    assert not torch.allclose(mid.hidden[:, : red.hidden.shape[1]], red.hidden, atol=1e-3)


#################################################################################
#                                  Front door                                   #
#################################################################################

def test_api_generate_long_and_extend(trained_like_model):
    frames = kinema.generate(PROMPT, frames=10, height=16, width=16, steps=2, model=trained_like_model,
                             context_length=4, mode="window", progress=False)
    assert frames.shape == (10, 16, 16, 3)
    longer = kinema.extend(frames[:5], PROMPT, frames=9, height=16, width=16, steps=2, model=trained_like_model,
                           context_length=4, progress=False)
    assert longer.shape == (9, 16, 16, 3)


def test_cli_generate_long_writes_all_frames_and_the_plan(tiny_model_dir, tmp_path):
    out = tmp_path / "long.gif"
    assert main(["generate", PROMPT, "--model", str(tiny_model_dir), "-o", str(out), "--frames", "12", "--height", "16",
                 "--width", "16", "--steps", "1", "--context-length", "4", "--context-stride", "2", "--quiet"]) == 0
    assert read_video(out)[0].shape == (12, 16, 16, 3)
    side = json.loads((tmp_path / "long.gif.json").read_text())
    assert side["long"]["windows"] == len(window_plan(12, 4, 2)) and side["long"]["mode"] == "window"


def test_cli_extend_writes_n_frames(tiny_model_dir, tmp_path):
    src = tmp_path / "src.gif"
    write_video(src, (np.random.default_rng(1).random((4, 16, 16, 3)) * 255).astype(np.uint8), fps=10)
    out = tmp_path / "longer.mp4"
    assert main(["extend", str(src), PROMPT, "--frames", "11", "-o", str(out), "--model", str(tiny_model_dir),
                 "--steps", "1", "--height", "16", "--width", "16", "--context-length", "4", "--quiet"]) == 0
    frames, fps = read_video(out)
    assert frames.shape == (11, 16, 16, 3) and fps == pytest.approx(10)
    side = json.loads((tmp_path / "longer.mp4.json").read_text())
    assert side["command"] == "extend" and side["long"]["source_frames"] == 4 and side["video"] == str(src)


BAD = [
    (["--frames", "64", "--context-length", "8", "--context-stride", "9"], "--context-stride"),
    (["--frames", "128", "--context-length", "65"], "longer than this model supports"),
    (["--frames", "8", "--mode", "continue"], "fewer than --context-length"),
    (["--frames", "32", "--prompt-schedule", "a red circle"], "<frame>:<prompt>"),
    (["--frames", "32", "--prompt-schedule", "0:a red circle|20:a|10:b"], "strictly increase"),
]


@pytest.mark.parametrize("extra,message", BAD)
def test_bad_long_input_exits_2_before_loading(tiny_model_dir, tmp_path, monkeypatch, capsys, extra, message):
    monkeypatch.setattr(jobs, "load", lambda *a, **k: pytest.fail("a model was loaded"))
    assert main(["generate", PROMPT, "--model", str(tiny_model_dir), "-o", str(tmp_path / "x.mp4"), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_bad_extend_input_exits_2_before_loading(tiny_model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(jobs, "load", lambda *a, **k: pytest.fail("a model was loaded"))
    src = tmp_path / "src.gif"
    write_video(src, (np.random.default_rng(2).random((6, 16, 16, 3)) * 255).astype(np.uint8), fps=8)
    for extra, message in [(["--frames", "6"], "more than the 6 frames"), (["--frames", "10"], "fewer than --context-length"),
                           (["--frames", "40", "--context-length", "8", "--context-stride", "8"], "must be < --context-length")]:
        code = main(["extend", str(src), PROMPT, "-o", str(tmp_path / "x.mp4"), "--model", str(tiny_model_dir), *extra])
        err = capsys.readouterr().err
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (extra, err)
    assert main(["extend", str(tmp_path / "missing.mp4"), PROMPT, "-o", str(tmp_path / "x.mp4"),
                 "--model", str(tiny_model_dir)]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src.gif"]


def test_benchmark_smoke(tiny_model_dir, tmp_path):
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_long.py"), "--model", str(tiny_model_dir),
                        "--short", "4", "--long", "12", "--height", "16", "--width", "16", "--steps", "1",
                        "--context-length", "4", "--json-out", str(out), "--keep", str(tmp_path / "long.mp4")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    figures = json.loads(out.read_text())
    assert figures["memory_ratio"] > 0 and figures["time_ratio"] > 0
    assert figures["long"]["windows"] == len(window_plan(12, 4, 1)) and figures["short"]["windows"] == 1
    assert "ratio" in r.stdout
    q = figures["quality"]  # windows (0,4) (1,5) ... (8,12): boundaries at frames 1..11; 3 chunks of 4 frames
    assert q["boundaries"] == 11 and len(q["chunk_directions"]) == 3 and 0 <= q["colour_frames"] <= 1
    assert read_video(tmp_path / "long.mp4")[0].shape[0] == 12


def test_benchmark_tells_jumps_from_window_seams(tmp_path):
    """A red square crossing a blue frame every 16 frames and jumping back: it jumps twice in 48 frames (45 px
    back, 19 px forward the short way round the torus), each time a boundary seam; the boundaries away from
    the jumps show the ordinary change."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import bench_long
    finally:
        sys.path.pop(0)
    frames = np.zeros((48, 64, 64, 3), np.uint8)
    frames[:] = (40, 80, 220)
    for t in range(48):
        x = 4 + 3 * (t % 16)  # 3 px a frame from x = 4 to 49, then back to 4
        frames[t, 26:38, x:x + 12] = (220, 40, 40)
    path = tmp_path / "wrap.gif"
    write_video(path, frames, fps=8)
    q = bench_long.quality(path, "a red square moving right on a blue background",
                           dict(mode="window", context_length=16, context_stride=4))
    assert q["jumps"] == 2 and q["direction_chunks"] == 1.0
    assert q["worst_seam_ratio"] > 3  # a 45 px jump at a boundary (frames 16 and 32 start windows)
    assert q["boundaries_away_from_jumps"] == q["boundaries"] - 2  # every 4th transition: one near each
    assert q["worst_seam_away_from_jumps"] == pytest.approx(1.0, abs=0.05)  # constant speed elsewhere


def test_benchmark_reads_a_long_wrapping_world_clip(tmp_path):
    """The reference is the world's wrapping 256-frame clip: the 16-frame pace throughout, the object leaving
    the right edge as it comes back on the left. Every chunk reads as moving right (also at the slower pace
    of a non-wrapping clip that long), the centroid never jumps, and no boundary changes more than any other
    frame; a standing object reads as still."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import bench_long
    finally:
        sys.path.pop(0)
    long = dict(mode="window", context_length=16, context_stride=4)
    prompt = "a yellow square moving right on a purple background"
    q = bench_long.reference(prompt, 256, 0, long, tmp_path)
    assert q["colour_frames"] == 1.0 and q["jumps"] == 0 and q["boundaries"] == 63
    assert q["direction_chunks"] == 1.0 and q["direction_chunks_clip_pace"] == 1.0
    assert q["worst_seam_ratio"] <= 1.5 and q["median_change"] > 1  # the 16-frame pace: whole pixels a frame
    still = bench_long.reference("a yellow square standing still on a purple background", 256, 0, long, tmp_path)
    assert still["direction_chunks"] == 1.0 and still["direction_chunks_clip_pace"] == 1.0
    assert bench_long.reference("not a world caption", 256, 0, long, tmp_path) is None


#################################################################################
#                          Windows that follow motion                           #
#################################################################################

def _moving_square(frames: int, dy: float, dx: float, h: int = 16, w: int = 16, jump_every: int = 0) -> torch.Tensor:
    """(1, 4, F, h, w): a blurred square on a plain background moving (dy, dx) px a frame, on the torus."""
    background = torch.tensor([0.2, 0.1, -0.3, 0.0])[:, None, None].expand(4, h, w)
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    out = []
    for t in range(frames):
        k = t % jump_every if jump_every else t
        cy, cx = 5 + dy * k, 4 + dx * k
        ry = (yy - cy + h / 2) % h - h / 2
        rx = (xx - cx + w / 2) % w - w / 2
        blob = torch.exp(-(ry ** 2 + rx ** 2) / 4)
        out.append(background + blob * torch.tensor([1.0, -0.5, 0.3, 0.8])[:, None, None])
    return torch.stack(out, 1)[None]


@pytest.mark.parametrize("dy,dx", [(0.0, 0.5), (0.0, -0.75), (0.4, 0.0), (-0.25, 0.25), (0.0, 0.0)])
def test_clip_velocity_reads_the_motion(dy, dx):
    v = lv.clip_velocity(_moving_square(16, dy, dx), lag=8)
    assert v.tolist() == pytest.approx([dy, dx], abs=0.07)


def test_clip_velocity_leaves_out_jumps_and_translations_wrap():
    x = _moving_square(40, 0.0, 0.5, jump_every=20)  # drawn back every 20 frames
    assert lv.clip_velocity(x, lag=4).tolist() == pytest.approx([0.0, 0.5], abs=0.07)
    texture = torch.nn.functional.avg_pool2d(torch.randn(4, 16, 16, generator=torch.Generator().manual_seed(1))[None],
                                             3, 1, 1, count_include_pad=False)[0]
    pan = torch.stack([torch.roll(texture, (t, 3 * t), dims=(-2, -1)) for t in range(12)], 1)[None]  # a camera pan
    assert lv.translations(pan)[:, 0].tolist() == pytest.approx([1.0] * 11, abs=0.05)
    wrapped = lv.translations(pan, lag=4)  # 12 px right on a 16 px torus reads as 4 px left, the short way
    assert wrapped[:, 0].tolist() == pytest.approx([4.0] * 8, abs=0.05)
    assert wrapped[:, 1].tolist() == pytest.approx([-4.0] * 8, abs=0.05)


def test_motion_path_and_shifts():
    v = torch.tensor([[0.0, 0.5]]).expand(24, 2)
    path = lv.motion_path(v)
    assert path[:, 1].tolist() == pytest.approx([0.5 * t for t in range(24)])
    plan = window_plan(24, 8, 4)  # (0,8) (4,12) .. (16,24)
    assert lv.follow_shifts(path, plan) == [(0, 0), (0, 2), (0, 4), (0, 6), (0, 8)]
    turn = torch.cat([torch.tensor([[0.0, 1.0]]).expand(10, 2), torch.tensor([[0.0, -1.0]]).expand(10, 2)])
    back = lv.motion_path(turn)[:, 1]
    assert back[9] == pytest.approx(9) and back[-1] == pytest.approx(0)  # right, then back left


def test_follow_motion_rolls_windows_by_the_first_windows_motion(trained_like_model, monkeypatch):
    m = trained_like_model
    calls = {"n": 0}
    velocity = torch.tensor([0.0, 0.5])
    monkeypatch.setattr(lv, "clip_velocity", lambda x, lag: calls.__setitem__("n", calls["n"] + 1) or velocity)
    seen = []
    original = lv.fuse_batched
    monkeypatch.setattr(lv, "fuse_batched", lambda *a: seen.append(a[-1]) or original(*a))
    o = lv.LongOptions(context_length=4, context_stride=2, follow_motion=True)
    r = lv.long_video(m, PROMPT, small(12), o, progress=False)
    plan = window_plan(12, 4, 2)  # window centres 2, 4, .. 10: 0.5 px a frame -> rolls 0, 1, .. 4
    assert seen[0] == [(0, k) for k in range(len(plan))] and calls["n"] == 1
    assert r.info["long"]["follow"] == dict(velocities=[[0.0, 0.5]], last_shift=[0, len(plan) - 1])
    # a still motion rolls nothing: the same clip as without following
    monkeypatch.setattr(lv, "clip_velocity", lambda x, lag: torch.zeros(2))
    still = lv.long_video(m, PROMPT, small(12), o, progress=False)
    plain = lv.long_video(m, PROMPT, small(12), lv.LongOptions(context_length=4, context_stride=2), progress=False)
    assert torch.equal(still.latents, plain.latents)
    # one window: following changes nothing (no trial, plain generation)
    one = lv.long_video(m, PROMPT, small(4), lv.LongOptions(context_length=4, follow_motion=True), progress=False)
    assert torch.equal(one.latents, text_to_video(m, PROMPT, small(4), progress=False).latents)


def test_follow_motion_with_a_prompt_schedule_measures_each_prompt(trained_like_model, monkeypatch):
    speeds = iter([torch.tensor([0.0, 1.0]), torch.tensor([0.0, -1.0])])
    monkeypatch.setattr(lv, "clip_velocity", lambda x, lag: next(speeds))
    o = lv.LongOptions(context_length=4, context_stride=2, follow_motion=True,
                       prompt_schedule=f"0:{PROMPT}|6:a red circle moving left on a blue background")
    r = lv.long_video(trained_like_model, PROMPT, small(12), o, progress=False)
    assert r.info["long"]["follow"]["velocities"] == [[0.0, 1.0], [0.0, -1.0]]
    assert r.info["long"]["follow"]["last_shift"][1] < 4  # came back part of the way


def test_follow_motion_defaults_and_errors(tiny_model_dir, tmp_path, monkeypatch, capsys):
    info = api.info(tiny_model_dir)
    s = small(12)
    assert jobs.long_options(info, s, context_length=4).follow_motion is False  # no folder default: off
    on = info.with_defaults(follow_motion=True)
    assert jobs.long_options(on, s, context_length=4).follow_motion is True
    assert jobs.long_options(on, s, context_length=4, follow_motion=False).follow_motion is False
    assert jobs.long_options(on, s, context_length=4, mode="continue").follow_motion is False  # windows only
    monkeypatch.setattr(jobs, "load", lambda *a, **k: pytest.fail("a model was loaded"))
    code = main(["generate", PROMPT, "--model", str(tiny_model_dir), "-o", str(tmp_path / "x.mp4"), "--frames", "32",
                 "--mode", "continue", "--follow-motion"])
    err = capsys.readouterr().err
    assert code == 2 and "--follow-motion" in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


class _NearestVAE:
    """A frame-wise 'VAE' that upsamples latents 2x (nearest): it commutes with whole-pixel rolls."""

    temporal_compression = 1

    def __init__(self):
        self.seen = []

    def decode_chunks(self, latents, chunk):
        self.seen.append(latents.clone())
        up = latents[:, :3].repeat_interleave(2, -2).repeat_interleave(2, -1).clamp(-1, 1)
        for i in range(0, up.shape[2], chunk):
            yield up[:, :, i:i + chunk]


def test_frame_sink_decodes_a_wrapping_motion_as_a_torus():
    class M:
        vae = _NearestVAE()

    latents = torch.rand(1, 4, 6, 5, 7) * 2 - 1
    settings = small(6, height=10, width=14, decode_chunk_size=4)
    plain = lv.FrameSink(M, settings, Timings())
    plain.decode_until(latents, 6)
    wrapped = lv.FrameSink(M, settings, Timings(), wrap=True)
    wrapped.decode_until(latents, 3)  # in two parts, as continuation would
    wrapped.decode_until(latents, 6)
    assert np.array_equal(plain.frames, wrapped.frames)  # a local decoder: the same frames, cropped back
    seen = torch.cat(M.vae.seen[1:], 2)  # what the decoder saw: each frame padded from the opposite sides
    m = min(lv.WRAP_MARGIN, 5)
    assert seen.shape[-2:] == (5 + 2 * m, 7 + 2 * m)
    torch.testing.assert_close(seen[..., m:m + 5, m:m + 7], latents, atol=0, rtol=0)
    torch.testing.assert_close(seen[..., m:m + 5, :m], latents[..., -m:], atol=0, rtol=0)
    torch.testing.assert_close(seen[..., :m, m:m + 7], latents[..., -m:, :], atol=0, rtol=0)
