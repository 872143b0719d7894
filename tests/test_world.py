"""The world: determinism by seed, captions agree with content, held-out combinations never trained on."""

from __future__ import annotations

import numpy as np
import pytest

from kinema import world
from kinema.world import metrics


def test_same_seed_same_clip():
    a, b = world.World().clip(11), world.World().clip(11)
    assert np.array_equal(a.video, b.video) and a.caption == b.caption
    assert not np.array_equal(a.video, world.World().clip(12).video)


def test_clip_shape_and_vocabulary():
    clip = world.World().clip(3)
    assert clip.video.shape == (16, 64, 64, 3) and clip.video.dtype == np.uint8
    s = clip.spec
    assert s.colour in world.COLOURS and s.background in world.COLOURS and s.colour != s.background
    assert 64 / 6 <= s.size <= 64 / 4


@pytest.mark.parametrize("seed", range(0, 40, 3))
def test_motion_rules(seed):
    spec = world.World(split="all").spec(seed)
    (x0, y0), (x1, y1) = spec.centre(0), spec.centre(15)
    travel = abs(x1 - x0) + abs(y1 - y0)
    if spec.direction == "still":
        assert travel == 0
    else:
        assert travel >= 64 / 3 - 1e-6
    for x, y in ((x0, y0), (x1, y1)):  # wholly inside, so at least half inside
        assert spec.size / 2 <= x <= 64 - spec.size / 2 and spec.size / 2 <= y <= 64 - spec.size / 2


def test_long_clips_stay_inside():
    w = world.World(split="all", frames=48)
    for seed in range(20):
        spec = w.spec(seed)
        for t in (0, 47):
            x, y = spec.centre(t)
            assert 0 <= x <= 64 and 0 <= y <= 64


def test_wrapping_clips_keep_the_pace_and_come_back_on_the_other_side():
    """A wrapping clip moves at the 16-frame pace at any length, starts anywhere, and draws the object on the
    torus: it is always wholly present (same area), leaving one edge as it enters the opposite one, and every
    frame changes by the same amount (no frame where it jumps)."""
    short = world.World(split="all", frames=16).spec(5)
    long = world.World(split="all", frames=256, wrap=True).spec(5)
    assert long.wrap and not short.wrap
    assert np.hypot(*long.velocity) == pytest.approx(np.hypot(*short.velocity))  # same draw, same pace
    clip = world.World(split="all", frames=96, wrap=True, canonical=True).clip(3, ("red", "square", "right"), "blue")
    v = clip.video
    fg = (np.abs(v.astype(int) - np.array(world.COLOURS["blue"])).sum(-1) > 60).sum(axis=(1, 2))
    assert fg.min() >= 0.9 * fg.max()  # the whole object in every frame, split across the edge or not
    split = [t for t in range(96) if fg[t] and (v[t, :, 0] != v[t, 0, 32]).any() and (v[t, :, -1] != v[t, 0, 32]).any()]
    assert split  # some frames show it on both edges at once
    change = np.abs(np.diff(v.astype(np.int16), axis=0)).mean(axis=(1, 2, 3))
    assert change.max() <= 1.2 * np.median(change)
    starts = {round(world.World(split="all", frames=256, wrap=True).spec(s).start[0] // 16) for s in range(40)
              if world.World(split="all", frames=256, wrap=True).spec(s).direction in ("left", "right")}
    assert len(starts) == 4  # horizontal movers start in every quarter of the frame


def test_caption_agrees_with_content():
    w = world.World(split="all", canonical=True)
    for seed in range(25):
        clip = w.clip(seed)
        r = metrics.score(clip.video, clip.caption)
        assert r["colour_ok"] and r["background_ok"] and r["direction_ok"], (clip.caption, r)


def test_paraphrases_and_canonical():
    spec = world.World().spec(5)
    caps = {world.paraphrase(spec, np.random.default_rng(i)) for i in range(60)}
    canonical = world.canonical_caption(spec.colour, spec.shape, spec.direction, spec.background)
    assert canonical in caps and len(caps) >= 4
    assert world.parse_caption(canonical) == (spec.colour, spec.shape, spec.direction, spec.background)
    assert all(c in world.captions_for(spec.colour, spec.shape, spec.direction, spec.background) for c in caps)


def test_heldout_never_sampled_in_training():
    assert len(world.HELDOUT) == 12 and len(world.ALL_COMBOS) == 120
    w = world.World(split="train")
    seen = {(s.colour, s.shape, s.direction) for s in (w.spec(i) for i in range(3000))}
    assert not seen & set(world.HELDOUT)
    assert len(seen) == len(world.TRAIN_COMBOS)  # and every training combination does occur
    for part in (world.COLOURS, world.SHAPES, world.MOTIONS):  # every word still appears in training
        assert all(any(v in combo for combo in world.TRAIN_COMBOS) for v in part)


def test_eval_prompts_are_canonical_and_heldout():
    prompts = world.eval_prompts("heldout", per_combo=2)
    assert len(prompts) == 24
    for caption, spec in prompts:
        c, s, d, b = world.parse_caption(caption)
        assert (c, s, d) in world.HELDOUT and (spec.colour, spec.background) == (c, b)
