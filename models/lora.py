"""LoRA for kinema's own denoiser, through PEFT: trained, saved, loaded, stacked.

A kinema LoRA file is safetensors: PEFT's state-dict keys of the denoiser's adapted layers
(`<module>.lora_A.weight`, `<module>.lora_B.weight`, as `peft.get_peft_model_state_dict` names them
with the adapter name dropped) and a metadata entry `kinema_lora` holding the family, rank, alpha,
the adapted modules and the denoiser's shape (its config's channels), so a file made for another
network is refused by name before any weight is touched.

Loading injects one PEFT adapter per file (`peft.inject_adapter_in_model`), fills it with
`set_peft_model_state_dict`, and activates all of them at once, each with its own scale (PEFT's
`LoraLayer.set_scale`): the outputs add, so two LoRAs stack and a scale of 0 is the plain network.
Nothing is merged by hand, and files are read as data only (safetensors, no pickles).

Transformer families (Wan) take the LoRA layouts their community uses, converted by diffusers' loader for the
family (`WanLoraLoaderMixin.lora_state_dict`: diffusers/PEFT `transformer.blocks.0.attn1.to_q.lora_A.weight`,
ComfyUI / Wan-community `diffusion_model.blocks.0.self_attn.q.lora_down.weight` with `.alpha`, kohya/musubi
`lora_unet_blocks_0_self_attn_q.lora_down.weight`) and loaded with diffusers' `load_lora_adapter` (PEFT) onto the
transformer, stacked with `set_adapters`; a layer the transformer lacks is the same error as for kinema's own.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from pathlib import Path

import torch

from kinema.errors import KinemaError, require

# the layers a kinema LoRA adapts: attention projections, feed-forwards and ResBlock convolutions of every level,
# and the pooled-text and per-frame text paths (where a new word, such as a colour, enters); not the control adapter
TARGETS = r"(?!control\.).*(\.(q|kv|out|conv1|conv2)|\.ff\.[02]|^text_pool|^motion\.[02])$"
META = "kinema_lora"
MAX_RANK = 1024


def _shape(net) -> dict:
    """What a LoRA file must match of the denoiser: its class and channel layout."""
    c = net.config
    return dict(network=type(net).__name__, channels=list(c.channels), text_dim=int(c.text_dim),
                layers_per_level=int(c.layers_per_level))


def add_adapter(net, name: str, rank: int, alpha: float | None = None) -> list[torch.nn.Parameter]:
    """Inject a fresh trainable LoRA adapter `name` of `rank` into `net`; its parameters (B starts at zero)."""
    from peft import LoraConfig, inject_adapter_in_model

    require(isinstance(rank, int) and not isinstance(rank, bool) and 1 <= rank <= MAX_RANK,
            f"--lora rank must be a whole number in [1, {MAX_RANK}], got {rank!r}")
    config = LoraConfig(r=rank, lora_alpha=float(alpha if alpha is not None else rank), target_modules=TARGETS,
                        init_lora_weights=True)
    inject_adapter_in_model(config, net, adapter_name=name)
    return [p for n, p in net.named_parameters() if f".{name}." in n and "lora_" in n]


def adapter_state(net, name: str) -> dict[str, torch.Tensor]:
    """Adapter `name`'s weights under the file's keys (the adapter name dropped)."""
    from peft import get_peft_model_state_dict

    state = get_peft_model_state_dict(net, adapter_name=name)
    return {k: v.detach().float().contiguous().cpu() for k, v in state.items()}


def save_lora(net, name: str, path: str | Path, rank: int, alpha: float | None = None, extra: dict | None = None) -> Path:
    """Write adapter `name` of `net` to `path` atomically (temporary file, then rename)."""
    import os

    from safetensors.torch import save_file

    path = Path(path)
    meta = dict(family="kinema", rank=rank, alpha=float(alpha if alpha is not None else rank), targets=TARGETS,
                denoiser=_shape(net), **(extra or {}))
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        save_file(adapter_state(net, name), str(tmp), metadata={META: json.dumps(meta)})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def parse_spec(spec: str) -> tuple[str, float]:
    """`FILE[:SCALE]` -> (file, scale); a path with a colon and no number after the last one is all file."""
    head, sep, tail = spec.rpartition(":")
    if sep and head:
        try:
            scale = float(tail)
        except ValueError:
            return spec, 1.0
        require(math.isfinite(scale) and -10 <= scale <= 10, f"--lora {spec}: the scale must be a number in [-10, 10]")
        return head, scale
    return spec, 1.0


def read_lora(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """A LoRA file's tensors and its `kinema_lora` metadata, checked as data (one-line errors naming the file)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    require(path.is_file(), f"--lora {path}: no such file")
    require(path.suffix == ".safetensors", f"--lora {path}: LoRA files are read as .safetensors only (no pickles)")
    try:
        with safe_open(str(path), "pt") as f:
            meta_text = (f.metadata() or {}).get(META)
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise KinemaError(f"--lora {path} is not a readable safetensors file ({e})") from None
    require(meta_text is not None, f"--lora {path} is not a kinema LoRA (no '{META}' metadata); kinema's own model "
                                   "takes LoRAs saved by `kinema train --lora`")
    try:
        meta = json.loads(meta_text)
        ok = isinstance(meta, dict) and isinstance(meta.get("rank"), int) and isinstance(meta.get("denoiser"), dict)
    except ValueError:
        ok = False
    require(ok, f"--lora {path}: its '{META}' metadata is damaged")
    bad = [k for k, v in tensors.items() if not (k.endswith((".lora_A.weight", ".lora_B.weight")) and v.is_floating_point()
                                                 and torch.isfinite(v).all())]
    require(not bad, f"--lora {path}: {len(bad)} entries are not finite LoRA weights (e.g. {bad[0]})" if bad else "")
    return tensors, meta


