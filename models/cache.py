"""Step caches: a denoiser call reuses what an earlier call of the same clip computed, where its input barely moved.

    kinema generate "a red circle moving right on a blue background" --cache first-block -o clip.mp4
    kinema generate "…" --cache first-block:0.2 -o clip.mp4     # reuse more (faster, further from the uncached clip)
    kinema generate "…" --cache taylorseer:2 -o clip.mp4        # one full pass in 2, the others extrapolated
    kinema generate "a cat" --model Wan2.1-T2V-1.3B-Diffusers --cache fastercache -o cat.mp4
    kinema.generate("…", cache="first-block:0.1")

Methods (`METHODS`; which ones a model takes: `ModelFamily.cache_methods`):

- `first-block[:THRESHOLD]` (FirstBlockCache, after TeaCache): every call runs the network's first block (kinema's
  UNet: its first encoder level); when that block's output changed by less than THRESHOLD in relative L1
  (mean |now - then| / mean |then|, against the last call that ran in full) the rest of the network does not run and
  the residual it added then (its output before the head less the first block's) is added to this call's first
  block output. THRESHOLD in (0, 1], default 0.1 (the default model at 25 steps: consecutive steps move its first
  level by 0.05-0.1, so 0.05 reuses nothing); a tiny one runs every call in full, so the clip is the uncached one.
- `taylorseer[:INTERVAL]` (TaylorSeer, first order): the first two calls run in full, then one call in INTERVAL; the
  calls between extrapolate the residual linearly from the last two full ones. INTERVAL >= 1 (1: every call in full),
  default 2.
- `magcache[:THRESHOLD]`, `fastercache`, `pab`: diffusers' MagCache, FasterCache and Pyramid Attention Broadcast, for
  transformer families (Wan). MagCache skips by the checkpoint's magnitude ratios: the first clip with it on runs every
  call in full and records them (in ~/.cache/kinema/magcache.json, keyed by the weights' folder and files), later
  clips skip by them.

Transformer families run the first two through diffusers' hooks too (`FirstBlockCacheConfig`,
`TaylorSeerCacheConfig` in its lite mode: the blocks skipped, the output projection extrapolated).

Per trajectory, never on the network: a `StepCache` is made for a clip by its driver (`pipelines.common.clip_inputs`)
and `fresh()` for every guided predictor (`pipelines.loop.guided`): the clip, each group of context windows, each
continuation window and each of FlowEdit's predictors reuses only its own features. It reaches the denoiser in
`DenoiserInputs.cache` and holds all the state. kinema's UNet asks it after its first level (`skip`, `reuse`,
`store`); a diffusers transformer gets the method's hooks registered for one call and removed after it
(`transformer_call`), their state swapped in from the StepCache and back. Classifier-free guidance's cond and
uncond are one batched call, so they share one entry.
"""

from __future__ import annotations

import json
import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from kinema.errors import KinemaError, require

METHODS = ("none", "first-block", "taylorseer", "magcache", "fastercache", "pab")
OWN_METHODS = ("none", "first-block", "taylorseer")  # what `StepCache.skip` implements for networks of kinema's own
SETTINGS = {  # method -> (what its setting is, its default, its type)
    "first-block": ("THRESHOLD", 0.1, float),
    "taylorseer": ("INTERVAL", 2, int),
    "magcache": ("THRESHOLD", 0.06, float),
}

#################################################################################
#                                   The option                                  #
#################################################################################


@dataclass(frozen=True)
class CacheSpec:
    """A step cache as `--cache` names it: the method and its setting (a threshold, an interval, or None)."""

    method: str = "none"
    value: float | int | None = None

    def __str__(self) -> str:
        return self.method if self.value is None else f"{self.method}:{self.value:g}"


