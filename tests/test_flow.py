"""Properties of kinema.pipelines.flow: warp conventions, DIS flow on world clips, masks, fusion."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from kinema import world
from kinema.errors import KinemaError
from kinema.pipelines import flow

VELOCITY = (2.0, 0.0)  # px / frame, rightwards
FRAMES = 6


@pytest.fixture(scope="module")
def clip() -> tuple[world.ClipSpec, np.ndarray]:
    """A white square moving right on a faintly textured blue background, 64x64."""
    spec = world.ClipSpec("white", "square", "right", "blue", 14.0, (22.0, 30.0), VELOCITY, 0.03)
    return spec, world.render(spec, FRAMES, 64, 64, seed=0)


@pytest.fixture(scope="module")
def flows(clip) -> tuple[torch.Tensor, torch.Tensor]:
    return flow.optical_flow(clip[1])


def _coverage(spec: world.ClipSpec, t: int, size: int = 64) -> np.ndarray:
    cx, cy = spec.centre(t)
    return world._coverage(spec.shape, cx, cy, spec.size, size, size)


def _erode(mask: np.ndarray, px: int) -> np.ndarray:
    """Binary erosion by a (2px+1) square, via max-pooling the complement."""
    m = torch.from_numpy(~mask).float()[None, None]
    return ~(F.max_pool2d(m, 2 * px + 1, stride=1, padding=px)[0, 0].numpy() > 0)


def _as_uint8(x: torch.Tensor) -> np.ndarray:
    """(1, 3, F, H, W) in 0..255 -> uint8 (F, H, W, 3)."""
    return x[0].permute(1, 2, 3, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def _as_tensor(video: np.ndarray) -> torch.Tensor:
    """uint8 (F, H, W, 3) -> float (1, 3, F, H, W) in 0..255."""
    return torch.from_numpy(video).permute(3, 0, 1, 2)[None].float()


################################################################################
#                                     warp                                     #
################################################################################


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 3), c=st.integers(1, 4), h=st.integers(1, 17), w=st.integers(1, 17),
    dtype=st.sampled_from([torch.float32, torch.float64]), seed=st.integers(0, 2**16),
)
def test_identity_flow_warps_to_itself(n, c, h, w, dtype, seed):
    x = torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    out = flow.warp(x, torch.zeros(n, 2, h, w))
    assert out.dtype == dtype
    torch.testing.assert_close(out, x, atol=1e-6, rtol=0)


@settings(max_examples=30, deadline=None)
@given(dx=st.integers(-3, 3), dy=st.integers(-3, 3), h=st.integers(8, 20), w=st.integers(8, 20), seed=st.integers(0, 2**16))
def test_integer_translation_is_roll_away_from_borders(dx, dy, h, w, seed):
    x = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(seed))
    fl = torch.tensor([float(dx), float(dy)]).view(1, 2, 1, 1).expand(2, 2, h, w)
    out = flow.warp(x, fl)
    rolled = torch.roll(x, shifts=(-dy, -dx), dims=(-2, -1))  # out[y, x] = x[y + dy, x + dx]
    ys = slice(max(0, -dy), h - max(0, dy))
    xs = slice(max(0, -dx), w - max(0, dx))
    torch.testing.assert_close(out[..., ys, xs], rolled[..., ys, xs], atol=1e-6, rtol=0)


def test_warp_samples_at_position_plus_flow():
    x = torch.zeros(1, 1, 6, 8)
    x[0, 0, 3, 5] = 1.0  # bright pixel at (x=5, y=3)
    out = flow.warp(x, torch.tensor([2.0, 1.0]).view(1, 2, 1, 1).expand(1, 2, 6, 8))
    assert out[0, 0, 2, 3] == 1.0 and out.sum() == 1.0  # out[2, 3] = x[2 + 1, 3 + 2]
    half = flow.warp(x, torch.tensor([0.5, 0.0]).view(1, 2, 1, 1).expand(1, 2, 6, 8))
    assert half[0, 0, 3, 4] == pytest.approx(0.5) and half[0, 0, 3, 5] == pytest.approx(0.5)


def test_warp_rejects_a_flow_of_another_grid():
    with pytest.raises(KinemaError, match="does not fit"):
        flow.warp(torch.zeros(1, 3, 8, 8), torch.zeros(1, 2, 4, 4))


################################################################################
#                                 optical flow                                 #
################################################################################


def test_optical_flow_recovers_the_velocity_of_a_moving_square(clip, flows):
    spec, video = clip
    fw, bw = flows
    assert fw.shape == bw.shape == (FRAMES - 1, 2, 64, 64) and fw.dtype == torch.float32
    v = torch.tensor(VELOCITY).view(2, 1)
    for t in range(FRAMES - 1):
        obj_t = torch.from_numpy(_erode(_coverage(spec, t) > 0.99, 2))
        obj_t1 = torch.from_numpy(_erode(_coverage(spec, t + 1) > 0.99, 2))
        assert (fw[t][:, obj_t] - v).abs().max() < 0.5  # fw: object of frame t moves by +v
        assert (bw[t][:, obj_t1] + v).abs().max() < 0.5  # bw: object of frame t+1 came from -v
        # static background: DIS smooths the object's motion several px out on 64x64 frames
        far = torch.from_numpy(_erode(_coverage(spec, t) + _coverage(spec, t + 1) < 0.01, 8))
        assert (fw[t][:, far].abs().amax(0) < 0.5).float().mean() > 0.85


def test_flow_directions_match_warp(clip, flows):
    fw, bw = flows
    x = _as_tensor(clip[1])[0].permute(1, 0, 2, 3)  # (F, 3, H, W)
    still = (x[1:] - x[:-1]).abs().mean()
    assert (flow.warp(x[1:], fw) - x[:-1]).abs().mean() < 0.3 * still  # warp(frame t+1, fw[t]) ~ frame t
    assert (flow.warp(x[:-1], bw) - x[1:]).abs().mean() < 0.3 * still  # warp(frame t, bw[t]) ~ frame t+1


def test_optical_flow_rejects_float_frames():
    with pytest.raises(KinemaError, match="uint8"):
        flow.optical_flow(np.zeros((3, 32, 32, 3), np.float32))


################################################################################
#                                    masks                                     #
################################################################################


def _exact_square_flows(v: int = 3, size: int = 32) -> tuple[torch.Tensor, ...]:
    """Exact fw, bw (1, 2, H, W) of a 10 px square moving v px right, and its masks at t and t+1."""
    obj_t = torch.zeros(size, size, dtype=torch.bool)
    obj_t[10:20, 8:18] = True
    obj_t1 = torch.roll(obj_t, v, dims=1)
    fw = torch.zeros(1, 2, size, size)
    fw[0, 0][obj_t] = float(v)
    bw = torch.zeros(1, 2, size, size)
    bw[0, 0][obj_t1] = -float(v)
    return fw, bw, obj_t, obj_t1


def test_consistency_mask_flags_disocclusions_of_exact_flows():
    fw, bw, obj_t, obj_t1 = _exact_square_flows()
    back = flow.consistency_mask(bw, fw)[0, 0].bool()  # on frame t+1
    disoccluded = obj_t & ~obj_t1  # background the square uncovered
    assert not back[disoccluded].any()
    assert back[~disoccluded].all()  # background and the whole object interior
    fwd = flow.consistency_mask(fw, bw)[0, 0].bool()  # on frame t
    occluded = obj_t1 & ~obj_t  # background the square is about to cover
    assert not fwd[occluded].any() and fwd[~occluded].all()


def test_consistency_mask_flags_flow_leaving_the_frame():
    fw = torch.tensor([3.0, 0.0]).view(1, 2, 1, 1).expand(1, 2, 8, 12)
    mask = flow.consistency_mask(fw, -fw)[0, 0]
    assert mask[:, :9].all() and not mask[:, 9:].any()  # x + 3 > 11.5 leaves the frame


def test_masks_on_dis_flows_keep_background_and_object(clip, flows):
    spec, video = clip
    fw, bw = flows
    guide = flow.source_flow(video, (16, 16))
    for t in range(FRAMES - 1):
        c0, c1 = _coverage(spec, t), _coverage(spec, t + 1)
        background = torch.from_numpy(_erode((c0 < 0.01) & (c1 < 0.01), 3))
        interior = torch.from_numpy(_erode(c1 > 0.99, 2))
        for mask in (flow.consistency_mask(bw, fw)[t, 0], guide.source_mask[t, 0]):
            assert mask[background].mean() > 0.95 and mask[interior].mean() > 0.95


def test_photometric_mask_drops_a_wrong_warp():
    x = torch.zeros(1, 3, 8, 8)
    x[..., 4:] = 200.0
    mask = flow.photometric_mask(x, x, torch.tensor([1.0, 0.0]).view(1, 2, 1, 1).expand(1, 2, 8, 8))
    assert mask[0, 0, :, 3].eq(0).all() and mask[0, 0, :, :3].eq(1).all() and mask[0, 0, :, 4:].eq(1).all()


def test_resize_flow_scales_vectors():
    fl = torch.tensor([4.0, -2.0]).view(1, 2, 1, 1).expand(3, 2, 64, 64).contiguous()
    small = flow.resize_flow(fl, 16, 16)
    assert small.shape == (3, 2, 16, 16)
    torch.testing.assert_close(small[:, 0], torch.ones(3, 16, 16))
    torch.testing.assert_close(small[:, 1], torch.full((3, 16, 16), -0.5))
    torch.testing.assert_close(flow.resize_flow(small, 64, 64), fl)
    wide = flow.resize_flow(fl[:, :, :32], 16, 16)  # (64 wide, 32 high) -> 16x16
    torch.testing.assert_close(wide[:, :, 8, 8], torch.tensor([[1.0, -1.0]]).expand(3, 2))


def test_resize_mask_keeps_cells_mostly_reliable():
    mask = torch.ones(1, 1, 16, 16)
    mask[0, 0, 0, 0] = 0  # one bad pixel of a 4x4 cell: the cell stays reliable
    mask[0, 0, 4:8, 4:7] = 0  # 12 of 16 bad: the cell goes
    small = flow.resize_mask(mask, 4, 4)
    assert small[0, 0, 0, 0] == 1 and small[0, 0, 1, 1] == 0 and small.sum() == 15
    assert flow.resize_mask(small, 16, 16)[0, 0, 4:8, 4:8].eq(0).all()


################################################################################
#                               fusion and metric                              #
################################################################################


def _latent_warp_error(x: torch.Tensor, guide: flow.FlowGuide) -> float:
    """Masked mean |x[t+1] - warp(x[t], bw[t])| on x's grid, x (1, C, F, h, w)."""
    fl, mask = guide.at(*x.shape[-2:])
    frames = x[0].permute(1, 0, 2, 3)  # (F, C, h, w)
    err = (frames[1:] - flow.warp(frames[:-1], fl)).abs().mean(1, keepdim=True)  # (F-1, 1, h, w)
    return float((err * mask).sum() / mask.sum())


