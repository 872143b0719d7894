"""A plain BERT encoder in torch: MiniLM, the default text encoder, read from its Hugging Face folder without transformers.

The modules carry transformers' `BertModel` names, so the folder's `model.safetensors` loads as it is (a
folder with only pickled weights is left to transformers, which refuses it as kinema's loaders do); the
last hidden states match transformers' to float rounding (`tests/test_native.py`). Only what an encoder of text prompts
needs: absolute positions, GELU, one segment, no pooler. Importing transformers costs about a second;
this costs nothing. Reads top-down: config, blocks, model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

#################################################################################
#                                    Config                                     #
#################################################################################


@dataclass(frozen=True)
class BertConfig:
    """The entries of a BERT config.json the encoder reads."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0

    @classmethod
    def of_folder(cls, folder: Path) -> BertConfig | None:
        """The config of a BERT encoder folder this module runs as transformers would, else None."""
        try:
            cfg = json.loads((folder / "config.json").read_text())
        except (OSError, ValueError):
            return None
        plain = (isinstance(cfg, dict) and cfg.get("model_type") == "bert" and cfg.get("hidden_act", "gelu") == "gelu"
                 and cfg.get("position_embedding_type", "absolute") == "absolute" and not cfg.get("is_decoder", False)
                 and not cfg.get("add_cross_attention", False))
        required = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
        if not plain or any(k not in cfg for k in required):
            return None
        return cls(**{f.name: cfg[f.name] for f in fields(cls) if f.name in cfg})


#################################################################################
#                                    Blocks                                     #
#################################################################################


def empty_table(n: int, dim: int, padding_idx: int | None = None) -> nn.Embedding:
    """An uninitialised embedding table (the weights fill it): a random one drawn on the meta device, where the
    encoder is built, imports torch._dynamo (0.7 s)."""
    return nn.Embedding.from_pretrained(torch.empty(n, dim), freeze=False, padding_idx=padding_idx)


class Embeddings(nn.Module):
    """Token + segment (0) + absolute position embeddings, layer-normed."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.word_embeddings = empty_table(cfg.vocab_size, cfg.hidden_size, cfg.pad_token_id)
        self.position_embeddings = empty_table(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = empty_table(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        # ids (B, L) -> (B, L, D)
        positions = torch.arange(ids.shape[1], device=ids.device)[None]  # (1, L)
        x = self.word_embeddings(ids) + self.token_type_embeddings(torch.zeros_like(ids))
        return self.LayerNorm(x + self.position_embeddings(positions))


class SelfAttention(nn.Module):
    """Multi-head self-attention over the tokens, padding keys masked out."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.heads = cfg.num_attention_heads
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.value = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # x (B, L, D), mask (B, 1, 1, L) bool
        b, n, d = x.shape
        q, k, v = (proj(x).view(b, n, self.heads, -1).transpose(1, 2) for proj in (self.query, self.key, self.value))
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, heads, L, d)
        return o.transpose(1, 2).reshape(b, n, d)


class Residual(nn.Module):
    """dense(x) added to the block's input, layer-normed (BertSelfOutput, BertOutput)."""

    def __init__(self, cin: int, cout: int, eps: float):
        super().__init__()
        self.dense = nn.Linear(cin, cout)
        self.LayerNorm = nn.LayerNorm(cout, eps=eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class Layer(nn.Module):
    """Self-attention and a GELU feed-forward, each with a residual and a layer norm after it."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.attention = nn.Module()
        self.attention.self = SelfAttention(cfg)  # transformers' names: attention.self, attention.output
        self.attention.output = Residual(cfg.hidden_size, cfg.hidden_size, cfg.layer_norm_eps)
        self.intermediate = nn.Module()
        self.intermediate.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.output = Residual(cfg.intermediate_size, cfg.hidden_size, cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.attention.output(self.attention.self(x, mask), x)
        return self.output(F.gelu(self.intermediate.dense(x)), x)


#################################################################################
#                                     Model                                     #
#################################################################################


class BertEncoder(nn.Module):
    """Token ids (B, L) and attention mask (B, L) -> last hidden states (B, L, D)."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.config = cfg
        self.embeddings = Embeddings(cfg)
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList(Layer(cfg) for _ in range(cfg.num_hidden_layers))

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.embeddings(ids)
        mask = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, L): every query sees the real tokens
        for layer in self.encoder.layer:
            x = layer(x, mask)
        return x

    @classmethod
    def from_folder(cls, folder: Path, cfg: BertConfig) -> BertEncoder:
        """The encoder with the folder's model.safetensors."""
        from safetensors.torch import load_file

        # a task model's encoder sits under "bert."; the pooler and the position-id buffer are not used here
        state = {k.removeprefix("bert."): v for k, v in load_file(Path(folder) / "model.safetensors").items()}
        state = {k: v for k, v in state.items() if not k.startswith(("pooler.", "cls.")) and k not in (
            "embeddings.position_ids", "embeddings.token_type_ids")}
        with torch.device("meta"):
            model = cls(cfg)
        model.load_state_dict(state, strict=True, assign=True)
        return model.eval()