def parse_cache(text) -> CacheSpec:
    """'first-block:0.1' -> CacheSpec; an unknown method or a setting out of range is a one-line KinemaError."""
    require(isinstance(text, (str, CacheSpec)), f"--cache must be text such as first-block:0.1 (got {type(text).__name__})")
    method, colon, raw = str(text).strip().partition(":")
    require(method in METHODS, f"unknown --cache method {method!r}; use one of {', '.join(METHODS)} "
                               "(e.g. first-block:0.1, taylorseer:2)")
    if method not in SETTINGS:
        require(not colon, f"--cache {method} takes no setting; drop ':{raw}'")
        return CacheSpec(method)
    name, default, kind = SETTINGS[method]
    if not colon:
        return CacheSpec(method, default)
    try:
        value = kind(raw)
    except ValueError:
        value = None
    if kind is int:
        require(value is not None and value >= 1, f"--cache {method}:{name} must be a whole number >= 1 (one full "
                                                  f"pass every {name} calls; 1 runs every call in full), got {raw!r}")
    else:
        require(value is not None and math.isfinite(value) and 0 < value <= 1,
                f"--cache {method}:{name} must be a number in (0, 1] (the relative change below which a call reuses "
                f"the last one; default {default}), got {raw!r}")
    return CacheSpec(method, value)


def check_cache(text, supported: tuple[str, ...], model: str) -> str:
    """`text` normalised ('first-block' -> 'first-block:0.1'), or an error naming the methods `model` supports."""
    spec = parse_cache(text)
    require(spec.method in supported,
            f"--cache {spec.method} is not available for {model}; it supports: {', '.join(supported)}")
    return str(spec)


def relative_l1(now: torch.Tensor, then: torch.Tensor) -> float:
    """mean |now - then| / mean |then| (diffusers' FirstBlockCache, TeaCache)."""
    return float((now.float() - then.float()).abs().mean() / then.float().abs().mean().clamp_min(1e-12))


#################################################################################
#                             The cache of one trajectory                       #
#################################################################################


