"""Networks and the adapters that make every backbone, VAE and text encoder look the same to pipelines.

Names are imported from their modules when first used (PEP 562), so `import kinema` and the `kinema`
command's argument checks do not pay for diffusers and transformers until a model is built or loaded.
"""

import importlib

_WHERE = {
    "BACKENDS": "attention", "attention": "attention",
    "Denoiser": "seams", "FrameCondition": "seams", "TextEmbeds": "seams",
    "BUILTIN_MINILM": "text", "HFTextEncoder": "text",
    "PRESETS": "unet", "SpaceTimeUNet": "unet",
    "VAE_PRESETS": "vae", "FrameVAE": "vae", "build_autoencoder": "vae",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
