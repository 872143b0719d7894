"""kinema's own model folders: a small JSON index naming the components, one subfolder per component.

    model/
      kinema.json          {"format": "kinema-model", "text_encoder": "builtin:minilm", "defaults": {...}}
      denoiser/            SpaceTimeUNet: config.json + diffusion_pytorch_model.safetensors
      vae/                 AutoencoderKL: config.json + diffusion_pytorch_model.safetensors
      scheduler/           FlowMatchEulerDiscreteScheduler config

Loading never touches the network and reads safetensors only. It imports neither diffusers nor
transformers: the networks are kinema's (`autoencoder.py` is diffusers' AutoencoderKL, `bert.py` MiniLM's
BERT, `schedulers.py` the Euler solver, each tested against the original), the folders diffusers'
layout. `save` and `init` write folders atomically (a temporary folder, then a rename).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError

from kinema.errors import KinemaError, require
from kinema.video_io import replace_path

from .family import Model, ModelDefaults, ModelFamily, ModelInfo, register, safetensors_parameters, valid_interval

INDEX = "kinema.json"
FORMAT = "kinema-model"
COMPONENTS = ("denoiser", "vae", "scheduler")
WEIGHTED = ("denoiser", "vae")
# what `init` writes into a new folder's defaults
INIT_DEFAULTS = dict(frames=16, height=64, width=64, fps=8, steps=25, guidance=5.0, shift=1.0, image_noise=0.02)

#################################################################################
#                                 Folder checks                                 #
#################################################################################


def read_index(path: Path) -> dict:
    """The folder's kinema.json, checked, with every component folder present and its weights in safetensors."""
    index = _read_json(path / INDEX)
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        found = index.get("format") if isinstance(index, dict) else type(index).__name__
        raise KinemaError(f"{path / INDEX} is not a kinema model index (format {found!r})")
    _check_index(index, path / INDEX)
    for name in COMPONENTS:
        sub = path / name
        if not sub.is_dir() or sub.resolve().parent != path.resolve():
            raise KinemaError(f"model folder {path} is incomplete: missing component folder {name}/")
    for name in WEIGHTED:
        if not (path / name / "config.json").is_file():
            raise KinemaError(f"model folder {path} is incomplete: {name}/config.json is missing")
        weights = list((path / name).glob("*.safetensors"))
        outside = [w.name for w in weights if w.resolve().parent != (path / name).resolve()]
        if outside:
            raise KinemaError(f"model folder {path}: {name}/{outside[0]} links to a file outside {name}/; kinema "
                              "loads weights from inside the folder only: copy the file in")
        pickles = [p for p in (path / name).iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt")]
        if not weights:
            why = " (only pickle weights found; kinema loads safetensors only)" if pickles else ""
            raise KinemaError(f"model folder {path} is incomplete: no {name}/*.safetensors{why}")
    return index


MAX_TEXT_LENGTH = 512  # MiniLM's positions; longer prompts are truncated to the index's max_text_length
MAX_TRAIN_TIMESTEPS = 100_000


def _read_json(file: Path):
    """A JSON file of a model folder; damaged, unreadable or absurdly nested: a one-line error naming it."""
    try:
        return json.loads(file.read_text())
    except (OSError, ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        raise KinemaError(f"{file} is not valid JSON ({type(e).__name__}: {str(e)[:80]}); re-create the folder "
                          "with `kinema init`") from None
    except RecursionError:
        raise KinemaError(f"{file} is nested too deeply to be a model file; re-create the folder with `kinema init`") from None


def _file_name_ok(v) -> bool:
    """A safetensors file in the model folder, named without a path."""
    return isinstance(v, str) and "/" not in v and "\\" not in v and v.endswith(".safetensors") and not v.startswith(".")


def _student_restyle_ok(v) -> bool:
    """The student's own restyle settings (`fast.restyle`): guidance, the band it guides in, the control's scale, and
    a LoRA file in the folder stacked on the student when it restyles under the control."""
    def number(x, hi):
        return isinstance(x, (int, float)) and not isinstance(x, bool) and 0 <= x <= hi

    return (isinstance(v, dict) and set(v) <= {"guidance", "guidance_interval", "control_scale", "lora"}
            and ("lora" not in v or _file_name_ok(v["lora"]))
            and ("guidance" not in v or number(v["guidance"], 50))
            and ("control_scale" not in v or number(v["control_scale"], 5))
            and ("guidance_interval" not in v or (isinstance(v["guidance_interval"], list)
                                                   and valid_interval(tuple(v["guidance_interval"])))))


def _check_index(index: dict, where: Path) -> None:
    """The index entries kinema reads have the types it needs: a damaged or hostile index fails here, in one line."""
    checks = {
        "text_encoder": (lambda v: isinstance(v, str), "a string"),
        "max_text_length": (lambda v: isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_TEXT_LENGTH,
                            f"a whole number in [1, {MAX_TEXT_LENGTH}]"),
        "frame_conditions": (lambda v: isinstance(v, list) and all(isinstance(c, str) for c in v), "a list of names"),
        # the few-step student (`kinema ... --fast`): a LoRA file in the folder and the steps and guidance it runs at
        "fast": (lambda v: isinstance(v, dict) and _file_name_ok(v.get("lora")) and isinstance(v.get("steps"), int)
                 and not isinstance(v.get("steps"), bool) and 1 <= v["steps"] <= 1000
                 and isinstance(v.get("guidance"), (int, float)) and not isinstance(v.get("guidance"), bool)
                 and 0 <= v["guidance"] <= 50
                 and ("shift" not in v or (isinstance(v["shift"], (int, float)) and not isinstance(v["shift"], bool)
                                           and 0 < v["shift"] <= 100))
                 and ("restyle" not in v or _student_restyle_ok(v["restyle"])),
                 '{"lora": "NAME.safetensors" (in the folder), "steps": 1-1000, "guidance": 0-50, optional "shift": (0, 100], '
                 'optional "restyle": {"guidance": 0-50, "guidance_interval": [lo, hi], "control_scale": 0-5, '
                 '"lora": "NAME.safetensors"}}'),
    }
    for key, (ok, want) in checks.items():
        if key in index and not ok(index[key]):
            raise KinemaError(f"{where}: {key} must be {want}, got {index[key]!r}; re-create the folder with `kinema init`")


def read_scheduler(path: Path) -> dict:
    """scheduler/scheduler_config.json with what kinema reads checked: the training timesteps and the shift."""
    file = path / "scheduler" / "scheduler_config.json"
    config = _read_json(file)
    require(isinstance(config, dict), f"{file} must be a JSON object; re-create the folder with `kinema init`")
    n, shift = config.get("num_train_timesteps", 1000), config.get("shift", 1.0)
    require(isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= MAX_TRAIN_TIMESTEPS,
            f"{file}: num_train_timesteps must be a whole number in [1, {MAX_TRAIN_TIMESTEPS}], got {n!r}")
    require(isinstance(shift, (int, float)) and not isinstance(shift, bool) and 0 < shift < float("inf"),
            f"{file}: shift must be a number > 0, got {shift!r}")
    return config


def read_configs(path: Path) -> tuple[dict, dict]:
    """The denoiser's and the VAE's config.json, with the entries kinema reads before loading checked."""
    den, vae = _read_json(path / "denoiser" / "config.json"), _read_json(path / "vae" / "config.json")
    try:
        sizes = [*den["channels"], den["head_dim"], *vae["block_out_channels"], vae["latent_channels"]]
        ok = all(isinstance(v, int) and v >= 1 for v in sizes) and len(den["attention_levels"]) == len(den["channels"])
        ok = ok and all(c % den["head_dim"] == 0 for c, a in zip(den["channels"], den["attention_levels"]) if a)
    except (OSError, ValueError, KeyError, TypeError) as e:  # JSONDecodeError is a ValueError
        raise KinemaError(f"model folder {path} has a damaged denoiser/ or vae/ config.json ({type(e).__name__}: "
                          f"{e}); re-create it with `kinema init`") from None
    if not ok or not vae["block_out_channels"] or not den["channels"]:
        raise KinemaError(f"model folder {path} has inconsistent channel sizes in denoiser/ or vae/ config.json; "
                          "re-create it with `kinema init`")
    return den, vae


#################################################################################
#                                    Family                                     #
#################################################################################


# bytes per element of a safetensors header's dtype
SAFETENSORS_BYTES = {"F64": 8, "F32": 4, "BF16": 2, "F16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def _text_encoder_bytes(info) -> int:
    """Bytes of the folder's text encoder's weights, from its safetensors headers (0 where it cannot be found).

    `load_folder` keeps the text encoder in the dtype it is stored in (MiniLM: float32) whatever `--dtype`
    the denoiser and the VAE run in, so its share does not halve in bfloat16.
    """
    from .text import resolve_text_encoder

    try:
        n, dtype = safetensors_parameters(resolve_text_encoder(info.index.get("text_encoder", "builtin:minilm"), info.path))
    except KinemaError:
        return 0  # loading names the problem
    return n * SAFETENSORS_BYTES.get(dtype, 4)


class KinemaFamily(ModelFamily):
    """Folders written by `kinema init` / `kinema train`: MiniLM text, a frame-wise AutoencoderKL, SpaceTimeUNet."""

    name = "kinema"

    def recognises(self, path: Path) -> bool:
        return (Path(path) / INDEX).is_file()

    def describe(self, path: Path) -> ModelInfo:
        index = read_index(path)
        den, vae = read_configs(path)
        defaults = ModelDefaults.parse({**INIT_DEFAULTS, **_mapping(index.get("defaults", {}), path)}, str(path / INDEX))
        spatial = 2 ** (len(vae["block_out_channels"]) - 1)
        params = {name: safetensors_parameters(path / name)[0] for name in WEIGHTED}
        control = den.get("control_channels", 0)
        require(control in (0, spatial * spatial), f"{path / 'denoiser' / 'config.json'}: control_channels must be 0 or "
                                                   f"{spatial * spatial} (the VAE's {spatial}x compression squared), got {control!r}")
        # "structure": the source's layout can be injected (restyle); "control": the denoiser reads structure maps;
        # "lora": LoRAs load onto it and `kinema train --data` fine-tunes it (`models/lora.py`)
        features = frozenset({"structure", "lora"} | ({"control"} if control else set()))
        return ModelInfo(
            family=self.name, path=path, name=f"kinema {index.get('preset', 'model')}", defaults=defaults,
            parameters=params, frame_conditions=tuple(index.get("frame_conditions", [])), features=features,
            size_multiple=spatial * 2 ** (len(den["channels"]) - 1), spatial_compression=spatial,
            latent_channels=vae["latent_channels"], configs=dict(denoiser=den, vae=vae, scheduler=read_scheduler(path)),
            index=index,
        )

    def load(self, info, device, dtype, attention="sdpa", offload=None) -> Model:
        require(offload in (None, "none"), "--offload applies to Wan checkpoints; kinema's own models fit in memory as they are")
        model = load_folder(info.path, device, dtype, attention, info.index, info.configs["scheduler"])
        model.info, model.family, model.attention = info, self, attention
        return model

    def estimate_memory(self, info, frames, height, width, dtype_bytes=4, cfg=True, decode_chunk_size=16, offload=None):
        """Weights + denoiser activations + VAE decode chunk (an estimate to choose settings by, not a measurement).

        Activations: the widest level holds ~12 live tensors of (2B, C, F, h, w); attention adds the
        spatial score matrix of the first attention level. The VAE decoder holds ~8 tensors of its widest
        block at full resolution for one chunk.
        """
        den, vae, s = info.configs["denoiser"], info.configs["vae"], info.spatial_compression
        h, w, b = height // s, width // s, 2 if cfg else 1
        weights = sum(info.parameters.values()) * dtype_bytes
        chans = den["channels"]
        level_act = max(c * frames * (h // 2**i) * (w // 2**i) for i, c in enumerate(chans)) * b * 12 * dtype_bytes
        first_attn = next((i for i, a in enumerate(den["attention_levels"]) if a), len(chans) - 1)
        tokens = (h // 2**first_attn) * (w // 2**first_attn)
        heads = max(1, chans[first_attn] // den["head_dim"])
        attn = b * frames * heads * tokens * tokens * dtype_bytes
        dec = 8 * max(vae["block_out_channels"]) * min(frames, decode_chunk_size) * height * width * dtype_bytes
        text = _text_encoder_bytes(info)  # loaded as stored, whatever dtype the rest runs in
        return dict(weights=weights, text_encoder=text, denoiser_activations=level_act + attn, vae_decode=dec,
                    total=weights + text + level_act + attn + dec)

    def report(self, info, frames, height, width, dtype="float32"):
        nbytes = {"float32": 4, "bfloat16": 2, "float16": 2}[dtype]
        est = self.estimate_memory(info, frames, height, width, dtype_bytes=nbytes)
        dtypes = {name: safetensors_parameters(info.path / name)[1] for name in WEIGHTED}
        p, d, vae = info.parameters, info.defaults, info.configs["vae"]
        report = dict(
            model=str(info.path), family=self.name, preset=info.index.get("preset"), text_encoder=info.index.get("text_encoder"),
            denoiser=dict(params=p["denoiser"], dtype=dtypes["denoiser"], config=info.configs["denoiser"]),
            vae=dict(params=p["vae"], dtype=dtypes["vae"], latent_channels=vae["latent_channels"],
                     spatial_compression=info.spatial_compression, temporal_compression=1),
            tasks=list(info.tasks), frame_conditions=list(info.frame_conditions), defaults=d.as_dict(),
            size_multiple=info.size_multiple,
            training=dict((k, v) for k, v in info.index.get("training", {}).items() if k != "config"),
            memory_estimate=dict(frames=frames, height=height, width=width, dtype=dtype,
                                 **{k: f"{v / 2**20:.1f} MiB" for k, v in est.items()}),
        )
        m = report["memory_estimate"]
        lines = [
            f"model     {report['model']} (preset {report['preset']})",
            f"text      {report['text_encoder']}",
            f"denoiser  SpaceTimeUNet, {p['denoiser'] / 1e6:.2f}M parameters ({dtypes['denoiser']})",
            f"vae       AutoencoderKL (frame-wise), {p['vae'] / 1e6:.2f}M parameters, {vae['latent_channels']} latent "
            f"channels, {info.spatial_compression}x spatial",
            f"defaults  {d.frames} frames {d.width}x{d.height} @ {d.fps:g} fps, {d.steps} steps, guidance {d.guidance}; "
            f"sizes must be multiples of {info.size_multiple}",
            f"frame conditions trained: {', '.join(info.frame_conditions) or 'none'}",
            f"memory    ~{m['total']} for the model on {frames} frames {width}x{height} in {dtype} (weights {m['weights']}, "
            f"text encoder {m['text_encoder']}, denoiser activations {m['denoiser_activations']}, VAE decode {m['vae_decode']})",
        ]
        return report, lines

    def cache_methods(self, info):
        """SpaceTimeUNet's own step caches (`models/cache.py`, asked after its first encoder level)."""
        from .cache import OWN_METHODS

        return OWN_METHODS


def _mapping(value, path: Path) -> dict:
    require(isinstance(value, dict), f"{path / INDEX}: defaults must be a mapping of numbers, got {value!r}; "
                                     "re-create the folder with `kinema init`")
    return value


register(KinemaFamily())

#################################################################################
#                           Loading, saving, creating                           #
#################################################################################


def load_folder(path: Path, device: torch.device, dtype: torch.dtype, attention: str = "sdpa", index: dict | None = None,
                scheduler_config: dict | None = None) -> Model:
    """The folder's three seams on `device`; the index and scheduler config as `describe` read them, else read
    and checked here. Damaged weights are a one-line error."""
    from .autoencoder import AutoencoderKL
    from .text import load_text_encoder, resolve_text_encoder
    from .unet import SpaceTimeUNet
    from .vae import FrameVAE

    index = read_index(path) if index is None else dict(index)
    text_folder = resolve_text_encoder(index.get("text_encoder", "builtin:minilm"), root=path)
    kw = dict(local_files_only=True, use_safetensors=True, torch_dtype=dtype)
    try:  # damaged weights or configs: one line, not the loader's traceback
        text = load_text_encoder(text_folder, max_length=int(index.get("max_text_length", 32))).to(device)
        denoiser = SpaceTimeUNet.from_pretrained(path / "denoiser", **kw).to(device).eval()
        denoiser.set_attention_backend(attention)
        vae = FrameVAE(AutoencoderKL.from_pretrained(path / "vae", **kw).to(device).eval())
        scheduler_config = read_scheduler(path) if scheduler_config is None else dict(scheduler_config)
    except (OSError, ValueError, RuntimeError, TypeError, AttributeError, KeyError, IndexError, SafetensorError) as e:
        first = (str(e).strip().splitlines() or [""])[0]
        raise KinemaError(f"could not load the model in {path} ({type(e).__name__}: {first}); the folder is damaged: "
                          "re-create or re-download it") from e
    require(denoiser.config.text_dim == text.dim,
            f"denoiser expects text dim {denoiser.config.text_dim} but the text encoder gives {text.dim}")
    return Model(text, vae, denoiser, scheduler_config, index, path, torch.device(device), dtype)


def save(model: Model, path: str | Path, overwrite: bool = False) -> Path:
    """Write a model folder atomically (temporary folder, then rename); an existing one stays until then."""
    path = Path(path)
    require(not path.is_symlink(), f"{path} is a link; kinema writes model folders only at a real path: "
                                   f"pass the folder it points to ({os.path.realpath(path)}) or another name")
    require(not path.exists() or overwrite, f"{path} already exists; choose another folder or pass --overwrite")
    empty = path.is_dir() and not any(path.iterdir())
    require(not path.exists() or empty or (path / INDEX).is_file(),  # --overwrite deletes only model folders
            f"{path} exists and is not a kinema model folder; --overwrite replaces only those, choose another path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    except OSError as e:  # a read-only or special folder (/proc), a file where a parent folder should be
        raise KinemaError(f"cannot create {path}: {e.strerror or e}; choose a writable folder") from e
    try:
        _write_folder(model, tmp)
        _carry_named_files(model, path, tmp)
        replace_path(tmp, path)
    except OSError as e:  # disk full, permissions: the temporary goes, an existing model stays
        shutil.rmtree(tmp, ignore_errors=True)
        raise KinemaError(f"could not write {path}: {e.strerror or e}; check free space and permissions") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _carry_named_files(model: Model, path: Path, tmp: Path) -> None:
    """Files the index names beside the weights (the student LoRA of its `fast` entry and the student's restyle LoRA)
    come along into the new folder: from the folder the model was loaded from, else from the one being replaced;
    training a folder on, or saving it elsewhere, keeps its `--fast` working."""
    fast = model.index.get("fast")
    fast = fast if isinstance(fast, dict) else {}
    restyle = fast.get("restyle") if isinstance(fast.get("restyle"), dict) else {}
    for name in (fast.get("lora"), restyle.get("lora")):
        if not name or (tmp / name).exists():
            continue
        for folder in (model.path, path):
            if folder is not None and (Path(folder) / name).is_file():
                shutil.copy2(Path(folder) / name, tmp / name)
                break


def _write_folder(model: Model, tmp: Path) -> None:
    model.denoiser.save_pretrained(tmp / "denoiser", safe_serialization=True)
    model.vae.autoencoder.save_pretrained(tmp / "vae", safe_serialization=True)
    (tmp / "scheduler").mkdir()
    (tmp / "scheduler" / "scheduler_config.json").write_text(json.dumps(model.scheduler_config, indent=2))
    (tmp / INDEX).write_text(json.dumps(model.index, indent=2))
    os.chmod(tmp, 0o755)


def init(path: str | Path, preset: str = "small", seed: int = 0, overwrite: bool = False,
         text_encoder: str = "builtin:minilm") -> Path:
    """Write a randomly initialised model folder (the start of training, and what tests use)."""
    from .schedulers import EULER_CONFIG
    from .text import load_text_encoder, resolve_text_encoder
    from .unet import PRESETS, SpaceTimeUNet
    from .vae import VAE_PRESETS, FrameVAE, build_autoencoder

    require(preset in PRESETS, f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    require(0 <= seed < 2**63, f"--seed must be in [0, 2**63) (got {seed})")
    text_dim = load_text_encoder(resolve_text_encoder(text_encoder)).dim
    torch.manual_seed(seed)
    vae = FrameVAE(build_autoencoder(preset if preset in VAE_PRESETS else "small"))
    denoiser = SpaceTimeUNet(latent_channels=vae.latent_channels, text_dim=text_dim, **PRESETS[preset])
    sched = dict(EULER_CONFIG, num_train_timesteps=1000, shift=INIT_DEFAULTS["shift"])  # diffusers' Euler config
    index = dict(format=FORMAT, version=1, preset=preset, text_encoder=text_encoder, max_text_length=32,
                 defaults=dict(INIT_DEFAULTS),
                 frame_conditions=[])  # filled in by training: which frame conditions the model was trained on
    return save(Model(None, vae, denoiser, sched, index), path, overwrite=overwrite)
