"""AnimateDiff (Stable Diffusion 1.5 + a motion adapter) behind kinema's three seams, in parity with diffusers.

    # an AnimateDiffPipeline folder (save_pretrained: unet/ a UNetMotionModel, or unet/ + motion_adapter/)
    kinema generate "a corgi running on a beach" --model animatediff-epicrealism -o corgi.mp4
    # an SD 1.5 folder and a MotionAdapter folder, both saved locally with save_pretrained
    kinema generate "a corgi running on a beach" --model epiCRealism \\
        --motion-adapter animatediff-motion-adapter-v1-5-2 -o corgi.mp4
    kinema animate corgi.png "a corgi running" --model epiCRealism --motion-adapter animatediff-motion-adapter-v1-5-2 -o a.mp4
    kinema restyle clip.mp4 "a watercolour painting" --model epiCRealism --motion-adapter ... --strength 0.6 -o w.mp4
    kinema generate "a corgi running" --model ... --frames 64 -o long.mp4   # windows of 16 every 4, FreeNoise noise
    kinema info epiCRealism --motion-adapter animatediff-motion-adapter-v1-5-2

A folder is read with fixed classes (never the index's class names, never remote code), safetensors only,
`local_files_only=True`: `unet/` (UNetMotionModel, or UNet2DConditionModel with `motion_adapter/` or
`--motion-adapter`), `vae/` AutoencoderKL, `text_encoder/` CLIPTextModel, `tokenizer/` CLIPTokenizer,
`scheduler/` (its config: the betas, prediction type and spacing every kinema scheduler is built from).

How each piece meets the seams, as diffusers' `AnimateDiffPipeline` does it:
- text: CLIP over the prompt padded to 77 tokens, no attention mask to the encoder, its last hidden states;
- VAE: the 2D AutoencoderKL applied frame by frame (`vae.FrameVAE`: posterior mean x scaling_factor), in float32;
- denoiser: `UNetMotionModel` on (B, C, F, h, w); it predicts epsilon (or v, as the scheduler config says):
  the family's parameterisation (`ModelInfo.prediction`), which the loop's hooks convert to predicted clean
  latents with the scheduler's own alphas / sigmas (`pipelines/parameterisation.py`);
- frame condition: the UNet takes none, so image-to-video and continuation are kinema's known-frame
  re-injection alone (the anchor's clean latents put back at every step's noise level); AnimateDiff has no
  image-to-video in diffusers;
- clip length: the motion modules' sinusoidal positions stop at the adapter's `motion_max_seq_length` (32);
  longer clips run in context windows (16 every 4, FreeNoise noise, pyramid weights by default).

Noise and parity: diffusers draws the initial latents with `randn_tensor(shape, generator)`, (B, C, F, h, w),
and multiplies them by the scheduler's `init_noise_sigma`; with a CPU generator seeded by the seed that is
`torch.randn(shape, generator=g)`, exactly `pipelines.common.initial_noise`, and `common.sample` applies the same
factor (`parameterisation.initial_latents`). Ancestral schedulers draw their step noise from the same generator
after the initial noise (`common.step_generator`). Video-to-video: diffusers samples the VAE posterior with its
generator before drawing the noise; kinema takes the posterior's mean, so the parity test runs diffusers with the
mean too, and the noise is then the generator's first draw in both.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from kinema.errors import KinemaError, require

from .family import (Model, ModelDefaults, ModelFamily, ModelInfo, meta_model, offload_hooks, params_line, quiet_libraries,
                     register, safetensors_parameters)
from .seams import DenoiserInputs, FrameCondition, TextEmbeds
from .vae import FrameVAE

INDEX = "model_index.json"
PIPELINES = ("AnimateDiffPipeline", "AnimateDiffVideoToVideoPipeline", "StableDiffusionPipeline")
CLASSES = {  # component -> the classes kinema accepts (each loaded with its own fixed class)
    "unet": ("UNetMotionModel", "UNet2DConditionModel"),
    "motion_adapter": ("MotionAdapter",),
    "vae": ("AutoencoderKL",),
    "text_encoder": ("CLIPTextModel",),
    "tokenizer": ("CLIPTokenizer", "CLIPTokenizerFast"),
    "scheduler": None,  # any: kinema reads its config (betas, prediction type, spacing) only
}
REQUIRED = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
WEIGHTED = ("unet", "motion_adapter", "vae", "text_encoder")
ATTENTION = ("sdpa", "xformers")
# what guoyww/AnimateDiff's examples and diffusers' docs use (a folder does not say)
DEFAULTS = dict(frames=16, height=512, width=512, fps=8, steps=25, guidance=7.5, image_noise=0.0, shift=1.0)

#################################################################################
#                                 Folder checks                                 #
#################################################################################


def _json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise KinemaError(f"{path} is not valid JSON ({e}); re-download or re-save the checkpoint") from None
    require(isinstance(data, dict), f"{path} is not a JSON object; re-download or re-save the checkpoint")
    return data


def _class_of(folder: Path) -> str | None:
    f = folder / "config.json"
    return _json(f).get("_class_name") if f.is_file() else None


def read_index(path: Path, motion_adapter: Path | None = None) -> dict:
    """The folder's components, checked: an AnimateDiff or SD 1.5 pipeline, safetensors, a motion adapter that fits."""
    from .wan import _check_weights

    if not (path / INDEX).is_file() and _class_of(path) == "MotionAdapter":
        raise KinemaError(f"{path} is a motion adapter, not a model folder: pass an SD 1.5 folder as --model and this "
                          "one as --motion-adapter")
    raw = _json(path / INDEX)
    cls = raw.get("_class_name")
    require(cls in PIPELINES, f"{path} is a diffusers folder of {cls!r}; kinema's AnimateDiff family reads "
                              f"{', '.join(PIPELINES)} folders")
    root = path.resolve()
    components = {}
    for name, entry in raw.items():
        if name.startswith("_") or not isinstance(entry, list) or len(entry) != 2 or None in entry or name not in CLASSES:
            continue  # absent optional parts ([null, null]) and ones kinema does not use (safety checker, image encoder)
        require((path / name).resolve().parent == root, f"{path / INDEX} names {name!r} outside the folder; refusing it")
        allowed = CLASSES[name]
        require(allowed is None or entry[1] in allowed,
                f"{path} has a {name} of class {entry[1]}; an AnimateDiff folder needs {' or '.join(allowed or ())}")
        components[name] = entry[1]
    for name in REQUIRED:
        require(name in components and (path / name).is_dir(),
                f"{path} is neither an AnimateDiff nor an SD 1.5 folder kinema can read: no {name}/ "
                "(save one with AnimateDiffPipeline.save_pretrained or StableDiffusionPipeline.save_pretrained)")
    for name in WEIGHTED:
        if name in components:
            require((path / name / "config.json").is_file(), f"{path / name} has no config.json; re-save the checkpoint")
            _check_weights(path / name)
    unet = _json(path / "unet" / "config.json")
    require(unet.get("_class_name") in CLASSES["unet"], f"{path / 'unet'} holds a {unet.get('_class_name')!r}, not a "
                                                        "UNetMotionModel or UNet2DConditionModel")
    adapter_dir = None
    if unet["_class_name"] == "UNetMotionModel":
        require(motion_adapter is None, f"{path}/unet already holds its motion modules (a UNetMotionModel); "
                                        "drop --motion-adapter")
    else:
        adapter_dir = motion_adapter or (path / "motion_adapter" if "motion_adapter" in components else None)
        require(adapter_dir is not None, f"{path} is a Stable Diffusion folder without motion modules: pass "
                                         "--motion-adapter DIR (a MotionAdapter folder such as "
                                         "guoyww/animatediff-motion-adapter-v1-5-2 saved with save_pretrained)")
        require(adapter_dir.is_dir() and _class_of(adapter_dir) == "MotionAdapter",
                f"--motion-adapter {adapter_dir} is not a MotionAdapter folder (config.json of class MotionAdapter)")
        _check_weights(adapter_dir)
    adapter = _json(adapter_dir / "config.json") if adapter_dir else None
    if adapter is not None:
        ours, theirs = list(unet["block_out_channels"]), list(adapter.get("block_out_channels", []))
        require(ours == theirs, f"the motion adapter's block sizes {theirs} do not match the UNet's {ours}; use an "
                                "adapter made for this base model (SD 1.5: [320, 640, 1280, 1280])")
    return dict(pipeline=cls, components=components, unet=unet, adapter=adapter, adapter_dir=adapter_dir)


