"""Flow-guided video-to-video helpers: warp, optical flow, consistency masks, latent fusion.

    >>> guide = source_flow(frames, latent_hw=(16, 16))   # frames: uint8 (F, H, W, 3)
    >>> x0 = guide.propagate(x0, strength=0.5)            # x0: (B, C, F, 16, 16), inside the loop
    >>> fw, bw = optical_flow(frames)
    >>> warp_error(restyled, fw, consistency_mask(fw, bw))  # grey levels, lower is steadier

Conventions (every function here agrees on them):

- A flow is a float32 tensor ``(N, 2, H, W)`` in pixels of its own grid; channel 0 is dx
  (rightwards), channel 1 is dy (downwards); pixel centres sit at integer coordinates.
- ``warp`` warps backwards: ``warp(x, flow)[y, x] = x[y + dy, x + dx]``, through
  ``grid_sample(align_corners=False)`` (the image spans [-0.5, W - 0.5]).
- ``fw[t]`` goes from frame t to t+1: pixel p of frame t is at p + fw[t](p) in frame t+1,
  so ``warp(frame[t+1], fw[t]) ≈ frame[t]``. ``bw[t]`` goes from frame t+1 to t, so
  ``warp(frame[t], bw[t]) ≈ frame[t+1]``: this is the flow that carries frame t forward.
- ``consistency_mask(a, b)`` lives on the grid of ``a``'s start frame: ``(fw, bw)`` marks
  frame t, ``(bw, fw)`` marks frame t+1 (0 where t+1 shows background the object uncovered).

Why the guide's mask also has a photometric check: on small frames (the world's 64x64) DIS
smooths flow across object edges, so forward and backward flows agree even where they are
wrong and the forward-backward check alone passes them. ``photometric_mask`` drops the pixels
where warping the source itself gives the wrong colour; on 40 world clips it removed ~77 such
pixels per 6-frame clip that the consistency check kept, halving the source's masked warp error.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from kinema.errors import require

# Max per-channel grey-level mismatch of a reliable warp. Any two palette colours differ by >= 70
# on some channel (orange/yellow), sensor noise and world texture by a few levels; 24 ~ 10%.
PHOTOMETRIC_TOLERANCE = 24.0
# Pixel fusion's content gate (grey levels): differences between a frame and its warped predecessor well
# below this are flicker and are blended; an object against its background differs by 60 and more.
PIXEL_FUSION_TOLERANCE = 48.0

#################################################################################
#                                 Warping                                       #
#################################################################################


def _pixel_grid(height: int, width: int, device: torch.device | str = "cpu") -> Tensor:
    """Pixel-centre coordinates (x, y) of a grid, float64: (1, 2, H, W)."""
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=torch.float64, device=device),
        torch.arange(width, dtype=torch.float64, device=device),
        indexing="ij",
    )
    return torch.stack([xs, ys])[None]  # (1, 2, H, W)


def warp(x: Tensor, flow: Tensor, mode: str = "bilinear", padding: str = "border") -> Tensor:
    """Backward-warp x (N, C, H, W) by a pixel flow (N or 1, 2, H, W): out[y, x] = x[y + dy, x + dx]."""
    require(x.ndim == 4 and x.is_floating_point(), f"warp needs a float (N, C, H, W) tensor, got {tuple(x.shape)} {x.dtype}")
    require(
        flow.ndim == 4 and flow.shape[1] == 2 and flow.shape[-2:] == x.shape[-2:] and flow.shape[0] in (1, x.shape[0]),
        f"flow {tuple(flow.shape)} does not fit x {tuple(x.shape)}; pass (N, 2, H, W) on the same grid",
    )
    n, _, h, w = x.shape
    # float64 so identity and integer shifts come back exact: a float32 grid is off by ~4e-6 px
    pos = _pixel_grid(h, w, x.device) + flow.to(torch.float64)  # (N, 2, H, W) sample positions
    size = torch.tensor([w, h], dtype=torch.float64, device=x.device).view(1, 2, 1, 1)
    grid = ((2 * pos + 1) / size - 1).permute(0, 2, 3, 1).expand(n, h, w, 2)  # (N, H, W, 2) in [-1, 1]
    out = F.grid_sample(x.to(torch.float64), grid, mode=mode, padding_mode=padding, align_corners=False)
    return out.to(x.dtype)


#################################################################################
#                            Flow and reliability                               #
#################################################################################


def _check_frames(frames: np.ndarray) -> None:
    require(
        isinstance(frames, np.ndarray) and frames.dtype == np.uint8 and frames.ndim == 4 and frames.shape[-1] == 3,
        f"frames must be uint8 (F, H, W, 3), got {getattr(frames, 'dtype', type(frames))} "
        f"{getattr(frames, 'shape', '')}; read the clip with kinema.video_io.read_video",
    )
    require(  # DIS fails outright below ~12 px
        min(frames.shape[1:3]) >= 16,
        f"frames of {frames.shape[1]}x{frames.shape[2]} are too small for optical flow; use at least 16x16",
    )


def _to_tensor(frames: np.ndarray) -> Tensor:
    """uint8 (F, H, W, 3) frames as float32 (F, 3, H, W) in 0..255."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()  # (F, 3, H, W)