class StepCache:
    """The step cache of one denoising trajectory: what its method keeps between calls, and how many it served."""

    def __init__(self, spec: CacheSpec | str, steps: int | None = None, watch=None, paired: bool = False,
                 shared: dict | None = None):
        self.spec = spec if isinstance(spec, CacheSpec) else parse_cache(spec)
        self.steps = steps  # the clip's steps (MagCache spreads its ratios over them)
        self.watch = watch  # the clip's `loop.Stopwatch`: counts the calls served from the cache
        self.paired = paired  # calls batch (cond, uncond) halves: classifier-free guidance
        self.calls = 0
        self.slots: dict = {}  # the method's state: kinema's UNet's features, or diffusers' hook states
        self.shared = {} if shared is None else shared  # what the clip's trajectories share (MagCache's ratios)
        self._first: torch.Tensor | None = None

    def fresh(self, watch=None, paired: bool = False) -> "StepCache":
        """The same cache, empty: what one guided predictor (one trajectory) uses."""
        return StepCache(self.spec, self.steps, watch, paired, self.shared)

    def _served(self) -> None:
        if self.watch is not None:
            self.watch.cached += 1

    # -- kinema's own networks: asked after the first block ---------------------------------

    def skip(self, first: torch.Tensor) -> bool:
        """Whether this call can leave out the network after its first block, whose output is `first`."""
        require(self.spec.method in OWN_METHODS, f"--cache {self.spec.method} is for transformer families (diffusers' "
                                                 f"hooks); this network takes {', '.join(OWN_METHODS)}")
        n, s = self.calls, self.slots
        self.calls += 1
        if self.spec.method == "none":
            return False
        self._first = first
        if self.spec.method == "first-block":
            hit = "residual" in s and relative_l1(first, s["first"]) < self.spec.value
        else:  # taylorseer: two full calls, then one every `value` calls
            full = s.get("full", [])
            hit = len(full) >= 2 and n - full[-1][0] < self.spec.value
        if hit:
            self._served()
        return hit

    def reuse(self, first: torch.Tensor) -> torch.Tensor:
        """The network's output before its head, from this call's first block and what the full calls left."""
        s = self.slots
        if self.spec.method == "first-block":
            return first + s["residual"]
        (n0, r0), (n1, r1) = s["full"]  # first order: the residual's slope over the last two full calls
        return first + r1 + (r1 - r0) * ((self.calls - 1 - n1) / (n1 - n0))

    def store(self, deep: torch.Tensor) -> None:
        """After a full call: keep its residual (`deep`, the output before the head, less the first block's)."""
        first, self._first = self._first, None
        if first is None:  # no method (none)
            return
        residual = deep - first
        if self.spec.method == "first-block":
            self.slots.update(first=first, residual=residual)
        else:
            self.slots["full"] = [*self.slots.get("full", [])[-1:], (self.calls - 1, residual)]

    # -- transformer families: diffusers' hooks --------------------------------------------

    def diffusers_config(self, transformer, timestep: float, paired: bool = False):
        """The diffusers cache config of this cache's method for one call of `transformer` at `timestep` (`paired`:
        its batch is (uncond, cond) halves)."""
        from diffusers.hooks import (FasterCacheConfig, FirstBlockCacheConfig, MagCacheConfig,
                                     PyramidAttentionBroadcastConfig, TaylorSeerCacheConfig)

        m, v = self.spec.method, self.spec.value
        now = lambda: timestep  # noqa: E731  (the hooks' current_timestep_callback)
        if m == "first-block":
            return FirstBlockCacheConfig(threshold=v)
        if m == "taylorseer":  # lite: the blocks skipped, the output projection extrapolated (the residual, as ours)
            return TaylorSeerCacheConfig(cache_interval=v, disable_cache_before_step=2, max_order=1,
                                         taylor_factors_dtype=torch.float32, use_lite_mode=True)
        if m == "magcache":
            key = weights_key(transformer)
            if key not in self.shared:  # read once per clip: a clip that calibrates does so in every trajectory
                self.shared[key] = magcache_ratios(key)
            ratios = self.shared[key]
            if ratios is None:  # this checkpoint's first clip: every call in full, the ratios recorded
                return MagCacheConfig(calibrate=True, num_inference_steps=10**9)
            return MagCacheConfig(threshold=v, mag_ratios=ratios, num_inference_steps=self.steps or len(ratios))
        if m == "fastercache":  # the settings of diffusers' FasterCache example (CogVideoX), for video transformers
            return FasterCacheConfig(
                spatial_attention_block_skip_range=2, spatial_attention_timestep_skip_range=(-1, 681),
                current_timestep_callback=now, attention_weight_callback=lambda _: 0.3,
                low_frequency_weight_update_timestep_range=(99, 901),
                high_frequency_weight_update_timestep_range=(-1, 301), unconditional_batch_skip_range=5,
                unconditional_batch_timestep_skip_range=(-1, 781), tensor_format="BCFHW",
                is_guidance_distilled=not paired)
        if m == "pab":
            return PyramidAttentionBroadcastConfig(spatial_attention_block_skip_range=2,
                                                   spatial_attention_timestep_skip_range=(100, 800),
                                                   current_timestep_callback=now)
        raise KinemaError(f"--cache {m} has no diffusers hook")


#################################################################################
#                           diffusers' hooks, per call                          #
#################################################################################

_HOOKED = threading.Lock()  # the hooks sit on a transformer for one call at a time


def transformer_call(transformer, cache: StepCache, now: float, **kwargs):
    """`transformer(**kwargs)` at timestep `now` with the cache's diffusers hooks registered for this call only.

    The hooks' state comes from the StepCache and goes back to it (diffusers keys it by a cache context; here every
    trajectory has its own), so the transformer holds none between calls and interleaved clips never share it.
    diffusers' FasterCache takes a guided batch as (uncond, cond); kinema's is (cond, uncond): swapped around the call.
    """
    b = kwargs["hidden_states"].shape[0]
    swap = cache.spec.method == "fastercache" and cache.paired and b % 2 == 0  # (a CFG-parallel rank has one half)
    if swap:
        kwargs = {k: _halves_swapped(x, b) for k, x in kwargs.items()}
    states = cache.slots.setdefault(id(transformer), {})  # per expert (Wan 2.2's two transformers)
    with _HOOKED:
        transformer.enable_cache(cache.diffusers_config(transformer, now, paired=swap))
        try:
            hooks = _stateful_hooks(transformer)
            _swap_in(hooks, states)
            with transformer.cache_context("kinema"):
                out = transformer(**kwargs)
            _swap_out(hooks, states)
        finally:
            transformer.disable_cache()
    cache.calls += 1
    if any(_skipped(s) for s in _states(states)):
        cache._served()
    if cache.spec.method == "magcache":
        _record_ratios(transformer, states)
    return (_halves_swapped(out[0], b), *out[1:]) if swap else out


