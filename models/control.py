"""Structure control maps: what a source clip's layout looks like without its colours.

A control map is one channel per frame in [0, 1]: soft edges, the Sobel gradient magnitude of the
frame (the largest over R, G, B), divided by the clip's strong-edge level (its 99.5th percentile, at
least `EDGE_FLOOR`) and clipped to 1. Dividing by the clip's own level makes the map nearly the same
for a red circle on blue and a yellow one on black: the outline is what it carries, not the colours
or their contrast; a faint background texture stays near 0.

A denoiser with a control input (`SpaceTimeUNet(control_channels=r*r)`) reads the maps on its latent
grid: each frame's map pixel-unshuffled by the VAE's spatial compression r (a 64x64 map is 16 channels
at 16x16), so no detail is lost to pooling. Frames map one to one onto latent frames (kinema's VAE has
no temporal compression).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from kinema.errors import KinemaError

KINDS = ("edges", "none")  # --control: the maps a source gives, or none
EDGE_FLOOR = 0.25  # gradient magnitude (of [0, 1] pixels) below which a clip counts as having no strong edge
_SOBEL = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 4.0


def edge_maps(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (F, H, W, 3) frames -> soft edge maps (F, H, W), float32 in [0, 1]."""
    x = torch.as_tensor(np.asarray(frames)).float().div(255.0).permute(0, 3, 1, 2)  # (F, 3, H, W)
    f, c, h, w = x.shape
    flat = F.pad(x.reshape(f * c, 1, h, w), (1, 1, 1, 1), mode="replicate")
    kernel = torch.stack([_SOBEL, _SOBEL.T])[:, None]  # (2, 1, 3, 3): d/dx, d/dy
    g = F.conv2d(flat, kernel).reshape(f, c, 2, h, w)
    mag = g.pow(2).sum(2).sqrt().amax(1)  # (F, H, W)
    level = max(float(torch.quantile(mag.flatten()[:: max(1, mag.numel() // 200_000)], 0.995)), EDGE_FLOOR)
    return (mag / level).clamp(0, 1)


def to_latent_grid(maps: torch.Tensor, compression: int) -> torch.Tensor:
    """Maps (F, H, W) or (B, F, H, W) -> (B, r*r, F, H/r, W/r): each frame pixel-unshuffled by the VAE's compression r."""
    if maps.ndim == 3:
        maps = maps[None]
    b, f, h, w = maps.shape
    if h % compression or w % compression:
        raise KinemaError(f"control maps of {h}x{w} do not divide by the VAE's compression {compression}")
    grid = F.pixel_unshuffle(maps.reshape(b * f, 1, h, w), compression)  # (B*F, r*r, h, w)
    return grid.reshape(b, f, *grid.shape[1:]).permute(0, 2, 1, 3, 4).contiguous()


def control_input(frames: np.ndarray, compression: int, kind: str = "edges") -> torch.Tensor | None:
    """A clip's control on the latent grid (1, r*r, F, H/r, W/r), or None for kind "none"."""
    if kind == "none":
        return None
    if kind != "edges":
        raise KinemaError(f"unknown control {kind!r}; choose one of {', '.join(KINDS)}")
    return to_latent_grid(edge_maps(frames), compression)