def load_loras(net, loras, strict: bool = True) -> list[dict]:
    """Inject and activate every (path, scale) of `loras` on `net`, stacked; what the sidecar records of each."""
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
    from peft.tuners.lora import LoraLayer

    family = getattr(net, "lora_family", None)
    if family in DIFFUSERS_LORA:  # a diffusers transformer (Wan): diffusers' converters and loader
        return load_diffusers_loras(net.transformer, family, loras, strict)

    records, names = [], []
    for i, (path, scale) in enumerate(loras):
        tensors, meta = read_lora(path)
        require(meta.get("family") == "kinema" and meta["denoiser"] == _shape(net),
                f"--lora {path} was made for {meta.get('family')} {meta['denoiser']}, not this denoiser "
                f"({_shape(net)}); use a LoRA trained on this model")
        rank = int(meta["rank"])
        require(1 <= rank <= MAX_RANK, f"--lora {path}: rank {rank} is outside [1, {MAX_RANK}]")
        modules = dict(net.named_modules())
        wanted = {k.rsplit(".lora_", 1)[0] for k in tensors}
        unmatched = sorted(m for m in wanted if m not in modules)
        if unmatched and strict:
            raise KinemaError(f"--lora {path}: {len(wanted) - len(unmatched)} of {len(wanted)} layers match this denoiser; "
                              f"unmatched: {', '.join(unmatched[:3])}; pass --no-lora-strict to load the rest")
        name = f"lora{i}"
        targets = sorted(m for m in wanted if m in modules)
        require(targets, f"--lora {path}: none of its layers is in this denoiser")
        config = LoraConfig(r=rank, lora_alpha=float(meta.get("alpha", rank)), target_modules=targets)
        with warnings.catch_warnings():  # "multiple adapters in the model": stacking them is the point
            warnings.filterwarnings("ignore", message=".*peft_config.*")
            inject_adapter_in_model(config, net, adapter_name=name)
        keep = {k: v for k, v in tensors.items() if k.rsplit(".lora_", 1)[0] in modules}
        modules = dict(net.named_modules())  # the adapted layers are PEFT's wrappers now
        for k, v in keep.items():  # a rank or shape mismatch is the file's fault: say so before PEFT's traceback
            want = _lora_shape(modules, k, name)
            require(want == tuple(v.shape), f"--lora {path}: {k} is {tuple(v.shape)}, this denoiser needs {want} "
                                            f"(rank {rank}); use a LoRA trained on this model")
        result = set_peft_model_state_dict(net, keep, adapter_name=name)
        missing = [k for k in getattr(result, "missing_keys", []) if f".{name}." in k]
        require(not missing, f"--lora {path}: {len(missing)} adapter weights missing (e.g. {missing[0]})" if missing else "")
        names.append((name, float(scale)))
        records.append(dict(path=str(path), scale=float(scale), rank=rank, layers=len(targets),
                            unmatched=len(unmatched)))
    for module in net.modules():
        if isinstance(module, LoraLayer):
            here = [n for n, _ in names if n in module.lora_A]
            if here:
                module.set_adapter(here)
                for n, s in names:
                    if n in module.lora_A:
                        module.set_scale(n, s)
    net.requires_grad_(False)
    return records


