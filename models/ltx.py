"""LTX-Video (0.9.x) diffusers folders behind kinema's three seams, in parity with diffusers' LTX pipelines.

    # Lightricks/LTX-Video saved locally (LTXPipeline.save_pretrained layout): 2B, 704x480, 161 frames at 25 fps
    kinema generate "a cat surfing a wave" --model LTX-Video -o cat.mp4
    kinema animate cat.png "the cat turns its head" --model LTX-Video -o cat.mp4
    kinema restyle clip.mp4 "a watercolour painting" --model LTX-Video --frames 97 -o paint.mp4
    kinema extend cat.mp4 "the cat jumps off the board" --model LTX-Video --frames 321 -o longer.mp4
    kinema generate "a cat surfing" --model LTX-Video --frames 321 --prompt-schedule "0:a cat surfing|160:a cat on the beach" -o two.mp4
    kinema info LTX-Video --frames 161 --height 480 --width 704

A folder (`model_index.json` of LTXPipeline, LTXImageToVideoPipeline or LTXConditionPipeline, `transformer/`
LTXVideoTransformer3DModel, `vae/` AutoencoderKLLTXVideo, `text_encoder/` T5EncoderModel, `tokenizer/`,
`scheduler/` FlowMatchEulerDiscreteScheduler) is read with fixed classes (never the index's class names, never
remote code), safetensors only, `local_files_only=True`. Clips have 8k+1 frames and sizes are multiples of 32
(the VAE's compression: 8x in time, 32x in space; a VAE of another compression sets its own rule).

How each piece meets the seams, as diffusers' `LTXPipeline` / `LTXImageToVideoPipeline` do it:
- text: T5 over the prompt padded to 128 tokens; the encoder runs *without* its attention mask (diffusers does)
  and the mask goes to the transformer's cross-attention;
- VAE: `AutoencoderKLLTXVideo`, latents normalised with the checkpoint's `latents_mean` / `latents_std`
  ((z - mean) / std; decoding: z std / scaling_factor + mean); a timestep-conditioned decoder (0.9.1+) decodes at
  `decode_timestep` with `decode_noise_scale` of noise mixed in. Clips longer than two latent frames decode in
  diffusers' temporal tiles (16 frames every 8, blended; `use_framewise_decoding`) and frames larger than 512
  pixels in its spatial tiles (`enable_tiling`), streamed tile by tile, so decode memory does not grow with length;
- denoiser: `LTXVideoTransformer3DModel` on the packed tokens (B, F*h*w, C) with RoPE at
  (8 / frame_rate, 32, 32) interpolation; the velocity comes back unpacked to (B, C, F, h, w);
- frame condition (image-to-video, continuation): the known latent frames enter the transformer clean and their
  tokens get timestep 0, as `LTXImageToVideoPipeline` does with its conditioning mask; the loop's KnownFrames
  hook keeps them exact;
- schedule: the LTX pipelines' sigmas linspace(1, 1/N, N), shifted by exp(mu) where mu grows linearly with the
  clip's token count (`calculate_shift`; `use_dynamic_shifting`), stretched to end at `shift_terminal`.
  exp(mu) / (exp(mu) + 1/s - 1) is the static shift s' = e^mu, so kinema passes `shift = exp(mu)` for the clip's
  size (`LTXFamily.settings`, what `--shift` overrides) to its Euler solver.

Noise and parity: diffusers draws the initial latents with `randn_tensor(shape, generator)` in the unpacked
(B, C, F, h, w) layout before packing; with a CPU generator seeded by the seed that is `torch.randn(shape,
generator=g)`, exactly `pipelines.common.initial_noise`, so the same seed gives the same noise. Image-to-video:
diffusers samples the anchor's posterior with the same generator (a draw before the noise); kinema takes the
posterior's mode (as kinema's other families; the LTX VAE's posterior std is one channel shared by all), so
the parity test runs diffusers with the mode as well. A timestep-conditioned decode mixes in noise that diffusers
draws after the initial noise from the seed's generator; the VAE seam does not see the seed, so kinema's comes
from a generator seeded with `DECODE_NOISE_SEED` (0 weight with the default decode_noise_scale 0 of the tiny
test folders). Differences by design: guidance runs cond and uncond in one batch (diffusers: uncond first; the
same numbers in float32), `guidance_rescale` is not offered, and the transformer is told the folder's frame rate
(25; `--fps` sets only the written file's).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from kinema.errors import require

from . import conditions
from .cache import transformer_call
from .runtime import DIFFUSERS_ATTENTION, load_transformer
from .family import (Model, ModelDefaults, ModelFamily, ModelInfo, meta_model, offload_hooks, offload_lines, params_line,
                     quiet_libraries, register, safetensors_parameters, weight_shapes)
from .seams import DenoiserInputs, FrameCondition, ImageCondition, TextEmbeds
from .wan import _check_weights, _hf_kwargs, _json

INDEX = "model_index.json"
PIPELINES = ("LTXPipeline", "LTXImageToVideoPipeline", "LTXConditionPipeline")
CLASSES = {  # component -> the classes kinema accepts (each loaded with its own fixed class, never by name)
    "transformer": ("LTXVideoTransformer3DModel",),
    "vae": ("AutoencoderKLLTXVideo",),
    "text_encoder": ("T5EncoderModel",),
    "tokenizer": None,  # any tokenizer AutoTokenizer reads from local files (T5TokenizerFast for real folders)
    "scheduler": ("FlowMatchEulerDiscreteScheduler",),
}
WEIGHTED = ("transformer", "vae", "text_encoder")
TEXT_LENGTH = 128  # diffusers' max_sequence_length for LTX
FRAME_RATE = 25  # what the transformer's RoPE is told (diffusers' frame_rate default; the model card's)
DECODE_NOISE_SEED = 0
# the model card's settings (a diffusers folder does not say); a timestep-conditioned VAE (0.9.1+) decodes at 0.05
DEFAULTS = dict(frames=161, height=480, width=704, fps=25, steps=50, guidance=3.0, image_noise=0.0, scheduler="euler")
DECODE = dict(decode_timestep=0.05, decode_noise_scale=0.025)
ATTENTION = ("sdpa", *DIFFUSERS_ATTENTION)  # diffusers' attention dispatcher (`set_attention_backend`), sdpa = native

#################################################################################
#                                 Folder checks                                 #
#################################################################################


def read_index(path: Path) -> dict:
    """The folder's model_index.json, checked: an LTX pipeline, its components inside the folder, safetensors."""
    raw = _json(path / INDEX)
    cls = raw.get("_class_name") if isinstance(raw, dict) else None
    require(cls in PIPELINES, f"{path} is a diffusers folder of {cls!r}, not an LTX-Video pipeline; kinema reads "
                              f"{', '.join(PIPELINES)} folders")
    components = {}
    for name, entry in raw.items():
        if name.startswith("_") or not isinstance(entry, list) or len(entry) != 2 or None in entry:
            continue
        require((path / name).resolve().parent == path.resolve() and "/" not in name and "\\" not in name,
                f"{path / INDEX} names a component {name!r} outside the folder; refusing to load it")
        if name not in CLASSES:
            continue  # a component kinema does not use
        allowed = CLASSES[name]
        require(allowed is None or entry[1] in allowed,
                f"{path} has a {name} of class {entry[1]}; an LTX-Video folder needs {' or '.join(allowed or ())}")
        components[name] = entry[1]
    for name in CLASSES:
        require(name in components, f"LTX-Video folder {path} is incomplete: model_index.json lists no {name}")
        require((path / name).is_dir(), f"LTX-Video folder {path} is incomplete: missing component folder {name}/")
    for name in WEIGHTED:
        require((path / name / "config.json").is_file(), f"LTX-Video folder {path} is incomplete: {name}/config.json is missing")
        _check_weights(path / name)
    return dict(pipeline=cls, components=components)


