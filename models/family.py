"""Model families behind one registry: each describes a folder without loading weights and loads it into the seams.

    family = family_for("Wan2.1-T2V-1.3B-Diffusers")   # picked once per folder
    info = family.describe(path)                          # ModelInfo: frozen, weights not read
    model = family.load(info, device, dtype)              # Model: text encoder, VAE, denoiser

A family is one object: `describe` (components, parameter counts from the safetensors headers, tasks,
frame rules, validated defaults), `load`, `estimate_memory`, `image_condition` (how image-to-video
conditions this family's denoiser), `settings` (what depends on the clip's size) and `report` (`kinema info`).
Nothing outside `models/` asks which family a model is; it asks the family. kinema's own folders
(`kinema_family.py`), Wan 2.1/2.2 (`wan.py`) and LTX-Video 0.9.x (`ltx.py`) diffusers folders are registered;
AnimateDiff comes next.
"""

from __future__ import annotations

import math
import types
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Mapping

import torch

from kinema.errors import KinemaError, require

TASKS = ("generate", "animate", "restyle", "extend")
DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "kinema" / "weights" / "default"

#################################################################################
#                                    Defaults                                   #
#################################################################################


@dataclass(frozen=True)
class ModelDefaults:
    """What a model folder sets for the options a user leaves out (kinema.json `defaults`, or the family's)."""

    frames: int = 16
    height: int = 64
    width: int = 64
    fps: float = 8.0
    steps: int = 25
    guidance: float = 5.0
    # (lo, hi): guidance only at noise levels in (lo, hi] (`loop.guided`; Kynkäänniemi et al. 2024); None: every step
    guidance_interval: tuple[float, float] | None = None
    shift: float = 1.0
    image_noise: float = 0.02  # std of the anchor's noise augmentation in latent space
    scheduler: str = "euler"  # the folder's solver (UniPC for Wan)
    motion_length: int | None = None  # the clip length the denoiser is told (a pace); None: the clip's own
    follow_motion: bool = False  # long clips: context windows follow the clip's motion
    restyle_strength: float = 0.7
    restyle_structure: float = 0.0
    restyle_guidance: float | None = None  # None: `guidance`
    restyle_method: str = "sdedit"  # sdedit (noise the source, denoise with the prompt) or flowedit (inversion-free)
    restyle_control_scale: float = 1.0  # how strongly the source's edge maps steer restyle (models with a control input)
    restyle_fast: bool = False  # restyle with the folder's few-step student (its `fast` entry) unless told --no-fast

    @classmethod
    def parse(cls, data, where: str) -> "ModelDefaults":
        """Validated defaults from a mapping: unknown keys and out-of-range values are one-line errors."""
        require(isinstance(data, Mapping), f"{where}: defaults must be a mapping, got {type(data).__name__}")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(str(k) for k in data if k not in known)
        require(not unknown, f"{where}: unknown default(s) {', '.join(unknown)}; allowed: {', '.join(known)}")
        for key, value in data.items():
            ok, want = _valid(key, value)
            require(ok, f"{where}: defaults.{key} must be {want}, got {value!r}; fix or re-create the folder")
        return cls(**{k: _value(cls, k, v) for k, v in data.items()})

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _value(cls, name: str, v):
    if v is None:
        return v
    if name == "guidance_interval":
        return tuple(float(x) for x in v)
    return float(v) if _is_float(cls, name) else v


def valid_interval(v) -> bool:
    """A guidance interval: two noise levels 0 <= lo < hi <= 1."""
    return (isinstance(v, (list, tuple)) and len(v) == 2 and all(_number(x) for x in v)
            and 0 <= v[0] < v[1] <= 1)


def _is_float(cls, name: str) -> bool:
    return "float" in str(next(f.type for f in fields(cls) if f.name == name))


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _valid(key: str, v) -> tuple[bool, str]:
    """(value is valid for `key`, what a valid one is)."""
    if key in ("frames", "height", "width", "steps"):
        return isinstance(v, int) and not isinstance(v, bool) and v >= 1, "a whole number >= 1"
    if key == "motion_length":
        return v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 1), "a whole number >= 1"
    if key in ("fps", "shift"):
        return _number(v) and v > 0, "a number > 0"
    if key in ("guidance", "restyle_guidance"):
        return (v is None and key != "guidance") or (_number(v) and 0 <= v <= 50), "a number in [0, 50]"
    if key in ("image_noise", "restyle_strength", "restyle_structure"):
        return _number(v) and 0 <= v <= 1, "a number in [0, 1]"
    if key == "guidance_interval":
        return v is None or valid_interval(v), "null or [lo, hi] with 0 <= lo < hi <= 1"
    if key == "restyle_control_scale":
        return _number(v) and 0 <= v <= 5, "a number in [0, 5]"
    if key == "scheduler":  # kinema.json folders are flow models (AnimateDiff's defaults come from its family)
        return isinstance(v, str) and v in ("euler", "unipc"), "euler or unipc"
    if key == "restyle_method":
        return isinstance(v, str) and v in ("sdedit", "flowedit"), "sdedit or flowedit"
    return isinstance(v, bool), "true or false"  # follow_motion, restyle_fast