def describe(path: Path, motion_adapter: Path | None = None) -> ModelInfo:
    """The folder's configs and kinema's view of them (defaults, sizes, tasks), without loading weights."""
    from .schedulers import DDPM_CLASSES, prediction_of

    idx = read_index(path, motion_adapter)
    unet, adapter = idx["unet"], idx["adapter"]
    vae = _json(path / "vae" / "config.json")
    sched = _json(path / "scheduler" / "scheduler_config.json")
    prediction = prediction_of(sched)
    require(prediction in ("epsilon", "v_prediction"), f"{path}/scheduler predicts {prediction!r}; AnimateDiff "
                                                       "checkpoints predict epsilon or v_prediction")
    require(unet.get("in_channels", 4) == vae.get("latent_channels", 4),
            f"{path}/unet takes {unet.get('in_channels')} input channels; kinema reads text-to-image UNets "
            f"({vae.get('latent_channels', 4)} channels)")
    positions = int((adapter or unet).get("motion_max_seq_length", 32))
    spatial = 2 ** (len(vae["block_out_channels"]) - 1)
    kind = DDPM_CLASSES.get(sched.get("_class_name"), "ddim")  # the folder's own (PNDM and others: DDIM)
    defaults = ModelDefaults(**DEFAULTS, scheduler=kind)
    params = {name: safetensors_parameters(path / name)[0] for name in WEIGHTED if name in idx["components"]}
    if idx["adapter_dir"] is not None and idx["adapter_dir"] != path / "motion_adapter":
        params["motion_adapter"] = safetensors_parameters(idx["adapter_dir"])[0]
    if unet["_class_name"] == "UNetMotionModel":
        params.pop("motion_adapter", None)  # its motion modules are counted in unet/
    index = dict(format="diffusers-animatediff", pipeline=idx["pipeline"], components=idx["components"],
                 unet=unet["_class_name"], motion_adapter=str(idx["adapter_dir"]) if idx["adapter_dir"] else None,
                 defaults=defaults.as_dict(), prediction=prediction, text_encoder="CLIP (text_encoder/)",
                 preset="animatediff")
    parts = (idx["adapter_dir"],) if motion_adapter is not None else ()
    return ModelInfo(family="animatediff", path=path, name=idx["pipeline"], defaults=defaults, parameters=params,
                     tasks=("generate", "animate", "restyle", "extend"), frame_conditions=(),
                     size_multiple=spatial * 2 ** (len(unet["block_out_channels"]) - 1), spatial_compression=spatial,
                     temporal_compression=1, latent_channels=int(vae.get("latent_channels", 4)),
                     configs=dict(denoiser=unet, adapter=adapter or {}, vae=vae, scheduler=sched), index=index,
                     prediction=prediction, max_context=positions, parts=parts)