def _flicker(x: torch.Tensor, sigma: float, seed: int = 0) -> torch.Tensor:
    """Independent per-frame noise and brightness offset on (1, C, F, h, w)."""
    g = torch.Generator().manual_seed(seed)
    offset = sigma * torch.randn(1, 1, x.shape[2], 1, 1, generator=g)
    return x + offset + sigma * torch.randn(x.shape, generator=g)


def test_propagate_keeps_a_consistent_clip_and_steadies_a_flickering_one(clip):
    video = clip[1]
    guide = flow.source_flow(video, (16, 16))
    assert guide.flow.shape == (FRAMES - 1, 2, 16, 16) and guide.mask.shape == (FRAMES - 1, 1, 16, 16)
    x0 = F.avg_pool3d(_as_tensor(video), (1, 4, 4)) / 127.5 - 1  # (1, 3, F, 16, 16) pseudo-latents in [-1, 1]
    fused = guide.propagate(x0, 0.5)
    assert fused.shape == x0.shape and torch.equal(fused[:, :, 0], x0[:, :, 0])
    assert (fused - x0).abs().mean() < 0.01  # self-consistent: ~1 grey level
    noisy = _flicker(x0, 0.1)
    before, after = _latent_warp_error(noisy, guide), _latent_warp_error(guide.propagate(noisy, 0.5), guide)
    assert after < 0.7 * before


