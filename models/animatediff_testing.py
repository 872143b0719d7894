"""Random AnimateDiff components and folders of the real layouts, for tests and benchmarks (no downloads).

    from kinema.models.animatediff_testing import pipeline_folder, sd_and_adapter_folders
    pipeline_folder("/tmp/ad-tiny")                       # AnimateDiffPipeline.save_pretrained: unet/ is a UNetMotionModel
    sd, adapter = sd_and_adapter_folders("/tmp/ad-split") # an SD 1.5 pipeline folder and a MotionAdapter folder
    pipeline_folder("/tmp/ad-bench", shape="bench")       # a UNet large enough that compute dominates on a CPU

The shapes are those of diffusers' own AnimateDiff tests (`tests/pipelines/animatediff/test_animatediff.py`
`get_dummy_components`): a UNet2DConditionModel with two 8-channel blocks (cross-attention dim 8, 2 norm
groups), a MotionAdapter of the same block sizes, a 2-block AutoencoderKL, a 5-layer CLIPTextModel and the
DDIM scheduler config they use. The CLIP tokenizer is a byte-level BPE whose vocab.json and merges.txt are
written here (every byte as a token, a few merges), so nothing is downloaded. Folders are written with
`save_pretrained` (safetensors), so kinema and diffusers load the same weights from them.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

# UNet (and matching MotionAdapter / VAE) shapes: tiny (diffusers' tests), bench (compute-bound on a CPU)
SHAPES = {
    "tiny": dict(block_out_channels=(8, 8), cross_attention_dim=8, norm_num_groups=2, layers_per_block=2, heads=4),
    "bench": dict(block_out_channels=(64, 128), cross_attention_dim=32, norm_num_groups=32, layers_per_block=2, heads=8),
}
SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="linear", clip_sample=False, steps_offset=1)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP's reversible byte -> printable character map."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


MERGES = ["r e", "c i", "ci r", "cir c", "l e</w>", "o n</w>", "t h", "th e</w>"]


def write_tokenizer_files(folder: str | Path) -> Path:
    """vocab.json and merges.txt of a tiny CLIP BPE: every byte (alone and word-final), a few merges, the specials."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chars = list(_bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m.split()) for m in MERGES]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(MERGES) + "\n")
    return folder


def tokenizer(folder: str | Path):
    """A CLIPTokenizer from the files `write_tokenizer_files` writes in `folder` (77 tokens, as SD's)."""
    from transformers import CLIPTokenizer

    folder = write_tokenizer_files(folder)
    return CLIPTokenizer(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"), model_max_length=77)


def text_encoder(hidden_size: int = 8):
    """diffusers' test CLIPTextModel (5 layers); `hidden_size` is the UNet's cross_attention_dim."""
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(bos_token_id=0, eos_token_id=2, hidden_size=hidden_size, intermediate_size=37,
                                       layer_norm_eps=1e-05, num_attention_heads=4, num_hidden_layers=5, pad_token_id=1,
                                       vocab_size=1000))


def unet(shape: str = "tiny"):
    from diffusers import UNet2DConditionModel

    s = SHAPES[shape]
    return UNet2DConditionModel(block_out_channels=s["block_out_channels"], layers_per_block=s["layers_per_block"],
                                sample_size=8, in_channels=4, out_channels=4,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                                cross_attention_dim=s["cross_attention_dim"], norm_num_groups=s["norm_num_groups"])


def motion_adapter(shape: str = "tiny", block_out_channels=None, max_seq_length: int = 32):
    from diffusers import MotionAdapter

    s = SHAPES[shape]
    return MotionAdapter(block_out_channels=tuple(block_out_channels or s["block_out_channels"]),
                         motion_layers_per_block=2, motion_norm_num_groups=s["norm_num_groups"],
                         motion_num_attention_heads=s["heads"], motion_max_seq_length=max_seq_length)


def vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=(8, 8), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=2,
                         down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2)


def scheduler(**overrides):
    from diffusers import DDIMScheduler

    return DDIMScheduler(**{**SCHEDULER, **overrides})


def save(pipe, path) -> Path:
    pipe.save_pretrained(path, safe_serialization=True)
    return Path(path)


def _components(tmp: Path, shape: str, seed: int, scheduler_kw: dict | None):
    torch.manual_seed(seed)
    u = unet(shape)
    te = text_encoder(SHAPES[shape]["cross_attention_dim"])
    return dict(unet=u, text_encoder=te, vae=vae(), tokenizer=tokenizer(tmp), scheduler=scheduler(**(scheduler_kw or {})))


