"""Networks and the adapters that make every backbone, VAE and text encoder look the same to pipelines."""

from .attention import BACKENDS, attention
from .seams import Denoiser, FrameCondition, TextEmbeds
from .text import BUILTIN_MINILM, HFTextEncoder
from .unet import PRESETS, SpaceTimeUNet
from .vae import VAE_PRESETS, FrameVAE, build_autoencoder

__all__ = [
    "BACKENDS", "BUILTIN_MINILM", "PRESETS", "VAE_PRESETS", "Denoiser", "FrameCondition", "FrameVAE",
    "HFTextEncoder", "SpaceTimeUNet", "TextEmbeds", "attention", "build_autoencoder",
]