def test_propagate_with_zero_strength_is_identity_and_checks_inputs(clip):
    guide = flow.source_flow(clip[1], (16, 16))
    x0 = torch.randn(2, 4, FRAMES, 16, 16)
    assert torch.equal(guide.propagate(x0, 0.0), x0)
    with pytest.raises(KinemaError, match="frames"):
        guide.propagate(x0[:, :, :3], 0.5)
    with pytest.raises(KinemaError, match="strength"):
        guide.propagate(x0, 1.5)


def test_warp_error_is_small_for_the_source_and_pixel_fusion_lowers_flicker(clip, flows):
    video = clip[1]
    fw, bw = flows
    mask = flow.consistency_mask(fw, bw)
    source = flow.warp_error(video, fw, mask)
    flickering = _as_uint8(_flicker(_as_tensor(video), 10.0))
    noisy = flow.warp_error(flickering, fw, mask)
    guide = flow.source_flow(video, (16, 16))
    fused = _as_uint8(flow.pixel_fusion(_as_tensor(flickering), guide, 0.8))
    steadied = flow.warp_error(fused, fw, mask)
    assert source < 1.0 and noisy > 5.0 and steadied < 0.6 * noisy
    with pytest.raises(KinemaError, match="must be"):
        flow.warp_error(video[:3], fw, mask)