def optical_flow(frames: np.ndarray) -> tuple[Tensor, Tensor]:
    """DIS flows of uint8 (F, H, W, 3) frames: forward fw and backward bw, float32 (F-1, 2, H, W) each."""
    _check_frames(frames)
    grey = [cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY) for f in frames]  # (H, W) uint8 each
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    fw = [dis.calc(a, b, None) for a, b in zip(grey[:-1], grey[1:])]  # (H, W, 2): a[p] ≈ b[p + flow]
    bw = [dis.calc(b, a, None) for a, b in zip(grey[:-1], grey[1:])]
    h, w = frames.shape[1:3]

    def stack(flows: list[np.ndarray]) -> Tensor:
        if not flows:
            return torch.zeros(0, 2, h, w)
        return torch.from_numpy(np.stack(flows)).permute(0, 3, 1, 2).contiguous()  # (F-1, 2, H, W)

    return stack(fw), stack(bw)


def consistency_mask(fw: Tensor, bw: Tensor, alpha: float = 0.01, beta: float = 0.5) -> Tensor:
    """1 where fw agrees with bw followed back (and stays in the frame), else 0: float (N, 1, H, W) on fw's grid."""
    require(
        fw.shape == bw.shape and fw.ndim == 4 and fw.shape[1] == 2,
        f"fw {tuple(fw.shape)} and bw {tuple(bw.shape)} must both be (N, 2, H, W) on one grid",
    )
    back = warp(bw, fw)  # (N, 2, H, W): bw where each pixel lands
    mismatch = (fw + back).square().sum(1, keepdim=True)  # (N, 1, H, W)
    bound = alpha * (fw.square().sum(1, keepdim=True) + back.square().sum(1, keepdim=True)) + beta
    h, w = fw.shape[-2:]
    pos = _pixel_grid(h, w, fw.device) + fw.to(torch.float64)  # (N, 2, H, W) landing points
    inside = (pos[:, :1] >= -0.5) & (pos[:, :1] <= w - 0.5) & (pos[:, 1:] >= -0.5) & (pos[:, 1:] <= h - 0.5)
    return ((mismatch < bound) & inside).float()


def photometric_mask(src: Tensor, dst: Tensor, flow: Tensor, tolerance: float = PHOTOMETRIC_TOLERANCE) -> Tensor:
    """1 where warp(src, flow) matches dst within `tolerance` on every channel, else 0: float (N, 1, H, W)."""
    mismatch = (warp(src, flow) - dst).abs().amax(1, keepdim=True)  # (N, 1, H, W)
    return (mismatch < tolerance).float()


