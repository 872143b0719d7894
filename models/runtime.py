"""Runtime options of a load: quantized weights, GGUF transformer files, compiled blocks, attention backends.

    kinema generate "…" --quantize int8 -o clip.mp4                        # torchao weight-only int8, CPU or CUDA
    kinema generate "…" --model Wan2.1-T2V-14B-Diffusers --transformer wan2.1-t2v-14b-Q4_K_M.gguf -o cat.mp4
    kinema generate "…" --compile -o clip.mp4                              # torch.compile of the repeated blocks
    kinema generate "…" --model Wan2.1-T2V-1.3B-Diffusers --attention flash -o cat.mp4
    kinema info Wan2.1-T2V-1.3B-Diffusers --quantize int8                  # weights before and after

Each is checked before any weights load (`check_*`: a one-line error naming what to install or pass) and
applied after the family has loaded the model (`quantize`, `compile_denoiser`), or, for a GGUF file, by the
family's loader (diffusers' `from_single_file` with `GGUFQuantizationConfig`). Files are read as data only:
GGUF through the `gguf` package's reader, never a pickle.

- `--quantize int8|fp8|nf4`: torchao's `Int8WeightOnlyConfig` (CPU and CUDA), `Float8WeightOnlyConfig` (CUDA,
  compute capability 8.9+) and its NF4 weight-only config (CUDA) on the denoiser's linear layers (not a
  LoRA's own layers, which stay in full precision above their quantized base).
- `--transformer FILE.gguf`: a transformer in the original (community, city96-style) or diffusers key layout,
  checked against the folder's transformer config by its header (names and shapes) before it loads.
- `--compile`: each repeated block compiled on its own (regional compilation: diffusers'
  `compile_repeated_blocks` for its models, the same loop over `_repeated_blocks` for kinema's UNet); the first
  call at each new input shape compiles (the warm-up), shown as a progress bar and recorded in the sidecar.
- `--attention`: kinema's own backends (sdpa, xformers, chunked) for its UNet; for transformer families the
  names of diffusers' attention dispatcher (`set_attention_backend`), `sdpa` meaning `native`.
"""

from __future__ import annotations

import contextvars
import importlib.util
import logging
import math
import os
import shutil
import threading
import time
import warnings
from pathlib import Path

import torch

from kinema.errors import KinemaError, require

QUANTIZE = ("none", "int8", "fp8", "nf4")
GGUF_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K")  # what `save_gguf` writes
# diffusers' attention dispatcher names kinema offers (the *_hub ones download kernels, so they are left out)
DIFFUSERS_ATTENTION = ("native", "_native_math", "_native_flash", "_native_efficient", "_native_cudnn", "flex",
                       "flash", "flash_varlen", "_flash_3", "_flash_varlen_3", "sage", "sage_varlen", "xformers")
CPU_ATTENTION = ("native", "_native_math", "flex", "sdpa")  # the rest are CUDA kernels
ATTENTION = ("sdpa", "xformers", "chunked", *(n for n in DIFFUSERS_ATTENTION if n != "xformers"))  # --attention names

# whether this thread's run shows progress bars (the compile warm-up's); jobs.run sets it
SHOW_PROGRESS: contextvars.ContextVar[bool] = contextvars.ContextVar("kinema_runtime_progress", default=True)


def _torchao():
    """torchao, imported with its notices about optional CUDA kernels kept out of kinema's output."""
    logging.getLogger("torchao").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pytree = logging.getLogger("torch.utils._pytree")
        level = pytree.level
        pytree.setLevel(logging.ERROR)
        try:
            import torchao  # noqa: F401
            import torchao.quantization as quantization
        finally:
            pytree.setLevel(level)
    return quantization


#################################################################################
#                                   Quantize                                    #
#################################################################################


def check_quantize(mode, device: torch.device) -> str:
    """`--quantize` checked for this device and install, before any weights load."""
    mode = "none" if mode is None else mode
    require(mode in QUANTIZE, f"unknown --quantize {mode!r}; choose one of {', '.join(QUANTIZE)}")
    if mode == "none":
        return mode
    require(importlib.util.find_spec("torchao") is not None,
            f"--quantize {mode} needs torchao: pip install 'kinema[quant]' (or pip install torchao)")
    if mode in ("fp8", "nf4"):
        require(device.type == "cuda", f"--quantize {mode} runs on CUDA (torchao's {mode} kernels); on the CPU use "
                                       "--quantize int8")
    if mode == "fp8":
        cap = torch.cuda.get_device_capability(device)
        require(cap >= (8, 9), f"--quantize fp8 needs a GPU of compute capability 8.9 or newer (Ada, Hopper); this one "
                               f"is {cap[0]}.{cap[1]}: use --quantize int8")
    return mode


