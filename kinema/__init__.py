"""kinema: latent video diffusion — one space-time backbone, one denoising loop, four drivers.

    import kinema
    frames = kinema.generate("a red circle moving right on a blue background", seed=1)
"""

__version__ = "0.1.0"

from .api import animate, estimate_memory, extend, generate, load, peek  # noqa: E402
from .api import restyle  # noqa: E402
from .errors import KinemaError  # noqa: E402
from .loading import init, save  # noqa: E402

__all__ = ["KinemaError", "animate", "estimate_memory", "extend", "generate", "init", "load", "peek", "restyle", "save", "__version__"]
