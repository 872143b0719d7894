"""Pure helpers for long clips: window plans and weights, fusion, FreeNoise noise, continuation, prompt schedules.

Two ways to go past the denoiser's native length, both on latent frames `(B, C, F, h, w)`:

- Context windows (FreeNoise / AnimateDiff context, diffusers `free_noise_utils`): every step, the denoiser
  runs on windows `window_plan(F, context_length, context_stride)`, and `fuse` averages the per-window
  predictions per frame with `window_weights` before the one scheduler step. `freenoise_noise` makes the
  initial noise repeat (shuffled) so overlapping windows start from agreeing noise.
- Continuation: `continuation_plan(F, window, overlap, known)` lists windows generated one after another
  (after `known` given frames, when a clip is extended), each conditioned on the last frames of what is
  already there (a frame condition on its first `known` frames); `adain` pins each new window's latent
  statistics to the first window's against drift.

`parse_prompt_schedule` / `schedule_weights` let the prompt change along the clip with a cross-fade.
"""

from __future__ import annotations

import re
from typing import Callable, Sequence

import torch

from kinema.errors import require

WEIGHT_KINDS = ("pyramid", "flat")

Span = tuple[int, int]


#################################################################################
#                              Context windows                                  #
#################################################################################

def _check_context(context_length: int, context_stride: int) -> None:
    """Validate the context window settings (one-line KinemaErrors naming the flag)."""
    require(context_length >= 1, f"--context-length must be >= 1, got {context_length}")
    require(context_stride >= 1, f"--context-stride must be >= 1, got {context_stride}")
    require(context_stride <= context_length,
            f"--context-stride must be <= --context-length (got stride {context_stride} > length "
            f"{context_length}); lower --context-stride so consecutive windows overlap or touch")


def window_plan(num_frames: int, context_length: int, context_stride: int) -> list[Span]:
    """(start, end) windows of `context_length` every `context_stride`, the last one aligned to the end."""
    _check_context(context_length, context_stride)
    require(num_frames >= 1, f"the clip needs at least 1 latent frame, got {num_frames}")
    if num_frames <= context_length:
        return [(0, num_frames)]
    plan = [(s, s + context_length) for s in range(0, num_frames - context_length + 1, context_stride)]
    if plan[-1][1] != num_frames:  # e.g. F=25, L=16, S=4: (0,16) (4,20) (8,24) + (9,25)
        plan.append((num_frames - context_length, num_frames))
    return plan


def window_weights(length: int, kind: str = "pyramid") -> torch.Tensor:
    """Positive per-frame weights of one window: pyramid [1, 2, .., 2, 1] (diffusers FreeNoise) or flat ones."""
    require(kind in WEIGHT_KINDS, f"unknown context weighting {kind!r}; use one of {', '.join(WEIGHT_KINDS)}")
    if length < 1:
        raise ValueError(f"window length must be >= 1, got {length}")
    if kind == "flat":
        return torch.ones(length)
    idx = torch.arange(length)
    return (torch.minimum(idx, length - 1 - idx) + 1).float()  # 4 -> [1,2,2,1], 5 -> [1,2,3,2,1]


def _window_weight(weights: str | torch.Tensor, length: int) -> torch.Tensor:
    """The weight vector for a window of `length` frames, from a kind name or a given tensor."""
    if isinstance(weights, str):
        return window_weights(length, weights)
    if weights.shape != (length,):
        raise ValueError(f"weights of shape {tuple(weights.shape)} do not fit a window of {length} frames")
    return weights.float()


def fuse_batched(
    predict_windows: Callable[[torch.Tensor, list[Span]], torch.Tensor],
    latents: torch.Tensor,
    plan: Sequence[Span],
    weights: str | torch.Tensor = "pyramid",
    batch_windows: int = 1,
    shifts: Sequence[tuple[int, int]] | None = None,
) -> torch.Tensor:
    """Weighted per-frame average of window predictions, up to `batch_windows` equal-length windows per call.

    `predict_windows(x, spans)` gets the `n = len(spans)` windows stacked sample-major on the batch,
    `x[b * n + k] = latents[b, :, s_k:e_k]` (so text embeddings line up with `TextEmbeds.repeat(n)`), and
    returns a prediction of the same shape. Frames covered by one window get its prediction exactly.
    `shifts[k] = (dy, dx)`, when given, rolls window k's latents by (-dy, -dx) latent pixels (on the torus)
    before it is predicted and its prediction back by (dy, dx): the window sees the clip in coordinates
    that move with it (`long_video.follow_shifts`).
    """
    if batch_windows < 1:
        raise ValueError(f"batch_windows must be >= 1, got {batch_windows}")
    B, C, F = latents.shape[:3]
    w = [_window_weight(weights, e - s).to(latents.device) for s, e in plan]
    total = torch.zeros(F, device=latents.device)
    for (s, e), wk in zip(plan, w):
        total[s:e] += wk
    if not bool((total > 0).all()):
        raise ValueError("the window plan leaves frames uncovered")
    out = torch.zeros(latents.shape, device=latents.device, dtype=torch.float32)
    for group in _groups(list(range(len(plan))), plan, batch_windows):
        spans = [plan[k] for k in group]
        x = torch.stack([_roll(latents[:, :, s:e], shifts, k, -1) for (s, e), k in zip(spans, group)], 1)
        pred = predict_windows(x.flatten(0, 1), spans).unflatten(0, (B, len(spans)))  # (B, n, C, L, h, w)
        for j, k in enumerate(group):
            s, e = plan[k]
            pred_k = _roll(pred[:, j], shifts, k, 1)
            share = (w[k] / total[s:e]).view(1, 1, -1, 1, 1)  # (1, 1, L, 1, 1); exactly 1 where k is alone
            out[:, :, s:e] += pred_k.float() * share
    return out.to(latents.dtype)