def compression(vae: dict) -> tuple[int, int]:
    """(spatial, temporal) compression of an AutoencoderKLLTXVideo config (diffusers' rule when the config omits them)."""
    scaling = vae.get("spatio_temporal_scaling", [True, True, True, False])
    spatial = vae.get("spatial_compression_ratio") or vae.get("patch_size", 4) * 2 ** sum(scaling)
    temporal = vae.get("temporal_compression_ratio") or vae.get("patch_size_t", 1) * 2 ** sum(scaling)
    return int(spatial), int(temporal)


def describe(path: Path) -> ModelInfo:
    """The folder's configs and kinema's view of them (defaults, sizes, tasks), without loading weights."""
    ltx = read_index(path)
    tr = _json(path / "transformer" / "config.json")
    vae = _json(path / "vae" / "config.json")
    sched = _json(path / "scheduler" / "scheduler_config.json")
    require(tr.get("patch_size_t", 1) == 1, f"{path}/transformer has patch_size_t {tr.get('patch_size_t')}; kinema reads "
                                            "LTX-Video transformers with temporal patch 1 (all 0.9.x checkpoints)")
    require(tr.get("in_channels") == vae.get("latent_channels", 128) == tr.get("out_channels", tr.get("in_channels")),
            f"{path}: the transformer's in/out channels ({tr.get('in_channels')}/{tr.get('out_channels')}) do not match the "
            f"VAE's latent channels ({vae.get('latent_channels', 128)})")
    spatial, temporal = compression(vae)
    defaults = ModelDefaults(**DEFAULTS, shift=float(sched.get("shift", 1.0) or 1.0))
    index = dict(format="diffusers-ltx", pipeline=ltx["pipeline"], components=ltx["components"],
                 defaults=defaults.as_dict(), frame_conditions=["first"], text_encoder="T5 (text_encoder/)",
                 timestep_conditioning=bool(vae.get("timestep_conditioning", False)), preset="ltx-video")
    params = {name: safetensors_parameters(path / name)[0] for name in WEIGHTED}
    return ModelInfo(family="ltx", path=path, name=ltx["pipeline"], defaults=defaults, parameters=params,
                     tasks=("generate", "extend", "restyle", "animate"), frame_conditions=("first",),
                     size_multiple=spatial * int(tr.get("patch_size", 1)), spatial_compression=spatial,
                     temporal_compression=temporal, latent_channels=int(vae.get("latent_channels", 128)),
                     configs=dict(denoiser=tr, vae=vae, scheduler=sched), index=index)


