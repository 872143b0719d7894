"""The three seams between pipelines and models: text embeddings, frame conditions, denoiser protocol.

Video crosses them as (B, 3, F, H, W) in [-1, 1]; uint8 (F, H, W, 3) frames are converted at the edge,
by `to_unit` and `to_uint8` only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from kinema.errors import NumericalError


def to_unit(frames: np.ndarray, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """uint8 frames (F, H, W, 3) -> video (1, 3, F, H, W) in [-1, 1], computed in `dtype` on `device`."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).to(device=device)
    return x.permute(3, 0, 1, 2)[None].to(dtype) / 127.5 - 1


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """Video (1, 3, F, H, W) in [-1, 1] -> uint8 frames (F, H, W, 3); non-finite pixels are an error, never black frames."""
    if not torch.isfinite(video).all():
        raise NumericalError("the VAE decoded non-finite pixels; try --dtype float32")
    x = ((video[0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(1, 2, 3, 0).cpu().numpy()


@dataclass
class TextEmbeds:
    """Token states of a batch of prompts and the mask of real tokens."""

    hidden: torch.Tensor  # (B, L, D)
    mask: torch.Tensor  # (B, L) bool, True for real tokens

    def __len__(self) -> int:
        return self.hidden.shape[0]

    def to(self, device=None, dtype=None) -> "TextEmbeds":
        return TextEmbeds(self.hidden.to(device=device, dtype=dtype), self.mask.to(device=device))

    @staticmethod
    def cat(items: list["TextEmbeds"]) -> "TextEmbeds":
        """Concatenate along the batch, padding token length to the longest."""
        length = max(t.hidden.shape[1] for t in items)
        hidden, mask = [], []
        for t in items:
            pad = length - t.hidden.shape[1]
            hidden.append(torch.nn.functional.pad(t.hidden, (0, 0, 0, pad)))
            mask.append(torch.nn.functional.pad(t.mask, (0, pad), value=False))
        return TextEmbeds(torch.cat(hidden), torch.cat(mask))

    def repeat(self, n: int) -> "TextEmbeds":
        return TextEmbeds(self.hidden.repeat_interleave(n, 0), self.mask.repeat_interleave(n, 0))


@dataclass
class FrameCondition:
    """Known latent frames: the one mechanism behind image-to-video, continuation and long clips.

    `mask[b, f]` is 1 where latent frame f of sample b is given by `latents[b, :, f]`.
    An empty condition (all-zero mask) is plain text-to-video.
    """

    latents: torch.Tensor  # (B, C, F, h, w)
    mask: torch.Tensor  # (B, F) float in {0, 1}

    @staticmethod
    def empty(like: torch.Tensor) -> "FrameCondition":
        b, _, f = like.shape[:3]
        return FrameCondition(torch.zeros_like(like), like.new_zeros(b, f))

    def channels(self) -> torch.Tensor:
        """Condition as input channels: masked latents and the mask, (B, C + 1, F, h, w)."""
        m = self.mask[:, None, :, None, None].to(self.latents.dtype)  # (B, 1, F, 1, 1)
        m_full = m.expand(-1, 1, -1, *self.latents.shape[-2:])
        return torch.cat([self.latents * m, m_full], dim=1)

    def repeat(self, n: int) -> "FrameCondition":
        return FrameCondition(self.latents.repeat_interleave(n, 0), self.mask.repeat_interleave(n, 0))

    @property
    def any(self) -> bool:
        return bool(self.mask.any())


class Injection:
    """Structure injection of one call: a pass over the source records tensors, a later pass replays them in order.

    Made per call by the pipeline (`Injection.record()` for the pass over the source, then `.replay()`
    for the pass that reuses what it recorded) and handed to the network in `DenoiserInputs.injection`;
    the network decides which tensors go through it (SpaceTimeUNet: self-attention queries and keys,
    one decoder level's features). A replaying pass may have a larger batch (the guided pair): the
    recorded batch is repeated to fit.
    """

    def __init__(self, saved: list[torch.Tensor], replaying: bool):
        self.saved = saved
        self.replaying = replaying
        self.at = 0  # the next tensor to hand back

    @classmethod
    def record(cls) -> "Injection":
        return cls([], replaying=False)

    def replay(self) -> "Injection":
        """A fresh injection that hands back what this one recorded, from the first tensor."""
        return Injection(self.saved, replaying=True)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self.replaying:
            self.saved.append(x)
            return x
        y = self.saved[self.at]
        self.at += 1
        return y.repeat(x.shape[0] // y.shape[0], *(1,) * (y.ndim - 1)).to(x.dtype)


@dataclass(frozen=True)
class DenoiserInputs:
    """Per-call inputs besides latents, timestep, text and frame condition; each denoiser reads what it has.

    They reach the network through its call, never through attributes set on it, so one loaded model
    serves interleaved calls (two requests of a UI, a batch runner, a cache hook).
    """

    clip_frames: int | None = None  # the whole clip's frames (a length embedding paces motion); None: the window's
    injection: Injection | None = None  # structure injection of one call (record, or replay what was recorded)
    image: object = None  # the family's image context (Wan I2V: CLIP states, pixel-frame mask)
    control: torch.Tensor | None = None  # structure maps on the latent grid (B, Cc, F, h, w), for a denoiser with a control input
    control_scale: float = 1.0  # how strongly the control steers (ControlNet's conditioning scale)
    cache: object = None  # a step cache of one trajectory (`models/cache.py` StepCache; each guided predictor its own)
    # read by the guidance wrapper (`loop.guided`), not the network: classifier-free guidance only at timesteps
    # t with lo < t / 1000 <= hi (for flow matching t / 1000 is the noise level), the conditional prediction
    # alone elsewhere; None: every step is guided
    guidance_interval: tuple[float, float] | None = None


@dataclass(frozen=True)
class ImageCondition:
    """What a family makes of the image(s) of image-to-video (`ModelFamily.image_condition`).

    `cond` is what the denoiser sees (noise-augmented latents); `known` is what KnownFrames re-injects
    after every step (the clean latents; None: nothing is re-injected, as Wan's channel-concat I2V);
    `inputs` are per-call denoiser inputs (Wan's CLIP states).
    """

    cond: FrameCondition
    known: FrameCondition | None
    inputs: DenoiserInputs = DenoiserInputs()


class Denoiser(Protocol):
    """Predicts the family's model output (flow velocity noise - x0 for kinema and Wan) at a timestep."""

    def predict(
        self, latents: torch.Tensor, timestep: torch.Tensor, text: TextEmbeds, cond: FrameCondition | None = None,
        inputs: DenoiserInputs | None = None,
    ) -> torch.Tensor: ...
