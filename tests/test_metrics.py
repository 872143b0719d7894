"""The world oracle must read ground truth right, clean and degraded, and the suite must score it."""

from __future__ import annotations

import dataclasses
import math

import cv2
import numpy as np
import pytest

from kinema import world
from kinema.world import metrics

OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up", "still": "still"}


def _truth(spec: world.ClipSpec) -> tuple[str, str, str]:
    return spec.colour, spec.background, spec.direction


def _accuracy(videos, specs) -> np.ndarray:
    """Fraction right for (colour, background, direction)."""
    ok = np.zeros(3)
    for video, spec in zip(videos, specs):
        r = metrics.analyse_video(video)
        ok += np.array([r.colour, r.background, r.direction]) == np.array(_truth(spec))
    return ok / len(specs)


@pytest.fixture(scope="module")
def clips() -> list[world.Clip]:
    """60 random clips of every combination plus each direction on the closest colour pair."""
    w = world.World(split="all")
    out = [w.clip(seed) for seed in range(60)]
    out += [w.clip(1000 + i, combo=("orange", "triangle", d), background="yellow") for i, d in enumerate(world.MOTIONS)]
    return out


################################################################################
#                              Ground-truth clips                              #
################################################################################


def test_clean_clips_read_right(clips):
    acc = _accuracy([c.video for c in clips], [c.spec for c in clips])
    assert (acc >= 0.98).all(), f"(colour, background, direction) accuracy {acc}"
    assert {c.spec.direction for c in clips} == set(world.MOTIONS)


@pytest.mark.parametrize(
    "combo, background",
    [
        (("red", "circle", "right"), "blue"),
        (("yellow", "triangle", "left"), "orange"),  # closest palette pair
        (("black", "square", "up"), "white"),
        (("white", "circle", "down"), "yellow"),
        (("purple", "triangle", "still"), "red"),
        (("green", "square", "down"), "black"),
    ],
)
def test_hand_picked_specs_exact(combo, background):
    clip = world.World(split="all").clip(seed=7, combo=combo, background=background)
    spec = clip.spec
    r = metrics.analyse_video(clip.video)
    assert (r.colour, r.background, r.direction) == _truth(spec)
    assert r.object_found_fraction == 1.0
    # the centroid tracks the spec: a triangle's centroid lies size/6 below its box centre
    drop = spec.size / 6 if spec.shape == "triangle" else 0.0
    for t, (x, y) in enumerate(r.trajectory):
        cx, cy = spec.centre(t)
        assert abs(x - cx) < 1.0 and abs(y - (cy + drop)) < 1.0, (t, (x, y), (cx, cy))
    first = metrics.analyse_frame(clip.video[0])
    assert (first.colour, first.background) == (spec.colour, spec.background)
    assert first.area == pytest.approx(r.frames[0].area)


def _noise(video):
    rng = np.random.default_rng(0)
    return np.clip(video + rng.normal(0, 12, video.shape), 0, 255).round().astype(np.uint8)


def _blur(video):
    return np.stack([cv2.blur(f, (3, 3)) for f in video])


def _downscale(video):
    small = [cv2.resize(f, (32, 32), interpolation=cv2.INTER_AREA) for f in video]
    return np.stack([cv2.resize(f, (64, 64), interpolation=cv2.INTER_LINEAR) for f in small])


@pytest.mark.parametrize("degrade", [_noise, _blur, _downscale], ids=["noise12", "blur3", "down32"])
def test_degraded_clips_read_right(clips, degrade):
    acc = _accuracy([degrade(c.video) for c in clips], [c.spec for c in clips])
    assert (acc >= 0.90).all(), f"(colour, background, direction) accuracy {acc}"


def test_reversed_clip_reads_opposite_direction(clips):
    for c in clips[:20]:
        assert metrics.analyse_video(c.video[::-1].copy()).direction == OPPOSITE[c.spec.direction]


def test_other_lengths_and_sizes():
    """The still threshold scales with clip length; non-square frames work too."""
    w = world.World(split="all", frames=8)
    for seed in range(10):
        spec = w.spec(seed)
        for video in (w.clip(seed).video, world.render(spec, 8, 48, 64)):
            r = metrics.analyse_video(video)
            assert (r.colour, r.background, r.direction) == _truth(spec)


def test_pure_background_has_no_object(clips):
    spec = dataclasses.replace(clips[0].spec, size=0.0)
    r = metrics.analyse_video(world.render(spec, frames=4))
    assert r.background == spec.background
    assert r.colour is None and r.direction is None and r.displacement is None
    assert r.object_found_fraction == 0.0
    assert all(fr.centroid is None and fr.area is None for fr in r.frames)


################################################################################
#                              Flicker and PSNR                                #
################################################################################