def _lora_shape(modules: dict, key: str, name: str) -> tuple[int, ...]:
    layer, which = key.rsplit(".lora_", 1)
    part = getattr(modules[layer], "lora_" + which.split(".")[0])[name]
    return tuple(part.weight.shape)


def check_files(loras, family: str, denoiser_config: dict, strict: bool = True) -> None:
    """Before any weights load: each file is a kinema LoRA made for a denoiser of this shape (headers only)."""
    from safetensors import SafetensorError, safe_open

    if not loras:
        return
    if family in DIFFUSERS_LORA:
        for path, _ in loras:
            diffusers_lora(path, family, strict, config=denoiser_config)
        return
    require(family == "kinema", f"--lora: LoRAs load onto kinema's own denoiser and Wan's transformer; this is a "
                                f"{family} model")
    shape = dict(network="SpaceTimeUNet", channels=list(denoiser_config.get("channels", [])),
                 text_dim=denoiser_config.get("text_dim"), layers_per_level=denoiser_config.get("layers_per_level", 1))
    for path, _ in loras:
        try:
            with safe_open(str(path), "pt") as f:
                meta = json.loads((f.metadata() or {}).get(META, "null"))
        except (SafetensorError, OSError, ValueError) as e:
            raise KinemaError(f"--lora {path} is not a readable kinema LoRA ({type(e).__name__}: {e})") from None
        require(isinstance(meta, dict), f"--lora {path} is not a kinema LoRA (no '{META}' metadata); kinema's own "
                                        "model takes LoRAs saved by `kinema train --lora`")
        require(meta.get("family") == "kinema" and meta.get("denoiser") == shape,
                f"--lora {path} was made for {meta.get('family')} {meta.get('denoiser')}, not this denoiser ({shape}); "
                "use a LoRA trained on this model")


def check_specs(specs) -> list[tuple[str, float]]:
    """(path, scale) pairs from `--lora` values (strings `FILE[:SCALE]` or pairs), each file checked to exist."""
    out = []
    for spec in specs or ():
        path, scale = parse_spec(str(spec)) if isinstance(spec, (str, Path)) else (str(spec[0]), float(spec[1]))
        require(re.fullmatch(r".+\.safetensors", str(path)) is not None and Path(path).is_file(),
                f"--lora {path}: no such .safetensors file")
        out.append((str(Path(path).resolve()), scale))
    return out


#################################################################################
#                  Transformer families: diffusers' LoRA layouts                #
#################################################################################

# family -> diffusers' LoRA loader for it (its `lora_state_dict` converts the community layouts) and transformer class
DIFFUSERS_LORA = {"wan": ("WanLoraLoaderMixin", "WanTransformer3DModel")}


