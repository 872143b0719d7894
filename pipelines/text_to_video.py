"""Text-to-video: noise -> denoise -> decode."""

from __future__ import annotations

import time

from .common import Result, Settings, decode, encode_prompts, sample
from .loop import Timings


def text_to_video(model, prompt: str, settings: Settings, progress: bool = True) -> Result:
    """Generate a clip for `prompt` with a loaded model."""
    timings = Timings()
    t0 = time.perf_counter()
    text, uncond = encode_prompts(model, prompt, settings, timings)  # 1. encode prompt (and negative)
    latents = sample(model, text, uncond, settings, timings, progress=progress)  # 2-4. noise, schedule, denoise
    frames = decode(model, latents, settings, timings)  # 5. decode in chunks
    timings.add("total", time.perf_counter() - t0)
    return Result(frames, latents, timings)
