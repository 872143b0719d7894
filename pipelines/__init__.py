"""The denoising loop and the drivers."""