#################################################################################
#                                     Seams                                     #
#################################################################################


class CLIPTextEncoder(torch.nn.Module):
    """CLIP token states of prompts padded to the tokenizer's 77 tokens, as diffusers' SD pipelines encode them."""

    def __init__(self, tokenizer, model):
        super().__init__()
        self.tokenizer = tokenizer
        self.model = model.eval().requires_grad_(False)
        self.execution_device = None  # set when the weights are offloaded and run elsewhere

    @property
    def dim(self) -> int:
        return self.model.config.hidden_size

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> TextEmbeds:
        tok = self.tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True,
                             return_tensors="pt")
        device = self.execution_device or next(self.model.parameters()).device
        hidden = self.model(tok.input_ids.to(device))[0]  # (B, 77, D); no attention mask, as diffusers
        return TextEmbeds(hidden, tok.attention_mask.bool().to(device))


class MotionUNetDenoiser(torch.nn.Module):
    """UNetMotionModel behind the denoiser seam: (B, C, F, h, w) latents -> epsilon (or v) of the same shape."""

    lora_family = "animatediff"  # LoRAs in diffusers' SD layouts (`models/lora.py`), loaded onto `unet` and CLIP

    def __init__(self, unet, positions: int):
        super().__init__()
        self.unet = unet.eval().requires_grad_(False)
        self.positions = positions  # the motion modules' positional length (frames one call may take)
        self.config = unet.config

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    def predict(self, latents: torch.Tensor, timestep: torch.Tensor, text: TextEmbeds, cond: FrameCondition | None = None,
                inputs: DenoiserInputs | None = None) -> torch.Tensor:
        frames = latents.shape[2]
        require(frames <= self.positions, f"{frames} frames in one pass exceed the motion adapter's {self.positions} "
                                          f"positions; run the clip in windows (--context-length {min(16, self.positions)})")
        hidden = text.hidden.to(self.dtype).repeat_interleave(frames, 0)  # (B*F, 77, D), as AnimateDiffPipeline hands it
        return self.unet(latents.to(self.dtype), timestep, encoder_hidden_states=hidden).sample  # (B, C, F, h, w)