def test_source_flow_strides_over_frames_for_temporal_compression():
    spec = world.ClipSpec("yellow", "circle", "down", "black", 12.0, (30.0, 20.0), (0.0, 1.0), 0.0)
    video = world.render(spec, 9, 32, 32)
    guide = flow.source_flow(video, (8, 8), frame_stride=4)  # latent frames <- frames 0, 4, 8
    assert guide.frames == 3 and guide.source_flow.shape == (2, 2, 32, 32)
    with pytest.raises(KinemaError, match="too small"):
        flow.source_flow(video[:, :8, :8], (2, 2))


def test_pixel_fusion_blends_flicker_but_keeps_content_the_flow_does_not_explain():
    still = np.full((3, 32, 32, 3), 90, np.uint8)  # a static source: zero flow, reliable everywhere
    guide = flow.source_flow(still, (32, 32))
    out = torch.full((1, 3, 3, 32, 32), 60.0)
    out[:, :, 0, 8:16, 4:12] = 220.0  # the output's object moves although the source shows nothing moving
    out[:, :, 1, 8:16, 12:20] = 220.0
    out[:, :, 2, 8:16, 20:28] = 220.0
    out[:, :, 1:] += 4.0 * torch.randn(1, 3, 2, 32, 32, generator=torch.Generator().manual_seed(0))  # flicker
    gated = flow.pixel_fusion(out, guide, 0.8)
    plain = flow.pixel_fusion(out, guide, 0.8, tolerance=None)
    assert (plain[:, :, 2, 8:16, 4:12] - 60).abs().mean() > 50  # ungated: a trail where the object was
    assert (gated[:, :, 2, 8:16, 4:12] - 60).abs().mean() < 8  # gated: the background stays background
    assert (gated[:, :, 2, 8:16, 20:28] - 220).abs().mean() < 8  # and the object stays where it is
    background = np.s_[:, :, 1:, 20:, :]
    assert (gated[background] - 60).std() < 0.6 * (out[background] - 60).std()  # flicker is still blended