def pipeline_folder(path: str | Path, shape: str = "tiny", seed: int = 0, scheduler_kw: dict | None = None,
                    max_seq_length: int = 32) -> Path:
    """Write an AnimateDiffPipeline folder (unet/ a UNetMotionModel, motion_adapter/ beside it) and return it."""
    from diffusers import AnimateDiffPipeline

    path = Path(path)
    c = _components(path.parent / f".{path.name}-tokenizer", shape, seed, scheduler_kw)
    adapter = motion_adapter(shape, max_seq_length=max_seq_length)
    return save(AnimateDiffPipeline(motion_adapter=adapter, feature_extractor=None, image_encoder=None, **c), path)


def sd_and_adapter_folders(root: str | Path, shape: str = "tiny", seed: int = 0, adapter_blocks=None) -> tuple[Path, Path]:
    """Write an SD 1.5 layout (StableDiffusionPipeline folder) and a separate MotionAdapter folder under `root`."""
    from diffusers import StableDiffusionPipeline

    root = Path(root)
    c = _components(root / ".tokenizer", shape, seed, None)
    sd = save(StableDiffusionPipeline(safety_checker=None, feature_extractor=None, requires_safety_checker=False, **c),
              root / "sd15")
    adapter = motion_adapter(shape, adapter_blocks)
    adapter.save_pretrained(root / "adapter", safe_serialization=True)
    return sd, root / "adapter"


#################################################################################
#                       Real shapes, no weights (kinema info)                   #
#################################################################################


def _sparse_safetensors(path: Path, shapes: dict[str, tuple[int, ...]], dtype: str = "F16") -> None:
    """A safetensors file whose header names `shapes`; the data region is a hole (a sparse file: no disk, all zeros)."""
    size = {"F16": 2, "F32": 4}[dtype]
    header, offset = {}, 0
    for name, shape in shapes.items():
        n = size
        for d in shape:
            n *= d
        header[name] = dict(dtype=dtype, shape=list(shape), data_offsets=[offset, offset + n])
        offset += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        f.truncate(8 + len(raw) + offset)


def _write_shapes(module, folder: Path, weights: str, dtype: str = "F16") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    config = dict(module.config) if not hasattr(module.config, "to_dict") else module.config.to_dict()
    config["_class_name"] = type(module).__name__
    (folder / "config.json").write_text(json.dumps(config, default=list))
    _sparse_safetensors(folder / weights, {k: tuple(v.shape) for k, v in module.state_dict().items()}, dtype)


def sd15_shape_folders(root: str | Path) -> tuple[Path, Path]:
    """An SD 1.5 folder and a MotionAdapter v1-5-2 folder with the real configs and float16 weight headers only.

    Made on the meta device (no memory, no download): `kinema info` reads configs and parameter counts from them,
    so its estimates are those of emilianJR/epiCRealism + guoyww/animatediff-motion-adapter-v1-5-2; they cannot run.
    """
    from diffusers import AutoencoderKL, MotionAdapter, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    root = Path(root)
    sd, ad = root / "epiCRealism", root / "animatediff-motion-adapter-v1-5-2"
    with torch.device("meta"):
        unet = UNet2DConditionModel(cross_attention_dim=768, sample_size=64)
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=["DownEncoderBlock2D"] * 4,
                            up_block_types=["UpDecoderBlock2D"] * 4, latent_channels=4, layers_per_block=2,
                            sample_size=512)
        text = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                                            num_hidden_layers=12, projection_dim=768, hidden_act="quick_gelu"))
        adapter = MotionAdapter(motion_max_seq_length=32, use_motion_mid_block=True)
    _write_shapes(unet, sd / "unet", "diffusion_pytorch_model.safetensors")
    _write_shapes(vae, sd / "vae", "diffusion_pytorch_model.safetensors")
    _write_shapes(text, sd / "text_encoder", "model.safetensors")
    _write_shapes(adapter, ad, "diffusion_pytorch_model.safetensors")
    tokenizer(sd / "tokenizer")
    PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
                  steps_offset=1, set_alpha_to_one=False).save_pretrained(sd / "scheduler")
    index = dict(_class_name="StableDiffusionPipeline", unet=["diffusers", "UNet2DConditionModel"],
                 vae=["diffusers", "AutoencoderKL"], text_encoder=["transformers", "CLIPTextModel"],
                 tokenizer=["transformers", "CLIPTokenizer"], scheduler=["diffusers", "PNDMScheduler"],
                 safety_checker=[None, None], feature_extractor=[None, None])
    (sd / "model_index.json").write_text(json.dumps(index, indent=2))
    return sd, ad
