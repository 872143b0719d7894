"""Networks saved as a JSON config beside safetensors weights, in diffusers' folder layout, without diffusers.

    class Net(PretrainedModel):
        @register_to_config
        def __init__(self, width: int = 64): ...

    net = Net.from_pretrained("model/denoiser", torch_dtype=torch.float32)   # config.json + weights
    net.config.width, net.config.get("depth", 2)                             # the init arguments
    net.save_pretrained("copy/denoiser")

A folder is `config.json` (the init arguments, `_class_name`, `_diffusers_version`, sorted keys) and
`diffusion_pytorch_model.safetensors`, exactly what diffusers' `ModelMixin`/`ConfigMixin` read and
write, so folders move between the two both ways. Importing diffusers costs seconds (it pulls
torch._dynamo and all its model classes); kinema's own networks load through this module in
milliseconds.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import inspect
import json
from pathlib import Path

import torch
import torch.nn as nn

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"


class Config(dict):
    """A network's init arguments: a dict that also reads as attributes (`config.text_dim`), as diffusers' FrozenDict."""

    def __getattr__(self, name: str):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"config has no entry {name!r}") from None


def register_to_config(init):
    """Decorate `__init__`: its arguments, defaults filled in, become `self.config` before it runs.

    Arguments starting with `_` are config metadata (`_name_or_path`), not passed on; `_use_default_values`
    lists the arguments left at their defaults (diffusers' convention).
    """
    signature = inspect.signature(init)
    names = list(signature.parameters)[1:]  # without self

    @functools.wraps(init)
    def wrapper(self, *args, **kwargs):
        meta = {k: v for k, v in kwargs.items() if k.startswith("_")}
        kwargs = {k: v for k, v in kwargs.items() if not k.startswith("_")}
        bound = signature.bind(self, *args, **kwargs)  # an unknown or missing argument: TypeError here
        given = set(bound.arguments)
        bound.apply_defaults()
        config = {name: bound.arguments[name] for name in names}
        defaults = [name for name in names if name not in given]
        self.register_to_config(**meta, **config, **({"_use_default_values": defaults} if defaults else {}))
        init(self, *args, **kwargs)

    return wrapper


class PretrainedModel(nn.Module):
    """An nn.Module with a `config` of its init arguments that loads and saves diffusers-layout folders."""

    def register_to_config(self, **entries) -> None:
        """Add or replace config entries (saved by `save_pretrained`)."""
        self._internal_dict = Config({**getattr(self, "_internal_dict", {}), **entries})

    @property
    def config(self) -> Config:
        return self._internal_dict

    @property
    def dtype(self) -> torch.dtype:
        return next((p.dtype for p in self.parameters() if p.is_floating_point()), torch.get_default_dtype())

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @classmethod
    def from_config(cls, config: dict, device: torch.device | str | None = None):
        """A network built from a config dict: its init arguments are used, a missing one takes its default.

        Entries starting with `_` are kept as metadata; entries the class does not take are dropped, as
        diffusers does. `device="meta"` builds it without memory (its weights then come from a state dict).
        """
        params = list(inspect.signature(cls.__init__).parameters)[1:]
        args = {k: v for k, v in config.items() if k in params}
        meta = {k: v for k, v in config.items() if k.startswith("_") and k != "_use_default_values"}
        with torch.device(device) if device is not None else contextlib.nullcontext():
            return cls(**args, **meta)

    @classmethod
    def from_pretrained(cls, folder: str | Path, torch_dtype: torch.dtype | None = None, local_files_only: bool = True,
                        use_safetensors: bool = True):
        """The network in `folder` (config.json and diffusion_pytorch_model.safetensors), in eval mode.

        The weights must match the config's network exactly (missing, unexpected or misshapen: RuntimeError);
        `torch_dtype` casts the floating-point ones. Only local safetensors are read.
        """
        from safetensors.torch import load_file

        if not (local_files_only and use_safetensors):
            raise ValueError("kinema loads networks from local safetensors only")
        name, folder = folder, Path(folder)
        config = json.loads((folder / CONFIG_NAME).read_text())
        if not isinstance(config, dict):
            raise ValueError(f"{folder / CONFIG_NAME} is not a JSON object")
        state = load_file(folder / WEIGHTS_NAME)  # views of the file, mapped: no copy unless cast
        if torch_dtype is not None:
            state = {k: v.to(torch_dtype) if v.is_floating_point() else v for k, v in state.items()}
        model = cls.from_config(config, device="meta")  # no memory, no initialisation cost: the weights replace it
        model.load_state_dict(state, strict=True, assign=True)
        meta = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
        if meta:
            raise RuntimeError(f"{folder / WEIGHTS_NAME} does not set {', '.join(meta[:3])}")
        model.register_to_config(_name_or_path=name)  # as given, as diffusers records it
        return model.eval()

    def save_pretrained(self, folder: str | Path, safe_serialization: bool = True) -> None:
        """Write config.json and diffusion_pytorch_model.safetensors into `folder` (created if missing)."""
        from safetensors.torch import save_file

        if not safe_serialization:
            raise ValueError("kinema writes safetensors only")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        config = {k: v for k, v in self.config.items() if k not in ("_use_default_values", "_ignore_files")}
        config.update(_class_name=type(self).__name__, _diffusers_version=config.get("_diffusers_version") or _diffusers_version())
        (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True, default=_jsonable) + "\n")
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, folder / WEIGHTS_NAME, metadata={"format": "pt"})


def _jsonable(value):
    if isinstance(value, Path):
        return value.as_posix()
    raise TypeError(f"config value {value!r} is not JSON")


@functools.cache
def _diffusers_version() -> str:
    """The installed diffusers' version, for the folders' `_diffusers_version` (read without importing it)."""
    try:
        return importlib.metadata.version("diffusers")
    except importlib.metadata.PackageNotFoundError:
        return "0.32.0"  # the oldest diffusers kinema's folders load in