def test_flicker_zero_when_static_large_with_noise_frames(clips):
    still = next(c for c in clips if c.spec.direction == "still")
    moving = next(c for c in clips if c.spec.direction != "still")
    assert metrics.analyse_video(still.video).flicker < 0.5
    assert metrics.analyse_video(moving.video).flicker < 0.5  # the object's own motion is masked out
    noisy = still.video.copy()
    noisy[1::2] = np.random.default_rng(0).integers(0, 256, noisy[1::2].shape, dtype=np.uint8)
    assert metrics.analyse_video(noisy).flicker > 20.0
    assert math.isnan(metrics.analyse_video(still.video[:1]).flicker)


def test_psnr():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    assert metrics.psnr(a, a.copy()) == math.inf
    values = [metrics.psnr(a, np.clip(a + rng.normal(0, s, a.shape), 0, 255).astype(np.uint8)) for s in (2, 8, 32)]
    assert values[0] > values[1] > values[2] > 0
    with pytest.raises(ValueError):
        metrics.psnr(a, a[:2])


################################################################################
#                                Score and suite                               #
################################################################################


def test_score(clips):
    clip = clips[0]
    caption = world.canonical_caption(clip.spec.colour, clip.spec.shape, clip.spec.direction, clip.spec.background)
    s = metrics.score(clip.video, caption)
    assert s["colour_ok"] and s["background_ok"] and s["direction_ok"]
    assert s["detected_direction"] == clip.spec.direction and s["flicker"] < 0.5
    for bad in ("a red circle slides left on a blue background", "a pink circle moving left on a blue background",
                "a red circle moving left on a red background"):
        with pytest.raises(ValueError):
            metrics.score(clip.video, bad)
    with pytest.raises(ValueError):
        metrics.analyse_video(clip.video.astype(np.float32))


def _renderer(split, per_combo, recolour=False):
    """A fake model: renders the true clip of each eval prompt (or the wrong object colour)."""
    specs = dict(world.eval_prompts(split, per_combo, seed=0))
    seeds = []

    def generate(prompt: str, seed: int) -> np.ndarray:
        spec = specs[prompt]
        seeds.append(seed)
        if recolour:
            wrong = next(c for c in world.COLOURS if c not in (spec.colour, spec.background))
            spec = dataclasses.replace(spec, colour=wrong)
        return world.render(spec, seed=seed)

    return generate, seeds


def test_world_suite_true_clips_score_full():
    generate, seeds = _renderer("heldout", 2)
    result = metrics.run_world_suite(generate, split="heldout", per_combo=2, seed=0)
    assert result["n"] == len(result["rows"]) == 24 and len(set(seeds)) == 24
    assert min(result["colour"], result["background"], result["direction"]) >= 0.98
    assert set(result["per_direction"]) == set(world.MOTIONS) and min(result["per_direction"].values()) >= 0.98
    assert result["flicker"] < 0.5
    table = metrics.format_table(result)
    assert table.count("\n") == 2 and "colour" in table and "100.0%" in table


def test_world_suite_wrong_colour_scores_zero_colour():
    generate, _ = _renderer("heldout", 1, recolour=True)
    result = metrics.run_world_suite(generate, split="heldout", per_combo=1, seed=0)
    assert result["colour"] <= 0.05
    assert result["background"] >= 0.98 and result["direction"] >= 0.98


def test_world_suite_rejects_bad_clip():
    with pytest.raises(ValueError, match="bad clip"):
        metrics.run_world_suite(lambda prompt, seed: np.zeros((16, 64, 64, 3), np.float32), per_combo=1)


def test_still_threshold_follows_the_world_pace():
    """Up to ~33 frames the world keeps a 16-frame clip's pace; longer clips move more slowly, and so
    does the threshold, which stays below the slowest world motion at every length."""
    assert world.pace_ratio(16) == 1.0 and world.pace_ratio(33) == 1.0 and world.pace_ratio(34) < 1.0
    assert world.pace_ratio(256) == pytest.approx(0.127, abs=0.002)
    for frames in (16, 64, 256, 1024):
        w = world.World(split="all", frames=frames)
        for seed in range(20):
            spec = w.spec(seed)
            travel = np.hypot(*spec.velocity) * (frames - 1) / 64  # fraction of the side over the clip
            if spec.direction != "still":
                assert travel > 2 * metrics.still_threshold(frames - 1, frames)
    chunk = world.World(split="all", frames=256).clip(3, ("red", "circle", "down"), "blue").video[100:116]
    assert metrics.analyse_video(chunk, clip_frames=256).direction == "down"
    assert metrics.analyse_video(chunk).direction == "still"