def _halves_swapped(x, b: int):
    """A batch's two halves exchanged (tensors of batch `b` only)."""
    if not (torch.is_tensor(x) and x.ndim and x.shape[0] == b and b % 2 == 0):
        return x
    first, second = x.chunk(2)
    return torch.cat([second, first])


def _stateful_hooks(transformer) -> list[tuple[str, object]]:
    """(where, hook) for every hook registered on the transformer and its modules, in a fixed order."""
    out = []
    for name, module in transformer.named_modules():
        registry = getattr(module, "_diffusers_hook", None)
        for hook_name in getattr(registry, "_hook_order", ()):
            out.append((f"{name}/{hook_name}", registry.hooks[hook_name]))
    return out


def _swap_in(hooks, states: dict) -> None:
    """Give each hook this trajectory's state: a StateManager's states, or a hook's own `state`."""
    from diffusers.hooks.hooks import StateManager

    seen = set()
    for where, hook in hooks:
        for attr, value in list(vars(hook).items()):
            if isinstance(value, StateManager) and id(value) not in seen:  # one manager may serve several hooks
                seen.add(id(value))
                value._state_cache = states.setdefault(f"{where}/{attr}", {})
            elif attr == "state" and hasattr(value, "reset") and where in states:
                hook.state = states[where]


def _swap_out(hooks, states: dict) -> None:
    for where, hook in hooks:
        if hasattr(getattr(hook, "state", None), "reset"):
            states[where] = hook.state


def _skipped(state) -> bool:
    """Whether a hook state says this call left its blocks out: FirstBlockCache, MagCache, TaylorSeer (a prediction)."""
    if getattr(state, "should_compute", True) is False:
        return True
    step = getattr(state, "current_step", None)
    return step is not None and not getattr(state, "is_inactive", True) and state.last_update_step != step


def _states(states: dict):
    """Every state object kept: those of StateManagers (dicts of context -> state) and hooks' own."""
    for value in states.values():
        yield from value.values() if isinstance(value, dict) else (value,)


#################################################################################
#                               MagCache's ratios                               #
#################################################################################


def _ratios_file() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kinema" / "magcache.json"


def weights_key(transformer) -> str:
    """Which weights a transformer has: its folder and its safetensors files' sizes and times."""
    path = Path(str(getattr(transformer.config, "_name_or_path", "") or "."))
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else []
    stamp = ",".join(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)
    return f"{path.resolve()}|{stamp}"


def magcache_ratios(key: str) -> list[float] | None:
    """The magnitude ratios recorded for these weights, or None."""
    try:
        known = json.loads(_ratios_file().read_text())
        ratios = known[key]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    ok = isinstance(ratios, list) and len(ratios) >= 2 and all(isinstance(r, (int, float)) for r in ratios)
    return [float(r) for r in ratios] if ok else None


def _record_ratios(transformer, states: dict) -> None:
    """While MagCache calibrates (every call in full), write the ratios measured so far for these weights."""
    ratios = next((list(s.calibration_ratios) for s in _states(states) if getattr(s, "calibration_ratios", None)), None)
    if not ratios or len(ratios) < 2:
        return
    from kinema.video_io import write_json_atomic

    file = _ratios_file()
    try:
        known = json.loads(file.read_text())
    except (OSError, ValueError):
        known = {}
    known = known if isinstance(known, dict) else {}
    try:  # other checkpoints' entries kept; where it cannot be written the next clip calibrates again
        file.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(file, {**known, weights_key(transformer): [round(r, 5) for r in ratios]})
    except (OSError, KinemaError):
        pass
