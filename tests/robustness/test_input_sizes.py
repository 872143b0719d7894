"""Input files are probed (frames, size) and checked against free memory before they are decoded, by every
command that reads a whole clip: `extend`'s clip and `eval`'s videos (restyle's plan: test_resources.py)."""

from __future__ import annotations

import numpy as np
import pytest

from .conftest import PROMPT, check_contract, listing

CAPTION = "a red square moving right on a blue background"


def clip(path, frames: int, height: int, width: int):
    """A red square moving right on blue, written as mp4."""
    import imageio

    video = np.zeros((frames, height, width, 3), np.uint8)
    video[:] = (30, 60, 200)
    side = height // 4
    for i in range(frames):
        x = (width - side) * i // max(1, frames - 1)
        video[i, height // 2 - side // 2:height // 2 + side // 2, x:x + side] = (220, 30, 30)
    imageio.mimwrite(path, video, fps=8, codec="libx264", macro_block_size=16)
    return path


@pytest.fixture
def no_decoding(monkeypatch):
    """Decoding any clip fails the test: the refusal must come from the header."""
    from kinema import video_io

    def refuse(*args, **kwargs):
        raise AssertionError("the clip was decoded before its size was checked")

    monkeypatch.setattr(video_io, "read_video", refuse)


def set_free(monkeypatch, n: int) -> None:
    from kinema import resources

    monkeypatch.setattr(resources, "available_memory", lambda device="cpu": n)


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory):
    return clip(tmp_path_factory.mktemp("long") / "long.mp4", 240, 240, 320)


def test_extend_refuses_a_clip_too_large_to_hold_before_decoding_it(kinema, long_clip, tiny_model_dir, tmp_path,
                                                                    monkeypatch, no_decoding):
    set_free(monkeypatch, 64 * 2**20)  # 240 frames at 320x240 are ~166 MiB as read
    result = kinema("extend", long_clip, PROMPT, "--model", tiny_model_dir, "-o", tmp_path / "out.mp4", "--quiet")
    check_contract(result, set(), listing(tmp_path))
    assert result.code == 2 and "240 frames at 320x240" in result.err and "shorter or smaller clip" in result.err, result.err


def test_eval_refuses_a_clip_too_large_to_hold_before_decoding_it(kinema, long_clip, monkeypatch, no_decoding):
    set_free(monkeypatch, 16 * 2**20)  # 240 frames at 256x192 as scored are ~90 MiB
    result = kinema("eval", long_clip, "--caption", CAPTION)
    assert result.code == 2 and result.err.count("\n") == 1, result.err
    assert "240 frames at 256x192" in result.err and "score a shorter clip" in result.err, result.err


def test_eval_scores_huge_frames_scaled_down_as_they_are_decoded(kinema, tmp_path, monkeypatch):
    """An 8-frame 2048x2048 clip is scored at 256 px; the reading is the clip's (red square moving right on blue)."""
    from kinema.world import metrics

    seen = []
    score = metrics.score
    monkeypatch.setattr(metrics, "score", lambda frames, caption: seen.append(frames.shape) or score(frames, caption))
    result = kinema("eval", clip(tmp_path / "huge.mp4", 8, 2048, 2048), "--caption", CAPTION)
    assert result.code == 0, result.err
    assert seen == [(8, 256, 256, 3)]
    assert "| yes | yes | yes | yes (" in result.out and "| red square on blue, right |" in result.out, result.out


def test_a_file_without_a_frame_count_is_read_only_up_to_what_fits(tmp_path, monkeypatch):
    """When the header gives no count, reading stops one frame past what fits and says so."""
    from kinema import resources, video_io
    from kinema.errors import KinemaError

    path = clip(tmp_path / "c.mp4", 40, 64, 64)
    monkeypatch.setattr(video_io, "probe", lambda src: (None, 64, 64))
    read = []
    real = video_io.read_video
    monkeypatch.setattr(video_io, "read_video", lambda *a, **k: read.append(k["max_frames"]) or real(*a, **k))
    per_frame = 64 * 64 * 6
    with pytest.raises(KinemaError, match="more than the 10 frames that fit in memory; trim it"):
        resources.read_clip(path, "the clip", 6, "trim it", available=int(10.5 * per_frame / resources.HEADROOM))
    assert read == [11]
    frames, _ = resources.read_clip(path, "the clip", 6, "trim it", available=100 * per_frame)
    assert len(frames) == 40