@pytest.mark.parametrize("direction", ["right", "left", "up", "down"])
def test_an_object_across_the_edges_of_a_wrapping_clip_is_one_object(direction):
    """Split across an edge, the object is one reading (both parts, its centre on the torus), and a clip
    that wraps reads in its direction over any window, including the ones where it crosses the edge."""
    clip = world.World(split="all", frames=64, wrap=True, canonical=True).clip(4, ("red", "circle", direction), "blue")
    readings = metrics.analyse_video(clip.video)
    assert readings.colour == "red" and readings.direction == direction and readings.object_found_fraction == 1.0
    side = clip.spec.size
    areas = [f.area * 64 * 64 for f in readings.frames]
    assert min(areas) >= 0.9 * max(areas)  # never half an object
    for t, f in enumerate(readings.frames):  # centre on the torus = the drawn centre, modulo the frame
        cx, cy = clip.spec.centre(t)
        dx, dy = (f.centroid[0] - cx % 64 + 32) % 64 - 32, (f.centroid[1] - cy % 64 + 32) % 64 - 32
        assert abs(dx) < side / 4 and abs(dy) < side / 4
    assert all(metrics.analyse_video(clip.video[i:i + 16]).direction == direction for i in range(0, 49, 4))


def test_extra_colours_render_and_read_a_new_colour_then_restore_the_palette():
    from kinema import world
    from kinema.world import metrics

    before = dict(world.COLOURS)
    with metrics.extra_colours({"pink": (240, 100, 170)}):
        spec = world.World(split="all").spec(3, combo=("pink", "square", "right"))
        video = world.render(spec)
        reading = metrics.analyse_video(video)
        assert (reading.colour, reading.direction) == ("pink", "right")
    assert world.COLOURS == before and "pink" not in metrics.NAMES
    assert metrics.analyse_video(video).colour != "pink"  # the world's palette again: pink is not one of its colours


#################################################################################
#                                Shape reading                                  #
#################################################################################


def _one_frame(shape: str, size: float, cx: float = 30.3, cy: float = 33.7, side: int = 64, colours=("red", "blue")) -> np.ndarray:
    spec = world.ClipSpec(colours[0], shape, "still", colours[1], size, (cx, cy), (0.0, 0.0), 0.0)
    return world.render(spec, 1, side, side)[0]


@pytest.mark.parametrize("shape", world.SHAPES)
@pytest.mark.parametrize("size", [11.0, 16.5, 24.0])
def test_shape_reading_names_ground_truth_and_scores_it_near_one(shape, size):
    read, iou = metrics.read_shape(_one_frame(shape, size))
    assert read == shape and iou > 0.93


@pytest.mark.parametrize("shape", world.SHAPES)
def test_shape_reading_holds_at_other_sizes_of_frame(shape):
    read, iou = metrics.read_shape(_one_frame(shape, 40.0, 61.0, 70.5, side=128))
    assert read == shape and iou > 0.95


def test_blurred_shapes_read_lower_and_a_blob_reads_as_circle():
    """Blur rounds corners: a square's IoU falls and a heavily blurred square reads closer to a circle."""
    sharp = _one_frame("square", 20.0, colours=("white", "black"))  # their blend is no palette colour of its own
    _, iou_sharp = metrics.read_shape(sharp)
    read_soft, iou_soft = metrics.read_shape(cv2.GaussianBlur(sharp, (0, 0), 3.0))
    assert read_soft == "square" and iou_soft < iou_sharp - 0.04
    blob = cv2.GaussianBlur(sharp, (0, 0), 6.0)
    assert metrics.read_shape(blob)[0] == "circle"


def test_shape_templates_have_the_asked_area_and_centroid():
    for shape in world.SHAPES:
        t = metrics.shape_template(shape, 300.0, 31.0, 29.0, 64, 64)
        ys, xs = np.nonzero(t)
        assert abs(t.sum() - 300) < 300 * 0.1  # whole pixels
        assert abs(xs.mean() + 0.5 - 31.0) < 0.6 and abs(ys.mean() + 0.5 - 29.0) < 0.6


def test_cut_off_and_missing_objects_are_not_read():
    assert metrics.read_shape(_one_frame("circle", 20.0, cx=3.0)) == (None, pytest.approx(float("nan"), nan_ok=True))
    empty = np.broadcast_to(np.array(world.COLOURS["blue"], np.uint8), (64, 64, 3)).copy()
    assert metrics.read_shape(empty)[0] is None


def test_world_suite_reads_shapes_of_ground_truth():
    generate, _ = _renderer("heldout", 1)
    result = metrics.run_world_suite(generate, split="heldout", per_combo=1, seed=0)
    assert result["shape"] == 1.0 and result["shape_iou"] > 0.97
    assert all(r["detected_shape"] == r["shape"] for r in result["rows"])
    assert "shape IoU" in metrics.format_table(result)
