"""Window plans cover every frame, fusion is a partition of unity, FreeNoise reuses noise, schedules parse."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kinema.errors import KinemaError
from kinema.pipelines import windows as W

FAST = settings(max_examples=60, deadline=None)


@st.composite
def contexts(draw):
    """(num_frames, context_length, context_stride) with a valid stride."""
    length = draw(st.integers(1, 24))
    return draw(st.integers(1, 120)), length, draw(st.integers(1, length))


#################################################################################
#                                  Plans                                        #
#################################################################################

@FAST
@given(contexts())
def test_window_plan_properties(ctx):
    num_frames, length, stride = ctx
    plan = W.window_plan(num_frames, length, stride)
    covered = torch.zeros(num_frames, dtype=torch.bool)
    for s, e in plan:
        assert 0 <= s < e <= num_frames
        assert e - s == min(length, num_frames)
        covered[s:e] = True
    assert covered.all()
    assert plan[0][0] == 0 and plan[-1][1] == num_frames
    starts = [s for s, _ in plan]
    assert all(a < b for a, b in zip(starts, starts[1:]))
    assert all(b - a <= stride for a, b in zip(starts, starts[1:]))
    assert W.peak_window_frames(plan) == min(length, num_frames)
    assert W.plan_cost(plan) == len(plan) * min(length, num_frames)


def test_window_plan_examples():
    assert W.window_plan(25, 16, 4) == [(0, 16), (4, 20), (8, 24), (9, 25)]
    assert W.window_plan(24, 16, 4) == [(0, 16), (4, 20), (8, 24)]
    assert W.window_plan(10, 16, 4) == [(0, 10)]
    assert W.window_plan(16, 16, 16) == [(0, 16)]


@pytest.mark.parametrize("length, stride, match", [
    (8, 0, "--context-stride must be >= 1"),
    (8, 9, "--context-stride must be <= --context-length"),
    (0, 1, "--context-length must be >= 1"),
])
def test_window_plan_errors(length, stride, match):
    with pytest.raises(KinemaError, match=match):
        W.window_plan(32, length, stride)
    with pytest.raises(KinemaError, match=match):
        W.freenoise_noise((1, 1, 32, 1, 1), length, stride)


def test_window_weights():
    assert W.window_weights(4).tolist() == [1, 2, 2, 1]
    assert W.window_weights(5).tolist() == [1, 2, 3, 2, 1]
    assert W.window_weights(1).tolist() == [1]
    assert W.window_weights(3, "flat").tolist() == [1, 1, 1]
    assert (W.window_weights(16) > 0).all()
    with pytest.raises(KinemaError, match="context weighting"):
        W.window_weights(4, "gauss")


#################################################################################
#                                  Fusion                                       #
#################################################################################

def _latents(frames: int, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, frames, 2, 2, generator=torch.Generator().manual_seed(frames))


@FAST
@given(contexts(), st.sampled_from(W.WEIGHT_KINDS))
def test_fuse_partition_of_unity(ctx, kind):
    num_frames, length, stride = ctx
    plan = W.window_plan(num_frames, length, stride)
    target = torch.sin(torch.arange(num_frames, dtype=torch.float32)).view(1, 1, -1, 1, 1).expand(2, 3, -1, 2, 2)
    fused = W.fuse(lambda x, s, e: target[:, :, s:e].clone(), _latents(num_frames), plan, kind)
    torch.testing.assert_close(fused, target, atol=1e-6, rtol=0)


def test_fuse_convex_and_exact_where_alone():
    plan = W.window_plan(10, 4, 3)  # (0,4) (3,7) (6,10): frames 3 and 6 shared
    fused = W.fuse(lambda x, s, e: torch.full_like(x, float(s)), _latents(10), plan)
    per_frame = fused[0, 0, :, 0, 0].tolist()
    assert per_frame[:3] == [0, 0, 0] and per_frame[4:6] == [3, 3] and per_frame[7:] == [6, 6, 6]
    assert per_frame[3] == pytest.approx((1 * 0 + 1 * 3) / 2)  # last of window 0 and first of window 1


def test_fuse_pyramid_overlap_value():
    plan = [(0, 4), (2, 6)]  # weights [1, 2, 2, 1] each
    fused = W.fuse(lambda x, s, e: torch.full_like(x, 1.0 if s == 0 else 4.0), _latents(6), plan)
    assert fused[0, 0, :, 0, 0].tolist() == pytest.approx([1, 1, (2 * 1 + 1 * 4) / 3, (1 * 1 + 2 * 4) / 3, 4, 4])


def test_fuse_single_window_is_direct_call():
    x = _latents(7).to(torch.bfloat16)
    predict = lambda x, s, e: x * 3 - 1  # noqa: E731
    fused = W.fuse(predict, x, W.window_plan(7, 16, 4))
    assert fused.dtype == torch.bfloat16
    assert torch.equal(fused, predict(x, 0, 7))


def test_fuse_batched_matches_unbatched():
    x = _latents(20, batch=3)
    plan = W.window_plan(20, 8, 3)
    weight = torch.linspace(1, 2, 8)

    def one(chunk, s, e):
        return chunk.flip(2) * 2 + s - e / 10

    def many(chunks, spans):
        out = chunks.unflatten(0, (3, len(spans)))  # (B, n, C, L, h, w)
        return torch.stack([one(out[:, k], s, e) for k, (s, e) in enumerate(spans)], 1).flatten(0, 1)

    calls = []
    reference = W.fuse(one, x, plan, weight)
    for n in (2, 4, 16):
        fused = W.fuse_batched(lambda c, sp: calls.append(len(sp)) or many(c, sp), x, plan, weight, n)
        torch.testing.assert_close(fused, reference, atol=1e-6, rtol=0)
    assert max(calls) == len(plan) and len(calls) == 3 + 2 + 1


#################################################################################
#                                 FreeNoise                                     #
#################################################################################

@pytest.mark.parametrize("frames, length, stride", [(23, 8, 3), (16, 8, 8), (5, 8, 2), (40, 16, 4)])
def test_freenoise_reuses_earlier_noise(frames, length, stride):
    shape = (2, 3, frames, 2, 3)
    noise = W.freenoise_noise(shape, length, stride, torch.Generator().manual_seed(7))
    assert noise.shape == shape
    again = W.freenoise_noise(shape, length, stride, torch.Generator().manual_seed(7))
    assert torch.equal(noise, again)
    fresh = torch.randn((2, 3, min(frames, length), 2, 3), generator=torch.Generator().manual_seed(7))
    assert torch.equal(noise[:, :, :length], fresh)
    for i in range(length, frames, stride):
        block = noise[:, :, i:i + stride]
        sources = [noise[:, :, j] for j in range(i - length, i - length + stride)]
        matches = [[k for k, src in enumerate(sources) if torch.equal(block[:, :, t], src)]
                   for t in range(block.shape[2])]
        assert all(len(m) == 1 for m in matches)  # each frame is one source frame
        assert len({m[0] for m in matches}) == block.shape[2]  # and no source is used twice


def test_freenoise_without_shuffle_is_periodic_and_seed_matters():
    noise = W.freenoise_noise((1, 2, 20, 2, 2), 6, 2, torch.Generator().manual_seed(0), shuffle=False)
    torch.testing.assert_close(noise[:, :, 6:], noise[:, :, :14], atol=0, rtol=0)
    other = W.freenoise_noise((1, 2, 20, 2, 2), 6, 2, torch.Generator().manual_seed(1), shuffle=False)
    assert not torch.equal(noise, other)


#################################################################################
#                               Continuation                                    #
#################################################################################

@FAST
@given(st.integers(1, 100), st.integers(2, 16), st.data())
def test_continuation_plan_properties(num_frames, window, data):
    overlap = data.draw(st.integers(1, window - 1))
    plan = W.continuation_plan(num_frames, window, overlap)
    assert plan[0] == (0, min(window, num_frames), 0)
    assert plan[-1][1] == num_frames
    done = plan[0][1]
    for (ps, pe, _), (s, e, known) in zip(plan, plan[1:]):
        assert e - s == window and ps < s
        assert overlap <= known < window and s + known == pe == done  # known frames were generated before
        if (s, e, known) != plan[-1]:
            assert s - ps == window - overlap and known == overlap
        done = e
    assert W.peak_window_frames(plan) == min(window, num_frames)


@pytest.mark.parametrize("frames,known,window,overlap", [(40, 4, 16, 4), (40, 30, 16, 4), (40, 38, 16, 4),
                                                         (20, 1, 6, 5), (33, 16, 16, 12)])
def test_continuation_after_given_frames_covers_every_new_frame_knowing_the_last_ones(frames, known, window, overlap):
    plan = W.continuation_plan(frames, window, overlap, known=known)
    end = known
    for s, e, k in plan:
        assert e - s == window and s + k == end and min(overlap, known) <= k < window  # full, contiguous, knowing
        end = e
    assert end == frames


def test_continuation_examples_and_errors():
    assert W.continuation_plan(20, 8, 2) == [(0, 8, 0), (6, 14, 2), (12, 20, 2)]
    assert W.continuation_plan(17, 8, 2) == [(0, 8, 0), (6, 14, 2), (9, 17, 5)]
    assert W.continuation_plan(5, 8, 2) == [(0, 5, 0)]
    assert W.continuation_plan(20, 8, 2, known=3) == [(1, 9, 2), (7, 15, 2), (12, 20, 3)]  # extending 3 given frames
    for window, overlap in [(8, 8), (8, 0), (4, 9)]:
        with pytest.raises(KinemaError, match="overlap"):
            W.continuation_plan(30, window, overlap)
    with pytest.raises(KinemaError, match="has 30 latent frames; ask for more"):
        W.continuation_plan(30, 8, 2, known=30)


def test_adain_matches_statistics():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 5, 3, 3, generator=g) * 3 + 1
    ref = torch.randn(2, 4, 2, 3, 3, generator=g) * torch.arange(1, 5).view(1, 4, 1, 1, 1) - 2
    out = W.adain(x, ref)
    dims = (2, 3, 4)
    torch.testing.assert_close(out.mean(dims), ref.mean(dims), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.std(dims, unbiased=False), ref.std(dims, unbiased=False), atol=1e-4, rtol=1e-4)
    per_frame = W.adain(x, ref[:, :, :1].expand_as(x), dims=(3, 4))
    torch.testing.assert_close(per_frame.mean((3, 4)), ref[:, :, :1].mean((3, 4)).expand(-1, -1, 5), atol=1e-5, rtol=0)


#################################################################################
#                             Prompt schedules                                  #
#################################################################################

def test_parse_prompt_schedule():
    text = "0:a red circle on black | 96:a red circle moving left: fast"
    assert W.parse_prompt_schedule(text, 120) == [(0, "a red circle on black"), (96, "a red circle moving left: fast")]
    assert W.parse_prompt_schedule("0:a cat", 1) == [(0, "a cat")]


@pytest.mark.parametrize("text, match", [
    ("a red circle", "not <frame>:<prompt>"),
    ("0:a|x:b", "not <frame>:<prompt>"),
    ("0:a|", "not <frame>:<prompt>"),
    ("0:a|8:b|8:c", "strictly increase"),
    ("0:a|8:b|4:c", "strictly increase"),
    ("4:a|8:b", "start at frame 0"),
    ("0:a|16:b", "outside the clip"),
    ("0:a|-1:b", "outside the clip"),
    ("0:a|8:  ", "empty prompt"),
])
def test_parse_prompt_schedule_errors(text, match):
    with pytest.raises(KinemaError, match=match):
        W.parse_prompt_schedule(text, 16)


@pytest.mark.parametrize("transition", [0, 1, 2, 5, 30])
def test_schedule_weights_sum_to_one(transition):
    schedule = W.parse_prompt_schedule("0:a|10:b|14:c", 24)
    weights = W.schedule_weights(schedule, 24, transition)
    assert weights.shape == (3, 24) and (weights >= 0).all()
    torch.testing.assert_close(weights.sum(0), torch.ones(24))
    if transition <= 5:  # fades that fit in the clip leave its ends pure (30 overlaps everything)
        assert weights[:, 0].tolist() == [1, 0, 0] and weights[:, -1].tolist() == [0, 0, 1]


def test_schedule_weights_shapes_of_fades():
    schedule = [(0, "a"), (8, "b")]
    hard = W.schedule_weights(schedule, 16, 0)
    assert hard[1].tolist() == [0] * 8 + [1] * 8
    assert torch.equal(W.schedule_weights(schedule, 16, 1), hard)
    fade = W.schedule_weights(schedule, 16, 4)[1]  # frames 6..9 fade, centred between frames 7 and 8
    assert fade.tolist() == pytest.approx([0] * 6 + [0.125, 0.375, 0.625, 0.875] + [1] * 6)
    torch.testing.assert_close(fade + fade.flip(0), torch.ones(16))  # symmetric about the change point
    with pytest.raises(KinemaError, match="transition"):
        W.schedule_weights(schedule, 16, -1)


#################################################################################
#                           Windows that follow motion                          #
#################################################################################

def test_fuse_with_shifts_rolls_each_window_and_back():
    x = torch.randn(2, 3, 10, 4, 5, generator=torch.Generator().manual_seed(0))
    plan = W.window_plan(10, 4, 3)
    shifts = [(0, 0), (1, 2), (-1, 7)]
    seen = []

    def probe(chunk, spans):  # position-dependent, so a roll changes what it returns
        seen.append(chunk.clone())
        return chunk * torch.arange(5.0) + spans[0][0]

    fused = W.fuse_batched(probe, x, plan, "flat", 1, shifts)
    for k, ((s, e), (dy, dx)) in enumerate(zip(plan, shifts)):
        assert torch.equal(seen[k], torch.roll(x[:, :, s:e], (-dy, -dx), dims=(-2, -1)))  # the window's view
    # frames 0-2 are window 0's alone (no roll); frames 4-5 are window 1's alone, rolled back
    torch.testing.assert_close(fused[:, :, :3], x[:, :, :3] * torch.arange(5.0))
    view = torch.roll(x[:, :, 4:6], (-1, -2), dims=(-2, -1))
    torch.testing.assert_close(fused[:, :, 4:6], torch.roll(view * torch.arange(5.0) + 3, (1, 2), dims=(-2, -1)))
    # shifts of a model that does not care where things are change nothing
    same = W.fuse_batched(lambda c, sp: c * 2, x, plan, "pyramid", 2, shifts)
    torch.testing.assert_close(same, x * 2)


def test_freenoise_rolled_with_a_path():
    shape, L, S = (1, 2, 40, 6, 8), 16, 4
    plain = W.freenoise_noise(shape, L, S, torch.Generator().manual_seed(3))
    zero = W.freenoise_noise(shape, L, S, torch.Generator().manual_seed(3), path=torch.zeros(40, 2))
    assert torch.equal(plain, zero)
    path = torch.stack([torch.zeros(40), torch.arange(40) * 0.5], 1)  # half a latent pixel right per frame
    rolled = W.freenoise_noise(shape, L, S, torch.Generator().manual_seed(3), path=path)
    assert torch.equal(rolled[:, :, :L], plain[:, :, :L])  # the first window's draws are untouched
    for t in range(L, 40):
        # each frame is its source frame's noise, rolled by how far the path moved between them
        sources = [o for o in range(L) if torch.equal(plain[:, :, t], plain[:, :, o])]
        assert len(sources) == 1
        o = sources[0]
        assert torch.equal(rolled[:, :, t], torch.roll(plain[:, :, o], (0, round(0.5 * (t - o))), dims=(-2, -1)))