def _hf_kwargs(dtype: torch.dtype) -> dict:
    from .wan import _hf_kwargs as kw

    return kw(dtype)


def load(info: ModelInfo, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
         attention: str = "sdpa", offload: str | None = None) -> Model:
    """Load a described folder: the UNet with its motion modules and CLIP in `dtype`, the VAE in float32.

    `offload` keeps weights on the CPU and moves each component to `device` while it runs (accelerate's hooks:
    "model" CLIP, the UNet, the VAE in turn, "sequential" one layer at a time), as for Wan and LTX-Video.
    """
    from diffusers import AutoencoderKL, MotionAdapter, UNet2DConditionModel, UNetMotionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    require(attention in ATTENTION, f"--attention {attention} is not available for AnimateDiff; use sdpa or xformers")
    require(offload in (None, "none", "model", "sequential"), f"unknown --offload {offload!r}; use none, model or sequential")
    path, device = info.path, torch.device(device)
    require(offload in (None, "none") or device.type == "cuda", "--offload moves weights to a GPU as they run; it needs --device cuda")
    place = torch.device("cpu") if offload in ("model", "sequential") else device
    quiet_libraries()
    load_kw = dict(local_files_only=True, use_safetensors=True)
    if info.index["unet"] == "UNetMotionModel":
        unet = UNetMotionModel.from_pretrained(path / "unet", torch_dtype=dtype, **load_kw)
    else:
        base = UNet2DConditionModel.from_pretrained(path / "unet", torch_dtype=torch.float32, **load_kw)
        adapter = MotionAdapter.from_pretrained(info.index["motion_adapter"], torch_dtype=torch.float32, **load_kw)
        unet = UNetMotionModel.from_unet2d(base, adapter).to(dtype)  # diffusers' AnimateDiffPipeline does the same
    if attention == "xformers":
        unet.enable_xformers_memory_efficient_attention()
    vae = AutoencoderKL.from_pretrained(path / "vae", torch_dtype=torch.float32, **load_kw).eval().requires_grad_(False)
    tokenizer = CLIPTokenizer.from_pretrained(path / "tokenizer", local_files_only=True)
    text = CLIPTextEncoder(tokenizer, CLIPTextModel.from_pretrained(path / "text_encoder", **_hf_kwargs(dtype)))
    require(text.dim == unet.config.cross_attention_dim,
            f"the UNet expects text dim {unet.config.cross_attention_dim} but text_encoder/ gives {text.dim}")
    denoiser = MotionUNetDenoiser(unet.to(place), info.max_context or 32)
    model = Model(text.to(place), FrameVAE(vae.to(place)), denoiser, dict(info.configs["scheduler"]), dict(info.index),
                  path, device, dtype, info=info, family=FAMILY, attention=attention, offload=offload or "none")
    if offload in ("model", "sequential"):
        enable_offload(model, offload, device)
    return model


