"""kinema: latent video diffusion — one space-time backbone, one denoising loop, four drivers.

    import kinema
    frames = kinema.generate("a red circle moving right on a blue background", seed=1)
"""

__version__ = "0.1.0"

from .api import animate, estimate_memory, extend, generate, info, load, restyle  # noqa: E402
from .errors import KinemaError  # noqa: E402
from .models.kinema_family import init, save  # noqa: E402

__all__ = ["KinemaError", "animate", "estimate_memory", "extend", "generate", "info", "init", "load", "restyle", "save",
           "__version__"]
