"""Wan 2.1 / 2.2 diffusers folders behind kinema's three seams, in exact parity with diffusers' Wan pipelines.

    # Wan2.1-T2V-1.3B-Diffusers / -14B: text-to-video (and extend, restyle, long clips), 480x832, 81 frames
    kinema generate "a cat surfing a wave" --model Wan2.1-T2V-1.3B-Diffusers -o cat.mp4
    kinema restyle clip.mp4 "a watercolour painting" --model Wan2.1-T2V-1.3B-Diffusers -o paint.mp4
    # Wan2.1-I2V-14B-480P-Diffusers (CLIP + channel condition): animate only
    kinema animate cat.png "the cat turns its head" --model Wan2.1-I2V-14B-480P-Diffusers --offload model -o cat.mp4
    # Wan2.2-TI2V-5B-Diffusers: text- and image-to-video, 704x1280, 121 frames at 24 fps
    kinema generate "a cat surfing a wave" --model Wan2.2-TI2V-5B-Diffusers -o cat.mp4
    kinema animate cat.png "the cat turns its head" --model Wan2.2-TI2V-5B-Diffusers -o cat.mp4
    # Wan2.2-T2V-A14B-Diffusers: two 14B experts (high noise, then low noise), 40 steps, guidance 4
    kinema generate "a cat surfing a wave" --model Wan2.2-T2V-A14B-Diffusers --offload model -o cat.mp4
    # memory: the estimate for this size, resident and with each offload mode
    kinema info Wan2.1-T2V-1.3B-Diffusers --frames 81 --height 480 --width 832

On CUDA the transformer(s) and UMT5 run in bfloat16 (`--dtype auto`), the VAE and CLIP in float32, as
diffusers' examples load them. `--offload model` keeps every component on the CPU and moves the one that
runs to the GPU (text encoder, CLIP, transformer, transformer_2, VAE in turn: diffusers'
enable_model_cpu_offload); `--offload sequential` moves one layer at a time (enable_sequential_cpu_offload:
least memory, slowest). `--attention sdpa` (PyTorch's flash / memory-efficient kernels) or `xformers`.
Clips have 4k+1 frames; sizes are multiples of 16 (Wan 2.1) or 32 (Wan 2.2 TI2V).

A Wan folder (`model_index.json`, `transformer/`, optional `transformer_2/`, `vae/`, `text_encoder/`,
`tokenizer/`, `scheduler/`, optional `image_encoder/` + `image_processor/`) is read with fixed classes
(never the class names of the index, never remote code), safetensors only, `local_files_only=True`.

How each piece meets the seams:
- text: UMT5, the prompt cleaned as diffusers does but without ftfy (html entities, whitespace), tokens
  padded to `max_length` (512, Wan's text length) and the states past each prompt's end set to zero;
- VAE: `AutoencoderKLWan` with the checkpoint's `latents_mean` / `latents_std` normalisation; time is
  compressed by 4 causally, so clips have 4k+1 frames (81 -> 21 latent frames); decoding runs latent
  frame by latent frame with the causal cache kept, so chunks are exactly the whole decode;
- denoiser: `WanTransformer3DModel`; Wan 2.2's two experts (`transformer` at t >= boundary_ratio x 1000,
  `transformer_2` below) are chosen inside `predict` from the timestep, so the one loop runs them; a step
  cache (`--cache`) runs as diffusers' cache hooks registered on the transformer for one call (`models/cache.py`);
- frame condition: Wan 2.1 image-to-video concatenates a 4-channel pixel-frame mask and the latents of
  the condition video (the image followed by zero, mid-grey, frames) to the input; `image_condition` here
  builds that condition, and the CLIP image states when the folder has an image encoder, for the one
  image-to-video driver (`pipelines/image_to_video.py`). Wan 2.2 TI2V-5B (`expand_timesteps`) puts the
  known latent frames into the input and gives their tokens timestep 0, so kinema's known-frame
  mechanism (first frame, continuation) maps onto it directly.

Noise and parity: diffusers draws the initial latents with `randn_tensor(shape, generator)`; with a CPU
`torch.Generator` seeded by the seed this is `torch.randn(shape, generator=g)`, which is exactly
`pipelines.common.initial_noise`. So the same seed gives the same noise in both, on every device, and
the parity tests pass seeds, not latents. Differences from diffusers that remain by design: classifier-
free guidance runs cond and uncond in one batch and combines them in float32 (diffusers: two forwards,
combined in the transformer's dtype; identical in float32), and one guidance scale serves both experts
(diffusers' `guidance_scale_2` is not offered).
"""

from __future__ import annotations

import html
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kinema.errors import KinemaError, require

from .family import (Model, ModelDefaults, ModelFamily, ModelInfo, meta_model, offload_hooks, offload_lines, params_line,
                     quiet_libraries, register, safetensors_parameters, weight_shapes)
from . import conditions
from .cache import transformer_call
from .runtime import DIFFUSERS_ATTENTION, load_transformer
from .seams import DenoiserInputs, FrameCondition, ImageCondition, TextEmbeds

