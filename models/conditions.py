"""kinema's image-to-video condition: each image VAE-encoded as a one-frame video at its latent frame.

The anchor sits at latent frame 0 and the last image (first-and-last conditioning) at the last latent
frame of a FrameCondition. The denoiser sees these latents *noise-augmented* in its condition channels,
as SVD (`noise_aug_strength`), Wan and CogVideoX do, so a slightly off-distribution photo does not
derail the motion; the driver's KnownFrames hook re-injects the *clean* latents after every step
(`ImageCondition.known`). Frame 0 of the output is therefore exactly decode(encode(image)).

`std` is the augmentation's std in the VAE's scaled latent space (roughly unit variance), drawn from a
generator seeded by the clip's seed (`AUGMENT_STREAM` keeps it apart from the initial noise). A causal
video VAE such as Wan's (temporal compression 4) encodes a one-frame video to one latent frame, the
anchor's slot at latent frame 0, so this condition carries over to it; a family that conditions its
denoiser another way (Wan's channel-concat I2V) builds its own `ImageCondition`.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from kinema.errors import require

from .seams import FrameCondition, ImageCondition, to_unit

AUGMENT_STREAM = 1  # numpy seed sequence [seed, 1]: augmentation noise never equals the initial noise


def to_video(image: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> a one-frame video (1, 3, 1, H, W) in [-1, 1], float32."""
    return to_unit(image[None])


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


def encode_images(model, images: list[np.ndarray], timings) -> list[torch.Tensor]:
    """Each uint8 (H, W, 3) image -> its latents (1, C, 1, h, w), float32 on the model's device."""
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = [model.vae.encode(to_video(im).to(model.device, model.dtype)).float() for im in images]
    timings.add("vae_encode", time.perf_counter() - t0)
    return out


def image_condition(model, first: np.ndarray, last: np.ndarray | None, settings, std: float, timings) -> ImageCondition:
    """kinema's way: the image(s) encoded as known latent frames, noise-augmented for the denoiser, clean to re-inject."""
    latents = encode_images(model, [first] + ([last] if last is not None else []), timings)
    f = model.vae.latent_frames(settings.frames)
    known = anchor_condition(latents[0], latents[1] if len(latents) > 1 else None, f)
    return ImageCondition(augment(known, std, settings.seed), known)