#################################################################################
#                                    Schedule                                   #
#################################################################################


def calculate_shift(tokens: int, scheduler: dict) -> float:
    """diffusers' LTX `calculate_shift`: mu linear in the token count, base_shift at base_image_seq_len."""
    lo, hi = scheduler.get("base_image_seq_len", 256), scheduler.get("max_image_seq_len", 4096)
    base, top = scheduler.get("base_shift", 0.5), scheduler.get("max_shift", 1.15)
    m = (top - base) / (hi - lo)
    return tokens * m + (base - m * lo)


def clip_shift(info: ModelInfo, frames: int, height: int, width: int) -> float:
    """The flow shift of a clip of this size: exp(mu) with dynamic shifting (the real folders), else the config's."""
    sched = info.configs["scheduler"]
    if not sched.get("use_dynamic_shifting", False):
        return float(sched.get("shift", 1.0) or 1.0)
    s = info.size_multiple
    tokens = info.latent_frames(frames) * (height // s) * (width // s)
    return math.exp(calculate_shift(tokens, sched))


def scheduler_config(info: ModelInfo) -> dict:
    """What kinema's Euler solver is built from: LTX's sigma spacing and terminal stretch (`schedulers.make_scheduler`)."""
    sched = info.configs["scheduler"]
    return dict(sched, sigma_schedule="linear", shift_terminal=sched.get("shift_terminal"),
                shift=float(sched.get("shift", 1.0) or 1.0))


#################################################################################
#                                   Text seam                                   #
#################################################################################


class T5TextEncoder(torch.nn.Module):
    """T5 token states of prompts padded to 128 tokens (encoded without the mask, as diffusers) -> TextEmbeds."""

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
        tok = self.tokenizer(list(prompts), padding="max_length", max_length=self.max_length, truncation=True,
                             add_special_tokens=True, return_tensors="pt")
        device = self.execution_device or next(self.model.parameters()).device
        hidden = self.model(tok.input_ids.to(device))[0]  # (B, L, D)
        return TextEmbeds(hidden, tok.attention_mask.bool().to(device))


#################################################################################
#                                   VAE seam                                    #
#################################################################################


class LTXVAE(torch.nn.Module):
    """AutoencoderKLLTXVideo: (B, 3, 8k+1, H, W) in [-1, 1] <-> normalised latents (B, C, k+1, H/32, W/32)."""

    def __init__(self, autoencoder, decode_timestep: float = 0.0, decode_noise_scale: float | None = None,
                 tiling: bool = True):
        super().__init__()
        self.autoencoder = autoencoder.eval().requires_grad_(False)
        self.decode_timestep = decode_timestep
        self.decode_noise_scale = decode_timestep if decode_noise_scale is None else decode_noise_scale
        if tiling:  # diffusers' temporal tiles (16 frames every 8) and spatial tiles above 512 pixels
            autoencoder.enable_tiling()
            autoencoder.use_framewise_decoding = True  # (diffusers' flag for temporal tiles, encoding too)

    @property
    def spatial_compression(self) -> int:
        return int(self.autoencoder.spatial_compression_ratio)

    @property
    def temporal_compression(self) -> int:
        return int(self.autoencoder.temporal_compression_ratio)

    @property
    def latent_channels(self) -> int:
        return self.autoencoder.config.latent_channels

    @property
    def dtype(self) -> torch.dtype:
        return self.autoencoder.dtype

    def latent_frames(self, frames: int) -> int:
        return (frames - 1) // self.temporal_compression + 1

    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ae = self.autoencoder
        return (ae.latents_mean.view(1, -1, 1, 1, 1).to(like.device, like.dtype),
                ae.latents_std.view(1, -1, 1, 1, 1).to(like.device, like.dtype))

    def encode(self, video: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
        """Video (B, 3, F, H, W) in [-1, 1], F = 8k+1 -> normalised latents (B, C, k+1, h, w), float32 (the mode)."""
        t, s = self.temporal_compression, self.spatial_compression
        f = video.shape[2]
        require((f - 1) % t == 0, f"the LTX-Video VAE takes {t}k+1 frames; got {f}, use {(f - 1) // t * t + 1} or "
                                  f"{(f - 1) // t * t + 1 + t}")
        require(video.shape[-2] % s == 0 and video.shape[-1] % s == 0,
                f"frame size {video.shape[-1]}x{video.shape[-2]} is not a multiple of the VAE's {s}")
        dist = self.autoencoder.encode(video.to(self.dtype)).latent_dist
        z = (dist.sample(generator) if sample else dist.mode()).float()
        mean, std = self._stats(z)
        return (z - mean) * 1.0 / std  # diffusers' _normalize_latents (scaling 1 when encoding)

    def denormalise(self, latents: torch.Tensor) -> torch.Tensor:
        z = latents.to(self.dtype)
        mean, std = self._stats(z)
        return z * std / self.autoencoder.config.scaling_factor + mean

    def _decode_input(self, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Denormalised latents and the decoder's timestep (with its noise mixed in, as diffusers' LTX pipelines)."""
        z = self.denormalise(latents)
        if not self.autoencoder.config.timestep_conditioning:
            return z, None
        g = torch.Generator("cpu").manual_seed(DECODE_NOISE_SEED)
        noise = torch.randn(z.shape, generator=g, dtype=torch.float32).to(z)
        b = z.shape[0]
        temb = torch.tensor([self.decode_timestep] * b, device=z.device, dtype=z.dtype)
        scale = torch.tensor([self.decode_noise_scale] * b, device=z.device, dtype=z.dtype)[:, None, None, None, None]
        return (1 - scale) * z + scale * noise, temb

    @torch.no_grad()
    def decode_chunks(self, latents: torch.Tensor, chunk_size: int | None = None):
        """Yield video (B, 3, f, H, W) in [-1, 1] tile by tile: diffusers' temporal tiling, streamed.

        With temporal tiles on (the default), each tile of `tile_sample_min_num_frames` frames starts every
        `tile_sample_stride_num_frames`; a tile's first frames are blended with the previous tile's last (`blend_t`,
        the previous one as already blended, as `_temporal_tiled_decode` does) and the finished frames are yielded,
        so the chunks concatenate to exactly diffusers' tiled decode while memory stays one tile. `chunk_size` is
        not used: the tiles are the VAE's own.
        """
        ae = self.autoencoder
        if hasattr(ae, "_hf_hook") and hasattr(ae._hf_hook, "pre_forward"):
            ae._hf_hook.pre_forward(ae)  # offload hooks: diffusers' apply_forward_hook, as `decode` would
        z, temb = self._decode_input(latents)
        _, _, f, h, w = z.shape
        tc, sc = self.temporal_compression, self.spatial_compression
        tile_f, stride_f = ae.tile_sample_min_num_frames // tc, ae.tile_sample_stride_num_frames // tc
        if not ae.use_framewise_decoding or f <= tile_f:
            yield ae.decode(z, temb).sample.clamp(-1, 1)
            return
        blend = ae.tile_sample_min_num_frames - ae.tile_sample_stride_num_frames
        spatial = ae.use_tiling and (w > ae.tile_sample_min_width // sc or h > ae.tile_sample_min_height // sc)
        total, done, previous = (f - 1) * tc + 1, 0, None
        for i in range(0, f, stride_f):
            tile = z[:, :, i : i + tile_f + 1]
            out = ae.tiled_decode(tile, temb).sample if spatial else ae.decoder(tile, temb)  # (B, 3, n, H, W)
            if previous is None:
                keep = out[:, :, : ae.tile_sample_stride_num_frames + 1]
            else:
                out = ae.blend_t(previous, out[:, :, :-1], blend)  # blends into the tile in place
                keep = out[:, :, : ae.tile_sample_stride_num_frames]
            previous = out
            keep = keep[:, :, : total - done]
            done += keep.shape[2]
            if keep.shape[2]:
                yield keep.clamp(-1, 1)

    def decode(self, latents: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
        return torch.cat(list(self.decode_chunks(latents, chunk_size)), dim=2)


#################################################################################
#                                 Denoiser seam                                 #
#################################################################################


def pack(latents: torch.Tensor, p: int = 1) -> torch.Tensor:
    """(B, C, F, h, w) -> tokens (B, F*(h/p)*(w/p), C*p*p), diffusers' `_pack_latents` with temporal patch 1."""
    b, c, f, h, w = latents.shape
    x = latents.reshape(b, c, f, 1, h // p, p, w // p, p)
    return x.permute(0, 2, 4, 6, 1, 3, 5, 7).flatten(4, 7).flatten(1, 3)  # (B, S, C p p)


def unpack(tokens: torch.Tensor, f: int, h: int, w: int, p: int = 1) -> torch.Tensor:
    """Tokens (B, S, C*p*p) -> (B, C, F, h*p, w*p), diffusers' `_unpack_latents` with temporal patch 1."""
    b = tokens.shape[0]
    x = tokens.reshape(b, f, h, w, -1, 1, p, p)  # (B, F, h, w, C, 1, p, p)
    return x.permute(0, 4, 1, 5, 2, 6, 3, 7).flatten(6, 7).flatten(4, 5).flatten(2, 3)


class LTXDenoiser(torch.nn.Module):
    """LTXVideoTransformer3DModel behind the Denoiser seam: velocity for (latents, timestep, text, cond)."""

    lora_family = "ltx"  # LoRAs in diffusers' LTX layouts (`models/lora.py`), loaded onto `transformer`

    def __init__(self, transformer, spatial_compression: int, temporal_compression: int, frame_rate: float = FRAME_RATE):
        super().__init__()
        self.transformer = transformer.eval().requires_grad_(False)
        self.rope_scale = (temporal_compression / frame_rate, spatial_compression, spatial_compression)

    @property
    def config(self):
        return self.transformer.config

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.dtype

    def predict(self, latents: torch.Tensor, timestep: torch.Tensor, text: TextEmbeds, cond: FrameCondition | None = None,
                inputs: DenoiserInputs | None = None) -> torch.Tensor:
        """Velocity (B, C, F, h, w); known frames of `cond` enter clean with timestep 0 (LTX's image condition)."""
        inputs = inputs or DenoiserInputs()
        require(inputs.injection is None, "LTX-Video's transformer cannot take the source's layout (structure "
                                          "injection); pass --structure 0")
        b, _, f, h, w = latents.shape
        p = self.config.patch_size
        x, t = latents, timestep.reshape(-1).expand(b)  # (B,): one timestep for every token, as LTXPipeline
        if cond is not None and cond.any:
            known = cond.mask[:, None, :, None, None].to(latents.device)  # (B, 1, F, 1, 1) in {0, 1}
            x = torch.where(known.bool(), cond.latents.to(latents), latents)
            tokens = (1 - known[:, 0].float()).expand(b, f, h // p, w // p).flatten(1)  # (B, S)
            t = t.float()[:, None] * tokens  # per-token timesteps, 0 for known frames (LTXImageToVideoPipeline)
        call = dict(hidden_states=pack(x.to(self.dtype), p), encoder_hidden_states=text.hidden.to(self.dtype),
                    timestep=t, encoder_attention_mask=text.mask, num_frames=f, height=h // p, width=w // p,
                    rope_interpolation_scale=self.rope_scale, return_dict=False)
        if inputs.cache is not None and inputs.cache.spec.method != "none":  # diffusers' hooks, for this call only
            out = transformer_call(self.transformer, inputs.cache, float(timestep.reshape(-1)[0]), **call)[0]
        else:
            out = self.transformer(**call)[0]
        return unpack(out, f, h // p, w // p, p)  # (B, C, F, h, w)


#################################################################################
#                                Model, loading                                 #
#################################################################################


def load(info: ModelInfo, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
         attention: str = "sdpa", offload: str | None = None, vae_tiling: bool = True,
         transformer: str | Path | None = None) -> Model:
    """Load a described LTX folder: transformer and T5 in `dtype`, the VAE in float32.

    `offload` keeps weights on the CPU and moves each component to `device` while it runs (accelerate's hooks:
    "model" one component at a time, "sequential" one layer at a time), as for Wan. `transformer`: a GGUF file
    that replaces transformer/ (`check_transformer_file`).
    """
    from diffusers import AutoencoderKLLTXVideo, LTXVideoTransformer3DModel
    from transformers import AutoTokenizer, T5EncoderModel

    path = info.path
    require(attention in ATTENTION, f"--attention {attention} is not available for LTX-Video checkpoints; use sdpa or one "
                                    f"of diffusers' backends ({', '.join(DIFFUSERS_ATTENTION)})")
    require(offload in (None, "none", "model", "sequential"), f"unknown --offload {offload!r}; use none, model or sequential")
    device = torch.device(device)
    require(offload in (None, "none") or device.type == "cuda", "--offload moves weights to a GPU as they run; it needs --device cuda")
    place = torch.device("cpu") if offload in ("model", "sequential") else device
    quiet_libraries()
    tr = load_transformer(LTXVideoTransformer3DModel, path / "transformer", dtype, attention, transformer).to(place)
    ae = AutoencoderKLLTXVideo.from_pretrained(path / "vae", torch_dtype=torch.float32, local_files_only=True,
                                               use_safetensors=True).to(place)
    decode = DECODE if ae.config.timestep_conditioning else dict(decode_timestep=0.0)
    vae = LTXVAE(ae, **decode, tiling=vae_tiling)
    tokenizer = AutoTokenizer.from_pretrained(path / "tokenizer", local_files_only=True, trust_remote_code=False)
    text = T5TextEncoder(tokenizer, T5EncoderModel.from_pretrained(path / "text_encoder", **_hf_kwargs(dtype)).to(place))
    require(text.dim == tr.config.caption_channels,
            f"the transformer expects text dim {tr.config.caption_channels} but text_encoder/ gives {text.dim}")
    denoiser = LTXDenoiser(tr, vae.spatial_compression, vae.temporal_compression)
    model = Model(text, vae, denoiser, scheduler_config(info), dict(info.index), path, device, dtype, info=info,
                  family=FAMILY, attention=attention, offload=offload or "none")
    if offload in ("model", "sequential"):
        enable_offload(model, offload, device)
    return model


def enable_offload(model: Model, mode: str, device: torch.device) -> None:
    """accelerate hooks that move each component to `device` only while it runs: text_encoder, transformer, vae in
    turn (diffusers' order; CUDA)."""
    model.text_encoder.execution_device = device
    offload_hooks([model.text_encoder.model, model.denoiser.transformer, model.vae.autoencoder], mode, device)


def image_condition(model: Model, first: np.ndarray, last: np.ndarray | None, settings, std: float, timings) -> ImageCondition:
    """LTX's image-to-video: the image's latents as known latent frame 0 (clean, timestep 0 inside `predict`)."""
    require(last is None, "LTX-Video conditions on the first frame only; drop --last-image (or make a second clip "
                          "with `kinema extend`)")
    return conditions.image_condition(model, first, None, settings, std, timings)


#################################################################################
#                         Single-file transformers (GGUF)                       #
#################################################################################

# diffusers' names -> the original LTX-Video (and community GGUF, `ltxv`) names: the inverse of diffusers' converter
ORIGINAL_NAMES = {"proj_in": "patchify_proj", "time_embed": "adaln_single", "norm_q": "q_norm", "norm_k": "k_norm"}


def check_transformer_file(info: ModelInfo, path) -> dict:
    """`--transformer FILE.gguf`: an LTX-Video transformer of this folder's shape, in the original (city96's `ltxv`
    files) or the diffusers key layout, checked by its header before anything loads; what the sidecar records."""
    from diffusers import LTXVideoTransformer3DModel
    from diffusers.loaders.single_file_utils import convert_ltx_transformer_checkpoint_to_diffusers

    from .runtime import check_gguf

    return check_gguf(path, weight_shapes(LTXVideoTransformer3DModel, info.configs["denoiser"]),
                      convert_ltx_transformer_checkpoint_to_diffusers, "LTX-Video", "ltxv")


def original_state_dict(state: dict) -> dict:
    """A diffusers LTX transformer's state dict under the original names (how community GGUF files store it)."""
    out = {}
    for key, value in state.items():
        for new, old in ORIGINAL_NAMES.items():
            key = key.replace(new, old)
        out[key] = value
    return out


#################################################################################
#                                Memory estimate                                #
#################################################################################


def estimate_memory(info: ModelInfo, frames: int, height: int, width: int, dtype_bytes: int = 2, cfg: bool = True,
                    offload: str | None = "none") -> dict:
    """Rough peak GPU memory (bytes) of an LTX run: resident weights + the larger of the phases' activations.

    Weights: transformer and T5 at `dtype_bytes`, the VAE in float32; resident all (none), the largest phase
    (model), about one transformer block (sequential). Transformer activations: cond and uncond in one batch,
    ~ (6 dim + 4 dim) values per token (attention projections, the 4x feed-forward; flash / memory-efficient
    attention has no L^2 score matrix). VAE decode: one temporal tile (17 frames, or the clip when shorter),
    ~6 live float32 tensors per decoder level at that level's size. An estimate, not a measurement.
    """
    sizes = {k: v * (4 if k == "vae" else dtype_bytes) for k, v in info.parameters.items()}
    tr, vae = info.configs["denoiser"], info.configs["vae"]
    s = info.size_multiple
    tokens = info.latent_frames(frames) * (height // s) * (width // s)
    dim = tr.get("num_attention_heads", 32) * tr.get("attention_head_dim", 64)
    act = (2 if cfg else 1) * tokens * 10 * dim * dtype_bytes
    patch = vae.get("patch_size", 4)
    channels = vae.get("decoder_block_out_channels", vae.get("block_out_channels", [128, 256, 512, 512]))
    scaling = vae.get("decoder_spatio_temporal_scaling", vae.get("spatio_temporal_scaling", [True, True, True, False]))
    tile = min(frames, 17)
    dec, hh, ww, ff = 0, height // patch, width // patch, tile
    for ch, down in zip(channels, scaling):
        dec = max(dec, 6 * ch * ff * hh * ww * 4)
        if down:
            hh, ww, ff = hh // 2, ww // 2, max(1, ff // 2)
    dec += 3 * tile * height * width * 4  # the tile's frames
    if offload == "model":
        total = max(sizes.get("text_encoder", 0), sizes.get("transformer", 0) + act, sizes.get("vae", 0) + dec)
        weights = max(sizes.values(), default=0)
    else:
        weights = sum(sizes.values()) if offload in (None, "none") else sizes.get("transformer", 0) // max(1, tr.get("num_layers", 1))
        total = weights + max(act, dec)
    return dict(weights=weights, denoiser_activations=act, vae_decode=dec, total=total)


def report(info: ModelInfo, frames: int, height: int, width: int, dtype: str = "bfloat16") -> tuple[dict, list[str]]:
    """`kinema info` for an LTX folder: components, parameters, defaults and memory with each offload mode."""
    nbytes = {"float32": 4, "bfloat16": 2, "float16": 2}[dtype]
    gib = lambda d: {k: f"{v / 2**30:.2f} GiB" for k, v in d.items()}  # noqa: E731
    est = {mode: gib(estimate_memory(info, frames, height, width, nbytes, offload=mode)) for mode in ("none", "model", "sequential")}
    idx, d = info.index, info.defaults
    t = info.temporal_compression
    shift = clip_shift(info, frames, height, width)
    out = dict(model=str(info.path), family="ltx", pipeline=idx["pipeline"], params=dict(info.parameters),
               frame_conditions=list(info.frame_conditions), tasks=list(info.tasks), defaults=d.as_dict(),
               size_multiple=info.size_multiple, shift=shift,
               vae=dict(latent_channels=info.latent_channels, spatial_compression=info.spatial_compression,
                        temporal_compression=t, timestep_conditioning=idx["timestep_conditioning"]),
               memory_estimate=dict(frames=frames, height=height, width=width, dtype=dtype, offload=est))
    lines = [
        f"model     {out['model']} ({idx['pipeline']}, LTX-Video)",
        params_line(info),
        f"vae       AutoencoderKLLTXVideo, {info.latent_channels} latent channels, {info.spatial_compression}x spatial, "
        f"{t}x temporal (frames must be {t}k+1)" + (", timestep-conditioned decoder" if idx["timestep_conditioning"] else ""),
        f"defaults  {d.frames} frames {d.width}x{d.height} @ {d.fps:g} fps, {d.steps} steps, guidance {d.guidance}; "
        f"sizes must be multiples of {info.size_multiple}; shift {shift:.3f} at this size",
        f"tasks     {', '.join(info.tasks)}; frame conditions: first",
    ]
    lines += offload_lines(est, frames, height, width, dtype)
    return out, lines


#################################################################################
#                                    Family                                     #
#################################################################################


class LTXFamily(ModelFamily):
    """LTX-Video 0.9.x diffusers folders (model_index.json of an LTX pipeline)."""

    name = "ltx"

    def lora_training(self, info):
        """The attention projections and feed-forward of every transformer block."""
        return dict(part="transformer", low=0.0, targets=r"transformer_blocks\.\d+\.(attn1|attn2)\.(to_q|to_k|to_v|to_out\.0)"
                                                         r"|transformer_blocks\.\d+\.ff\.net\.(0\.proj|2)")

    def recognises(self, path: Path) -> bool:
        index = Path(path) / INDEX
        if not index.is_file():
            return False
        try:
            import json

            return str(json.loads(index.read_text()).get("_class_name", "")).startswith("LTX")
        except (OSError, ValueError, AttributeError):
            return False  # the Wan family reports the broken index

    def describe(self, path: Path) -> ModelInfo:
        return describe(Path(path))

    def load(self, info, device, dtype, attention="sdpa", offload=None, transformer=None) -> Model:
        return load(info, device, dtype, attention, offload, transformer=transformer)

    def check_transformer_file(self, info, path) -> dict:
        return check_transformer_file(info, path)

    def estimate_memory(self, info, frames, height, width, dtype_bytes=2, cfg=True, decode_chunk_size=16, offload=None):
        return estimate_memory(info, frames, height, width, dtype_bytes, cfg, offload)

    def image_condition(self, model, first, last, settings, std, timings):
        return image_condition(model, first, last, settings, std, timings)

    def report(self, info, frames, height, width, dtype="bfloat16"):
        return report(info, frames, height, width, "float32" if dtype == "float32" else "bfloat16")

    def attention_backends(self, info):
        """The `--attention` names the LTX transformer takes (diffusers' attention dispatcher)."""
        return ATTENTION

    def lora_layers(self, info):
        from diffusers import LTXVideoTransformer3DModel

        from .lora import adaptable

        return {"transformer": adaptable(meta_model(LTXVideoTransformer3DModel, info.configs["denoiser"]))}

    def cache_methods(self, info):
        """diffusers' FirstBlockCache and TaylorSeer hooks on the transformer (first-block needs two blocks or more)."""
        lacks = {"first-block"} if info.configs["denoiser"].get("num_layers", 2) < 2 else set()
        return tuple(m for m in ("none", "first-block", "taylorseer") if m not in lacks)

    def settings(self, info: ModelInfo, settings):
        """The settings with what depends on the clip's size resolved: the flow shift exp(mu) of its token count."""
        if settings.shift is not None:
            return settings
        return replace(settings, shift=clip_shift(info, settings.frames, settings.height, settings.width))


FAMILY = register(LTXFamily())
