"""Model folders: a small JSON index naming the components, one subfolder per component.

    model/
      kinema.json          {"format": "kinema-model", "text_encoder": "builtin:minilm", "defaults": {...}}
      denoiser/            SpaceTimeUNet: config.json + diffusion_pytorch_model.safetensors
      vae/                 AutoencoderKL: config.json + diffusion_pytorch_model.safetensors
      scheduler/           FlowMatchEulerDiscreteScheduler config

Loading never touches the network (`local_files_only=True`) and reads safetensors only.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError

from .errors import KinemaError

INDEX = "kinema.json"
WAN_INDEX = "model_index.json"  # diffusers pipeline folders (Wan 2.1 / 2.2), loaded by kinema.models.wan
FORMAT = "kinema-model"
DEFAULT_MODEL = Path(__file__).resolve().parent / "weights" / "default"
COMPONENTS = ("denoiser", "vae", "scheduler")

DEFAULTS = dict(frames=16, height=64, width=64, fps=8, steps=25, guidance=5.0, shift=1.0, image_noise=0.02)


@dataclass
class Model:
    """A loaded model: text encoder, VAE and denoiser behind the three seams, plus the folder's defaults."""

    text_encoder: object
    vae: object
    denoiser: object
    scheduler_config: dict
    index: dict
    path: Path | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32

    @property
    def defaults(self) -> dict:
        return {**DEFAULTS, **self.index.get("defaults", {})}

    @property
    def frame_conditions(self) -> list[str]:
        return list(self.index.get("frame_conditions", []))

    @property
    def size_multiple(self) -> int:
        """Height and width must be multiples of this (VAE compression x UNet downsampling)."""
        return self.vae.spatial_compression * 2 ** (len(self.denoiser.config.channels) - 1)


def resolve_model_path(model: str | Path | None) -> Path:
    """The model folder to load: the given path, or the default weights shipped with kinema."""
    if model is None:
        if not (DEFAULT_MODEL / INDEX).is_file():
            raise KinemaError(
                "no default weights are installed in this copy of kinema; pass --model DIR "
                "(make one with `kinema init DIR --preset small` and `kinema train configs/default.yaml --model DIR`)"
            )
        return DEFAULT_MODEL
    path = Path(model).expanduser()
    if not path.is_dir():
        raise KinemaError(f"model folder {path} does not exist; pass a folder made by `kinema init` or a diffusers folder")
    if not (path / INDEX).is_file() and not (path / WAN_INDEX).is_file():
        raise KinemaError(f"model folder {path} has no {INDEX} (nor a diffusers {WAN_INDEX}); it is not a kinema "
                          "model folder (make one with `kinema init`) or a Wan diffusers folder")
    return path


def is_wan(path: Path) -> bool:
    """A diffusers Wan folder (model_index.json) rather than a kinema one; see kinema.models.wan."""
    return not (Path(path) / INDEX).is_file() and (Path(path) / WAN_INDEX).is_file()


