"""kinema's image autoencoder: diffusers' AutoencoderKL, the same network with the same config and weight names.

A folder written by diffusers' `AutoencoderKL.save_pretrained` loads here and one written here loads in
diffusers (`models/pretrained.py`); outputs agree to float rounding (`tests/test_native.py`). It covers
the configurations kinema builds and trains: `DownEncoderBlock2D` / `UpDecoderBlock2D` levels, group
norm, SiLU, the mid-block attention. Tiling, slicing and the spatial-norm decoder of diffusers' class
are not here; a folder that asks for another block type is refused. Reads top-down: the posterior,
blocks, encoder and decoder, the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .pretrained import PretrainedModel, register_to_config

#################################################################################
#                                   Posterior                                   #
#################################################################################


class DiagonalGaussian:
    """The encoder's posterior: mean and log-variance (clamped to [-30, 20]) split from its 2C channels."""

    def __init__(self, parameters: torch.Tensor):
        self.parameters = parameters
        self.mean, logvar = torch.chunk(parameters, 2, dim=1)
        self.logvar = torch.clamp(logvar, -30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        # drawn on the generator's device (a CPU generator for a CUDA tensor draws on the CPU), as diffusers' randn_tensor
        device = generator.device if generator is not None else self.parameters.device
        noise = torch.randn(self.mean.shape, generator=generator, device=device, dtype=self.parameters.dtype)
        return self.mean + self.std * noise.to(self.parameters.device)

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL divergence to the standard normal, per sample (B,)."""
        return 0.5 * torch.sum(torch.pow(self.mean, 2) + self.var - 1.0 - self.logvar, dim=[1, 2, 3])


@dataclass
class EncoderOutput:
    latent_dist: DiagonalGaussian


@dataclass
class DecoderOutput:
    sample: torch.Tensor


#################################################################################
#                                    Blocks                                     #
#################################################################################


class ResnetBlock(nn.Module):
    """Two group-norm, SiLU, 3x3 conv layers and a residual (1x1 conv where the channels change)."""

    def __init__(self, cin: int, cout: int, groups: int, eps: float = 1e-6):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin, eps=eps, affine=True)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=1, padding=1)
        self.norm2 = nn.GroupNorm(groups, cout, eps=eps, affine=True)
        self.dropout = nn.Dropout(0.0)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1)
        self.conv_shortcut = nn.Conv2d(cin, cout, 1, stride=1, padding=0) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x (N, C, H, W)
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x.contiguous() if self.training else x)
        return x + h


class AttentionBlock(nn.Module):
    """Single-head self-attention over the pixels of a feature map, with a group norm and a residual."""

    def __init__(self, channels: int, groups: int, eps: float = 1e-6):
        super().__init__()
        self.group_norm = nn.GroupNorm(groups, channels, eps=eps, affine=True)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels), nn.Dropout(0.0)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        t = x.view(n, c, h * w).transpose(1, 2)  # (N, HW, C)
        t = self.group_norm(t.transpose(1, 2)).transpose(1, 2)
        q, k, v = (proj(t)[:, None] for proj in (self.to_q, self.to_k, self.to_v))  # (N, 1, HW, C)
        o = F.scaled_dot_product_attention(q, k, v)[:, 0]  # (N, HW, C)
        o = self.to_out[1](self.to_out[0](o.to(q.dtype)))
        return o.transpose(-1, -2).reshape(n, c, h, w) + x


class Downsample(nn.Module):
    """Stride-2 3x3 conv after padding one pixel right and below."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0))


class Upsample(nn.Module):
    """Nearest 2x upsampling, then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] >= 64 or x.numel() * 2 > 2**31:  # large inputs fail in upsample_nearest's NHWC path
            x = x.contiguous()
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """ResnetBlocks at one resolution, then an optional down- or upsampling (diffusers' Down/UpDecoderBlock2D)."""

    def __init__(self, cin: int, cout: int, layers: int, groups: int, resample: str | None):
        super().__init__()
        self.resnets = nn.ModuleList(ResnetBlock(cin if i == 0 else cout, cout, groups) for i in range(layers))
        if resample == "down":
            self.downsamplers = nn.ModuleList([Downsample(cout)])
        elif resample == "up":
            self.upsamplers = nn.ModuleList([Upsample(cout)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        for resample in getattr(self, "downsamplers", getattr(self, "upsamplers", ())):
            x = resample(x)
        return x


class MidBlock(nn.Module):
    """ResnetBlock, attention (optional), ResnetBlock at the lowest resolution."""

    def __init__(self, channels: int, groups: int, attention: bool):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(channels, channels, groups)])
        self.attentions = nn.ModuleList([AttentionBlock(channels, groups) if attention else None])
        self.resnets.append(ResnetBlock(channels, channels, groups))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x)
        for attn, resnet in zip(self.attentions, self.resnets[1:]):
            x = resnet(attn(x) if attn is not None else x)
        return x


class Encoder(nn.Module):
    """Image (N, 3, H, W) -> posterior parameters (N, 2C, H/2^(levels-1), W/2^(levels-1))."""

    def __init__(self, cin: int, latent: int, channels: tuple[int, ...], layers: int, groups: int, attention: bool):
        super().__init__()
        self.conv_in = nn.Conv2d(cin, channels[0], 3, stride=1, padding=1)
        self.down_blocks = nn.ModuleList(
            Level(channels[max(i - 1, 0)], c, layers, groups, "down" if i < len(channels) - 1 else None)
            for i, c in enumerate(channels))
        self.mid_block = MidBlock(channels[-1], groups, attention)
        self.conv_norm_out = nn.GroupNorm(groups, channels[-1], eps=1e-6)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(channels[-1], 2 * latent, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(self.conv_act(self.conv_norm_out(x)))


class Decoder(nn.Module):
    """Latents (N, C, h, w) -> image (N, 3, h*2^(levels-1), w*2^(levels-1))."""

    def __init__(self, latent: int, cout: int, channels: tuple[int, ...], layers: int, groups: int, attention: bool):
        super().__init__()
        rev = list(reversed(channels))
        self.conv_in = nn.Conv2d(latent, rev[0], 3, stride=1, padding=1)
        self.mid_block = MidBlock(rev[0], groups, attention)
        self.up_blocks = nn.ModuleList(
            Level(rev[max(i - 1, 0)], c, layers + 1, groups, "up" if i < len(rev) - 1 else None) for i, c in enumerate(rev))
        self.conv_norm_out = nn.GroupNorm(groups, channels[0], eps=1e-6)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(channels[0], cout, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(self.conv_act(self.conv_norm_out(x)))


#################################################################################
#                                     Model                                     #
#################################################################################


class AutoencoderKL(PretrainedModel):
    """KL autoencoder of images (diffusers' AutoencoderKL: its config, weight names and numbers)."""

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        down_block_types: tuple[str, ...] = ("DownEncoderBlock2D",),
        up_block_types: tuple[str, ...] = ("UpDecoderBlock2D",),
        block_out_channels: tuple[int, ...] = (64,),
        layers_per_block: int = 1,
        act_fn: str = "silu",
        latent_channels: int = 4,
        norm_num_groups: int = 32,
        sample_size: int = 32,
        scaling_factor: float = 0.18215,
        shift_factor: float | None = None,
        latents_mean: tuple[float, ...] | None = None,
        latents_std: tuple[float, ...] | None = None,
        force_upcast: bool = True,
        use_quant_conv: bool = True,
        use_post_quant_conv: bool = True,
        mid_block_add_attention: bool = True,
    ):
        super().__init__()
        n = len(block_out_channels)
        if list(down_block_types) != ["DownEncoderBlock2D"] * n or list(up_block_types) != ["UpDecoderBlock2D"] * n:
            raise ValueError(f"kinema's AutoencoderKL has DownEncoderBlock2D/UpDecoderBlock2D levels, one per block "
                             f"width; the config asks for {list(down_block_types)} / {list(up_block_types)}")
        if act_fn != "silu":
            raise ValueError(f"kinema's AutoencoderKL uses SiLU; the config asks for act_fn {act_fn!r}")
        channels, groups = tuple(block_out_channels), norm_num_groups
        self.encoder = Encoder(in_channels, latent_channels, channels, layers_per_block, groups, mid_block_add_attention)
        self.decoder = Decoder(latent_channels, out_channels, channels, layers_per_block, groups, mid_block_add_attention)
        self.quant_conv = nn.Conv2d(2 * latent_channels, 2 * latent_channels, 1) if use_quant_conv else None
        self.post_quant_conv = nn.Conv2d(latent_channels, latent_channels, 1) if use_post_quant_conv else None

    def encode(self, x: torch.Tensor) -> EncoderOutput:
        """Images (N, 3, H, W) in [-1, 1] -> `.latent_dist`, the posterior over unscaled latents."""
        h = self.encoder(x)
        if self.quant_conv is not None:
            h = self.quant_conv(h)
        return EncoderOutput(DiagonalGaussian(h))

    def decode(self, z: torch.Tensor) -> DecoderOutput:
        """Unscaled latents (N, C, h, w) -> `.sample`, images (N, 3, H, W)."""
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return DecoderOutput(self.decoder(z))

    def forward(self, x: torch.Tensor, sample_posterior: bool = False, generator: torch.Generator | None = None):
        dist = self.encode(x).latent_dist
        return self.decode(dist.sample(generator) if sample_posterior else dist.mode())
