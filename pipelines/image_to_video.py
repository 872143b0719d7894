"""Image-to-video: an anchor image (and optionally a last image) as known latent frames.

    image = prepare_image("photo.png", 64, 64, policy="crop")        # uint8 (64, 64, 3)
    result = image_to_video(model, "a red circle moving right", image, settings)
    result.frames[0]                                                   # ~ the image

Each image is encoded by the VAE as a one-frame video and placed in a FrameCondition:
the anchor at latent frame 0, the last image (first-and-last conditioning) at the last
latent frame. The denoiser sees these latents *noise-augmented* in its condition
channels, as SVD (`noise_aug_strength`), Wan and CogVideoX do, so a slightly
off-distribution photo does not derail the motion; the KnownFrames hook re-injects
the *clean* latents after every step. Frame 0 of the output is therefore exactly
decode(encode(image)): the pipeline adds no error beyond the VAE's reconstruction.

`image_noise` is the std of that augmentation, in the VAE's scaled latent space
(roughly unit variance), drawn from a generator seeded by the clip's seed. The
default comes from the model folder (`defaults.image_noise`, 0.02 for kinema models);
training draws the std uniformly from [0, 0.05] (`DenoiserStage.image_noise`), so
values in that range are what the model saw; 0 turns the augmentation off.

The condition is latents (B, C, F, h, w) + a per-latent-frame mask, so it carries over to
causal video VAEs such as Wan's (temporal compression 4): a one-frame video encodes to
one latent frame, which is the anchor's slot at latent frame 0; an adapter that needs
another layout (Wan's image-to-video concatenates its own mask channels) builds it from
this condition behind the denoiser seam.
"""

from __future__ import annotations

import os
import time

import numpy as np
import torch

from kinema import video_io
from kinema.errors import KinemaError, require
from kinema.models.seams import FrameCondition

from .common import Result, Settings, decode, encode_prompts, sample
from .loop import Timings

AUGMENT_STREAM = 1  # numpy seed sequence [seed, 1]: augmentation noise never equals the initial noise
MAX_IMAGE_NOISE = 1.0  # larger stds drown the image in the condition channels


#################################################################################
#                                 Image input                                   #
#################################################################################


def as_rgb(image, name: str = "image") -> np.ndarray:
    """A path, uint8 (H, W, 3) array or PIL image as uint8 (H, W, 3); file rules as `video_io.read_image`."""
    from PIL import Image, ImageOps

    if isinstance(image, (str, os.PathLike)):
        return video_io.read_image(image, max_pixels=video_io.MAX_PIXELS)
    if isinstance(image, Image.Image):
        _check_size(image.width, image.height, name)
        return video_io._to_rgb(ImageOps.exif_transpose(image), video_io.WHITE)  # the same conversions as files
    if isinstance(image, np.ndarray):
        ok = image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        require(ok, f"{name} must be a uint8 RGB array (H, W, 3); got {image.dtype} {tuple(image.shape)}")
        _check_size(image.shape[1], image.shape[0], name)
        return image
    raise KinemaError(f"{name} must be a file path, a PIL image or a uint8 (H, W, 3) array; got {type(image).__name__}")


def _check_size(width: int, height: int, name: str) -> None:
    require(width > 0 and height > 0, f"{name} has zero size ({width}x{height})")
    limit = video_io.MAX_PIXELS
    require(width * height <= limit, f"{name} is {width}x{height}, over the limit of {limit} pixels; downscale it")


def prepare_image(image, height: int, width: int, policy: str = "crop", name: str = "image") -> np.ndarray:
    """Read and resize an image to the clip's size by `policy` (crop, pad, stretch): uint8 (height, width, 3)."""
    return video_io.resize_frames(as_rgb(image, name), height, width, policy)


def check_image_noise(std: float) -> float:
    """The augmentation std as a float in [0, MAX_IMAGE_NOISE], or a one-line error."""
    ok = isinstance(std, (int, float)) and np.isfinite(std) and 0 <= std <= MAX_IMAGE_NOISE
    require(ok, f"--image-noise must be a number in [0, {MAX_IMAGE_NOISE:g}] (got {std}); the model's default is 0.02")
    return float(std)