def _config(mode: str):
    q = _torchao()
    if mode == "int8":
        return q.Int8WeightOnlyConfig()
    if mode == "fp8":
        return q.Float8WeightOnlyConfig()
    from torchao.prototype._nf4tensor_api import NF4WeightOnlyConfig

    return NF4WeightOnlyConfig()


NF4_BLOCK = 64 * 256  # torchao's NF4: blocks of 64 values, their scales quantized in blocks of 256


def _quantizable(mode: str):
    """Which modules `mode` quantizes: linear layers (not a LoRA's own), with the shapes its kernels take."""

    def fits(module: torch.nn.Module, fqn: str) -> bool:
        if not isinstance(module, torch.nn.Linear) or "lora_" in fqn or type(module.weight) is not torch.nn.Parameter:
            return False
        out_f, in_f = module.weight.shape
        if mode == "nf4":
            return module.weight.numel() % NF4_BLOCK == 0
        if mode == "fp8":
            return in_f % 16 == 0 and out_f % 16 == 0
        return True

    return fits


def quantize(module: torch.nn.Module, mode: str) -> dict:
    """Quantize `module`'s linear layers in place with torchao; what the sidecar records (layers, weight bytes)."""
    if mode in (None, "none"):
        return {}
    from torchao.quantization import quantize_

    before = weight_bytes(module)
    fits = _quantizable(mode)
    layers = sum(fits(m, n) for n, m in module.named_modules())
    require(layers > 0, f"--quantize {mode}: this denoiser has no linear layer of a shape {mode} takes")
    config = _config(mode)
    names = [n for n, m in module.named_modules() if fits(m, n)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i, name in enumerate(names):  # layer by layer, each float weight freed as its quantized one is made
            quantize_(module.get_submodule(name), config, filter_fn=lambda m, fqn: fqn == "")
            if i % 32 == 31:
                release_memory()
    own_memory(module)
    release_memory()
    return dict(method=mode, layers=layers, weights_mib_before=round(before / 2**20, 2),
                weights_mib_after=round(weight_bytes(module) / 2**20, 2))


def own_memory(module: torch.nn.Module) -> None:
    """Copy the plain tensors left (biases, norms, convolutions) out of the weight file's memory map: safetensors maps
    the whole file once, and while one tensor of it lives, every page the quantizer read stays resident."""
    with torch.no_grad():
        for m in module.modules():
            for name, p in m._parameters.items():
                if p is not None and type(p) is torch.nn.Parameter:
                    p.data = p.data.clone()
            for name, b in m._buffers.items():
                if b is not None and type(b) is torch.Tensor:
                    m._buffers[name] = b.clone()


def release_memory() -> None:
    """Hand freed heap memory back to the system (glibc keeps large freed blocks otherwise, so the float weights a
    quantizer replaced would stay resident)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes a tensor holds, through tensor subclasses (torchao's quantized weights) to their inner tensors."""
    if type(t) not in (torch.Tensor, torch.nn.Parameter) and hasattr(t, "__tensor_flatten__"):
        names, _ = t.__tensor_flatten__()
        return sum(tensor_bytes(getattr(t, n)) for n in names)
    return t.numel() * t.element_size()


def weight_bytes(module: torch.nn.Module) -> int:
    """Bytes of a module's parameters and buffers as they are held (quantized ones at their real size)."""
    seen, n = set(), 0
    for t in (*module.parameters(), *module.buffers()):
        if id(t) not in seen:
            seen.add(id(t))
            n += tensor_bytes(t)
    return n


# bytes per weight of a quantized linear layer (the weight, and its scales per row or block, in the weights' dtype)
BYTES_PER_WEIGHT = {"int8": 1.0, "fp8": 1.0, "nf4": 0.5 + 1 / 64 + 4 / NF4_BLOCK}


def estimate_quantized(folders: list[Path], mode: str, dtype_bytes: int) -> dict:
    """Denoiser weight bytes before and after `--quantize mode`, from the safetensors headers only.

    2-D `.weight` tensors are the linear layers torchao quantizes (one scale per output row for int8 and fp8);
    the rest stays at `dtype_bytes`."""
    from safetensors import safe_open

    total = linear = rows = 0
    for folder in folders:
        for f in sorted(Path(folder).glob("*.safetensors")):
            with safe_open(f, "pt") as st:
                for k in st.keys():
                    shape = st.get_slice(k).get_shape()
                    n = math.prod(shape)
                    total += n
                    if len(shape) == 2 and k.endswith(".weight") and "lora_" not in k:
                        linear += n
                        rows += shape[0]
    before = total * dtype_bytes
    per = BYTES_PER_WEIGHT[mode]
    scales = rows * dtype_bytes if mode in ("int8", "fp8") else 0
    after = (total - linear) * dtype_bytes + linear * per + scales
    return dict(parameters=total, linear_parameters=linear, before=int(before), after=int(after))


#################################################################################
#                                     GGUF                                      #
#################################################################################


def check_gguf_available() -> None:
    require(importlib.util.find_spec("gguf") is not None,
            "--transformer FILE.gguf needs the gguf package: pip install 'kinema[gguf]' (or pip install gguf)")


def read_gguf_header(path: str | Path) -> tuple[dict[str, tuple[int, ...]], dict[str, str], str | None]:
    """A GGUF file's tensor names -> logical shapes, their types, and `general.architecture` (data not read)."""
    check_gguf_available()
    from gguf import GGUFReader

    path = Path(path)
    require(path.is_file(), f"--transformer {path}: no such file")
    require(path.suffix.lower() == ".gguf", f"--transformer {path}: give a .gguf transformer file (GGUF is read as data)")
    try:
        reader = GGUFReader(str(path))
    except (ValueError, OSError, IndexError, KeyError, TypeError) as e:
        first = (str(e).strip().splitlines() or [""])[0]
        raise KinemaError(f"--transformer {path} is not a readable GGUF file ({type(e).__name__}: {first})") from None
    shapes = {t.name: tuple(int(d) for d in reversed(list(t.shape))) for t in reader.tensors}
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    arch = None
    field = reader.fields.get("general.architecture")
    if field is not None:
        try:
            arch = bytes(field.parts[field.data[0]]).decode("utf-8", "replace")
        except (IndexError, TypeError):
            arch = None
    require(shapes, f"--transformer {path} holds no tensors")
    return shapes, types, arch


def check_gguf(path, expected: dict[str, tuple[int, ...]], convert, what: str, arch: str) -> dict:
    """Refuse a GGUF that is not a transformer of this shape: its names (as stored, or converted from the
    original layout by `convert`) and shapes must be exactly the model's. Returns what the sidecar records."""
    from diffusers.quantizers.gguf.utils import SUPPORTED_GGUF_QUANT_TYPES

    shapes, types, file_arch = read_gguf_header(path)
    require(file_arch in (None, arch), f"--transformer {path} is a GGUF of {file_arch!r}, not a {what} transformer; "
                                       f"use a {arch} GGUF of this folder's transformer")
    supported = {t.name for t in SUPPORTED_GGUF_QUANT_TYPES} | {"F32", "F16"}
    odd = sorted({t for t in types.values() if t not in supported})
    require(not odd, f"--transformer {path}: diffusers cannot read GGUF tensors of type {', '.join(odd)}; use a file "
                     f"quantized as one of {', '.join(sorted(supported))}")
    names = shapes
    if not set(shapes) <= set(expected):
        try:
            names = convert({k: torch.empty(s, device="meta") for k, s in shapes.items()})
        except Exception:  # a converter that meets keys of another family fails in its own ways  # noqa: BLE001
            names = shapes
        names = {k: tuple(v.shape) for k, v in names.items()}
    missing = sorted(set(expected) - set(names))
    extra = sorted(set(names) - set(expected))
    if missing or extra:
        matched = len(set(expected) & set(names))
        raise KinemaError(f"--transformer {path} is not a {what} transformer of this folder's shape: {matched} of "
                          f"{len(expected)} weights match (missing e.g. {', '.join(missing[:2]) or 'none'}; not in "
                          f"the model e.g. {', '.join(extra[:2]) or 'none'}); use a GGUF of this model's transformer")
    bad = [k for k in expected if tuple(names[k]) != tuple(expected[k])]
    require(not bad, f"--transformer {path}: {bad[0] if bad else ''} is {names.get(bad[0]) if bad else ''}, this "
                     f"folder's transformer has {expected.get(bad[0]) if bad else ''}; use a GGUF of a transformer of "
                     "this folder's size")
    return dict(path=str(Path(path).resolve()), tensor_types=_type_counts(types))


def save_gguf(state: dict[str, torch.Tensor], path: str | Path, qtype: str = "Q8_0", arch: str = "wan") -> Path:
    """Write tensors as a GGUF file: 2-D `.weight`s whose rows fit the type's blocks as `qtype`, the rest as F32
    (F16 for qtype F16; tables such as LTX's scale_shift_table stay F32, which diffusers reads as plain tensors), as
    community transformer files are made (tests and benchmarks; no llama.cpp needed)."""
    import gguf
    import numpy as np

    require(qtype in GGUF_TYPES, f"unknown GGUF type {qtype}; choose one of {', '.join(GGUF_TYPES)}")
    kind = gguf.GGMLQuantizationType[qtype]
    block = gguf.GGML_QUANT_SIZES[kind][0]
    writer = gguf.GGUFWriter(str(path), arch)
    for name, t in state.items():
        a = t.detach().float().cpu().numpy()
        if qtype in ("F16", "BF16") and a.ndim >= 2:
            if qtype == "F16":
                writer.add_tensor(name, a.astype(np.float16))
            else:
                writer.add_tensor(name, gguf.quants.quantize(a, kind), raw_shape=a.shape, raw_dtype=kind)
        elif qtype not in ("F32", "F16", "BF16") and a.ndim == 2 and name.endswith(".weight") and a.shape[-1] % block == 0:
            data = quantize_q4_k(a) if qtype == "Q4_K" else gguf.quants.quantize(a, kind)
            writer.add_tensor(name, data, raw_shape=data.shape, raw_dtype=kind)
        else:
            writer.add_tensor(name, a)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(path)


def quantize_q4_k(a):
    """Q4_K blocks of float rows (the gguf package dequantizes Q4_K but does not write it): super-blocks of 256
    values in 8 sub-blocks of 32, each x ~ d*sc*q - dmin*m with q in 0..15 and 6-bit sub-block scales sc and mins m."""
    import numpy as np

    rows = a.reshape(-1, 256).astype(np.float32)  # (n, 256)
    sub = rows.reshape(-1, 8, 32)
    lo = np.minimum(sub.min(-1), 0)  # (n, 8): mins at most 0, stored as a positive offset
    hi = sub.max(-1)
    scale = (hi - lo) / 15  # (n, 8)
    off = -lo
    d = scale.max(-1) / 63  # (n,)
    dmin = off.max(-1) / 63
    d16, dmin16 = d.astype(np.float16), dmin.astype(np.float16)
    safe = lambda x: np.where(x == 0, 1, x)  # noqa: E731
    sc = np.clip(np.rint(scale / safe(d16.astype(np.float32))[:, None]), 0, 63).astype(np.uint8)
    m = np.clip(np.rint(off / safe(dmin16.astype(np.float32))[:, None]), 0, 63).astype(np.uint8)
    eff_s = d16.astype(np.float32)[:, None] * sc  # (n, 8)
    eff_m = dmin16.astype(np.float32)[:, None] * m
    q = np.clip(np.rint((sub + eff_m[..., None]) / safe(eff_s)[..., None]), 0, 15).astype(np.uint8)  # (n, 8, 32)
    packed = np.zeros((len(rows), 12), np.uint8)  # ggml's get_scale_min_k4 layout
    packed[:, 0:4] = (sc[:, 0:4] & 63) | ((sc[:, 4:8] >> 4) << 6)
    packed[:, 4:8] = (m[:, 0:4] & 63) | ((m[:, 4:8] >> 4) << 6)
    packed[:, 8:12] = (sc[:, 4:8] & 15) | ((m[:, 4:8] & 15) << 4)
    qs = (q[:, 0::2] | (q[:, 1::2] << 4)).reshape(len(rows), 128)  # sub-blocks 2j (low nibbles), 2j+1 (high)
    out = np.concatenate([d16.view(np.uint8).reshape(-1, 2), dmin16.view(np.uint8).reshape(-1, 2), packed, qs], axis=1)
    return out.reshape(*a.shape[:-1], a.shape[-1] // 256 * 144)


#################################################################################
#                                    Compile                                    #
#################################################################################


def check_compile(device: torch.device) -> None:
    """Refuse `--compile` where torch cannot compile, cheaply (no inductor import)."""
    require(importlib.util.find_spec("torch._inductor") is not None and hasattr(torch, "compile"),
            "--compile needs torch.compile (PyTorch 2 with its inductor); drop --compile or install PyTorch >= 2.4")
    if device.type == "cuda":
        require(importlib.util.find_spec("triton") is not None,
                "--compile on CUDA needs triton: pip install triton (it comes with PyTorch's CUDA wheels), or drop --compile")
        return
    cxx = os.environ.get("CXX") or next((c for c in ("g++", "c++", "clang++") if shutil.which(c)), None)
    require(cxx is not None and shutil.which(cxx) is not None,
            "--compile on the CPU needs a C++ compiler (torch's inductor builds kernels with it): install g++ "
            "(apt-get install g++) or set CXX, or drop --compile")


# diffusers' UNets (AnimateDiff's UNetMotionModel) list no `_repeated_blocks`: their resnets and transformer blocks
FALLBACK_BLOCKS = ("ResnetBlock2D", "BasicTransformerBlock")


def _owners(denoiser: torch.nn.Module) -> list[torch.nn.Module]:
    """The models whose repeated blocks are compiled: those that list them, else the denoiser's networks (itself or
    its children) that hold FALLBACK_BLOCKS."""
    owners = [m for m in denoiser.modules() if getattr(m, "_repeated_blocks", None)]
    if owners:
        return owners
    holds = lambda m: any(type(b).__name__ in FALLBACK_BLOCKS for b in m.modules())  # noqa: E731
    return [m for m in denoiser.children() if holds(m)] or ([denoiser] if holds(denoiser) else [])


def _block_names(owner: torch.nn.Module) -> tuple[str, ...]:
    return tuple(getattr(owner, "_repeated_blocks", None) or FALLBACK_BLOCKS)


def repeated_blocks(module: torch.nn.Module) -> list[torch.nn.Module]:
    """The blocks regional compilation compiles: every submodule whose class a model lists in `_repeated_blocks`
    (diffusers' convention; FALLBACK_BLOCKS for models that list none)."""
    names = {n for owner in _owners(module) for n in _block_names(owner)}
    return [m for m in module.modules() if type(m).__name__ in names]


COMPILE_OPTIONS: dict = {}  # torch.compile's options for every block (tests run backend="eager": no C++ build)
RECOMPILE_LIMIT = 64  # graphs per block's code: a UNet's blocks run at one shape per level, and clip sizes add more


def compile_denoiser(denoiser: torch.nn.Module) -> dict:
    """Compile each repeated block of the denoiser on its own (regional compilation); the warm-up is watched."""
    import torch._dynamo

    owners = _owners(denoiser)
    blocks = repeated_blocks(denoiser)
    require(blocks, "--compile: this denoiser lists no repeated blocks to compile")
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, name, max(getattr(config, name), RECOMPILE_LIMIT))
    for owner in owners:
        if hasattr(owner, "compile_repeated_blocks") and getattr(owner, "_repeated_blocks", None):
            owner.compile_repeated_blocks(**COMPILE_OPTIONS)  # diffusers' models: their own regional compilation
        else:  # kinema's UNet, diffusers' UNets: the same loop
            for m in owner.modules():
                if type(m).__name__ in _block_names(owner):
                    m.compile(**COMPILE_OPTIONS)
    watch = CompileWatch()
    for owner in owners:
        owner.register_forward_pre_hook(watch.before, with_kwargs=True)
        owner.register_forward_hook(watch.after, with_kwargs=True)
    return dict(watch=watch, blocks=len(blocks), kinds=sorted({type(b).__name__ for b in blocks}))


def _signature(value, depth: int = 0):
    if isinstance(value, torch.Tensor):
        return (tuple(value.shape), str(value.dtype), value.device.type)
    if depth < 2 and isinstance(value, (list, tuple)):
        return tuple(_signature(v, depth + 1) for v in value)
    if depth < 2 and isinstance(value, dict):
        return tuple((k, _signature(v, depth + 1)) for k, v in sorted(value.items()))
    if depth < 2 and hasattr(value, "__dataclass_fields__"):
        return tuple(_signature(getattr(value, f), depth + 1) for f in value.__dataclass_fields__)
    return type(value).__name__


class CompileWatch:
    """The warm-up of compiled blocks: a call at input shapes not seen before compiles (or recompiles) them.

    Forward hooks on the model that owns the blocks (outside the compiled regions) time such calls and show a
    progress bar while they run; `calls` and `seconds` count them, per model, for the sidecar."""

    def __init__(self):
        self.seen: set = set()
        self.calls = 0
        self.seconds = 0.0
        self._local = threading.local()
        self._lock = threading.Lock()

    def before(self, module, args, kwargs):
        key = (id(module), _signature(args), _signature(kwargs))
        with self._lock:
            new = key not in self.seen
            self.seen.add(key)
        if new:
            from tqdm.auto import tqdm

            bar = tqdm(total=1, desc="compile warm-up", leave=False, disable=not SHOW_PROGRESS.get(),
                       bar_format="{desc}: {elapsed}")
            self._local.start = (time.perf_counter(), bar)
        return None

    def after(self, module, args, kwargs, output):
        start = getattr(self._local, "start", None)
        if start is not None:
            t0, bar = start
            bar.update(1)
            bar.close()
            self._local.start = None
            with self._lock:
                self.calls += 1
                self.seconds += time.perf_counter() - t0
        return None

    def snapshot(self) -> tuple[int, float]:
        with self._lock:
            return self.calls, self.seconds


#################################################################################
#                                   Attention                                   #
#################################################################################


def load_transformer(cls, folder: Path, dtype: torch.dtype, attention: str, gguf: str | Path | None = None):
    """A diffusers transformer from its folder, or from a GGUF file with the folder's config (diffusers' GGUF support:
    the weights stay quantized, each layer dequantizes its own in `dtype` as it runs); its attention `--attention`."""
    if gguf is None:
        model = cls.from_pretrained(folder, torch_dtype=dtype, local_files_only=True, use_safetensors=True)
    else:
        from diffusers import GGUFQuantizationConfig

        model = cls.from_single_file(str(gguf), quantization_config=GGUFQuantizationConfig(compute_dtype=dtype),
                                     config=str(folder), local_files_only=True, torch_dtype=dtype)
    set_dispatch_attention(model, attention)
    return model


def set_dispatch_attention(model: torch.nn.Module, name: str) -> None:
    """Point every attention of a diffusers model at the dispatcher backend of `--attention name` (sdpa -> native);
    sdpa too, as the dispatcher's default is the process-wide backend another model's load may have set."""
    model.set_attention_backend({"sdpa": "native"}.get(name, name))


def check_dispatch_attention(name: str, device: torch.device) -> str:
    """A diffusers dispatcher backend for `--attention NAME` (sdpa -> native), usable here, before loading."""
    backend = {"sdpa": "native"}.get(name, name)
    require(backend in DIFFUSERS_ATTENTION, f"unknown --attention {name!r} for this model; choose one of sdpa, "
                                            f"{', '.join(DIFFUSERS_ATTENTION)}")
    require(device.type == "cuda" or backend in CPU_ATTENTION,
            f"--attention {name} is a CUDA kernel; on the CPU use sdpa (native), _native_math or flex")
    from diffusers.models.attention_dispatch import AttentionBackendName, _check_attention_backend_requirements

    try:
        _check_attention_backend_requirements(AttentionBackendName(backend))
    except (RuntimeError, ImportError, ValueError) as e:
        first = (str(e).strip().splitlines() or [""])[0]
        raise KinemaError(f"--attention {name}: {first}") from None
    return backend


#################################################################################
#                         One load's options, checked                           #
#################################################################################


def check_runtime(info, family, device: torch.device, attention: str, quantize=None, compile: bool = False,
                  transformer=None) -> tuple[str, bool, str | None]:
    """`--attention`, `--quantize`, `--compile` and `--transformer` for this model and device, before any weights
    load: (quantize, compile, transformer path) resolved; each misfit a one-line error naming the fix."""
    from .attention import xformers_available

    backends = family.attention_backends(info)
    require(attention in backends, f"--attention {attention} is not available for {info.name} ({info.path}); "
                                   f"choose one of {', '.join(backends)}")
    if "native" in backends:  # a transformer family: diffusers' dispatcher runs every backend, xformers too
        if attention != "sdpa":
            check_dispatch_attention(attention, device)
    else:  # kinema's own attention function
        require(attention != "xformers" or xformers_available(),
                "--attention xformers needs the xformers package: pip install 'kinema[xformers]', or use --attention sdpa")
    quantize = check_quantize(quantize, device)
    require(isinstance(compile, bool), f"--compile is on or off, got {compile!r}")
    if compile:
        check_compile(device)
    if transformer is not None:
        require(quantize == "none", "a GGUF transformer is quantized already; drop --quantize (it applies to the "
                                    "folder's own weights)")
        family.check_transformer_file(info, transformer)
        transformer = str(Path(transformer).resolve())
    return quantize, bool(compile), transformer


def apply(model, mode: str, compiled: bool, transformer: str | None) -> dict:
    """Quantize (`mode`) and compile a loaded model's denoiser (LoRAs already on it); what the sidecar records."""
    record = {}
    if transformer is not None:
        record["transformer"] = check_gguf_record(transformer)
    if mode != "none":
        record["quantize"] = quantize(model.denoiser, mode)
    if compiled:
        record["compile"] = compile_denoiser(model.denoiser)
    return record


def check_gguf_record(path: str) -> dict:
    """What the sidecar records of a GGUF transformer: its path and how many tensors of each type it holds."""
    _, types, _ = read_gguf_header(path)
    return dict(path=path, tensor_types=_type_counts(types))


def _type_counts(types: dict[str, str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in types.values():
        counts[t] = counts.get(t, 0) + 1
    return dict(sorted(counts.items()))


def sidecar(runtime: dict, before: tuple[int, float] | None = None) -> dict:
    """The sidecar's entries of a model's runtime (`apply`'s record); the compile warm-up of this run only."""
    out = {k: dict(v) for k, v in runtime.items() if k != "compile"}
    if "compile" in runtime:
        c = runtime["compile"]
        calls, seconds = c["watch"].snapshot()
        calls0, seconds0 = before or (0, 0.0)
        out["compile"] = dict(mode="regional", blocks=c["blocks"], kinds=c["kinds"], warmup_calls=calls - calls0,
                              warmup_s=round(seconds - seconds0, 3))
    return out


def weight_folders(info) -> list[Path]:
    """The denoiser's weight folders of a model folder (kinema: denoiser/; diffusers: transformer/, unet/)."""
    return [Path(info.path) / n for n in ("denoiser", "transformer", "transformer_2", "unet") if (Path(info.path) / n).is_dir()]


def info_lines(info, mode: str, dtype: str = "float32") -> tuple[dict, list[str]]:
    """`kinema info --quantize MODE`: the denoiser's weights before and after, from the headers."""
    if mode in (None, "none"):
        return {}, []
    require(mode in QUANTIZE, f"unknown --quantize {mode!r}; choose one of {', '.join(QUANTIZE)}")
    nbytes = {"float32": 4, "bfloat16": 2, "float16": 2}.get(dtype, 4)
    est = estimate_quantized(weight_folders(info), mode, nbytes)
    gib = lambda b: f"{b / 2**30:.2f} GiB" if b >= 2**30 else f"{b / 2**20:.1f} MiB"  # noqa: E731
    report = dict(method=mode, dtype=dtype, denoiser_weights_before=gib(est["before"]),
                  denoiser_weights_after=gib(est["after"]), linear_parameters=est["linear_parameters"],
                  parameters=est["parameters"])
    line = (f"quantize  --quantize {mode}: denoiser weights {gib(est['before'])} -> ~{gib(est['after'])} in {dtype} "
            f"({est['linear_parameters'] / max(1, est['parameters']):.0%} of its {est['parameters'] / 1e6:.1f}M "
            "parameters are in linear layers, which it quantizes)")
    return report, [line]
