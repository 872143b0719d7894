"""Random Wan components and folders of the real layout, for tests and benchmarks (no downloads).

    from kinema.models.wan_testing import t2v_folder
    t2v_folder("/tmp/wan-tiny")                                  # what tests/test_wan.py runs parity on
    t2v_folder("/tmp/wan-bench", shape="bench")                  # ~70M-parameter transformer, tiny VAE and UMT5
    t2v_folder("/tmp/wan-1.3b", shape="1.3b", vae_shape="wan2.1", device="cuda", dtype=torch.bfloat16)

Each builder makes a diffusers / transformers class with a small (or a named) config; the tokenizer is a
WordLevel one over `WORDS`, so prompts made of those words tokenize without any vocabulary file. A folder
is written with `save_pretrained` (safetensors), so kinema and diffusers load the same weights from it.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch

WORDS = "a red circle moving right on blue background the cat dog green square up left".split()

# transformer shapes: tiny (tests), bench (compute-bound on a CPU, ~70M parameters), Wan2.1-T2V-1.3B
SHAPES = {
    "tiny": dict(num_attention_heads=2, attention_head_dim=12, text_dim=16, freq_dim=32, ffn_dim=32, num_layers=1,
                 rope_max_seq_len=32),
    "bench": dict(num_attention_heads=8, attention_head_dim=64, text_dim=16, freq_dim=256, ffn_dim=2048, num_layers=16),
    "1.3b": dict(num_attention_heads=12, attention_head_dim=128, text_dim=4096, freq_dim=256, ffn_dim=8960,
                 num_layers=30),
}


def tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def text_encoder(d_model: int = 16):
    """A one-layer UMT5 encoder; `d_model` must be the transformer's text_dim (4096 for real Wan shapes)."""
    from transformers import UMT5Config, UMT5EncoderModel

    return UMT5EncoderModel(UMT5Config(vocab_size=32, d_model=d_model, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                                       relative_attention_num_buckets=8, relative_attention_max_distance=16))


def vae(wan22: bool = False, shape: str = "tiny"):
    """A tiny AutoencoderKLWan (2.1, or 2.2's patchified one), or `shape="wan2.1"`: the real 2.1 VAE's shape."""
    from diffusers import AutoencoderKLWan

    if shape == "wan2.1":
        return AutoencoderKLWan()  # diffusers' defaults are Wan 2.1's VAE (base 96, z 16, ~127M parameters)
    if wan22:  # Wan 2.2's VAE: residual, 2x2 patchified pixels, 16x spatial, 48 channels
        return AutoencoderKLWan(base_dim=8, decoder_base_dim=8, z_dim=48, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                                temperal_downsample=[False, True, True], is_residual=True, in_channels=12,
                                out_channels=12, patch_size=2, scale_factor_spatial=16,
                                latents_mean=[0.1 * (i % 7) - 0.3 for i in range(48)],
                                latents_std=[0.5 + 0.1 * (i % 5) for i in range(48)])
    return AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                            temperal_downsample=[False, True, True])


def transformer(in_channels: int = 16, out_channels: int = 16, shape: str = "tiny", **kw):
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(patch_size=(1, 2, 2), in_channels=in_channels, out_channels=out_channels,
                                 **{**SHAPES[shape], **kw})


def scheduler(shift: float = 3.0):
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift)


def clip():
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    enc = CLIPVisionModel(CLIPVisionConfig(hidden_size=8, intermediate_size=16, num_hidden_layers=2,
                                           num_attention_heads=2, image_size=16, patch_size=8, projection_dim=8))
    proc = CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    return enc, proc


def save(pipe, path):
    pipe.save_pretrained(path, safe_serialization=True)
    return path


def t2v_folder(path: str | Path, shape: str = "tiny", vae_shape: str = "tiny", seed: int = 0,
               device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> Path:
    """Write a Wan 2.1 text-to-video folder: a random transformer of `shape`, UMT5 of its text_dim, a VAE.

    The transformer is built on `device` (a 1.3B one initialises in seconds on a GPU) and saved in `dtype`;
    the VAE stays float32, as kinema and diffusers run it.
    """
    from diffusers import WanPipeline

    torch.manual_seed(seed)
    with torch.device(device):
        tr = transformer(shape=shape).to(dtype)
    te = text_encoder(SHAPES[shape]["text_dim"]).to(dtype)
    return save(WanPipeline(tokenizer(), te, vae(shape=vae_shape), scheduler(), tr), Path(path))


def pipeline(cls, folder, device="cpu", dtype=torch.float32):
    """A diffusers Wan pipeline from the folder, placed as kinema places it (VAE and CLIP in float32)."""
    kw = {} if dtype == torch.float32 else {"torch_dtype": dtype}
    pipe = cls.from_pretrained(folder, local_files_only=True, **kw).to(device)
    pipe.vae.to(torch.float32)
    if getattr(pipe, "image_encoder", None) is not None:
        pipe.image_encoder.to(torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@contextmanager
def without_ftfy():
    """diffusers' Wan modules clean prompts with ftfy (not a kinema dependency): use kinema's cleaner inside."""
    import diffusers.pipelines.wan.pipeline_wan as t2v
    import diffusers.pipelines.wan.pipeline_wan_i2v as i2v
    import diffusers.pipelines.wan.pipeline_wan_video2video as v2v

    from kinema.models.wan import clean_prompt

    saved = [(m, m.prompt_clean) for m in (t2v, i2v, v2v)]
    for m, _ in saved:
        m.prompt_clean = clean_prompt
    try:
        yield
    finally:
        for m, f in saved:
            m.prompt_clean = f