def resize_flow(flow: Tensor, height: int, width: int) -> Tensor:
    """Flow (N, 2, H, W) on another grid, vectors scaled by the size ratio (area when shrinking, else bilinear)."""
    h, w = flow.shape[-2:]
    if (h, w) == (height, width):
        return flow
    if height <= h and width <= w:
        out = F.interpolate(flow, size=(height, width), mode="area")  # (N, 2, height, width)
    else:
        out = F.interpolate(flow, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    scale = torch.tensor([width / w, height / h], dtype=flow.dtype, device=flow.device).view(1, 2, 1, 1)
    return out * scale


def resize_mask(mask: Tensor, height: int, width: int, threshold: float = 0.5) -> Tensor:
    """Mask (N, 1, H, W) on another grid: a cell is 1 where at least `threshold` of the pixels it covers are."""
    if mask.shape[-2:] == (height, width):
        return mask
    covered = F.interpolate(mask.float(), size=(height, width), mode="area")  # (N, 1, height, width) fraction reliable
    return (covered >= threshold - 1e-6).to(mask.dtype)


#################################################################################
#                                  Fusion                                       #
#################################################################################


@dataclass
class FlowGuide:
    """A source clip's backward flows and reliability masks, on the latent grid and at source pixels."""

    flow: Tensor  # (F-1, 2, h, w) latent grid: warp(latent[t], flow[t]) ≈ latent[t+1]
    mask: Tensor  # (F-1, 1, h, w) 1 where flow[t] is reliable, on frame t+1's grid
    source_flow: Tensor  # (F-1, 2, H, W) the same at source resolution
    source_mask: Tensor  # (F-1, 1, H, W)

    @property
    def frames(self) -> int:
        return self.flow.shape[0] + 1

    def at(self, height: int, width: int) -> tuple[Tensor, Tensor]:
        """(flow, mask) for a grid: the stored latent or source one, else resized from the source."""
        for flow, mask in ((self.flow, self.mask), (self.source_flow, self.source_mask)):
            if tuple(flow.shape[-2:]) == (height, width):
                return flow, mask
        return resize_flow(self.source_flow, height, width), resize_mask(self.source_mask, height, width)

    def propagate(self, x0: Tensor, strength: float, tolerance: float | None = None) -> Tensor:
        """Blend each frame t+1 of x0 (B, C, F, h, w) toward the warp of fused frame t, weight strength * mask.

        Runs from frame 0 forward, so frame t+1 is pulled toward the already-fused frame t and
        consistent content carries along the whole clip; frame 0 is unchanged, and so is every
        pixel where the flow is unreliable (occlusions, disocclusions, leaving the frame).
        With `tolerance` (in x0's units), the weight also falls off as exp(-(d / tolerance)^2) with
        d = the channel-mean |frame t+1 - warped frame t|: small differences (flicker) are blended,
        large ones (the output's own content where it differs from the source's, e.g. an object
        larger than the source's) are kept, so nothing is smeared along the source's flow.
        """
        require(0.0 <= strength <= 1.0, f"flow strength {strength} is outside [0, 1]; pass a blend weight between 0 and 1")
        require(
            x0.ndim == 5 and x0.shape[2] == self.frames,
            f"x0 {tuple(x0.shape)} must be (B, C, {self.frames}, h, w) to match the guide's {self.frames} frames",
        )
        b = x0.shape[0]
        flow, mask = self.at(*x0.shape[-2:])
        flow, mask = flow.to(x0.device), mask.to(x0.device, x0.dtype)
        fused = [x0[:, :, 0]]  # (B, C, h, w) each
        for t in range(self.frames - 1):
            moved = warp(fused[-1], flow[t : t + 1].expand(b, -1, -1, -1))  # (B, C, h, w): frame t onto t+1
            weight = strength * mask[t : t + 1]
            if tolerance is not None:
                d = (x0[:, :, t + 1] - moved).abs().mean(1, keepdim=True)  # (B, 1, h, w)
                weight = weight * torch.exp(-((d / tolerance) ** 2))
            fused.append(torch.lerp(x0[:, :, t + 1], moved, weight))
        return torch.stack(fused, dim=2)  # (B, C, F, h, w)


def source_flow(frames: np.ndarray, latent_hw: tuple[int, int], frame_stride: int = 1) -> FlowGuide:
    """FlowGuide of uint8 (F, H, W, 3) source frames for a latent grid `latent_hw` = (h, w).

    `frame_stride` is the VAE's temporal compression: flows link frames 0, s, 2s, ... (latent
    frame k of a causal VAE ends at frame k*s), so the guide has one entry per latent frame.
    """
    _check_frames(frames)
    require(frame_stride >= 1, f"frame_stride {frame_stride} must be at least 1; pass the VAE's temporal compression")
    h, w = latent_hw
    require(h >= 1 and w >= 1, f"latent grid {latent_hw} must be positive; pass (height, width) of the latents")
    frames = frames[::frame_stride]
    fw, bw = optical_flow(frames)
    x = _to_tensor(frames)  # (F, 3, H, W) in 0..255
    # on frame t+1's grid, where bw carries frame t forward: flows agree and the source warps right
    mask = consistency_mask(bw, fw) * photometric_mask(x[:-1], x[1:], bw)  # (F-1, 1, H, W)
    return FlowGuide(resize_flow(bw, h, w), resize_mask(mask, h, w), bw, mask)


def pixel_fusion(frames: Tensor, guide: FlowGuide, strength: float, tolerance: float | None = PIXEL_FUSION_TOLERANCE) -> Tensor:
    """Last fusion on decoded frames (B, 3, F, H, W), 0..255 float: `guide.propagate` at pixel resolution.

    Differences beyond ~`tolerance` grey levels between a frame and its warped predecessor are the
    output's content, not flicker, and are left alone (None: blend everything the mask allows).
    """
    return guide.propagate(frames, strength, tolerance)


#################################################################################
#                                  Metric                                       #
#################################################################################


def warp_error(video: np.ndarray, fw: Tensor, mask: Tensor) -> float:
    """Mean |frame t - warp(frame t+1, fw[t])| over reliable pixels, in grey levels 0..255 (mean over RGB).

    `fw` and `mask` are the reference's (the source clip's): ``fw, bw = optical_flow(source)``,
    ``mask = consistency_mask(fw, bw)``. NaN when no pixel is reliable.
    """
    _check_frames(video)
    f, h, w = video.shape[:3]
    require(
        tuple(fw.shape) == (f - 1, 2, h, w) and tuple(mask.shape) == (f - 1, 1, h, w),
        f"flow {tuple(fw.shape)} and mask {tuple(mask.shape)} must be ({f - 1}, 2|1, {h}, {w}) for a {f}-frame {h}x{w} video",
    )
    x = _to_tensor(video).to(torch.float64)  # (F, 3, H, W)
    err = (x[:-1] - warp(x[1:], fw)).abs().mean(1, keepdim=True)  # (F-1, 1, H, W)
    m = mask.to(torch.float64)
    return float((err * m).sum() / m.sum()) if m.sum() > 0 else float("nan")
