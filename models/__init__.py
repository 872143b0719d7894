"""Networks and the adapters that make every backbone, VAE and text encoder look the same to pipelines.

The networks, VAE and text encoder are imported when first used (PEP 562), so `import kinema` and the
`kinema` command's argument checks do not pay for diffusers and transformers until a model is built
or loaded.
"""

import importlib
import logging

# torchao (the `quant` extra) announces CUDA kernels it cannot load, torch warns as it registers torchao's enums,
# and diffusers' torchao bridge warns of a version gap, all on import: kinema's output keeps none of it
for _name in ("torchao", "torch.utils._pytree", "diffusers.quantizers.torchao.torchao_quantizer"):
    logging.getLogger(_name).setLevel(logging.ERROR)

from .attention import BACKENDS, attention  # the function, bound over the submodule's name  # noqa: E402
from .seams import Denoiser, FrameCondition, TextEmbeds  # noqa: E402

_WHERE = {
    "BUILTIN_MINILM": "text", "HFTextEncoder": "text",
    "PRESETS": "unet", "SpaceTimeUNet": "unet",
    "VAE_PRESETS": "vae", "FrameVAE": "vae", "build_autoencoder": "vae",
}

__all__ = [
    "BACKENDS", "BUILTIN_MINILM", "PRESETS", "VAE_PRESETS", "Denoiser", "FrameCondition", "FrameVAE",
    "HFTextEncoder", "SpaceTimeUNet", "TextEmbeds", "attention", "build_autoencoder",
]


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