def check_frame_conditions(trained: list[str], last_image: bool) -> str | None:
    """Refuse first-and-last conditioning a model was not trained for; a warning line when "first" is missing."""
    if last_image:
        require("first_last" in trained, "--last-image needs a model trained for first-and-last-frame conditioning "
                f"(this model's frame conditions: {', '.join(trained) or 'none'}); "
                "drop --last-image or use another --model")
    if "first" not in trained:
        return ("this model was not trained with a first-frame condition; frame 0 will be the image "
                "but the motion may ignore it (train with configs/default.yaml for image-to-video)")
    return None


#################################################################################
#                                 The condition                                 #
#################################################################################


def to_video(image: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> a one-frame video (1, 3, 1, H, W) in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(image)).float() / 127.5 - 1  # (H, W, 3)
    return x.permute(2, 0, 1)[None, :, None]  # (1, 3, 1, H, W)


def anchor_condition(first: torch.Tensor, last: torch.Tensor | None, latent_frames: int) -> FrameCondition:
    """Known latent frames: `first` (1, C, 1, h, w) at frame 0 and, if given, `last` at the final frame."""
    b, c, _, h, w = first.shape
    latents = first.new_zeros(b, c, latent_frames, h, w)
    mask = first.new_zeros(b, latent_frames)
    latents[:, :, :1], mask[:, 0] = first, 1
    if last is not None:
        require(latent_frames >= 2, "--last-image needs at least 2 latent frames; raise --frames")
        latents[:, :, -1:], mask[:, -1] = last, 1
    return FrameCondition(latents, mask)


def augment(cond: FrameCondition, std: float, seed: int) -> FrameCondition:
    """The condition with Gaussian noise of `std` on its known frames, from a generator seeded by `seed`."""
    if std == 0:
        return cond
    rng = np.random.default_rng([int(seed), AUGMENT_STREAM])
    noise = torch.from_numpy(rng.standard_normal(tuple(cond.latents.shape), dtype=np.float32))
    m = cond.mask[:, None, :, None, None]  # (B, 1, F, 1, 1)
    return FrameCondition(cond.latents + std * noise.to(cond.latents) * m, cond.mask)


def encode_images(model, images: list[np.ndarray], timings: Timings) -> list[torch.Tensor]:
    """Each uint8 (H, W, 3) image -> its latents (1, C, 1, h, w), float32 on the model's device."""
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = [model.vae.encode(to_video(im).to(model.device, model.dtype)).float() for im in images]
    timings.add("vae_encode", time.perf_counter() - t0)
    return out


#################################################################################
#                                    Driver                                     #
#################################################################################


def image_to_video(
    model,
    prompt: str,
    image: np.ndarray,
    settings: Settings,
    last_image: np.ndarray | None = None,
    image_noise: float | None = None,
    progress: bool = True,
) -> Result:
    """A clip that starts on `image` (and ends on `last_image`), both uint8 at the clip's size."""
    shape = (settings.height, settings.width, 3)
    for name, im in (("image", image), ("last image", last_image)):
        if im is not None:
            require(im.shape == shape, f"the {name} is {im.shape}, not {shape}; resize it with prepare_image first")
    std = check_image_noise(model.defaults["image_noise"] if image_noise is None else image_noise)
    timings = Timings()
    t0 = time.perf_counter()
    text, uncond = encode_prompts(model, prompt, settings, timings)  # 1. encode prompt (and negative)
    images = [image] + ([last_image] if last_image is not None else [])
    latents = encode_images(model, images, timings)  # 2. encode the image(s) with the VAE
    f = model.vae.latent_frames(settings.frames)
    known = anchor_condition(latents[0], latents[1] if len(latents) > 1 else None, f)  # 3. known latent frames
    cond = augment(known, std, settings.seed)  # 4. noise-augmented copy for the denoiser's condition channels
    latents = sample(model, text, uncond, settings, timings, cond=cond, known=known, progress=progress)  # 5. denoise
    frames = decode(model, latents, settings, timings)  # 6. decode in chunks
    timings.add("total", time.perf_counter() - t0)
    return Result(frames, latents, timings)
