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

diffusers families take the LoRA layouts their community uses, converted by diffusers' loader for the family
(`DIFFUSERS_LORA`): Wan's (`WanLoraLoaderMixin`: diffusers/PEFT `transformer.blocks.0.attn1.to_q.lora_A.weight`,
ComfyUI / Wan-community `diffusion_model.blocks.0.self_attn.q.lora_down.weight` with `.alpha`, kohya/musubi
`lora_unet_blocks_0_self_attn_q.lora_down.weight`), LTX-Video's (`LTXVideoLoraLoaderMixin`: diffusers/PEFT and
ComfyUI `diffusion_model.transformer_blocks.0.attn1.to_q.lora_A.weight`) and AnimateDiff's (SD's
`StableDiffusionLoraLoaderMixin`: diffusers/PEFT `unet.…` and `text_encoder.…`, kohya `lora_unet_…` / `lora_te_…`
with `.alpha`). Each file is one PEFT adapter on each component its keys name (diffusers' `load_lora_adapter`; the
CLIP text encoder through the loader's `load_lora_into_text_encoder`), configured by kinema (`lora_config`: each
layer's rank and alpha by its name), stacked with `set_adapters`; a layer the model lacks is the same error as for
kinema's own.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from kinema.errors import KinemaError, require

# the layers a kinema LoRA adapts: attention projections, feed-forwards and ResBlock convolutions of every level,
# and the pooled-text and per-frame text paths (where a new word, such as a colour, enters); not the control adapter
TARGETS = r"(?!control\.).*(\.(q|kv|out|conv1|conv2)|\.ff\.[02]|^text_pool|^motion\.[02])$"
META = "kinema_lora"
MAX_RANK = 1024
# a kinema LoRA may also adapt the autoencoder (`kinema train --data --vae-steps`: a colour or texture its latents
# cannot hold): every convolution and attention projection of encoder and decoder, saved under `VAE_PREFIX`
VAE_TARGETS = r"(.*\.(conv_in|conv_out|conv1|conv2|conv|conv_shortcut|to_q|to_k|to_v|to_out\.0)|quant_conv|post_quant_conv)$"
VAE_PREFIX = "vae."


def _shape(net) -> dict:
    """What a LoRA file must match of the denoiser: its class and channel layout."""
    c = net.config
    return dict(network=type(net).__name__, channels=list(c.channels), text_dim=int(c.text_dim),
                layers_per_level=int(c.layers_per_level))


def add_adapter(net, name: str, rank: int, alpha: float | None = None, targets: str = TARGETS) -> list[torch.nn.Parameter]:
    """Inject a fresh trainable LoRA adapter `name` of `rank` into `net` (the layers `targets` matches); its
    parameters (B starts at zero)."""
    from peft import LoraConfig, inject_adapter_in_model

    require(isinstance(rank, int) and not isinstance(rank, bool) and 1 <= rank <= MAX_RANK,
            f"--lora rank must be a whole number in [1, {MAX_RANK}], got {rank!r}")
    config = LoraConfig(r=rank, lora_alpha=float(alpha if alpha is not None else rank), target_modules=targets,
                        init_lora_weights=True)
    inject_adapter_in_model(config, net, adapter_name=name)
    return [p for n, p in net.named_parameters() if f".{name}." in n and "lora_" in n]


def adapter_state(net, name: str) -> dict[str, torch.Tensor]:
    """Adapter `name`'s weights under the file's keys (the adapter name dropped)."""
    from peft import get_peft_model_state_dict

    state = get_peft_model_state_dict(net, adapter_name=name)
    return {k: v.detach().float().contiguous().cpu() for k, v in state.items()}


def save_lora(net, name: str, path: str | Path, rank: int, alpha: float | None = None, extra: dict | None = None,
              vae: tuple | None = None, targets: str | None = None) -> Path:
    """Write adapter `name` of `net` to `path` atomically (temporary file, then rename); `vae`: (autoencoder, adapter
    name, rank) of an autoencoder adapter saved beside it under `VAE_PREFIX`."""
    import os

    from safetensors.torch import save_file

    path = Path(path)
    meta = dict(family="kinema", rank=rank, alpha=float(alpha if alpha is not None else rank), targets=targets or TARGETS,
                denoiser=_shape(net), **(extra or {}))
    state = adapter_state(net, name)
    if vae is not None:
        ae, vae_name, vae_rank = vae
        state.update({VAE_PREFIX + k: v for k, v in adapter_state(ae, vae_name).items()})
        meta["vae"] = dict(rank=vae_rank, alpha=float(vae_rank), targets=VAE_TARGETS)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        save_file(state, str(tmp), metadata={META: json.dumps(meta)})
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


def load_loras(net, loras, strict: bool = True, text_encoder=None, vae=None, merge: bool = False) -> list[dict]:
    """Inject and activate every (path, scale) of `loras` on `net`, stacked; what the sidecar records of each.
    `text_encoder`: the model's text seam, for the families whose LoRAs adapt it too (AnimateDiff's CLIP); `vae`:
    kinema's VAE seam, for kinema LoRAs that adapt the autoencoder too (`VAE_PREFIX` keys). `merge` (kinema's own
    model): each adapted layer's weight takes W + scale * B A and the adapter is removed, so a forward costs what the
    plain network's does (a 4-step student's LoRA was a fifth of its time unmerged); the diffusers families keep PEFT's
    unmerged adapters."""
    family = getattr(net, "lora_family", None)
    if family in DIFFUSERS_LORA:  # a diffusers model (Wan, LTX-Video, AnimateDiff): diffusers' converters and loaders
        parts = DIFFUSERS_LORA[family][1]
        targets = {parts[0]: getattr(net, parts[0])}
        if "text_encoder" in parts and text_encoder is not None:
            targets["text_encoder"] = text_encoder.model
        return load_diffusers_loras(targets, family, loras, strict)

    records, names, vae_names = [], [], []
    for i, (path, scale) in enumerate(loras):
        tensors, meta = read_lora(path)
        require(meta.get("family") == "kinema" and meta["denoiser"] == _shape(net),
                f"--lora {path} was made for {meta.get('family')} {meta['denoiser']}, not this denoiser "
                f"({_shape(net)}); use a LoRA trained on this model")
        rank = int(meta["rank"])
        require(1 <= rank <= MAX_RANK, f"--lora {path}: rank {rank} is outside [1, {MAX_RANK}]")
        name = f"lora{i}"
        own = {k: v for k, v in tensors.items() if not k.startswith(VAE_PREFIX)}
        targets, unmatched = _inject(net, own, rank, float(meta.get("alpha", rank)), name, path, strict, "denoiser")
        record = dict(path=str(path), scale=float(scale), rank=rank, layers=len(targets), unmatched=len(unmatched))
        ae_part = {k[len(VAE_PREFIX):]: v for k, v in tensors.items() if k.startswith(VAE_PREFIX)}
        if ae_part:  # the file adapts the autoencoder too: it decodes (and encodes) the new colours it was taught
            require(vae is not None and hasattr(vae, "autoencoder"),
                    f"--lora {path} adapts kinema's autoencoder too; load it on the model it was trained on")
            vae_meta = meta.get("vae") or {}
            vae_rank = int(vae_meta.get("rank", 0))
            require(1 <= vae_rank <= MAX_RANK, f"--lora {path}: its autoencoder rank {vae_rank} is outside [1, {MAX_RANK}]")
            vae_targets, _ = _inject(vae.autoencoder, ae_part, vae_rank, float(vae_meta.get("alpha", vae_rank)), name,
                                     path, True, "autoencoder")
            record["vae_layers"] = len(vae_targets)
            vae_names.append((name, float(scale)))
        names.append((name, float(scale)))
        records.append(record)
    _activate(net, names)
    net.requires_grad_(False)
    if vae_names:
        _activate(vae.autoencoder, vae_names)
        vae.autoencoder.requires_grad_(False)
    if merge:  # a loaded model keeps the LoRAs it was loaded with (`jobs.placement_for`), so they can go into the weights
        _merge(net)
        if vae_names:
            _merge(vae.autoencoder)
    return records


def _inject(net, tensors: dict, rank: int, alpha: float, name: str, path, strict: bool, what: str) -> tuple[list, list]:
    """Inject adapter `name` of `rank` into `net` at the layers `tensors` names and fill it; (adapted, unmatched) layers."""
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict

    modules = dict(net.named_modules())
    wanted = {k.rsplit(".lora_", 1)[0] for k in tensors}
    unmatched = sorted(m for m in wanted if m not in modules)
    if unmatched and strict:
        raise KinemaError(f"--lora {path}: {len(wanted) - len(unmatched)} of {len(wanted)} layers match this {what}; "
                          f"unmatched: {', '.join(unmatched[:3])}; pass --no-lora-strict to load the rest")
    targets = sorted(m for m in wanted if m in modules)
    require(targets, f"--lora {path}: none of its layers is in this {what}")
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets)
    with warnings.catch_warnings():  # "multiple adapters in the model": stacking them is the point
        warnings.filterwarnings("ignore", message=".*peft_config.*")
        inject_adapter_in_model(config, net, adapter_name=name)
    keep = {k: v for k, v in tensors.items() if k.rsplit(".lora_", 1)[0] in modules}
    modules = dict(net.named_modules())  # the adapted layers are PEFT's wrappers now
    for k, v in keep.items():  # a rank or shape mismatch is the file's fault: say so before PEFT's traceback
        want = _lora_shape(modules, k, name)
        require(want == tuple(v.shape), f"--lora {path}: {k} is {tuple(v.shape)}, this {what} needs {want} "
                                        f"(rank {rank}); use a LoRA trained on this model")
    result = set_peft_model_state_dict(net, keep, adapter_name=name)
    missing = [k for k in getattr(result, "missing_keys", []) if f".{name}." in k]
    require(not missing, f"--lora {path}: {len(missing)} adapter weights missing (e.g. {missing[0]})" if missing else "")
    return targets, unmatched