def read_index(path: Path) -> dict:
    try:
        index = json.loads((path / INDEX).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise KinemaError(f"{path / INDEX} is not valid JSON ({e}); re-create the folder with `kinema init`") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        found = index.get("format") if isinstance(index, dict) else type(index).__name__
        raise KinemaError(f"{path / INDEX} is not a kinema model index (format {found!r})")
    _check_index(index, path / INDEX)
    for name in COMPONENTS:
        sub = path / name
        if not sub.is_dir() or sub.resolve().parent != path.resolve():
            raise KinemaError(f"model folder {path} is incomplete: missing component folder {name}/")
    for name in ("denoiser", "vae"):
        if not (path / name / "config.json").is_file():
            raise KinemaError(f"model folder {path} is incomplete: {name}/config.json is missing")
        weights = list((path / name).glob("*.safetensors"))
        pickles = [p for p in (path / name).iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt")]
        if not weights:
            why = " (only pickle weights found; kinema loads safetensors only)" if pickles else ""
            raise KinemaError(f"model folder {path} is incomplete: no {name}/*.safetensors{why}")
    return index


def _check_index(index: dict, where: Path) -> None:
    """The index entries kinema reads have the types it needs: a damaged or hostile index fails here, in one line."""
    def number(key: str, v) -> bool:
        whole = key in ("frames", "height", "width", "steps")
        return isinstance(v, int if whole else (int, float)) and not isinstance(v, bool) and v == v and (
            v >= 0 if key == "image_noise" else v > 0)

    checks = {
        "text_encoder": (lambda v: isinstance(v, str), "a string"),
        "max_text_length": (lambda v: number("steps", v), "a whole number >= 1"),
        "defaults": (lambda v: isinstance(v, dict) and all(number(k, v[k]) for k in DEFAULTS if k in v),
                     "a mapping of positive numbers (frames, height, width, steps whole)"),
        "frame_conditions": (lambda v: isinstance(v, list) and all(isinstance(c, str) for c in v), "a list of names"),
    }
    for key, (ok, want) in checks.items():
        if key in index and not ok(index[key]):
            raise KinemaError(f"{where}: {key} must be {want}, got {index[key]!r}; re-create the folder with `kinema init`")


def read_configs(path: Path) -> tuple[dict, dict]:
    """The denoiser's and the VAE's config.json, with the entries kinema reads before loading checked."""
    try:
        den = json.loads((path / "denoiser" / "config.json").read_text())
        vae = json.loads((path / "vae" / "config.json").read_text())
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


def load(
    model: str | Path | None = None, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, attention: str = "sdpa",
    offload: str | None = None,
) -> Model:
    """Load a kinema model folder (default: the shipped weights), or a Wan diffusers folder, onto a device."""
    from diffusers import AutoencoderKL

    from .models import FrameVAE, HFTextEncoder, SpaceTimeUNet
    from .models.text import resolve_text_encoder

    path = resolve_model_path(model)
    if is_wan(path):  # a WanModel: the same attributes as Model, so the drivers run it unchanged
        from .models import wan

        quiet_libraries()
        return wan.load(path, device, dtype, attention, offload)
    if offload not in (None, "none"):
        raise KinemaError("--offload applies to Wan checkpoints; kinema's own models fit in memory as they are")
    index = read_index(path)
    quiet_libraries()
    device = torch.device(device)
    text_folder = resolve_text_encoder(index.get("text_encoder", "builtin:minilm"), root=path)
    kw = dict(local_files_only=True, use_safetensors=True, torch_dtype=dtype)
    try:  # damaged weights or configs: one line, not the loader's traceback
        text = HFTextEncoder(text_folder, max_length=int(index.get("max_text_length", 32))).to(device)
        denoiser = SpaceTimeUNet.from_pretrained(path / "denoiser", **kw).to(device).eval()
        denoiser.set_attention_backend(attention)
        vae = FrameVAE(AutoencoderKL.from_pretrained(path / "vae", **kw).to(device).eval())
        scheduler_config = json.loads((path / "scheduler" / "scheduler_config.json").read_text())
        float(scheduler_config.get("shift", 1.0)), int(scheduler_config.get("num_train_timesteps", 1000))
    except (OSError, ValueError, RuntimeError, TypeError, AttributeError, KeyError, IndexError, SafetensorError) as e:
        first = (str(e).strip().splitlines() or [""])[0]
        raise KinemaError(f"could not load the model in {path} ({type(e).__name__}: {first}); the folder is damaged: "
                          "re-create or re-download it") from e
    if denoiser.config.text_dim != text.dim:
        raise KinemaError(f"denoiser expects text dim {denoiser.config.text_dim} but the text encoder gives {text.dim}")
    return Model(text, vae, denoiser, scheduler_config, index, path, device, dtype)


def quiet_libraries() -> None:
    """Keep transformers/diffusers progress bars and notices out of kinema's output."""
    import diffusers
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()


def save(model: Model, path: str | Path, overwrite: bool = False) -> Path:
    """Write a model folder atomically (temporary folder, then rename)."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise KinemaError(f"{path} already exists; choose another folder or pass --overwrite")
    empty = path.is_dir() and not any(path.iterdir())
    if path.exists() and not empty and not (path / INDEX).is_file():  # --overwrite deletes only model folders
        raise KinemaError(f"{path} exists and is not a kinema model folder; --overwrite replaces only those, choose another path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    except OSError as e:  # a read-only or special folder (/proc), a file where a parent folder should be
        raise KinemaError(f"cannot create {path}: {e.strerror or e}; choose a writable folder") from e
    try:
        model.denoiser.save_pretrained(tmp / "denoiser", safe_serialization=True)
        model.vae.autoencoder.save_pretrained(tmp / "vae", safe_serialization=True)
        (tmp / "scheduler").mkdir()
        (tmp / "scheduler" / "scheduler_config.json").write_text(json.dumps(model.scheduler_config, indent=2))
        (tmp / INDEX).write_text(json.dumps(model.index, indent=2))
        os.chmod(tmp, 0o755)
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            try:
                os.replace(tmp, path)
            except BaseException:
                os.replace(old, path)  # put the existing model back
                raise
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    except OSError as e:  # disk full, permissions: the temporary goes, an existing model stays
        shutil.rmtree(tmp, ignore_errors=True)
        raise KinemaError(f"could not write {path}: {e.strerror or e}; check free space and permissions") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def init(path: str | Path, preset: str = "small", seed: int = 0, overwrite: bool = False, text_encoder: str = "builtin:minilm") -> Path:
    """Write a randomly initialised model folder (the start of training, and what tests use)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from .models import PRESETS, VAE_PRESETS, FrameVAE, HFTextEncoder, SpaceTimeUNet, build_autoencoder
    from .models.text import resolve_text_encoder

    if preset not in PRESETS:
        raise KinemaError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    if not 0 <= seed < 2**63:
        raise KinemaError(f"--seed must be in [0, 2**63) (got {seed})")
    quiet_libraries()
    text_dim = HFTextEncoder(resolve_text_encoder(text_encoder)).dim
    torch.manual_seed(seed)
    vae = FrameVAE(build_autoencoder(preset if preset in VAE_PRESETS else "small"))
    denoiser = SpaceTimeUNet(latent_channels=vae.latent_channels, text_dim=text_dim, **PRESETS[preset])
    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=DEFAULTS["shift"])
    index = dict(
        format=FORMAT,
        version=1,
        preset=preset,
        text_encoder=text_encoder,
        max_text_length=32,
        defaults=dict(DEFAULTS),
        frame_conditions=[],  # filled in by training: which frame conditions the model was trained on
    )
    model = Model(None, vae, denoiser, dict(sched.config), index)
    return save(model, path, overwrite=overwrite)