def _linear_shapes(family: str, config: dict) -> dict[str, tuple[int, int]]:
    """The transformer's linear layers (name -> (out, in)), from its config on the meta device."""
    import diffusers

    cls = getattr(diffusers, DIFFUSERS_LORA[family][1])
    with torch.device("meta"):
        model = cls.from_config({k: v for k, v in config.items() if not k.startswith("_")})
    return {n: (m.out_features, m.in_features) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


def diffusers_lora(path, family: str, strict: bool = True, config: dict | None = None,
                   linears: dict | None = None) -> tuple[dict[str, torch.Tensor], int, int, int]:
    """A LoRA file for a transformer family in any layout its diffusers loader reads, as diffusers/PEFT keys
    (`transformer.` dropped), checked against the transformer's linear layers: (tensors of the layers it has,
    rank, layers matched, layers unmatched)."""
    import diffusers
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    require(path.is_file(), f"--lora {path}: no such file")
    require(path.suffix == ".safetensors", f"--lora {path}: LoRA files are read as .safetensors only (no pickles)")
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            raw = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise KinemaError(f"--lora {path} is not a readable safetensors file ({e})") from None
    require(META not in meta, f"--lora {path} is a LoRA of kinema's own model, not of this {family} transformer")
    require(raw, f"--lora {path} holds no tensors")
    loader = getattr(diffusers.loaders, DIFFUSERS_LORA[family][0])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state = loader.lora_state_dict(dict(raw))
    except (ValueError, KeyError, IndexError, RuntimeError, AttributeError) as e:
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise KinemaError(f"--lora {path}: not a {family} LoRA in a layout diffusers reads (diffusers/PEFT, ComfyUI, "
                          f"kohya): {type(e).__name__}: {first}") from None
    state = {k.removeprefix("transformer."): v for k, v in state.items()}
    bad = [k for k, v in state.items() if not (".lora_" in k and v.is_floating_point() and torch.isfinite(v).all())]
    require(not bad, f"--lora {path}: {len(bad)} entries are not finite LoRA weights of the transformer "
                     f"(e.g. {bad[0]})" if bad else "")
    linears = linears if linears is not None else _linear_shapes(family, dict(config or {}))
    wanted = {k.rsplit(".lora_", 1)[0] for k in state}
    unmatched = sorted(m for m in wanted if m not in linears)
    if unmatched and strict:
        raise KinemaError(f"--lora {path}: {len(wanted) - len(unmatched)} of {len(wanted)} layers match this "
                          f"transformer; unmatched: {', '.join(unmatched[:3])}; pass --no-lora-strict to load the rest")
    require(len(unmatched) < len(wanted), f"--lora {path}: none of its layers is in this {family} transformer")
    ranks = set()
    for k, v in state.items():
        layer = k.rsplit(".lora_", 1)[0]
        if layer not in linears or not k.endswith(".weight"):
            continue
        out_f, in_f = linears[layer]
        is_a = ".lora_A." in k
        ok = v.ndim == 2 and (v.shape[1] == in_f if is_a else v.shape[0] == out_f)
        require(ok, f"--lora {path}: {k} is {tuple(v.shape)}, this transformer's layer is {out_f}x{in_f}; use a LoRA "
                    "made for this model's size")
        ranks.add(int(v.shape[0] if is_a else v.shape[1]))
    keep = {k: v for k, v in state.items() if k.rsplit(".lora_", 1)[0] in linears}
    return keep, max(ranks or {0}), len(wanted) - len(unmatched), len(unmatched)


def load_diffusers_loras(transformer, family: str, loras, strict: bool = True) -> list[dict]:
    """Each LoRA as a PEFT adapter of the transformer (diffusers' `load_lora_adapter`), all active at their scales."""
    linears = {n: (m.out_features, m.in_features) for n, m in transformer.named_modules()
               if isinstance(m, torch.nn.Linear) and ".lora_" not in n and not n.endswith("base_layer")}
    records, names, scales = [], [], []
    for i, (path, scale) in enumerate(loras):
        state, rank, layers, unmatched = diffusers_lora(path, family, strict, linears=linears)
        name = f"lora{i}"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            transformer.load_lora_adapter({f"transformer.{k}": v for k, v in state.items()}, prefix="transformer",
                                          adapter_name=name)
        names.append(name)
        scales.append(float(scale))
        records.append(dict(path=str(path), scale=float(scale), rank=rank, layers=layers, unmatched=unmatched))
    transformer.set_adapters(names, weights=scales)
    transformer.requires_grad_(False)
    return records
