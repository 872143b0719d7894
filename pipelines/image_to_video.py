"""Image-to-video: a clip that starts on an anchor image (and optionally ends on a last image).

    image = prepare_image("photo.png", 64, 64, policy="crop")        # uint8 (64, 64, 3)
    result = image_to_video(model, "a red circle moving right", image, settings)
    result.frames[0]                                                   # ~ the image

One driver for every family: the model's family turns the image(s) into an `ImageCondition`
(`ModelFamily.image_condition`): what the denoiser sees (`cond`), what KnownFrames re-injects after
every step (`known`) and per-call denoiser inputs. kinema's own (`models/conditions.py`, also Wan's
T2V and TI2V checkpoints) encodes each image as a one-frame video into known latent frames, shows the
denoiser them noise-augmented and re-injects them clean, so frame 0 of the output is exactly
decode(encode(image)). Wan's I2V checkpoints (`models/wan.py`) take a condition video's latents and
a pixel-frame mask as extra channels and CLIP states of the image, with nothing re-injected, as
diffusers' `WanImageToVideoPipeline`.

`image_noise` is the std of the augmentation, in the VAE's scaled latent space (roughly unit
variance), drawn from a generator seeded by the clip's seed. The default comes from the model folder
(`defaults.image_noise`, 0.02 for kinema models, 0 for Wan); training draws the std uniformly from
[0, 0.05] (`DenoiserStage.image_noise`), so values in that range are what the model saw; 0 turns the
augmentation off.
"""

from __future__ import annotations

import os
import time

import numpy as np

from kinema import video_io
from kinema.errors import KinemaError, require

from .common import Result, Settings, decode, encode_prompts, sample
from .loop import Timings

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
    c = model.family.image_condition(model, image, last_image, settings, std, timings)  # 2. the family's condition
    latents = sample(model, text, uncond, settings, timings, cond=c.cond, known=c.known, inputs=c.inputs,
                     progress=progress)  # 3. denoise (known frames, if any, re-injected after every step)
    frames = decode(model, latents, settings, timings)  # 4. decode in chunks
    timings.add("total", time.perf_counter() - t0)
    return Result(frames, latents, timings)
