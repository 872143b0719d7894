"""kinema: latent video diffusion."""
__version__ = "0.1.0"
