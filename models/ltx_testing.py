"""Random LTX-Video components and folders of the real layout, for tests and benchmarks (no downloads).

    from kinema.models.ltx_testing import folder
    folder("/tmp/ltx-tiny")                           # diffusers' own LTX test shapes: what tests/test_ltx.py runs parity on
    folder("/tmp/ltx-real", vae_shape="ltx")          # the real VAE's compression (32x space, 8x time), tiny channels
    folder("/tmp/ltx-bench", shape="bench")           # a ~100M-parameter transformer, tiny VAE and T5
    published_info("2b")                              # a ModelInfo of the published 2B shapes (meta tensors, no weights)

Each builder makes a diffusers / transformers class with a small config (diffusers' `tests/pipelines/ltx`
shapes: a 1-layer transformer with 8 in/out channels, a 4-block VAE with 8 latent channels); the tokenizer is a
WordLevel one over `WORDS` (`wan_testing.tokenizer`), so prompts made of those words tokenize without any
vocabulary file. A folder is written with `save_pretrained` (safetensors), so kinema and diffusers load the same
weights from it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .wan_testing import WORDS, tokenizer  # noqa: F401  (the same WordLevel tokenizer)

# transformer shapes: tiny (diffusers' tests), bench (compute-bound on a CPU), the published 2B (0.9.0-0.9.6) and 13B
SHAPES = {
    "tiny": dict(num_attention_heads=4, attention_head_dim=8, cross_attention_dim=32, num_layers=1, caption_channels=32),
    "bench": dict(num_attention_heads=8, attention_head_dim=64, cross_attention_dim=512, num_layers=16, caption_channels=32),
    "2b": dict(num_attention_heads=32, attention_head_dim=64, cross_attention_dim=2048, num_layers=28, caption_channels=4096),
    "13b": dict(num_attention_heads=32, attention_head_dim=128, cross_attention_dim=4096, num_layers=48,
                caption_channels=4096),
}
# Lightricks/LTX-Video's scheduler config: resolution-dependent shift, sigmas stretched to end at 0.1
LTX_SCHEDULER = dict(base_image_seq_len=1024, base_shift=0.95, max_image_seq_len=4096, max_shift=2.05, shift=1.0,
                     shift_terminal=0.1, use_dynamic_shifting=True)


def text_encoder(d_model: int = 32):
    """A small T5 encoder (diffusers' tests use hf-internal-testing/tiny-random-t5, d_model 32)."""
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=32, d_model=d_model, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                                   relative_attention_num_buckets=8, relative_attention_max_distance=16))


def vae(shape: str = "tiny", timestep_conditioning: bool = False):
    """diffusers' test VAE (4x space and time), or `shape="ltx"`: the real compression (patch 4, three 2x scalings)."""
    from diffusers import AutoencoderKLLTXVideo

    real = shape == "ltx"
    scaling = (True, True, True, False) if real else (True, True, False, False)
    ae = AutoencoderKLLTXVideo(in_channels=3, out_channels=3, latent_channels=8, block_out_channels=(8, 8, 8, 8),
                               decoder_block_out_channels=(8, 8, 8, 8), layers_per_block=(1, 1, 1, 1, 1),
                               decoder_layers_per_block=(1, 1, 1, 1, 1), spatio_temporal_scaling=scaling,
                               decoder_spatio_temporal_scaling=scaling, decoder_inject_noise=(False,) * 5,
                               upsample_residual=(False,) * 4, upsample_factor=(1,) * 4,
                               timestep_conditioning=timestep_conditioning, patch_size=4 if real else 1, patch_size_t=1,
                               encoder_causal=True, decoder_causal=False)
    with torch.no_grad():  # non-trivial normalisation, so the tests see it applied
        ae.latents_mean.copy_(torch.linspace(-0.2, 0.2, 8))
        ae.latents_std.copy_(torch.linspace(0.6, 1.4, 8))
    return ae


def transformer(shape: str = "tiny", channels: int = 8):
    from diffusers import LTXVideoTransformer3DModel

    return LTXVideoTransformer3DModel(in_channels=channels, out_channels=channels, patch_size=1, patch_size_t=1,
                                      **SHAPES[shape])


def scheduler(real: bool = False):
    """diffusers' tests' scheduler (a static shift of 1), or `real`: Lightricks/LTX-Video's."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(**(LTX_SCHEDULER if real else {}))


def folder(path: str | Path, shape: str = "tiny", vae_shape: str = "tiny", seed: int = 0, real_scheduler: bool = False,
           timestep_conditioning: bool = False, pipeline: str = "LTXPipeline") -> Path:
    """Write an LTX-Video folder (LTXPipeline.save_pretrained layout) with random weights; `pipeline` names the index's."""
    import diffusers

    torch.manual_seed(seed)
    tr = transformer(shape)
    te = text_encoder(SHAPES[shape]["caption_channels"])
    ae = vae(vae_shape, timestep_conditioning)
    pipe = diffusers.LTXPipeline(scheduler(real_scheduler), ae, te, tokenizer(), tr)
    path = Path(path)
    pipe.save_pretrained(path, safe_serialization=True)
    if pipeline != "LTXPipeline":
        index = json.loads((path / "model_index.json").read_text())
        (path / "model_index.json").write_text(json.dumps({**index, "_class_name": pipeline}, indent=2))
    return path


def pipeline(cls, path, device="cpu"):
    """A diffusers LTX pipeline from the folder (float32), progress bars off."""
    pipe = cls.from_pretrained(path, local_files_only=True).to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def published_info(shape: str = "2b"):
    """A ModelInfo of Lightricks/LTX-Video's published shapes, its parameters counted on meta tensors (no weights).

    2B: the 0.9.0-0.9.6 transformer (28 layers, dim 2048); 13B: 0.9.7/0.9.8 (48 layers, dim 4096); both with the
    T5 v1.1 XXL encoder and the 0.9.0 VAE (diffusers' AutoencoderKLLTXVideo defaults), in a folder path that
    does not exist. For `kinema info`-style estimates (`ltx.report`) of checkpoints not on this machine.
    """
    from diffusers import AutoencoderKLLTXVideo, FlowMatchEulerDiscreteScheduler, LTXVideoTransformer3DModel
    from transformers import T5Config, T5EncoderModel

    from . import ltx
    from .family import ModelDefaults, ModelInfo

    with torch.device("meta"):
        tr = LTXVideoTransformer3DModel(**SHAPES[shape])
        ae = AutoencoderKLLTXVideo()
        te = T5EncoderModel(T5Config(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                                     feed_forward_proj="gated-gelu"))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    sched = dict(FlowMatchEulerDiscreteScheduler(**LTX_SCHEDULER).config)
    configs = dict(denoiser=dict(tr.config), vae=dict(ae.config), scheduler=sched)
    spatial, temporal = ltx.compression(configs["vae"])
    defaults = ModelDefaults(**ltx.DEFAULTS, shift=1.0)
    index = dict(pipeline="LTXPipeline", timestep_conditioning=False, preset=f"ltx-video-{shape}")
    return ModelInfo(family="ltx", path=Path(f"LTX-Video-{shape}"), name="LTXPipeline", defaults=defaults,
                     parameters=dict(transformer=count(tr), vae=count(ae), text_encoder=count(te)),
                     frame_conditions=("first",), size_multiple=spatial, spatial_compression=spatial,
                     temporal_compression=temporal, latent_channels=128, configs=configs, index=index)
