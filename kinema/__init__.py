"""kinema: latent video diffusion — one space-time backbone, one denoising loop, four drivers.

    import kinema
    frames = kinema.generate("a red circle moving right on a blue background", seed=1)

The functions are imported on first use (PEP 562), so `import kinema.cli` (the `kinema` command)
parses its arguments and handles signals before torch is loaded.
"""

import importlib

__version__ = "0.1.0"

_WHERE = {
    "animate": "api", "estimate_memory": "api", "extend": "api", "generate": "api", "info": "api", "load": "api",
    "restyle": "api", "KinemaError": "errors", "init": "models.kinema_family", "save": "models.kinema_family",
}

__all__ = ["KinemaError", "animate", "estimate_memory", "extend", "generate", "info", "init", "load", "restyle", "save",
           "__version__"]


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