def _roll(x: torch.Tensor, shifts: Sequence[tuple[int, int]] | None, k: int, sign: int) -> torch.Tensor:
    """x (.., h, w) rolled by sign * shifts[k] over its last two dims; x itself when there is no shift."""
    if shifts is None or shifts[k] == (0, 0):
        return x
    dy, dx = shifts[k]
    return torch.roll(x, (sign * dy, sign * dx), dims=(-2, -1))


def _groups(indices: list[int], plan: Sequence[Span], size: int) -> list[list[int]]:
    """Consecutive runs of at most `size` windows of equal length (only those can share a batch)."""
    groups: list[list[int]] = []
    for k in indices:
        length = plan[k][1] - plan[k][0]
        last = groups[-1] if groups else None
        if last and len(last) < size and plan[last[0]][1] - plan[last[0]][0] == length:
            last.append(k)
        else:
            groups.append([k])
    return groups


def fuse(
    predict_window: Callable[[torch.Tensor, int, int], torch.Tensor],
    latents: torch.Tensor,
    plan: Sequence[Span],
    weights: str | torch.Tensor = "pyramid",
) -> torch.Tensor:
    """Weighted per-frame average over windows of `predict_window(latents[:, :, s:e], s, e)`, (B, C, F, h, w)."""
    return fuse_batched(lambda x, spans: predict_window(x, *spans[0]), latents, plan, weights, 1)


def peak_window_frames(plan: Sequence[tuple[int, ...]]) -> int:
    """Longest window of a plan (window or continuation): what bounds the denoiser's memory."""
    return max(p[1] - p[0] for p in plan)


def plan_cost(plan: Sequence[tuple[int, ...]]) -> int:
    """Latent frames the denoiser processes per step (context plan) or in total (continuation plan)."""
    return sum(p[1] - p[0] for p in plan)


#################################################################################
#                                 FreeNoise                                     #
#################################################################################

def freenoise_noise(
    shape: Sequence[int],
    context_length: int,
    context_stride: int,
    generator: torch.Generator | None = None,
    shuffle: bool = True,
    dtype: torch.dtype = torch.float32,
    path: torch.Tensor | None = None,
) -> torch.Tensor:
    """Initial noise (B, C, F, h, w) rescheduled as FreeNoise: later frames reuse shuffled earlier noise.

    Exactly (diffusers `_prepare_latents_free_noise`, noise_type "shuffle_context"):
    frames [0, L) are `torch.randn((B, C, min(F, L), h, w), generator=generator)` (L = context_length);
    then for i = L, L + S, L + 2S, .. < F (S = context_stride), in that order, frames [i, i + S) are
    frames [i - L, i - L + S) permuted by `torch.randperm(S, generator=generator)` (identity when
    `shuffle=False`, which makes the noise periodic with period L); a last block shorter than S takes the
    first F - i entries of the permuted sources. So every frame's noise is one of the first L frames'.
    The noise is on the generator's device (CPU when no generator).

    `path` (F, 2), each frame's (dy, dx) displacement in latent pixels (windows that follow the clip's
    motion, `long_video.follow_path`): a frame whose noise comes from frame o < L is that noise rolled by
    round(path[t] - path[o]), so a window that sees the latents rolled back by the motion sees the noise
    its predecessors saw. The same random draws in the same order: a zero path gives the noise above.
    """
    _check_context(context_length, context_stride)
    B, C, F, h, w = shape
    device = generator.device if generator is not None else torch.device("cpu")
    L, S = context_length, context_stride
    noise = torch.empty((B, C, F, h, w), device=device)
    noise[:, :, : min(F, L)] = torch.randn((B, C, min(F, L), h, w), generator=generator, device=device)
    origin = torch.arange(F, device=device)  # the frame < L whose draw each frame's noise is
    for i in range(L, F, S):
        src = torch.arange(i - L, i - L + S, device=device)
        if shuffle:
            src = src[torch.randperm(S, generator=generator, device=device)]
        n = min(S, F - i)
        noise[:, :, i:i + n] = noise[:, :, src[:n]]
        origin[i:i + n] = origin[src[:n]]
    if path is not None:
        for t in range(L, F):
            dy, dx = (int(round(float(v))) for v in path[t] - path[int(origin[t])])
            noise[:, :, t] = torch.roll(noise[:, :, t], (dy, dx), dims=(-2, -1))
    return noise.to(dtype)


