"""Long clips: windowed denoising and continuation, with memory set by the window, not by the clip.

Two drivers on the pure helpers of `windows.py`, both through the one loop (`common.sample`):

- `windowed_video` (`--mode window`): FreeNoise initial noise for all latent frames; every step, a
  `predict` wrapper runs the guided denoiser on each window of `window_plan` and fuses the velocities
  with `window_weights` before the one scheduler step. The loop is not copied: fusion is the predict.
- `continued_video` (`--mode continue`, `kinema extend`): windows generated one after another
  (`continuation_plan`), each conditioned through the frame condition on the last `context_length -
  context_stride` latent frames already made (KnownFrames re-injects them exactly), optionally pinned
  to the first window's latent statistics with AdaIN (off by default).

Lengths (`context_length`, `context_stride`) are in latent frames; the default context is the model's
trained length and the default stride a quarter of it (window mode) or three quarters of it, i.e. an
overlap of a quarter window (continue mode, where the stride is how far each new window moves on).

Decisions:
- Following motion (`follow_motion`, window mode): fused windows of a model trained on short clips
  agree on a short clip's trajectory repeated; rolling each window's view (and its FreeNoise noise)
  back by the clip's displacement makes them agree on one motion, which wraps round the frame. The
  displacement is read once, from the first window made alone (per prompt of a schedule), not
  re-read while sampling: read from the fused clip itself it follows the repeated trajectory it
  should undo. Off unless the model folder or the caller asks (`defaults.follow_motion`).
- Prompt schedules: the denoiser's cross-attention takes one text per sample, so a text per frame
  would need a model change. Each window gets its own text instead: the prompts' token states mixed
  with the schedule's weights averaged over the window's frames (`mix_text`). Overlapping windows,
  fused per frame, then blend neighbouring mixes, so even a hard switch becomes a fade about one window
  wide; `--prompt-transition` widens it.
- Bounded memory: latents of every frame stay in memory (tiny), denoiser activations are those of one
  window (`batch_windows` windows at once, default 1), and frames are decoded `decode_chunk_size`
  latent frames at a time as they become final (continuation: after each window; window mode: after
  the last step) into one preallocated uint8 (F, H, W, 3) array. That array is what `write_video`
  takes; it is small (256 frames of 64x64 are 3 MB), so the writer is not streamed.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
from tqdm.auto import tqdm

from kinema.errors import require
from kinema.models.seams import DenoiserInputs, FrameCondition, TextEmbeds, to_uint8

from .common import Result, Settings, clip_inputs, encode_prompts, encode_video, latent_shape, sample
from .loop import Predict, Stopwatch, Timings, guided
from .windows import (
    Span, adain, continuation_plan, freenoise_noise, fuse_batched, parse_prompt_schedule, peak_window_frames,
    plan_cost, schedule_weights, window_plan, window_weights,
)

MODES = ("window", "continue")
WRAP_MARGIN = 4  # latent pixels of wrap-around padding when decoding a clip whose motion wraps (FrameSink)
MAX_CONTEXT_FACTOR = 4  # the longest window: 4x the model's trained length (its temporal attention is
# untrained beyond that; the sinusoidal frame positions would accept more)


#################################################################################
#                                   Options                                     #
#################################################################################

@dataclass
class LongOptions:
    """How a clip longer than the model's trained length is made (lengths in latent frames)."""

    mode: str = "window"
    context_length: int | None = None  # default: the model's trained latent frames
    context_stride: int | None = None  # default: length // 4 (window), length - length // 4 (continue)
    window_weights: str = "pyramid"
    prompt_schedule: str | None = None  # "0:first prompt|96:second prompt", keys in output frames
    prompt_transition: int = 0  # output frames of cross-fade at each schedule key
    adain: bool = False  # pin each continuation window's latent statistics to the first window's
    batch_windows: int = 1  # windows per denoiser call (more is faster on a GPU, costs memory)
    follow_motion: bool = False  # roll each window's view with the clip's motion (window mode; see follow_path)

    def as_dict(self) -> dict:
        return asdict(self)


def latent_count(frames: int, temporal_compression: int = 1) -> int:
    """Latent frames of `frames` output frames: the same for frame-wise VAEs, 1 + (F - 1) / t for causal ones."""
    return frames if temporal_compression == 1 else (frames - 1) // temporal_compression + 1