#################################################################################
#                                   ModelInfo                                   #
#################################################################################


@dataclass(frozen=True)
class ModelInfo:
    """A model folder as its family reads it, before any weights load."""

    family: str  # the registry name: "kinema", "wan"
    path: Path
    name: str  # what messages call it: the preset or the diffusers pipeline
    defaults: ModelDefaults
    parameters: Mapping[str, int]  # weighted component -> parameter count (safetensors headers)
    tasks: tuple[str, ...] = TASKS
    frame_conditions: tuple[str, ...] = ()  # which known-frame conditions it was trained for: first, first_last
    # "structure": the denoiser can take a source's layout (restyle); "control": it reads structure control maps;
    # "lora": kinema LoRAs load onto it and it can be fine-tuned on a folder of clips
    features: frozenset = frozenset()
    size_multiple: int = 8  # height and width must be multiples of this
    spatial_compression: int = 4
    temporal_compression: int = 1  # 4 for Wan: clips have 4k+1 frames
    latent_channels: int = 4
    configs: Mapping[str, Mapping] = field(default_factory=dict)  # component configs (memory estimates, reports)
    index: Mapping = field(default_factory=dict)  # the folder's index as read (sidecar, reports)
    prediction: str = "flow"  # what the denoiser predicts: flow (velocity), epsilon or v_prediction (`pipelines/parameterisation.py`)
    max_context: int | None = None  # the most latent frames one denoiser call takes (AnimateDiff: the adapter's positions)
    parts: tuple[Path, ...] = ()  # other folders the model is read from (AnimateDiff's separate motion adapter)

    def __post_init__(self):
        object.__setattr__(self, "parameters", types.MappingProxyType(dict(self.parameters)))
        object.__setattr__(self, "configs", types.MappingProxyType(dict(self.configs)))

    def latent_frames(self, frames: int) -> int:
        return (frames - 1) // self.temporal_compression + 1

    def check_task(self, task: str) -> None:
        """Refuse a command the checkpoint cannot run (a Wan image-to-video checkpoint only animates)."""
        require(task in self.tasks, f"this checkpoint ({self.name}) cannot {task}; it supports: {', '.join(self.tasks)}")

    def check_frames(self, frames: int) -> None:
        """Clips of a VAE that compresses time by t have t k + 1 frames; name the nearest that fit."""
        t = self.temporal_compression
        lo = max(1, (frames - 1) // t * t + 1)
        require(t == 1 or (frames - 1) % t == 0, f"--frames {frames} does not fit this model's VAE, which compresses "
                                                 f"time by {t}: use {t}k+1 frames, such as {lo} or {lo + t}")

    def with_defaults(self, **changes) -> "ModelInfo":
        return replace(self, defaults=replace(self.defaults, **changes))


#################################################################################
#                                   The model                                   #
#################################################################################


@dataclass
class Model:
    """A loaded model: text encoder, VAE and denoiser behind the three seams, with its family and description."""

    text_encoder: object
    vae: object
    denoiser: object
    scheduler_config: dict
    index: dict
    path: Path | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32
    info: ModelInfo | None = None
    family: "ModelFamily | None" = None
    attention: str = "sdpa"  # the attention backend it was loaded with
    offload: str = "none"  # none, model or sequential (accelerate's hooks move weights to the device as they run)
    loras: tuple = ()  # the LoRAs loaded onto the denoiser: (path, scale) pairs (`models/lora.py`)
    runtime: dict = field(default_factory=dict)  # quantize, transformer file, compile: what the sidecar records

    @property
    def defaults(self) -> dict:
        """The folder's defaults as a mapping (ModelDefaults' fields)."""
        if self.info is not None:
            return self.info.defaults.as_dict()
        return ModelDefaults.parse(self.index.get("defaults", {}), "model index").as_dict()


class ModelFamily:
    """How one family's folders are described, loaded and sized. Subclasses fill in every method."""

    name = "base"

    def recognises(self, path: Path) -> bool:
        """Whether `path` is a folder of this family (by its index file only)."""
        raise NotImplementedError

    def describe(self, path: Path) -> ModelInfo:
        raise NotImplementedError

    def load(self, info: ModelInfo, device: torch.device, dtype: torch.dtype, attention: str = "sdpa",
             offload: str | None = None) -> Model:
        raise NotImplementedError

    def estimate_memory(self, info: ModelInfo, frames: int, height: int, width: int, dtype_bytes: int = 4,
                        cfg: bool = True, decode_chunk_size: int = 16, offload: str | None = None) -> dict:
        """Rough peak bytes: dict(weights, denoiser_activations, vae_decode, total)."""
        raise NotImplementedError

    def image_condition(self, model: Model, first, last, settings, std: float, timings):
        """The `ImageCondition` of image-to-video for this family's denoiser."""
        from .conditions import image_condition

        return image_condition(model, first, last, settings, std, timings)

    def report(self, info: ModelInfo, frames: int, height: int, width: int, dtype: str = "float32") -> tuple[dict, list[str]]:
        """`kinema info`: a JSON-able report and its lines of text."""
        raise NotImplementedError

    def cache_methods(self, info: ModelInfo) -> tuple[str, ...]:
        """The step caches (`--cache`, `models/cache.py`) this family's denoiser takes."""
        return ("none",)

    def attention_backends(self, info: ModelInfo) -> tuple[str, ...]:
        """The `--attention` names this family's denoiser takes (`models/runtime.py` for transformer families)."""
        from .attention import BACKENDS

        return BACKENDS

    def lora_layers(self, info: ModelInfo) -> dict[str, dict[str, tuple[int, ...]]]:
        """The layers diffusers-layout LoRAs can adapt, per component their keys name (`models/lora.py`
        `DIFFUSERS_LORA`), from the configs on the meta device (families whose LoRAs diffusers' loaders read)."""
        raise KinemaError(f"--lora: {info.name} ({info.path}) takes no LoRA")

    def check_transformer_file(self, info: ModelInfo, path) -> dict:
        """`--transformer FILE`: checked by its header before loading (families with a single-file loader)."""
        raise KinemaError(f"--transformer replaces a transformer with a GGUF file; {info.name} ({info.path}) takes none")

    def lora_training(self, info: ModelInfo) -> dict | None:
        """How `kinema train --data` adapts this family with a LoRA (`kinema/finetune.py`): dict(part: the denoiser's
        attribute the LoRA goes on, also its file prefix; targets: PEFT's full-match pattern of the adapted layers;
        low: the lowest noise level that module serves). None: fine-tuned another way (kinema's own) or not at all."""
        return None

    def settings(self, info: ModelInfo, settings):
        """The job's settings with what depends on the clip's size resolved (LTX: the flow shift); as given here."""
        return settings


def offload_hooks(modules, mode: str, device: torch.device) -> None:
    """accelerate's hooks that move each component to `device` only while it runs: "model" one component at a time, in
    the order given (diffusers' enable_model_cpu_offload), "sequential" one layer at a time (its
    enable_sequential_cpu_offload: least memory, slowest)."""
    from accelerate import cpu_offload, cpu_offload_with_hook

    if mode == "model":
        hook = None
        for m in modules:
            _, hook = cpu_offload_with_hook(m, device, prev_module_hook=hook)
    else:
        for m in modules:
            cpu_offload(m, execution_device=device, offload_buffers=len(m._parameters) > 0)


def params_line(info: ModelInfo) -> str:
    """`kinema info`'s line of parameter counts per component."""
    return "params    " + ", ".join(f"{k} {v / 1e9:.2f}B" if v >= 1e8 else f"{k} {v / 1e6:.2f}M"
                                    for k, v in info.parameters.items())


def offload_lines(est: Mapping[str, Mapping], frames: int, height: int, width: int, dtype: str) -> list[str]:
    """`kinema info`'s GPU estimate per `--offload` mode (a transformer family's `estimate_memory` per mode)."""
    return [f"memory    --offload {mode:<10} ~{m['total']} GPU peak for {frames} frames {width}x{height} in {dtype} "
            f"(weights {m['weights']}, transformer activations {m['denoiser_activations']}, VAE decode {m['vae_decode']})"
            for mode, m in est.items()]


#################################################################################
#                                    Registry                                   #
#################################################################################

_FAMILIES: dict[str, ModelFamily] = {}


def register(family: ModelFamily) -> ModelFamily:
    _FAMILIES[family.name] = family
    return family


def families() -> dict[str, ModelFamily]:
    """The registered families by name (kinema first: its index wins where a folder has both)."""
    from . import animatediff, kinema_family, ltx, wan  # noqa: F401  (each registers itself when first imported)

    # ltx, animatediff: their own indexes only; Wan reads any other diffusers folder (and says which pipelines it takes)
    return {name: _FAMILIES[name] for name in ("kinema", "ltx", "animatediff", "wan", *_FAMILIES)}


def resolve_model_path(model: str | Path | None) -> Path:
    """The model folder: the given path, or the default weights shipped with kinema."""
    if model is None:
        require(any(f.recognises(DEFAULT_MODEL) for f in families().values()),
                "no default weights are installed in this copy of kinema; pass --model DIR (make one with "
                "`kinema init DIR --preset small` and `kinema train configs/default.yaml --model DIR`)")
        return DEFAULT_MODEL
    path = Path(model).expanduser()
    require(path.is_dir(), f"model folder {path} does not exist; pass a folder made by `kinema init` or a diffusers folder")
    return path


def family_for(model: str | Path | None) -> tuple[ModelFamily, Path]:
    """The family that reads this folder, and the folder (None: the shipped default model)."""
    path = resolve_model_path(model)
    for family in families().values():
        if family.recognises(path):
            return family, path
    raise KinemaError(f"model folder {path} has no kinema.json (nor a diffusers model_index.json); it is not a kinema "
                      "model folder (make one with `kinema init`) or a Wan or LTX-Video diffusers folder")


def describe(model: str | Path | None, motion_adapter: str | Path | None = None) -> ModelInfo:
    """The folder's ModelInfo (None: the shipped default model), without loading any weights.

    `motion_adapter`: a MotionAdapter folder to put on an SD 1.5 folder's UNet (`--motion-adapter`, AnimateDiff)."""
    family, path = family_for(model)
    if motion_adapter is None:
        return family.describe(path)
    require(getattr(family, "takes_motion_adapter", False),
            f"--motion-adapter goes with a Stable Diffusion 1.5 folder; {path} is a {family.name} model folder: drop it")
    return family.describe(path, motion_adapter=Path(motion_adapter).expanduser())


def family_of(info: ModelInfo) -> ModelFamily:
    return families()[info.family]


def load_model(model: str | Path | None | ModelInfo = None, device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float32, attention: str = "sdpa", offload: str | None = None,
               transformer: str | Path | None = None) -> Model:
    """Load a folder (or a described one) onto a device, uncached (`kinema.load` caches); `transformer` a
    single-file transformer in place of the folder's (families that take one)."""
    info = model if isinstance(model, ModelInfo) else describe(model)
    extra = {} if transformer is None else dict(transformer=transformer)
    return family_of(info).load(info, torch.device(device), dtype, attention, offload, **extra)


def safetensors_parameters(folder: Path) -> tuple[int, str | None]:
    """(parameters, dtype) of every *.safetensors file in `folder`, read from the headers only."""
    from safetensors import SafetensorError, safe_open

    n, dtype = 0, None
    for f in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(f, "pt") as st:
                for k in st.keys():
                    sl = st.get_slice(k)
                    n += math.prod(sl.get_shape())
                    dtype = sl.get_dtype()
        except (SafetensorError, OSError) as e:
            raise KinemaError(f"{f} is not a readable safetensors file ({e}); re-create or re-download the model") from None
    return n, dtype


def meta_model(cls, config: Mapping):
    """A diffusers model of `config` built on the meta device: its layers and weight shapes, nothing allocated."""
    quiet_libraries()
    with torch.device("meta"):
        return cls.from_config({k: v for k, v in config.items() if not k.startswith("_")})


def weight_shapes(cls, config: Mapping) -> dict[str, tuple[int, ...]]:
    """A diffusers model's weight names and shapes from its config (`meta_model`; single-file checks)."""
    return {k: tuple(v.shape) for k, v in meta_model(cls, config).state_dict().items()}


def quiet_libraries() -> None:
    """Keep transformers/diffusers progress bars and notices out of kinema's output."""
    import diffusers
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