#################################################################################
#                                Continuation                                   #
#################################################################################

def continuation_plan(num_frames: int, window: int, overlap: int, known: int = 0) -> list[tuple[int, int, int]]:
    """(start, end, known) windows generated one after another, each knowing its first `known` frames.

    The first `known` frames are given (a clip being extended; 0: none, the first window is (0, window,
    0)). Each window starts `overlap` frames before what is made so far and knows those frames, except
    the last, which is aligned to end at `num_frames` (so all windows keep the full length the denoiser
    was trained on) and knows the more frames it overlaps, between overlap and window - 1. When
    num_frames <= window there is a single window (0, num_frames, known).
    """
    require(window >= 1, f"the continuation window must be >= 1 latent frame, got {window}")
    require(1 <= overlap < window,
            f"the continuation overlap must be between 1 and window - 1 = {window - 1}, got {overlap}; "
            "pick an overlap smaller than the window")
    require(num_frames >= 1, f"the clip needs at least 1 latent frame, got {num_frames}")
    require(0 <= known < num_frames, f"the clip to extend has {known} latent frames; ask for more than that")
    plan, end = [], known
    while end < num_frames:
        start = max(0, min(end - overlap, num_frames - window))
        stop = min(start + window, num_frames)
        plan.append((start, stop, end - start))
        end = stop
    return plan


def adain(x: torch.Tensor, ref: torch.Tensor, dims: Sequence[int] = (2, 3, 4), eps: float = 1e-5) -> torch.Tensor:
    """Match x's per-(sample, channel) mean and std over `dims` to ref's (AdaIN); ref may differ in frames."""
    xf, rf = x.float(), ref.float()
    mu_x, sd_x = xf.mean(dims, keepdim=True), xf.std(dims, keepdim=True, unbiased=False)  # (B, C, 1, 1, 1)
    mu_r, sd_r = rf.mean(dims, keepdim=True), rf.std(dims, keepdim=True, unbiased=False)  # (B|1, C, 1, 1, 1)
    return ((xf - mu_x) / (sd_x + eps) * sd_r + mu_r).to(x.dtype)


#################################################################################
#                              Prompt schedules                                 #
#################################################################################

_KEY = re.compile(r"^\s*(-?\d+)\s*:(.*)$", re.S)
_SCHEDULE_HINT = 'write it as "0:first prompt|48:second prompt"'


def parse_prompt_schedule(text: str, num_frames: int) -> list[tuple[int, str]]:
    """Parse "0:a red circle|96:a red circle moving left" into [(frame, prompt)], checked, in frame order."""
    schedule: list[tuple[int, str]] = []
    for part in text.split("|"):
        m = _KEY.match(part)
        require(m is not None, f"prompt schedule entry {part.strip()!r} is not <frame>:<prompt>; {_SCHEDULE_HINT}")
        frame, prompt = int(m.group(1)), m.group(2).strip()
        require(prompt != "", f"prompt schedule entry at frame {frame} has an empty prompt; {_SCHEDULE_HINT}")
        require(0 <= frame < num_frames,
                f"prompt schedule key {frame} is outside the clip's frames 0..{num_frames - 1}; "
                f"use keys below {num_frames}")
        if schedule:
            require(frame > schedule[-1][0],
                    f"prompt schedule keys must strictly increase, got {frame} after {schedule[-1][0]}; sort them")
        schedule.append((frame, prompt))
    require(schedule[0][0] == 0, f"the prompt schedule must start at frame 0, got {schedule[0][0]}; {_SCHEDULE_HINT}")
    return schedule


def schedule_weights(schedule: Sequence[tuple[int, str]], num_frames: int, transition: int = 0) -> torch.Tensor:
    """(num_prompts, num_frames) per-frame prompt weights summing to 1, cross-fading at each key.

    The fade from prompt j-1 to prompt j at key c is linear over the `transition` frames
    [c - T/2, c + T/2) centred on the boundary before frame c: the new prompt's share at frame t is
    clamp((t + 0.5 - c + T/2) / T, 0, 1). T = 0 (or 1) is a hard switch at c. Fades that overlap chain:
    each one blends the mix so far towards its prompt.
    """
    require(transition >= 0, f"--prompt-transition must be >= 0 frames, got {transition}")
    t = torch.arange(num_frames, dtype=torch.float64)
    alpha = torch.ones(len(schedule), num_frames, dtype=torch.float64)  # share of prompt j from its key on
    for j, (c, _) in enumerate(schedule[1:], start=1):
        if transition == 0:
            alpha[j] = (t >= c).double()
        else:
            alpha[j] = ((t + 0.5 - c + transition / 2) / transition).clamp(0, 1)
    # prompt j keeps alpha_j of the mix, then each later fade k takes away alpha_k of it
    later = torch.cat([(1 - alpha[1:]).flip(0).cumprod(0).flip(0), torch.ones(1, num_frames, dtype=torch.float64)])
    return (alpha * later).float()  # (P, F)