def enable_offload(model: Model, mode: str, device: torch.device) -> None:
    """accelerate hooks that move each component to `device` only while it runs: CLIP, the UNet, the VAE in turn
    (diffusers' order for AnimateDiffPipeline; its VAE's encode / decode run the hook too)."""
    model.text_encoder.execution_device = device
    offload_hooks([model.text_encoder.model, model.denoiser.unet, model.vae.autoencoder], mode, device)


def lora_layers(info: ModelInfo) -> dict[str, dict[str, tuple[int, ...]]]:
    """The layers SD LoRAs can adapt: the UNet with its motion modules (as `load` builds it) and CLIP, on meta."""
    from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from .lora import adaptable

    unet_config = info.configs["denoiser"]
    if info.index["unet"] == "UNetMotionModel":
        unet = meta_model(UNetMotionModel, unet_config)
    else:
        with torch.device("meta"):
            unet = UNetMotionModel.from_unet2d(meta_model(UNet2DConditionModel, unet_config),
                                               meta_model(MotionAdapter, info.configs["adapter"]))
    with torch.device("meta"):
        text = CLIPTextModel(CLIPTextConfig.from_pretrained(info.path / "text_encoder", local_files_only=True))
    return {"unet": adaptable(unet), "text_encoder": adaptable(text)}


#################################################################################
#                                Memory estimate                                #
#################################################################################


def estimate_memory(info: ModelInfo, frames: int, height: int, width: int, dtype_bytes: int = 4, cfg: bool = True,
                    decode_chunk_size: int = 16) -> dict:
    """Rough peak bytes of a run: weights + the larger of the UNet's activations and one decode chunk's.

    UNet: ~24 live values per channel and latent pixel at each level (resnets, attention projections, skips),
    for every frame of the pass and both guidance rows; the temporal attention's scores (heads x F^2 per
    pixel) at the first level; spatial attention's (h w)^2 scores are left out (sdpa's memory-efficient
    kernels do not keep them). VAE decode, in float32, for one chunk of `decode_chunk_size` frames (lower it on a
    small GPU): (2 x chunk + 4) values per decoder channel and pixel at each level's resolution, fitted to SD 1.5's
    VAE (peak RSS growth 348 MiB decoding one 256x256 frame, 463 MiB two). An estimate, not a measurement.
    """
    sizes = {k: v * (4 if k == "vae" else dtype_bytes) for k, v in info.parameters.items()}
    unet, vae = info.configs["denoiser"], info.configs["vae"]
    window = frames if frames <= (info.max_context or 32) else info.defaults.frames  # longer clips run in windows
    s = info.spatial_compression
    h, w = height // s, width // s
    rows = (2 if cfg else 1) * window
    act = sum(24 * c * (h >> i) * (w >> i) for i, c in enumerate(unet["block_out_channels"])) * rows * dtype_bytes
    heads = (info.configs.get("adapter") or unet).get("motion_num_attention_heads", 8)
    heads = heads[0] if isinstance(heads, list) else heads
    act += (2 if cfg else 1) * h * w * heads * window**2 * dtype_bytes
    chunk = min(frames, decode_chunk_size)
    levels = list(reversed(vae["block_out_channels"]))  # the decoder goes up from the latent grid: widest first
    dec = sum(c * (height >> (len(levels) - 1 - i)) * (width >> (len(levels) - 1 - i)) for i, c in enumerate(levels))
    dec *= (2 * chunk + 4) * 4  # fitted to SD 1.5's VAE decoding 1 and 2 frames of 256x256 on a CPU (348, 463 MiB)
    weights = sum(sizes.values())
    return dict(weights=weights, denoiser_activations=act, vae_decode=dec, total=weights + max(act, dec))