INDEX = "model_index.json"
PIPELINES = ("WanPipeline", "WanImageToVideoPipeline", "WanVideoToVideoPipeline")
# component -> the classes kinema accepts for it (it loads each with its own fixed class, never by name)
CLASSES = {
    "transformer": ("WanTransformer3DModel",),
    "transformer_2": ("WanTransformer3DModel",),
    "vae": ("AutoencoderKLWan",),
    "text_encoder": ("UMT5EncoderModel", "T5EncoderModel"),
    "tokenizer": None,  # any tokenizer AutoTokenizer reads from local files (T5TokenizerFast for real folders)
    "scheduler": ("UniPCMultistepScheduler", "FlowMatchEulerDiscreteScheduler"),
    "image_encoder": ("CLIPVisionModel", "CLIPVisionModelWithProjection"),
    "image_processor": ("CLIPImageProcessor", "CLIPImageProcessorFast", "CLIPImageProcessorPil"),
}
REQUIRED = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
WEIGHTED = ("transformer", "transformer_2", "vae", "text_encoder", "image_encoder")
TEXT_LENGTH = 512  # Wan's text length; the I2V attention splits image tokens off at len - 512
ATTENTION = {"sdpa": "native", "xformers": "xformers"}  # kinema backend -> diffusers attention backend

# What the checkpoints' model cards use (a diffusers folder does not say): family -> defaults
FAMILY_DEFAULTS = {
    "t2v": dict(frames=81, height=480, width=832, fps=16, steps=50, guidance=5.0),
    "i2v": dict(frames=81, height=480, width=832, fps=16, steps=50, guidance=5.0),
    "ti2v": dict(frames=121, height=704, width=1280, fps=24, steps=50, guidance=5.0),
    "a14b": dict(frames=81, height=480, width=832, fps=16, steps=40, guidance=4.0),
}

#################################################################################
#                                 Folder checks                                 #
#################################################################################


