"""The VAE seam for frame-wise autoencoders: an AutoencoderKL (kinema's, `models/autoencoder.py`) applied to each frame."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from .autoencoder import AutoencoderKL
from .unet import per_frame, to_video

VAE_PRESETS: dict[str, dict] = {
    "tiny": dict(block_out_channels=(8, 16), layers_per_block=1, latent_channels=4, norm_num_groups=4),
    "small": dict(block_out_channels=(32, 64, 64), layers_per_block=1, latent_channels=8, norm_num_groups=16),
}


def build_autoencoder(preset: str = "small") -> AutoencoderKL:
    """A randomly initialised AutoencoderKL from a preset (spatial compression 2**(levels-1)).

    The same draws as diffusers' class from the same seed: the layers are made in its order.
    """
    cfg = VAE_PRESETS[preset]
    n = len(cfg["block_out_channels"])
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        **cfg,
    )


class FrameVAE(torch.nn.Module):
    """(B, 3, F, H, W) in [-1, 1] <-> scaled latents (B, C, F, h, w), one frame at a time.

    Latent scaling lives here: `encode` returns (mean - shift_factor) * scaling_factor,
    with both factors stored in the AutoencoderKL config. Any autoencoder with diffusers' AutoencoderKL
    interface fits (`encode(x).latent_dist`, `decode(z).sample`, `config`, `dtype`): kinema's, or diffusers'.
    """

    temporal_compression = 1

    def __init__(self, autoencoder: AutoencoderKL, encode_chunk_size: int = 64, decode_chunk_size: int = 16):
        super().__init__()
        self.autoencoder = autoencoder
        self.encode_chunk_size = encode_chunk_size
        self.decode_chunk_size = decode_chunk_size

    @property
    def spatial_compression(self) -> int:
        return 2 ** (len(self.autoencoder.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        return self.autoencoder.config.latent_channels

    @property
    def scale_shift(self) -> tuple[float, float]:
        cfg = self.autoencoder.config
        return float(cfg.scaling_factor), float(cfg.shift_factor or 0.0)

    def latent_frames(self, frames: int) -> int:
        return frames

    def encode(self, video: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
        """Video (B, 3, F, H, W) in [-1, 1] -> scaled latents (B, C, F, h, w); the posterior mean unless `sample`."""
        b = video.shape[0]
        frames = per_frame(video)  # (B*F, 3, H, W)
        out = []
        for chunk in frames.split(self.encode_chunk_size):
            dist = self.autoencoder.encode(chunk.to(self.autoencoder.dtype)).latent_dist
            out.append(dist.sample(generator) if sample else dist.mode())
        scale, shift = self.scale_shift
        return to_video((torch.cat(out) - shift) * scale, b)

    def decode_chunks(self, latents: torch.Tensor, chunk_size: int | None = None) -> Iterator[torch.Tensor]:
        """Yield decoded video (B, 3, f_chunk, H, W) in [-1, 1], `chunk_size` latent frames at a time."""
        scale, shift = self.scale_shift
        n = chunk_size or self.decode_chunk_size
        b = latents.shape[0]
        for i in range(0, latents.shape[2], n):
            z = per_frame(latents[:, :, i : i + n]) / scale + shift  # (B*f, C, h, w)
            x = self.autoencoder.decode(z.to(self.autoencoder.dtype)).sample
            yield to_video(x.clamp(-1, 1), b)

    def decode(self, latents: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
        """Scaled latents (B, C, F, h, w) -> video (B, 3, F, H, W) in [-1, 1], decoded in chunks."""
        return torch.cat(list(self.decode_chunks(latents, chunk_size)), dim=2)