def is_plain(options: LongOptions, frames: int, trained_frames: int) -> bool:
    """True when nothing asks for windows: plain text-to-video makes the clip."""
    o = options
    return (o.mode == "window" and o.context_length is None and o.context_stride is None
            and o.prompt_schedule is None and frames <= trained_frames)


def resolve_options(
    options: LongOptions, frames: int, trained_frames: int, temporal_compression: int = 1, source_frames: int = 0,
    max_context: int | None = None,
) -> LongOptions:
    """Fill in defaults and check every option (one-line KinemaErrors) before any model loads.

    `frames` is the output length and `source_frames` the given beginning (extend), in output frames;
    `max_context` the most latent frames one denoiser call takes (AnimateDiff: the motion adapter's positions).
    """
    o = replace(options)
    require(o.mode in MODES, f"unknown --mode {o.mode!r}; use one of {', '.join(MODES)}")
    window_weights(1, o.window_weights)  # checks the kind
    require(o.batch_windows >= 1, f"batch_windows must be >= 1, got {o.batch_windows}")
    f = latent_count(frames, temporal_compression)
    trained = latent_count(trained_frames, temporal_compression)
    most = trained * MAX_CONTEXT_FACTOR
    why = f"{MAX_CONTEXT_FACTOR}x the {trained} it was trained on"
    if max_context is not None and max_context < most:
        most, why = max_context, "its motion modules' positions"
    length = trained if o.context_length is None else o.context_length
    require(length >= 1, f"--context-length must be >= 1, got {length}")
    require(length <= most, f"--context-length {length} is longer than this model supports: at most {most} latent "
                            f"frames ({why}); lower --context-length")
    quarter = max(1, length // 4)
    stride = o.context_stride
    if stride is None:
        stride = quarter if o.mode == "window" else max(1, length - quarter)
    window_plan(max(f, 1), length, stride)  # stride in 1..length, else a one-line error naming the flag
    if o.mode == "continue":
        require(stride < length, f"in --mode continue, --context-stride ({stride}) must be < --context-length "
                                 f"({length}) so each window knows the last frames of the one before")
        require(source_frames < frames, f"--frames {frames} must be more than the {source_frames} frames of the "
                                        "clip being extended (it counts the whole output, source included)")
        require(f >= length, f"--frames {frames} makes {f} latent frames, fewer than --context-length {length}; "
                             "continuation windows have the full context length: raise --frames or lower --context-length")
    if o.prompt_schedule is not None:
        parse_prompt_schedule(o.prompt_schedule, frames)
    require(o.prompt_transition >= 0, f"--prompt-transition must be >= 0 frames, got {o.prompt_transition}")
    o.context_length, o.context_stride = length, stride
    return o


def _resolve_for(model, settings: Settings, options: LongOptions, source_frames: int = 0) -> LongOptions:
    tc = model.vae.temporal_compression
    most = model.info.max_context if model.info is not None else None
    return resolve_options(options, settings.frames, int(model.defaults["frames"]), tc, source_frames, most)


#################################################################################
#                                Prompt texts                                   #
#################################################################################

def mix_text(texts: list[TextEmbeds], weights: torch.Tensor) -> TextEmbeds:
    """One text from several: token states averaged with `weights` (summing to 1), mask = their union.

    A prompt with all the weight is returned as it is (no padding), so a schedule's plain stretches
    see exactly that prompt. Shorter prompts count as zero states past their end.
    """
    nonzero = [j for j, w in enumerate(weights.tolist()) if w > 0]
    if len(nonzero) == 1:
        return texts[nonzero[0]]
    both = TextEmbeds.cat(texts)  # (P, L, D), padded to the longest
    w = weights.to(both.hidden)
    hidden = (both.hidden * w[:, None, None]).sum(0, keepdim=True)  # (1, L, D)
    mask = (both.mask & (w[:, None] > 0)).any(0, keepdim=True)  # (1, L)
    return TextEmbeds(hidden, mask)


def prompt_texts(
    model, prompt: str, settings: Settings, options: LongOptions, timings: Timings
) -> tuple[list[TextEmbeds], torch.Tensor | None, TextEmbeds | None]:
    """The clip's prompts encoded, their (P, latent frames) schedule weights (None: one prompt), the negative."""
    if options.prompt_schedule is None:
        text, uncond = encode_prompts(model, prompt, settings, timings)
        return [text], None, uncond
    schedule = parse_prompt_schedule(options.prompt_schedule, settings.frames)
    encoded = [encode_prompts(model, p, settings, timings) for _, p in schedule]
    weights = schedule_weights(schedule, settings.frames, options.prompt_transition)  # (P, frames)
    tc = model.vae.temporal_compression
    f = latent_count(settings.frames, tc)
    weights = weights[:, (torch.arange(f) * tc).clamp(max=settings.frames - 1)]  # (P, f) at latent frames
    return [t for t, _ in encoded], weights, encoded[0][1]


def mix_windows(texts: list[TextEmbeds], weights: torch.Tensor | None, spans: list[Span]) -> list[TextEmbeds]:
    """The text of each window: the prompt, or the schedule's mix averaged over the window's frames."""
    if weights is None:
        return [texts[0]] * len(spans)
    return [mix_text(texts, weights[:, s:e].mean(1)) for s, e in spans]


def window_texts(
    model, prompt: str, settings: Settings, options: LongOptions, spans: list[Span], timings: Timings
) -> tuple[list[TextEmbeds], TextEmbeds | None]:
    """The text of each window (the prompt, or the schedule's mix over its frames) and the negative."""
    texts, weights, uncond = prompt_texts(model, prompt, settings, options, timings)
    return mix_windows(texts, weights, spans), uncond


#################################################################################
#                               Following motion                                #
#################################################################################

def translations(x: torch.Tensor, lag: int = 1) -> torch.Tensor:
    """(F - lag, 2) sub-pixel (dy, dx) moving latent frame t onto frame t + lag of x (B, C, F, h, w), on the torus.

    Phase correlation: the whitened cross-power spectrum of two frames, summed over samples and channels,
    peaks at their shift; a parabola through the peak and its neighbours gives the fraction; each
    frame's mean is removed first. One shift per frame pair: a camera pan, or the one moving object of
    a plain background. Whatever does not move counts: a still clip reads 0, and a textured still
    background pulls the reading towards 0 (rolling it with a moving object would be wrong anyway).
    """
    f = x.float() - x.float().mean((-2, -1), keepdim=True)
    X = torch.fft.fft2(f)
    R = (X[:, :, lag:] * X[:, :, :-lag].conj()).sum((0, 1))  # (F - lag, h, w)
    c = torch.fft.ifft2(R / R.abs().clamp_min(1e-12)).real
    n, h, w = c.shape
    k = c.flatten(1).argmax(1)
    py, px = k // w, k % w
    rows = torch.arange(n)

    def fraction(minus, mid, plus):
        den = minus - 2 * mid + plus
        return torch.where(den.abs() > 1e-12, 0.5 * (minus - plus) / den, torch.zeros_like(den)).clamp(-0.5, 0.5)

    mid = c[rows, py, px]
    dy = py + fraction(c[rows, (py - 1) % h, px], mid, c[rows, (py + 1) % h, px])
    dx = px + fraction(c[rows, py, (px - 1) % w], mid, c[rows, py, (px + 1) % w])
    dy = (dy + h / 2) % h - h / 2  # the short way round
    dx = (dx + w / 2) % w - w / 2
    return torch.stack([dy, dx], 1)


def clip_velocity(x: torch.Tensor, lag: int) -> torch.Tensor:
    """(dy, dx) latent pixels per frame of x (B, C, F, h, w): the median over t of its t -> t + lag shift, / lag.

    A lag of several frames makes the shift several pixels (a one-frame shift of a fraction of a pixel is
    read poorly); the median leaves out frame pairs across a jump.
    """
    if x.shape[2] < 2:
        return torch.zeros(2)
    lag = max(1, min(lag, x.shape[2] - 1))
    return translations(x, lag).median(0).values / lag


def motion_path(velocities: torch.Tensor) -> torch.Tensor:
    """(F, 2) displacement of each latent frame from frame 0, from (F, 2) velocities (trapezoids between frames)."""
    steps = (velocities[1:] + velocities[:-1]) / 2
    return torch.cat([torch.zeros(1, 2), steps.cumsum(0)])


def follow_shifts(path: torch.Tensor, plan: list[Span]) -> list[tuple[int, int]]:
    """Each window's (dy, dx) roll: the path's mean over its frames less the first window's, rounded."""
    ref = path[plan[0][0]:plan[0][1]].mean(0)
    return [tuple(int(round(float(v))) for v in path[s:e].mean(0) - ref) for s, e in plan]


def follow_path(model, texts: list[TextEmbeds], uncond, settings: Settings, timings: Timings, noise: torch.Tensor,
                plan: list[Span], weights: torch.Tensor | None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Where each latent frame's content is, in latent pixels from frame 0: the motion windows follow.

    Why: a model trained on short clips makes each window a short clip; fused windows of a long clip then
    agree on a short clip's trajectory repeated (the object drawn back every window or so). Following the
    motion, each window sees the latents (and its FreeNoise noise) rolled back by the clip's displacement
    at that window, i.e. its content where the first window had it, so the windows agree on one
    continuous motion. The motion is measured, not guessed: the first window is made alone, as a plain
    clip, once per prompt (`clip_velocity` of its latents, one velocity each); a prompt schedule's
    frames move at their prompts' velocities mixed with the schedule's weights (P, F). The motion wraps
    round the frame (the latents are rolled on a torus): content leaving one edge comes back at the other.
    Costs one window's denoising per prompt.
    """
    L = plan[0][1] - plan[0][0]
    velocities = []
    for text in texts:
        first = sample(model, text, uncond, settings, timings, noise=noise[:, :, :L], progress=False, desc="follow")
        velocities.append(clip_velocity(first, max(1, L // 2)))
    F = noise.shape[2]
    if weights is None:
        per_frame = velocities[0].expand(F, 2)
    else:
        per_frame = weights.T.float() @ torch.stack(velocities)  # (F, P) x (P, 2)
    return motion_path(per_frame), velocities


#################################################################################
#                          Window fusion and decoding                           #
#################################################################################

def fused_predict(
    denoiser, texts: list[TextEmbeds], uncond: TextEmbeds | None, guidance: float, plan: list[Span],
    weights: str = "pyramid", batch_windows: int = 1, watch: Stopwatch | None = None, bar=None, per_windows=None,
    shifts=None, inputs: DenoiserInputs | None = None,
) -> Predict:
    """A `predict` for the loop: the guided denoiser on each window of `plan`, fused per frame.

    `per_windows(spans)`, when given, returns the denoiser for a group of windows (restyle's
    `SourceStructure` over those windows of the source); it is asked once per group. `inputs` go to
    every denoiser call (the whole clip's length: `common.clip_inputs`).
    """
    index = {span: k for k, span in enumerate(plan)}
    cache: dict[tuple[int, ...], Predict] = {}

    def predict(latents: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        def run(x: torch.Tensor, spans: list[Span]) -> torch.Tensor:
            ks = tuple(index[s] for s in spans)
            if ks not in cache:  # one guided predictor per group of windows (their texts batched)
                n = len(ks)
                text = texts[ks[0]] if n == 1 else TextEmbeds.cat([texts[k] for k in ks])
                neg = uncond if uncond is None or n == 1 else uncond.repeat(n)
                d = denoiser if per_windows is None else per_windows(spans)
                each = inputs
                if inputs is not None and inputs.control is not None:  # each window its frames of the control
                    each = replace(inputs, control=torch.cat([inputs.control[:, :, s:e] for s, e in spans]))
                cache[ks] = guided(d, text, neg, guidance, None, watch, each)
            v = cache[ks](x, t)
            if bar is not None:
                bar.update(len(ks))
            return v

        return fuse_batched(run, latents, plan, weights, batch_windows, shifts)

    return predict


class FrameSink:
    """Decodes latent frames once they are final into one preallocated uint8 (F, H, W, 3) array."""

    def __init__(self, model, settings: Settings, timings: Timings, wrap: bool = False):
        self.model, self.settings, self.timings = model, settings, timings
        self.frames = np.zeros((settings.frames, settings.height, settings.width, 3), np.uint8)
        self.decoded = 0  # latent frames decoded so far
        self.filled = 0  # output frames filled so far
        # a followed motion wraps round the frame: frame-wise VAEs decode each frame as a torus, padded on
        # every side with WRAP_MARGIN latent pixels from the opposite side and cropped back, so content
        # crossing an edge is decoded whole rather than cut in two at zero-padded borders (fewer frames per
        # chunk, so the decoder's activations stay the size of an unpadded chunk's)
        self.wrap = wrap and model.vae.temporal_compression == 1

    def decode_until(self, latents: torch.Tensor, end: int) -> None:
        """Decode latent frames [decoded, end), `decode_chunk_size` at a time (frame-wise VAE: any range)."""
        t0 = time.perf_counter()
        part = latents[:, :, self.decoded:end]
        h, w = latents.shape[3:]
        m = min(WRAP_MARGIN, h, w) if self.wrap else 0
        chunk = self.settings.decode_chunk_size
        if m:
            part = torch.nn.functional.pad(part, (m, m, m, m, 0, 0), mode="circular")
            chunk = max(1, chunk * h * w // ((h + 2 * m) * (w + 2 * m)))  # fewer frames at once: the same memory
        with torch.inference_mode():
            for video in self.model.vae.decode_chunks(part, chunk):
                x = to_uint8(video)[: len(self.frames) - self.filled]
                if m:
                    sy, sx = x.shape[1] // part.shape[3], x.shape[2] // part.shape[4]
                    x = x[:, m * sy:x.shape[1] - m * sy, m * sx:x.shape[2] - m * sx]
                self.frames[self.filled:self.filled + len(x)] = x
                self.filled += len(x)
        self.decoded = end
        self.timings.add("vae_decode", time.perf_counter() - t0)


def _info(o: LongOptions, plan: list, **extra) -> dict:
    return dict(long=dict(o.as_dict(), windows=len(plan), peak_window_frames=peak_window_frames(plan),
                          plan_cost=plan_cost(plan), **extra))


#################################################################################
#                                   Drivers                                     #
#################################################################################

@dataclass
class Windows:
    """What the one loop needs to run a clip in context windows fused every step (`window_sampler`)."""

    text: TextEmbeds  # the first window's text (what `sample` is given; the fused predict has every window's)
    uncond: TextEmbeds | None
    noise: torch.Tensor  # FreeNoise noise of every latent frame (rolled with the motion when followed)
    predict: Predict  # the guided denoiser on each window, fused per frame
    plan: list[Span]
    path: torch.Tensor | None = None  # the followed motion (None: the windows stay put)
    bar: object = None  # progress over windows x steps
    info: dict = field(default_factory=dict)  # the sidecar's `long` entry


def window_sampler(model, prompt: str, settings: Settings, options: LongOptions, timings: Timings, per_windows=None,
                   progress: bool = False) -> Windows:
    """Context windows fused every step: the plan, a text per window, FreeNoise noise, the fused predict.

    Long clips and long restyles both run on it. `per_windows(spans, noise)` gives the denoiser of a
    group of windows (restyle: the source's layout, window by window); default the model's own.
    """
    shape = latent_shape(model, settings)
    o = options
    plan = window_plan(shape[2], o.context_length, o.context_stride)  # 1. window plan
    prompts, weights, uncond = prompt_texts(model, prompt, settings, o, timings)
    texts = mix_windows(prompts, weights, plan)  # 2. a text per window
    g = torch.Generator("cpu").manual_seed(int(settings.seed))
    noise = freenoise_noise(shape, o.context_length, o.context_stride, generator=g)  # 3. FreeNoise noise
    shifts, path, extra = None, None, {}
    if o.follow_motion and len(plan) > 1:  # 3b. the motion the windows follow, and the noise rolled with it
        path, velocities = follow_path(model, prompts, uncond, settings, timings, noise, plan, weights)
        shifts = follow_shifts(path, plan)
        g = torch.Generator("cpu").manual_seed(int(settings.seed))  # the same draws, rolled with the motion
        noise = freenoise_noise(shape, o.context_length, o.context_stride, generator=g, path=path)
        extra["follow"] = dict(velocities=[[round(float(v), 4) for v in vel] for vel in velocities],
                               last_shift=list(shifts[-1]))
    bar = tqdm(total=settings.steps * len(plan), desc=f"denoise {len(plan)} windows x {settings.steps} steps",
               unit="window", disable=not progress, leave=False)
    each = None if per_windows is None else (lambda spans: per_windows(spans, noise))
    predict = fused_predict(model.denoiser, texts, uncond, settings.guidance, plan, o.window_weights, o.batch_windows,
                            timings.denoiser, bar, each, shifts, clip_inputs(settings))  # 4. windows fused every step
    return Windows(texts[0], uncond, noise, predict, plan, path, bar, _info(o, plan, **extra)["long"])


def windowed_video(model, prompt: str, settings: Settings, options: LongOptions, progress: bool = True) -> Result:
    """Context windows fused every step: one loop over all latent frames, the denoiser on one window at a time."""
    timings, t0 = Timings(), time.perf_counter()
    o = _resolve_for(model, settings, options)
    w = window_sampler(model, prompt, settings, o, timings, progress=progress)  # 1-4. plan, texts, noise, predict
    with w.bar:  # 5. denoise all latent frames, windows fused before each step
        latents = sample(model, w.text, w.uncond, settings, timings, noise=w.noise, predict=w.predict, progress=False)
    sink = FrameSink(model, settings, timings, wrap=w.path is not None)  # 6. decode in chunks
    sink.decode_until(latents, latents.shape[2])
    timings.add("total", time.perf_counter() - t0)
    return Result(sink.frames, latents, timings, dict(long=w.info))


def continued_video(
    model, prompt: str, settings: Settings, options: LongOptions, source: torch.Tensor | None = None,
    progress: bool = True, timings: Timings | None = None,
) -> Result:
    """Windows one after another, each knowing the last frames made; `source` latents are a given beginning."""
    timings, t0 = timings or Timings(), time.perf_counter()
    n = 0 if source is None else source.shape[2]
    o = _resolve_for(model, settings, replace(options, mode="continue"), source_frames=n)
    shape = latent_shape(model, settings)
    B, C, F, h, w = shape
    plan = continuation_plan(F, o.context_length, o.context_length - o.context_stride, known=n)  # 1. window plan
    texts, uncond = window_texts(model, prompt, settings, o, [p[:2] for p in plan], timings)  # 2. texts
    latents = torch.zeros(shape, device=model.device)
    noise = torch.zeros(shape)
    g = torch.Generator("cpu").manual_seed(int(settings.seed))
    if n:
        latents[:, :, :n] = source.to(latents)
        noise[:, :, :n] = torch.randn((B, C, n, h, w), generator=g)
    ref = source if o.adain else None
    sink = FrameSink(model, settings, timings)
    for k, (s, e, known) in enumerate(tqdm(plan, desc="windows", disable=not progress, leave=False)):
        noise[:, :, s + known:e] = torch.randn((B, C, e - s - known, h, w), generator=g)  # 3. fresh noise for new frames
        mask = torch.zeros(B, e - s, device=model.device)
        mask[:, :known] = 1
        cond = FrameCondition(latents[:, :, s:e].clone(), mask) if known else None  # 4. the known tail
        out = sample(model, texts[k], uncond, settings, timings, cond=cond, known=cond, noise=noise[:, :, s:e],
                     progress=progress, desc=f"window {k + 1}/{len(plan)}")  # 5. denoise the window
        new = out[:, :, known:]
        if ref is not None:
            new = adain(new, ref)  # 6. optional anchoring to the first window's statistics
        elif o.adain:
            ref = out
        latents[:, :, s + known:e] = new
        sink.decode_until(latents, e)  # 7. frames up to e are final: decode them now
    timings.add("total", time.perf_counter() - t0)
    return Result(sink.frames, latents, timings, _info(o, plan, source_frames=n))


def long_video(model, prompt: str, settings: Settings, options: LongOptions, progress: bool = True) -> Result:
    """Text-to-video past the trained length, by context windows or by continuation (`options.mode`)."""
    driver = continued_video if options.mode == "continue" else windowed_video
    return driver(model, prompt, settings, options, progress=progress)


def extend_video(
    model, video: np.ndarray, prompt: str, settings: Settings, options: LongOptions, progress: bool = True
) -> Result:
    """Continue uint8 frames (n, H, W, 3) at the settings' size to `settings.frames` frames in all.

    The output is decoded from latents throughout, the source's part included, so the join has no
    VAE-reconstruction seam.
    """
    require(video.shape[1:] == (settings.height, settings.width, 3),
            f"the clip to extend is {video.shape[2]}x{video.shape[1]}, not {settings.width}x{settings.height}; resize it first")
    timings = Timings()
    source = encode_video(model, video, timings)  # (1, C, n, h, w), in chunks
    return continued_video(model, prompt, settings, options, source=source, progress=progress, timings=timings)