def read_wan_index(path: Path) -> dict:
    """The folder's model_index.json, checked: a Wan pipeline, its components inside the folder, safetensors."""
    try:
        raw = json.loads((path / INDEX).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise KinemaError(f"{path / INDEX} is not valid JSON ({e}); re-download the checkpoint") from None
    cls = raw.get("_class_name") if isinstance(raw, dict) else None
    require(cls in PIPELINES, f"{path} is a diffusers folder of {cls!r}, not a Wan pipeline; kinema reads "
                              f"{', '.join(PIPELINES)} folders")
    root = path.resolve()
    components = {}
    for name, entry in raw.items():
        if name.startswith("_") or not isinstance(entry, list):
            continue
        sub = (path / name).resolve()
        require(sub.parent == root and "/" not in name and "\\" not in name,
                f"{path / INDEX} names a component {name!r} outside the folder; refusing to load it")
        if len(entry) != 2 or entry[0] is None or entry[1] is None or name not in CLASSES:
            continue  # an absent optional component ([null, null]) or one kinema does not use
        allowed = CLASSES[name]
        require(allowed is None or entry[1] in allowed,
                f"{path} has a {name} of class {entry[1]}; a Wan folder needs {' or '.join(allowed or ())}")
        components[name] = entry[1]
    for name in REQUIRED:
        require(name in components, f"Wan folder {path} is incomplete: model_index.json lists no {name}")
    for name in components:
        require((path / name).is_dir(), f"Wan folder {path} is incomplete: missing component folder {name}/")
        if name in WEIGHTED:
            require((path / name / "config.json").is_file(), f"Wan folder {path} is incomplete: {name}/config.json is missing")
            _check_weights(path / name)
    if "image_encoder" in components:
        require("image_processor" in components, f"Wan folder {path} has an image_encoder but no image_processor")
    ratio = raw.get("boundary_ratio")
    if ratio is not None:
        require(isinstance(ratio, (int, float)) and 0 < ratio < 1, f"{path / INDEX}: boundary_ratio {ratio} is not in (0, 1)")
        require("transformer_2" in components, f"{path / INDEX} sets boundary_ratio but the folder has no transformer_2/")
    return dict(raw=raw, pipeline=cls, components=components, boundary_ratio=ratio,
                expand_timesteps=bool(raw.get("expand_timesteps", False)))


def _check_weights(folder: Path) -> None:
    """Safetensors present (all shards of a sharded checkpoint); pickles alone are refused."""
    files = list(folder.glob("*.safetensors"))
    for index in folder.glob("*.safetensors.index.json"):
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (OSError, json.JSONDecodeError, KeyError, AttributeError) as e:
            raise KinemaError(f"{index} is not a valid shard index ({e}); re-download the checkpoint") from None
        outside = sorted(s for s in shards if (folder / s).resolve().parent != folder.resolve())
        require(not outside, f"{index} names weight files outside {folder}: {', '.join(outside[:3])}; refusing to load them")
        missing = sorted(s for s in shards if not (folder / s).is_file())
        require(not missing, f"{folder} is missing weight shards: {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
    if not files:
        pickles = [p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt")]
        why = f" (only pickle weights: {', '.join(pickles)}; kinema loads safetensors only)" if pickles else ""
        raise KinemaError(f"{folder} has no *.safetensors weights{why}")


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise KinemaError(f"{path} is not valid JSON ({e}); re-download the checkpoint") from None


def family(wan: dict, transformer: dict, vae: dict) -> str:
    """t2v, i2v (channel-concat condition), ti2v (Wan 2.2 5B, expand_timesteps) or a14b (two experts)."""
    if wan["expand_timesteps"]:
        return "ti2v"
    if wan["boundary_ratio"] is not None:
        return "a14b"
    return "i2v" if transformer["in_channels"] > vae["z_dim"] else "t2v"


def frame_conditions(fam: str, transformer: dict, vae: dict, has_clip: bool) -> list[str]:
    """Which frame conditions the checkpoint was trained for (kinema's names: first, first_last)."""
    if fam == "ti2v":
        return ["first"]
    if transformer["in_channels"] == vae["z_dim"]:
        return []  # text-only: known frames reach it only by re-injection
    # a CLIP checkpoint takes a last image only with the FLF2V position embedding for two images
    last = not has_clip or transformer.get("pos_embed_seq_len") is not None
    return ["first", "first_last"] if last else ["first"]


def describe(path: Path) -> ModelInfo:
    """The folder's configs and kinema's view of them (defaults, sizes, tasks), without loading weights."""
    wan = read_wan_index(path)
    tr = _json(path / "transformer" / "config.json")
    vae = _json(path / "vae" / "config.json")
    sched = _json(path / "scheduler" / "scheduler_config.json")
    fam = family(wan, tr, vae)
    spatial = int(vae.get("scale_factor_spatial") or 2 ** len(vae.get("temperal_downsample", [0, 0, 0])))
    temporal = int(vae.get("scale_factor_temporal") or 2 ** sum(vae.get("temperal_downsample", [False, True, True])))
    patch = tr.get("patch_size", [1, 2, 2])
    shift = float(sched.get("flow_shift", sched.get("shift", 1.0)) or 1.0)
    kind = "unipc" if sched.get("_class_name") == "UniPCMultistepScheduler" else "euler"
    defaults = ModelDefaults(**FAMILY_DEFAULTS[fam], shift=shift, image_noise=0.0, scheduler=kind)
    conds = frame_conditions(fam, tr, vae, "image_encoder" in wan["components"])
    index = dict(format="diffusers-wan", pipeline=wan["pipeline"], family=fam, defaults=defaults.as_dict(),
                 frame_conditions=conds, boundary_ratio=wan["boundary_ratio"],
                 expand_timesteps=wan["expand_timesteps"], components=wan["components"],
                 text_encoder="UMT5 (text_encoder/)", preset=f"wan-{fam}")
    params = {name: safetensors_parameters(path / name)[0] for name in WEIGHTED if name in wan["components"]}
    return ModelInfo(family="wan", path=path, name=wan["pipeline"], defaults=defaults, parameters=params,
                     tasks=tasks(tr, vae), frame_conditions=tuple(conds), size_multiple=spatial * int(patch[1]),
                     spatial_compression=spatial, temporal_compression=temporal, latent_channels=vae["z_dim"],
                     configs=dict(denoiser=tr, vae=vae, scheduler=sched), index=index)


def tasks(transformer: dict, vae: dict) -> tuple[str, ...]:
    """What the checkpoint can do: an image-conditioned (channel-concat) one only animates."""
    if transformer["in_channels"] > vae["z_dim"]:
        return ("animate",)
    return ("generate", "extend", "restyle", "animate")


#################################################################################
#                                   Text seam                                   #
#################################################################################


def clean_prompt(text: str) -> str:
    """diffusers' Wan prompt_clean without ftfy: html entities (twice), then whitespace runs to one space."""
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


class UMT5TextEncoder(torch.nn.Module):
    """UMT5 token states, padded to Wan's text length with zeros past each prompt -> TextEmbeds."""

    def __init__(self, tokenizer, model, max_length: int = TEXT_LENGTH):
        super().__init__()
        self.tokenizer = tokenizer
        self.model = model.eval().requires_grad_(False)
        self.max_length = max_length
        self.execution_device = None  # set when the weights are offloaded and run elsewhere

    @property
    def dim(self) -> int:
        return self.model.config.d_model

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> TextEmbeds:
        tok = self.tokenizer([clean_prompt(p) for p in prompts], padding="max_length", max_length=self.max_length,
                             truncation=True, add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
        device = self.execution_device or next(self.model.parameters()).device
        ids, mask = tok.input_ids.to(device), tok.attention_mask.to(device)
        hidden = self.model(ids, mask).last_hidden_state  # (B, L, D)
        keep = mask.bool()
        hidden = torch.where(keep[..., None], hidden, torch.zeros((), dtype=hidden.dtype, device=hidden.device))
        return TextEmbeds(hidden, keep)


#################################################################################
#                                   VAE seam                                    #
#################################################################################


class WanVAE(torch.nn.Module):
    """AutoencoderKLWan: (B, 3, 4k+1, H, W) in [-1, 1] <-> normalised latents (B, C, k+1, h, w).

    Normalisation as diffusers' Wan pipelines: (mode - latents_mean) * (1 / latents_std).
    """

    def __init__(self, autoencoder, decode_chunk_size: int = 16):
        super().__init__()
        self.autoencoder = autoencoder.eval().requires_grad_(False)
        self.decode_chunk_size = decode_chunk_size
        cfg = autoencoder.config
        self.register_buffer("mean", torch.tensor(cfg.latents_mean).view(1, cfg.z_dim, 1, 1, 1), persistent=False)
        self.register_buffer("inv_std", 1.0 / torch.tensor(cfg.latents_std).view(1, cfg.z_dim, 1, 1, 1), persistent=False)

    @property
    def spatial_compression(self) -> int:
        cfg = self.autoencoder.config
        return int(getattr(cfg, "scale_factor_spatial", None) or 2 ** len(cfg.temperal_downsample))

    @property
    def temporal_compression(self) -> int:
        cfg = self.autoencoder.config
        return int(getattr(cfg, "scale_factor_temporal", None) or 2 ** sum(cfg.temperal_downsample))

    @property
    def latent_channels(self) -> int:
        return self.autoencoder.config.z_dim

    @property
    def dtype(self) -> torch.dtype:
        return self.autoencoder.dtype

    def latent_frames(self, frames: int) -> int:
        return (frames - 1) // self.temporal_compression + 1

    def check_frames(self, frames: int) -> None:
        t = self.temporal_compression
        if frames < 1 or (frames - 1) % t:
            lo = max(1, (frames - 1) // t * t + 1)
            raise KinemaError(f"this Wan VAE takes {t}k+1 frames (1, {t + 1}, {2 * t + 1}, ... 81, ...); "
                              f"got {frames}, use {lo} or {lo + t}")

    def encode(self, video: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
        """Video (B, 3, F, H, W) in [-1, 1], F = 4k+1 -> normalised latents (B, C, k+1, h, w), float32 (the mode)."""
        self.check_frames(video.shape[2])
        s = self.spatial_compression
        require(video.shape[-2] % s == 0 and video.shape[-1] % s == 0,
                f"frame size {video.shape[-1]}x{video.shape[-2]} is not a multiple of the VAE's {s}")
        dist = self.autoencoder.encode(video.to(self.dtype)).latent_dist
        z = (dist.sample(generator) if sample else dist.mode()).float()
        return (z - self.mean.to(z.device)) * self.inv_std.to(z.device)

    def denormalise(self, latents: torch.Tensor) -> torch.Tensor:
        z = latents.to(self.dtype)
        return z / self.inv_std.to(z) + self.mean.to(z)

    @torch.no_grad()
    def decode_chunks(self, latents: torch.Tensor, chunk_size: int | None = None):
        """Yield video (B, 3, f, H, W) in [-1, 1] for `chunk_size` latent frames at a time.

        The causal decoder runs one latent frame at a time with its cache, as `AutoencoderKLWan._decode`
        does, so the chunks concatenate to exactly the whole decode while memory stays per chunk.
        Tiled decoding (`enable_tiling`) decodes the clip whole and yields it once.
        """
        ae = self.autoencoder
        z = self.denormalise(latents)
        if getattr(ae, "use_tiling", False) or not hasattr(ae, "clear_cache"):  # tiled, or another diffusers
            yield ae.decode(z).sample
            return
        if hasattr(ae, "_hf_hook") and hasattr(ae._hf_hook, "pre_forward"):
            ae._hf_hook.pre_forward(ae)  # offload hooks: diffusers' apply_forward_hook, as `decode` would
        n = chunk_size or self.decode_chunk_size
        ae.clear_cache()
        x = ae.post_quant_conv(z)
        out = []
        for i in range(x.shape[2]):
            ae._conv_idx = [0]
            out.append(ae.decoder(x[:, :, i : i + 1], feat_cache=ae._feat_map, feat_idx=ae._conv_idx, first_chunk=i == 0))
            if len(out) == n or i == x.shape[2] - 1:
                y = torch.cat(out, 2)
                if ae.config.patch_size is not None:
                    from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify

                    y = unpatchify(y, patch_size=ae.config.patch_size)
                yield y.clamp(-1, 1)
                out = []
        ae.clear_cache()

    def decode(self, latents: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
        return torch.cat(list(self.decode_chunks(latents, chunk_size)), dim=2)


#################################################################################
#                                 Denoiser seam                                 #
#################################################################################


@dataclass
class ImageContext:
    """What Wan's image-to-video adds to every forward besides the frame condition."""

    image_embeds: torch.Tensor | None = None  # (N, L, D) CLIP penultimate states of the N images of one sample
    mask: torch.Tensor | None = None  # (1, 4, F, 1, 1) pixel-frame mask in Wan's layout; None: from cond.mask


class WanDenoiser(torch.nn.Module):
    """WanTransformer3DModel(s) behind the Denoiser seam: velocity for (latents, timestep, text, cond)."""

    lora_family = "wan"  # LoRAs in diffusers' Wan layouts (`models/lora.py`), loaded onto `transformer`

    def __init__(self, transformer, transformer_2=None, boundary_ratio: float | None = None,
                 expand_timesteps: bool = False, num_train_timesteps: int = 1000):
        super().__init__()
        self.transformer = transformer.eval().requires_grad_(False)
        self.transformer_2 = None if transformer_2 is None else transformer_2.eval().requires_grad_(False)
        self.boundary = None if boundary_ratio is None else boundary_ratio * num_train_timesteps
        self.expand_timesteps = expand_timesteps

    @property
    def config(self):
        return self.transformer.config

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.dtype

    @property
    def condition_channels(self) -> int:
        """Input channels beyond the latents: 4 mask + C image latents for Wan 2.1 image-to-video."""
        return self.config.in_channels - self.config.out_channels

    def expert(self, timestep: torch.Tensor):
        """Wan 2.2's mixture of experts: `transformer` for high noise, `transformer_2` below the boundary."""
        if self.boundary is None or bool(timestep.reshape(-1)[0] >= self.boundary):
            return self.transformer
        return self.transformer_2

    def predict(self, latents: torch.Tensor, timestep: torch.Tensor, text: TextEmbeds, cond: FrameCondition | None = None,
                inputs: DenoiserInputs | None = None) -> torch.Tensor:
        """Velocity for the latents; `inputs.image` is the image context of Wan's I2V (CLIP states, pixel mask),
        `inputs.cache` a step cache run as diffusers' hooks on the transformer."""
        inputs = inputs or DenoiserInputs()
        require(inputs.injection is None, "Wan's transformer cannot take the source's layout (structure injection); "
                                          "pass --structure 0")
        ctx = inputs.image
        model = self.expert(timestep)
        b = latents.shape[0]
        t = timestep.reshape(-1).expand(b)
        x = latents
        if self.expand_timesteps:  # TI2V: known frames enter clean and their tokens get timestep 0
            x, t = self.known_frames_input(latents, t, cond)
        elif self.condition_channels:  # I2V: mask and condition latents as extra channels
            x = torch.cat([latents, self.condition_input(latents, cond, ctx)], dim=1)  # (B, C + 4 + C, F, h, w)
        image = None
        if model.config.image_dim is not None:
            require(ctx is not None and ctx.image_embeds is not None,
                    "this Wan checkpoint needs the CLIP states of an image; run it through `kinema animate`")
            image = ctx.image_embeds.repeat(b, 1, 1).to(latents.device, self.dtype)
        call = dict(hidden_states=x.to(self.dtype), timestep=t, encoder_hidden_states=text.hidden.to(self.dtype),
                    encoder_hidden_states_image=image, return_dict=False)
        if inputs.cache is not None and inputs.cache.spec.method != "none":  # diffusers' hooks, for this call only
            return transformer_call(model, inputs.cache, float(timestep.reshape(-1)[0]), **call)[0]
        return model(**call)[0]

    def known_frames_input(self, latents, t, cond):
        """(input, per-token timesteps (B, F*h*w/4)) with known latent frames clean at timestep 0."""
        b, _, f, h, w = latents.shape
        _, ph, pw = self.config.patch_size
        keep = torch.ones(b, 1, f, 1, 1, device=latents.device)  # diffusers' first_frame_mask: 1 where it denoises
        x = latents
        if cond is not None:
            keep = 1 - cond.mask[:, None, :, None, None].float().to(latents.device)
            k = keep.to(latents.dtype)  # 0 / 1: an exact selection in any dtype
            x = (1 - k) * cond.latents.to(latents) + k * latents
        tokens = keep[:, 0].expand(b, f, h // ph, w // pw)  # (B, F, h', w'), float32 like the timesteps
        return x, (tokens * t.float()[:, None, None, None]).flatten(1)

    def condition_input(self, latents, cond, ctx: ImageContext | None = None):
        """Wan's image condition (B, 4 + C, F, h, w): the pixel-frame mask, then the condition latents."""
        b, c, f, h, w = latents.shape
        if cond is None:
            return latents.new_zeros(b, 4 + c, f, h, w)
        if ctx is not None and ctx.mask is not None:
            mask = ctx.mask.to(latents).expand(b, 4, f, h, w)
        else:  # a known latent frame: all of its pixel frames known
            mask = cond.mask[:, None, :, None, None].to(latents).expand(b, 4, f, h, w)
        return torch.cat([mask, cond.latents.to(latents)], dim=1)


#################################################################################
#                                Image to video                                 #
#################################################################################


def pixel_mask(frames: int, last: bool, temporal: int = 4) -> torch.Tensor:
    """Wan's mask of known pixel frames (frame 0, and the last), in latent layout (1, 4, (frames-1)/4+1, 1, 1)."""
    m = torch.zeros(1, 1, frames, 1, 1)
    m[:, :, 0] = 1
    if last:
        m[:, :, -1] = 1
    m = torch.cat([m[:, :, :1].repeat_interleave(temporal, dim=2), m[:, :, 1:]], dim=2)  # (1, 1, 4 F', 1, 1)
    return m.view(1, -1, temporal, 1, 1).transpose(1, 2)  # (1, 4, F', 1, 1)


def condition_video(model, image: np.ndarray, last_image: np.ndarray | None, frames: int) -> FrameCondition:
    """The VAE latents of [image, zero frames ..., (last image)] and the known latent frames, as Wan's I2V."""
    first = conditions.to_video(image)  # (1, 3, 1, H, W)
    video = torch.zeros(1, 3, frames, *first.shape[-2:])
    video[:, :, :1] = first
    if last_image is not None:
        video[:, :, -1:] = conditions.to_video(last_image)
    with torch.inference_mode():
        latents = model.vae.encode(video.to(model.device)).float()
    mask = latents.new_zeros(1, latents.shape[2])
    mask[:, 0] = 1
    if last_image is not None:
        mask[:, -1] = 1
    return FrameCondition(latents, mask)


def clip_states(model, images: list[np.ndarray]) -> torch.Tensor:
    """CLIP's penultimate hidden states of the images (N, L, D), as diffusers' `encode_image`."""
    from PIL import Image

    pixels = model.image_processor(images=[Image.fromarray(im) for im in images], return_tensors="pt").pixel_values
    enc = model.image_encoder
    device = getattr(model.text_encoder, "execution_device", None) or next(enc.parameters()).device
    with torch.inference_mode():
        return enc(pixel_values=pixels.to(device, enc.dtype), output_hidden_states=True).hidden_states[-2]


def image_condition(model, first: np.ndarray, last: np.ndarray | None, settings, std: float, timings) -> ImageCondition:
    """Wan's image-to-video condition: kinema's known frames for T2V / TI2V checkpoints, Wan 2.1's I2V for the rest.

    T2V and TI2V checkpoints (no condition channels) take kinema's (`conditions.image_condition`; TI2V's
    expand_timesteps is its known-frame condition exactly). I2V checkpoints take the latents of the
    condition video and the pixel-frame mask as extra input channels and the images' CLIP states, with
    nothing re-injected after a step, as `WanImageToVideoPipeline`.
    """
    if not model.denoiser.condition_channels:
        return conditions.image_condition(model, first, last, settings, std, timings)
    t0 = time.perf_counter()
    images = [first] + ([last] if last is not None else [])
    embeds = clip_states(model, images) if model.image_encoder is not None else None  # CLIP states
    cond = conditions.augment(condition_video(model, first, last, settings.frames), std, settings.seed)
    timings.add("image_encode", time.perf_counter() - t0)
    mask = pixel_mask(settings.frames, last is not None, model.vae.temporal_compression)
    return ImageCondition(cond, None, DenoiserInputs(image=ImageContext(embeds, mask)))


#################################################################################
#                                Model, loading                                 #
#################################################################################


@dataclass
class WanModel(Model):
    """A loaded Wan folder: the seams of `Model`, plus the CLIP image encoder when there is one."""

    image_encoder: object = None
    image_processor: object = None


def _hf_kwargs(dtype: torch.dtype) -> dict:
    """transformers renamed `torch_dtype` to `dtype` in version 5."""
    import transformers

    key = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
    return {"local_files_only": True, "use_safetensors": True, key: dtype}


def load(info: ModelInfo, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
         attention: str = "sdpa", offload: str | None = None, vae_tiling: bool = False,
         transformer: str | Path | None = None) -> WanModel:
    """Load a described Wan folder: transformer(s) and UMT5 in `dtype`, the VAE and CLIP in float32.

    `offload` keeps weights on the CPU and moves each component to `device` while it runs: "model" one
    component at a time (accelerate's cpu_offload_with_hook, diffusers' enable_model_cpu_offload),
    "sequential" one layer at a time (accelerate's cpu_offload; slowest, least memory). `transformer`: a GGUF
    file that replaces transformer/ (`check_transformer_file`).
    """
    from diffusers import AutoencoderKLWan
    from transformers import AutoTokenizer, UMT5EncoderModel

    path, wan = info.path, info.index
    require(attention in ATTENTION or attention in DIFFUSERS_ATTENTION,
            f"--attention {attention} is not available for Wan checkpoints; use sdpa, xformers or one of diffusers' "
            f"backends ({', '.join(DIFFUSERS_ATTENTION)})")
    require(offload in (None, "none", "model", "sequential"), f"unknown --offload {offload!r}; use none, model or sequential")
    device = torch.device(device)
    require(offload in (None, "none") or device.type == "cuda", "--offload moves weights to a GPU as they run; it needs --device cuda")
    place = torch.device("cpu") if offload in ("model", "sequential") else device
    quiet_libraries()
    denoiser = _load_denoiser(info, dtype, attention, place, transformer)
    vae = WanVAE(AutoencoderKLWan.from_pretrained(path / "vae", torch_dtype=torch.float32, local_files_only=True,
                                                  use_safetensors=True).to(place))
    if vae_tiling:
        vae.autoencoder.enable_tiling()
    tokenizer = AutoTokenizer.from_pretrained(path / "tokenizer", local_files_only=True, trust_remote_code=False)
    text = UMT5TextEncoder(tokenizer, UMT5EncoderModel.from_pretrained(path / "text_encoder", **_hf_kwargs(dtype)).to(place))
    image_encoder, image_processor = _load_image_encoder(path, place) if "image_encoder" in wan["components"] else (None, None)
    require(text.dim == denoiser.config.text_dim,
            f"the transformer expects text dim {denoiser.config.text_dim} but text_encoder/ gives {text.dim}")
    scheduler_config = dict(info.configs["scheduler"], shift=info.defaults.shift)  # kinema's make_scheduler reads `shift`
    check_scheduler(scheduler_config)
    model = WanModel(text, vae, denoiser, scheduler_config, dict(wan), path, device, dtype, info=info, family=FAMILY,
                     attention=attention, offload=offload or "none", image_encoder=image_encoder,
                     image_processor=image_processor)
    if offload in ("model", "sequential"):
        enable_offload(model, offload, device)
    return model


def _load_denoiser(info: ModelInfo, dtype: torch.dtype, attention: str, place: torch.device,
                   transformer: str | Path | None = None) -> "WanDenoiser":
    """The transformer (and Wan 2.2's second expert) behind the denoiser seam; `transformer` a GGUF file in place
    of transformer/ (diffusers' GGUF support: weights stay quantized, dequantized per layer in `dtype`)."""
    from diffusers import WanTransformer3DModel

    wan = info.index
    experts = []
    for name in ("transformer", "transformer_2") if wan["boundary_ratio"] is not None else ("transformer",):
        gguf = transformer if name == "transformer" else None
        experts.append(load_transformer(WanTransformer3DModel, info.path / name, dtype, attention, gguf).to(place))
    return WanDenoiser(experts[0], experts[1] if len(experts) > 1 else None, wan["boundary_ratio"],
                       wan["expand_timesteps"], int(info.configs["scheduler"].get("num_train_timesteps", 1000)))


def _load_image_encoder(path: Path, place: torch.device) -> tuple[object, object]:
    """CLIP vision model and its image processor (Wan 2.1 image-to-video)."""
    import importlib.util

    import transformers as tf

    image_encoder = tf.CLIPVisionModel.from_pretrained(path / "image_encoder", **_hf_kwargs(torch.float32))
    processor = tf.CLIPImageProcessor  # without torchvision transformers 5 falls back to the PIL one: ask for it
    if importlib.util.find_spec("torchvision") is None:
        processor = getattr(tf, "CLIPImageProcessorPil", processor)
    return image_encoder.to(place).eval(), processor.from_pretrained(path / "image_processor", local_files_only=True)


def check_scheduler(config: dict) -> None:
    """Warn when kinema's solver (`schedulers.make_scheduler`: flow shift and step count only) is not the folder's."""
    import warnings

    from .schedulers import make_scheduler

    kind = "unipc" if config.get("_class_name") == "UniPCMultistepScheduler" else "euler"
    ours = make_scheduler(kind, config).config
    differ = sorted(k for k, v in config.items() if not k.startswith("_") and k in ours and ours[k] != v
                    and not (isinstance(v, list) and list(ours[k] or []) == v))
    if differ:
        warnings.warn(f"the folder's scheduler sets {', '.join(differ)} differently from kinema's {kind} solver; "
                      "clips will differ from diffusers' (kinema keeps only the flow shift)", stacklevel=3)


def enable_offload(model: WanModel, mode: str, device: torch.device) -> None:
    """accelerate hooks that move each component to `device` only while it runs: text_encoder, image_encoder,
    transformer, transformer_2, vae in turn (diffusers' order; CUDA)."""
    den = model.denoiser
    modules = [model.text_encoder.model, model.image_encoder, den.transformer, den.transformer_2, model.vae.autoencoder]
    model.text_encoder.execution_device = device
    offload_hooks([m for m in modules if m is not None], mode, device)


#################################################################################
#                         Single-file transformers (GGUF)                       #
#################################################################################


def transformer_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """The transformer's weight names and shapes from its config (built on the meta device: nothing allocated)."""
    from diffusers import WanTransformer3DModel

    return weight_shapes(WanTransformer3DModel, config)


def check_transformer_file(info: ModelInfo, path) -> dict:
    """`--transformer FILE.gguf`: a Wan transformer of this folder's shape, in the original (community) or the
    diffusers key layout, checked by its header before anything loads; what the sidecar records of it."""
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    from .runtime import check_gguf

    return check_gguf(path, transformer_shapes(dict(info.configs["denoiser"])),
                      lambda sd: convert_wan_transformer_to_diffusers(sd), "Wan", "wan")


# diffusers' names -> the original Wan (and community GGUF) names, the inverse of diffusers' converter
_ORIGINAL = [
    (r"^condition_embedder\.time_embedder\.linear_([12])\.", lambda m: f"time_embedding.{2 * int(m[1]) - 2}."),
    (r"^condition_embedder\.text_embedder\.linear_([12])\.", lambda m: f"text_embedding.{2 * int(m[1]) - 2}."),
    (r"^condition_embedder\.time_proj\.", "time_projection.1."),
    (r"^condition_embedder\.image_embedder\.norm1\.", "img_emb.proj.0."),
    (r"^condition_embedder\.image_embedder\.ff\.net\.0\.proj\.", "img_emb.proj.1."),
    (r"^condition_embedder\.image_embedder\.ff\.net\.2\.", "img_emb.proj.3."),
    (r"^condition_embedder\.image_embedder\.norm2\.", "img_emb.proj.4."),
    (r"\.attn1\.", ".self_attn."), (r"\.attn2\.", ".cross_attn."),
    (r"\.to_out\.0\.", ".o."), (r"\.to_([qkv])\.", lambda m: f".{m[1]}."),
    (r"\.add_([kv])_proj\.", lambda m: f".{m[1]}_img."), (r"\.norm_added_k\.", ".norm_k_img."),
    (r"^(blocks\.\d+)\.scale_shift_table$", lambda m: f"{m[1]}.modulation"), (r"^scale_shift_table$", "head.modulation"),
    (r"^proj_out\.", "head.head."), (r"\.ffn\.net\.0\.proj\.", ".ffn.0."), (r"\.ffn\.net\.2\.", ".ffn.2."),
    (r"^(blocks\.\d+)\.norm2\.", lambda m: f"{m[1]}.norm3."),
]


def original_state_dict(state: dict) -> dict:
    """A diffusers Wan transformer's state dict under the original Wan names (how community GGUF files store it)."""
    out = {}
    for key, value in state.items():
        for pattern, repl in _ORIGINAL:
            key = re.sub(pattern, repl, key)
        out[key] = value
    return out


#################################################################################
#                                Memory estimate                                #
#################################################################################


def estimate_memory(info: ModelInfo, frames: int, height: int, width: int, dtype_bytes: int = 2, cfg: bool = True,
                    offload: str | None = "none") -> dict:
    """Rough peak GPU memory (bytes) of a Wan run: resident weights + the larger of the phases' activations.

    Weights: transformer(s) and UMT5 at `dtype_bytes`, the VAE and CLIP in float32. Resident: all of them
    (none); the running component only, so the peak is the largest phase (model); about one transformer
    block (sequential). Transformer activations: cond and uncond in one batch, ~ (6 dim + ffn_dim) values
    per token with flash / memory-efficient attention (no L^2 score matrix). VAE decode: ~6 live tensors
    per decoder level for the 4 frames of one latent frame, in float32. An estimate, not a measurement.
    """
    sizes = {k: v * (4 if k in ("vae", "image_encoder") else dtype_bytes) for k, v in info.parameters.items()}
    tr, vae = info.configs["denoiser"], info.configs["vae"]
    s, (_, ph, pw) = info.spatial_compression, tr.get("patch_size", [1, 2, 2])
    tokens = info.latent_frames(frames) * (height // s // ph) * (width // s // pw)
    dim = tr["num_attention_heads"] * tr["attention_head_dim"]
    act = (2 if cfg else 1) * tokens * (6 * dim + tr["ffn_dim"]) * dtype_bytes
    base, p = vae.get("decoder_base_dim") or vae["base_dim"], vae.get("patch_size") or 1  # 2.2: decodes at H/2
    dec = sum(6 * base * m * 4 * (height // p >> i) * (width // p >> i) * 4 for i, m in enumerate(vae.get("dim_mult", [1, 2, 4, 4])))
    expert = sizes.get("transformer", 0)
    if offload == "model":  # one component at a time: the largest phase sets the peak
        phases = [sizes.get("text_encoder", 0), sizes.get("image_encoder", 0), expert + act, sizes.get("vae", 0) + dec]
        total = max(phases)
        weights = max(sizes.values(), default=0)
    else:
        weights = sum(sizes.values()) if offload in (None, "none") else expert // max(1, tr.get("num_layers", 1))
        total = weights + max(act, dec)
    return dict(weights=weights, denoiser_activations=act, vae_decode=dec, total=total)


def report(info: ModelInfo, frames: int, height: int, width: int, dtype: str = "bfloat16") -> tuple[dict, list[str]]:
    """`kinema info` for a Wan folder: components, parameters, defaults and memory with each offload mode."""
    nbytes = {"float32": 4, "bfloat16": 2, "float16": 2}[dtype]
    gib = lambda d: {k: f"{v / 2**30:.2f} GiB" for k, v in d.items()}  # noqa: E731
    est = {mode: gib(estimate_memory(info, frames, height, width, nbytes, offload=mode)) for mode in ("none", "model", "sequential")}
    idx, d = info.index, info.defaults
    report = dict(model=str(info.path), family=idx["family"], pipeline=idx["pipeline"], params=dict(info.parameters),
                  boundary_ratio=idx["boundary_ratio"], expand_timesteps=idx["expand_timesteps"],
                  frame_conditions=list(info.frame_conditions), tasks=list(info.tasks), defaults=d.as_dict(),
                  size_multiple=info.size_multiple,
                  vae=dict(latent_channels=info.latent_channels, spatial_compression=info.spatial_compression,
                           temporal_compression=info.temporal_compression),
                  memory_estimate=dict(frames=frames, height=height, width=width, dtype=dtype, offload=est))
    experts = f", two experts switched at t = {idx['boundary_ratio']} x 1000" if idx["boundary_ratio"] else ""
    lines = [
        f"model     {report['model']} ({idx['pipeline']}, Wan family {idx['family']}{experts})",
        params_line(info),
        f"vae       AutoencoderKLWan, {info.latent_channels} latent channels, {info.spatial_compression}x spatial, "
        f"{info.temporal_compression}x temporal (frames must be 4k+1)",
        f"defaults  {d.frames} frames {d.width}x{d.height} @ {d.fps:g} fps, {d.steps} steps, guidance {d.guidance}, "
        f"{d.scheduler} shift {d.shift}; sizes must be multiples of {info.size_multiple}",
        f"tasks     {', '.join(info.tasks)}; frame conditions: {', '.join(info.frame_conditions) or 'none'}",
    ]
    lines += offload_lines(est, frames, height, width, dtype)
    return report, lines


#################################################################################
#                                    Family                                     #
#################################################################################


class WanFamily(ModelFamily):
    """Wan 2.1 / 2.2 diffusers folders (model_index.json of a Wan pipeline)."""

    name = "wan"

    def recognises(self, path: Path) -> bool:
        return (Path(path) / INDEX).is_file()

    def describe(self, path: Path) -> ModelInfo:
        return describe(Path(path))

    def load(self, info, device, dtype, attention="sdpa", offload=None, transformer=None) -> Model:
        return load(info, device, dtype, attention, offload, transformer=transformer)

    def check_transformer_file(self, info, path) -> dict:
        return check_transformer_file(info, path)

    def lora_training(self, info):
        """Every block's self- and cross-attention projections and feed-forward; Wan 2.2's two-expert folders adapt
        `transformer` (the high-noise expert, where `--lora` loads Wan LoRAs) on its noise levels, above the boundary."""
        return dict(part="transformer", low=float(info.index.get("boundary_ratio") or 0.0),
                    targets=r"blocks\.\d+\.(attn1|attn2)\.(to_q|to_k|to_v|to_out\.0)|blocks\.\d+\.ffn\.net\.(0\.proj|2)")

    def lora_layers(self, info):
        """The transformer's layers (Wan's LoRAs adapt the transformer; `transformer_2` of Wan 2.2 takes none)."""
        from diffusers import WanTransformer3DModel

        from .lora import adaptable

        return {"transformer": adaptable(meta_model(WanTransformer3DModel, info.configs["denoiser"]))}

    def attention_backends(self, info) -> tuple[str, ...]:
        """kinema's sdpa and xformers, and diffusers' dispatcher backends (`set_attention_backend`)."""
        return ("sdpa", *DIFFUSERS_ATTENTION)

    def estimate_memory(self, info, frames, height, width, dtype_bytes=2, cfg=True, decode_chunk_size=16, offload=None):
        return estimate_memory(info, frames, height, width, dtype_bytes, cfg, offload)

    def image_condition(self, model, first, last, settings, std, timings):
        return image_condition(model, first, last, settings, std, timings)

    def report(self, info, frames, height, width, dtype="bfloat16"):
        return report(info, frames, height, width, "float32" if dtype == "float32" else "bfloat16")

    def cache_methods(self, info):
        """diffusers' cache hooks on the transformer: FirstBlockCache and MagCache need two blocks or more (a first and
        a last), FasterCache's skipped uncond branch does not fit the CLIP image states of image-to-video checkpoints."""
        from .cache import METHODS

        tr = info.configs["denoiser"]
        lacks = ({"first-block", "magcache"} if tr.get("num_layers", 2) < 2 else set()) | (
            {"fastercache"} if tr.get("image_dim") is not None else set())
        return tuple(m for m in METHODS if m not in lacks)


FAMILY = register(WanFamily())