def report(info: ModelInfo, frames: int, height: int, width: int, dtype: str = "float16") -> tuple[dict, list[str]]:
    """`kinema info`: components, parameters, parameterisation, defaults, memory at float16 and float32."""
    est = {name: {k: f"{v / 2**30:.2f} GiB" for k, v in estimate_memory(info, frames, height, width, nbytes).items()}
           for name, nbytes in (("float16", 2), ("float32", 4))}
    idx, d = info.index, info.defaults
    rep = dict(model=str(info.path), family="animatediff", pipeline=idx["pipeline"], unet=idx["unet"],
               motion_adapter=idx["motion_adapter"], params=dict(info.parameters), prediction=info.prediction,
               max_context=info.max_context, tasks=list(info.tasks), defaults=d.as_dict(), size_multiple=info.size_multiple,
               vae=dict(latent_channels=info.latent_channels, spatial_compression=info.spatial_compression,
                        temporal_compression=1),
               memory_estimate=dict(frames=frames, height=height, width=width, dtype=est))
    adapter = f" + motion adapter {idx['motion_adapter']}" if idx["unet"] != "UNetMotionModel" else " (motion modules in unet/)"
    lines = [
        f"model     {rep['model']} ({idx['pipeline']}, AnimateDiff{adapter})",
        params_line(info),
        f"predicts  {info.prediction} with the folder's {d.scheduler} scheduler (also: ddim, euler, euler-ancestral, "
        f"dpm++2m, unipc); windows of at most {info.max_context} frames (the adapter's positions)",
        f"vae       AutoencoderKL per frame, {info.latent_channels} latent channels, {info.spatial_compression}x spatial",
        f"defaults  {d.frames} frames {d.width}x{d.height} @ {d.fps:g} fps, {d.steps} steps, guidance {d.guidance}; "
        f"sizes must be multiples of {info.size_multiple}",
        f"tasks     {', '.join(info.tasks)} (image-to-video and extend by known-frame re-injection)",
    ]
    for name, m in est.items():
        lines.append(f"memory    ~{m['total']} GPU peak for {frames} frames {width}x{height} in {name} (weights "
                     f"{m['weights']}, UNet activations {m['denoiser_activations']}, VAE decode {m['vae_decode']})")
    return rep, lines


#################################################################################
#                                    Family                                     #
#################################################################################


class AnimateDiffFamily(ModelFamily):
    """AnimateDiff pipeline folders, and SD 1.5 folders with a separate motion adapter."""

    name = "animatediff"
    takes_motion_adapter = True

    def lora_training(self, info):
        """The attention projections of the UNet's spatial transformers and of its motion modules (the layers SD LoRAs
        and AnimateDiff's motion LoRAs adapt)."""
        return dict(part="unet", low=0.0, targets=r".*transformer_blocks\.\d+\.(attn1|attn2)\.(to_q|to_k|to_v|to_out\.0)")

    def recognises(self, path: Path) -> bool:
        path = Path(path)
        if (path / INDEX).is_file():
            try:
                return json.loads((path / INDEX).read_text()).get("_class_name") in PIPELINES
            except (OSError, json.JSONDecodeError, AttributeError):
                return False
        try:
            return _class_of(path) == "MotionAdapter"  # refused in describe, with what to do instead
        except KinemaError:
            return False

    def describe(self, path: Path, motion_adapter: Path | None = None) -> ModelInfo:
        return describe(Path(path), motion_adapter)

    def load(self, info, device, dtype, attention="sdpa", offload=None) -> Model:
        return load(info, device, dtype, attention, offload)

    def estimate_memory(self, info, frames, height, width, dtype_bytes=4, cfg=True, decode_chunk_size=16, offload=None):
        return estimate_memory(info, frames, height, width, dtype_bytes, cfg, decode_chunk_size)

    def report(self, info, frames, height, width, dtype="float16"):
        return report(info, frames, height, width)

    def attention_backends(self, info):
        return ATTENTION

    def lora_layers(self, info):
        return lora_layers(info)


FAMILY = register(AnimateDiffFamily())