def _activate(net, names: list[tuple[str, float]]) -> None:
    """Every adapter of `names` active at its scale, in each layer that has it (the outputs add)."""
    from peft.tuners.lora import LoraLayer

    for module in net.modules():
        if isinstance(module, LoraLayer):
            here = [n for n, _ in names if n in module.lora_A]
            if here:
                module.set_adapter(here)
                for n, s in names:
                    if n in module.lora_A:
                        module.set_scale(n, s)


def _merge(net) -> None:
    """Every PEFT LoRA layer of `net` merged into its base layer (its active adapters at their scales, as `_activate`
    set them) and replaced by that layer: the network is a plain one again, its weights W + sum(scale * B A)."""
    from peft.tuners.lora import LoraLayer

    for name, module in list(net.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge(adapter_names=list(module.active_adapters))
            parent, _, child = name.rpartition(".")
            setattr(net.get_submodule(parent) if parent else net, child, module.get_base_layer())
    for attr in ("peft_config", "_hf_peft_config_loaded"):  # what PEFT's injection left on the network
        if hasattr(net, attr):
            delattr(net, attr)


def _lora_shape(modules: dict, key: str, name: str) -> tuple[int, ...]:
    layer, which = key.rsplit(".lora_", 1)
    part = getattr(modules[layer], "lora_" + which.split(".")[0])[name]
    return tuple(part.weight.shape)


def check_files(loras, info, strict: bool = True) -> None:
    """Before any weights load: each file fits the model of `info` (headers only; diffusers families: converted by
    their loader and matched against their layers built on the meta device)."""
    from safetensors import SafetensorError, safe_open

    if not loras:
        return
    if info.family in DIFFUSERS_LORA:
        from .family import family_of

        layers = family_of(info).lora_layers(info)
        for path, _ in loras:
            diffusers_lora(path, info.family, strict, layers)
        return
    require(info.family == "kinema", f"--lora: this {info.family} model takes no LoRA")
    config = info.configs.get("denoiser", {})
    shape = dict(network="SpaceTimeUNet", channels=list(config.get("channels", [])),
                 text_dim=config.get("text_dim"), layers_per_level=config.get("layers_per_level", 1))
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
#                  Diffusers families: their community LoRA layouts             #
#################################################################################

# family -> diffusers' LoRA loader for it (its `lora_state_dict` converts the community layouts), the components its
# keys name (the denoiser's model first: the denoiser's attribute of that name; then the text encoder, where the
# loader adapts one) and the layouts it reads (for messages)
DIFFUSERS_LORA = {
    "wan": ("WanLoraLoaderMixin", ("transformer",), "diffusers/PEFT, ComfyUI, kohya/musubi"),
    "ltx": ("LTXVideoLoraLoaderMixin", ("transformer",), "diffusers/PEFT, ComfyUI diffusion_model."),
    "animatediff": ("StableDiffusionLoraLoaderMixin", ("unet", "text_encoder"), "diffusers/PEFT, kohya"),
}


def _what(family: str) -> str:
    """What messages call a family's denoiser: "wan transformer", "animatediff UNet"."""
    return f"{family} {'UNet' if DIFFUSERS_LORA[family][1][0] == 'unet' else 'transformer'}"


# layers a LoRA cannot adapt: AnimateDiff's motion modules call these as `proj_in(input=...)`, which PEFT's layers refuse
UNADAPTABLE = re.compile(r"motion_modules\.\d+\.proj_(in|out)$")


def adaptable(module) -> dict[str, tuple[int, ...]]:
    """The layers a LoRA can adapt, name -> (out, in) for linear layers, (out, in, kh, kw) for convolutions (kohya's
    LoRAs of SD's 1x1 projections); PEFT's own layers, wrapped base layers and UNADAPTABLE ones left out."""
    out = {}
    for name, m in module.named_modules():
        if ".lora_" in name or name.endswith("base_layer") or UNADAPTABLE.search(name):
            continue
        if isinstance(m, torch.nn.Linear):
            out[name] = (m.out_features, m.in_features)
        elif isinstance(m, torch.nn.Conv2d):
            out[name] = (m.out_channels, m.in_channels, *m.kernel_size)
    return out


def _peft_names(part: str, keys, layers: dict) -> dict[str, str]:
    """Each converted key of component `part` -> its name as PEFT puts it on the component, renamed as diffusers' loaders
    rename it (`lora.down` -> `lora_A`; the text encoder's `to_q_lora.down` -> `q_proj.lora_A`, `text_model.` dropped
    where transformers' CLIP has none)."""
    from diffusers.utils import convert_state_dict_to_diffusers, convert_state_dict_to_peft, convert_unet_state_dict_to_peft

    named = {k.removeprefix(f"{part}."): k for k in keys}  # renamed keys -> the loader's keys (values are never touched)
    if not named:
        return {}
    named = (convert_state_dict_to_peft(convert_state_dict_to_diffusers(named)) if part == "text_encoder"
             else convert_unet_state_dict_to_peft(named))
    bare = not any(n.startswith("text_model.") for n in layers)
    return {v: k.removeprefix("text_model.") if bare else k for k, v in named.items()}


@dataclass
class DiffusersLora:
    """A LoRA file converted by its family's diffusers loader and checked: the tensors of the layers the model has,
    under the loader's keys (`transformer.`, `unet.`, `text_encoder.`), and PEFT's LoraConfig of each component."""

    state: dict
    config: dict  # component -> LoraConfig keywords (`lora_config`)
    rank: int
    layers: int
    unmatched: int


def lora_config(ranks: dict[str, int], alphas: dict[str, float], dora: bool = False) -> dict:
    """PEFT's LoraConfig keywords of one component from its layers' ranks and alphas (alpha = rank where a file gives
    none: scale 1, the diffusers/PEFT convention): the most common of each, the others by exact layer name. Made here
    rather than by diffusers' loaders, which match kohya's per-layer alphas by names that are not the layers'."""
    from collections import Counter

    alpha = {m: float(alphas.get(m, r)) for m, r in ranks.items()}
    r, a = (Counter(d.values()).most_common(1)[0][0] for d in (ranks, alpha))
    return dict(r=r, lora_alpha=a, target_modules=sorted(ranks), use_dora=dora,
                rank_pattern={re.escape(m): v for m, v in ranks.items() if v != r},
                alpha_pattern={re.escape(m): v for m, v in alpha.items() if v != a})


def _read_diffusers_lora(path: Path, family: str) -> tuple[dict, dict | None]:
    """The file's tensors (as data) converted by the family's diffusers loader: (state, network alphas or None)."""
    import diffusers
    from safetensors import SafetensorError, safe_open

    require(path.is_file(), f"--lora {path}: no such file")
    require(path.suffix == ".safetensors", f"--lora {path}: LoRA files are read as .safetensors only (no pickles)")
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            raw = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise KinemaError(f"--lora {path} is not a readable safetensors file ({e})") from None
    require(META not in meta, f"--lora {path} is a LoRA of kinema's own model, not of this {_what(family)}")
    require(raw, f"--lora {path} holds no tensors")
    loader, parts, layouts = DIFFUSERS_LORA[family]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = getattr(diffusers.loaders, loader).lora_state_dict(dict(raw))
    except (ValueError, KeyError, IndexError, RuntimeError, AttributeError) as e:
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise KinemaError(f"--lora {path}: not a {family} LoRA in a layout diffusers reads ({layouts}): "
                          f"{type(e).__name__}: {first}") from None
    state, alphas = out if isinstance(out, tuple) else (out, None)  # SD's loader returns kohya's alphas beside
    named = lambda k: k if k.split(".", 1)[0] in parts else f"{parts[0]}.{k}"  # noqa: E731  (bare keys: the denoiser's)
    return {named(k): v for k, v in state.items()}, {named(k): v for k, v in (alphas or {}).items()} or None


def diffusers_lora(path, family: str, strict: bool, layers: dict) -> DiffusersLora:
    """A LoRA file of a diffusers family in any layout its loader reads, checked against the model's adaptable layers
    (`layers`: component -> `adaptable` of it): layers it lacks, shapes of another width, not LoRA weights."""
    path = Path(path)
    state, alphas = _read_diffusers_lora(path, family)
    _, parts, layouts = DIFFUSERS_LORA[family]
    try:
        names = {}
        for part in parts:
            names |= _peft_names(part, [k for k in state if k.startswith(f"{part}.")], layers.get(part, {}))
    except ValueError as e:  # diffusers' renames cannot tell the text encoder keys' layout
        raise KinemaError(f"--lora {path}: not a {family} LoRA in a layout diffusers reads ({layouts}): {e}") from None
    bad = [k for k, v in state.items() if not (".lora_" in names[k] and v.is_floating_point() and torch.isfinite(v).all())]
    require(not bad, f"--lora {path}: {len(bad)} entries are not finite LoRA weights diffusers' {family} loader reads "
                     f"(e.g. {bad[0]}); use a LoRA in one of its layouts ({layouts})" if bad else "")
    where = {k: (k.split(".", 1)[0], names[k].rsplit(".lora_", 1)[0]) for k in state}  # key -> (component, layer)
    wanted = set(where.values())
    unmatched = sorted(f"{p}.{m}" for p, m in wanted if m not in layers.get(p, {}))
    require(len(unmatched) < len(wanted), f"--lora {path}: none of its layers is in this {_what(family)} "
                                          f"(e.g. {', '.join(unmatched[:2])}); use a LoRA made for this model")
    if unmatched and strict:
        raise KinemaError(f"--lora {path}: {len(wanted) - len(unmatched)} of {len(wanted)} layers match this "
                          f"{_what(family)}; unmatched: {', '.join(unmatched[:3])}; pass --no-lora-strict to load the rest")
    ranks: dict[tuple[str, str], int] = {}
    for k, v in state.items():
        part, layer = where[k]
        shape = layers.get(part, {}).get(layer)
        if shape is None or not names[k].endswith((".lora_A.weight", ".lora_B.weight")):
            continue
        is_a = ".lora_A." in names[k]
        ok = v.ndim == (2 if len(shape) == 2 else 4) and (v.shape[1] == shape[1] if is_a else v.shape[0] == shape[0])
        require(ok, f"--lora {path}: {k} is {tuple(v.shape)}, this {_what(family)}'s layer is "
                    f"{'x'.join(map(str, shape))}; use a LoRA made for this model's size")
        ranks[(part, layer)] = int(v.shape[0] if is_a else v.shape[1])
    keep = {k: v for k, v in state.items() if where[k][1] in layers.get(where[k][0], {})}
    stems = {k.rsplit(".lora", 1)[0]: where[k] for k in keep} | {k: where[k] for k in keep}  # what kohya's alphas name
    alpha = {stems[k.removesuffix(".alpha")]: a for k, a in (alphas or {}).items() if k.removesuffix(".alpha") in stems}
    config = {part: lora_config({m: r for (p, m), r in ranks.items() if p == part},
                                {m: a for (p, m), a in alpha.items() if p == part},
                                any("lora_magnitude_vector" in names[k] for k in keep if where[k][0] == part))
              for part in {p for p, _ in ranks}}
    return DiffusersLora(keep, config, max(ranks.values(), default=0), len(wanted) - len(unmatched), len(unmatched))


def load_diffusers_loras(targets: dict, family: str, loras, strict: bool = True) -> list[dict]:
    """Each LoRA as a PEFT adapter of each component its keys name (`targets`: component -> model; diffusers'
    `load_lora_adapter`, and its loader's `load_lora_into_text_encoder`), all active at their scales (`set_adapters`)."""
    import diffusers
    from diffusers.loaders.lora_base import set_adapters_for_text_encoder

    loader = getattr(diffusers.loaders, DIFFUSERS_LORA[family][0])
    layers = {part: adaptable(m) for part, m in targets.items()}
    records, active = [], {part: ([], []) for part in targets}
    for i, (path, scale) in enumerate(loras):
        lora = diffusers_lora(path, family, strict, layers)
        name = f"lora{i}"
        for part, module in targets.items():
            if not any(k.startswith(f"{part}.") for k in lora.state):
                continue
            config = {f"{part}.{k}": v for k, v in lora.config[part].items()}  # as diffusers stores it in files
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if part == "text_encoder":
                    loader.load_lora_into_text_encoder(lora.state, None, module, prefix=part, adapter_name=name,
                                                       metadata=config)
                else:
                    module.load_lora_adapter(lora.state, prefix=part, metadata=config, adapter_name=name)
            active[part][0].append(name)
            active[part][1].append(float(scale))
        records.append(dict(path=str(path), scale=float(scale), rank=lora.rank, layers=lora.layers,
                            unmatched=lora.unmatched))
    for part, module in targets.items():
        names, scales = active[part]
        if names and part == "text_encoder":
            set_adapters_for_text_encoder(names, module, scales)
        elif names:
            module.set_adapters(names, weights=scales)
        module.requires_grad_(False)
    return records
