"""An objective oracle for the kinema world: read colour, background and motion off any video.

Works on uint8 ``(F, H, W, 3)`` clips of any size, ground truth or generated (noisy, blurry
approximations), by snapping pixels to the world palette and tracking the largest blob.

    >>> from kinema import world
    >>> from kinema.world import metrics
    >>> clip = world.World(split="all").clip(seed=0)
    >>> metrics.analyse_video(clip.video).direction
    >>> metrics.score(clip.video, "a red circle moving left on a blue background")
    >>> result = metrics.run_world_suite(generate, split="heldout", per_combo=2)
    >>> print(metrics.format_table(result))

``generate(prompt, seed) -> uint8 (F, H, W, 3)`` is supplied by the caller; this module
knows nothing about models.

Thresholds (module constants, all relative so they hold at any resolution and length):

- ``UNKNOWN_DISTANCE`` = 80 (RGB Euclidean): a pixel farther than this from every palette
  colour is "unknown". The closest palette pair (orange, yellow) is 71 apart, so snapping is
  decided long before this; 80 keeps sigma-12 noise plus world texture (norm < ~60) inside
  and rejects 50/50 mixtures of distant colours at anti-aliased or blurred edges.
- ``MIN_OBJECT_FRACTION`` = 0.5% of the frame: smaller blobs are specks. The smallest world
  object (a triangle of side 1/6) covers ~1.4% of the frame, and still ~1% once blurred edges
  turn unknown.
- ``STILL_FRACTION`` = 1/8 of the frame side over 16 frames (scaled by ``(F - 1) / 15`` for
  other lengths, and by ``world.pace_ratio`` for clips longer than ~33 frames, which the world
  moves more slowly so the object never leaves): below it the clip is "still". The slowest world
  motion travels 1/3 of the side, 2.7x more, at every length; a still object moves 0, so jitter of
  a few pixels in generated clips does not read as motion. A window of a longer clip is read at
  that clip's pace (``analyse_video(window, clip_frames=...)``).
- Wrapping clips (``world.World(wrap=True)``): an object across an edge shows as blobs touching
  opposite sides in the same row or column, which are read as one object with its centre on the
  torus, and a centroid step of more than half the frame is read the short way round (no world
  object moves more than ~3 px a frame). World clips that do not wrap never touch both sides,
  so their readings are unchanged by this.
- ``flicker`` is in grey levels (0..255), the mean absolute change between consecutive frames
  over pixels outside the (dilated) object masks of both frames: 0 for a static background.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import cv2
import numpy as np
from tqdm import tqdm

from .. import world

UNKNOWN_DISTANCE = 80.0
MIN_OBJECT_FRACTION = 0.005
STILL_FRACTION = 1 / 8
MASK_DILATION = 1 / 32  # of the frame side, at least 1 px: covers anti-aliased object edges

NAMES = tuple(world.COLOURS)
_PALETTE = np.array([world.COLOURS[n] for n in NAMES], dtype=np.float32)  # (K, 3)


@contextlib.contextmanager
def extra_colours(colours: dict[str, tuple[int, int, int]]):
    """Render and read with these colours besides the world's (a fine-tune's new colour, e.g. pink) for the block."""
    global NAMES, _PALETTE
    saved = NAMES, _PALETTE, dict(world.COLOURS)
    world.COLOURS.update(colours)
    NAMES = tuple(world.COLOURS)
    _PALETTE = np.array([world.COLOURS[n] for n in NAMES], dtype=np.float32)
    try:
        yield
    finally:
        NAMES, _PALETTE = saved[0], saved[1]
        world.COLOURS.clear()
        world.COLOURS.update(saved[2])
UNKNOWN = -1

Generator = Callable[[str, int], np.ndarray]


#################################################################################
#                                   Readings                                    #
#################################################################################


@dataclass
class FrameReading:
    """What one frame shows: background colour and, if any, the object's colour, centre, area."""

    background: str | None  # None only when no pixel is near the palette
    colour: str | None = None  # object colour; None when no object was found
    centroid: tuple[float, float] | None = None  # (x, y) pixels, y down
    area: float | None = None  # fraction of the frame
    mask: np.ndarray | None = field(default=None, repr=False, compare=False)  # bool (H, W)

    @property
    def found(self) -> bool:
        return self.colour is not None


@dataclass
class VideoReading:
    """What a clip shows: majority colours, the object's track and its direction of motion."""

    frames: list[FrameReading] = field(repr=False)
    background: str | None
    colour: str | None
    trajectory: list[tuple[float, float] | None] = field(repr=False)
    direction: str | None  # one of world.MOTIONS; None with fewer than 2 frames holding an object
    displacement: tuple[float, float] | None  # (dx, dy) pixels over the clip, along the fit
    flicker: float  # grey levels 0..255; nan for a single frame
    object_found_fraction: float


#################################################################################
#                                    Frames                                     #
#################################################################################


def _check_video(video: np.ndarray, ndim: int = 4) -> None:
    what = "video (F, H, W, 3)" if ndim == 4 else "frame (H, W, 3)"
    if not isinstance(video, np.ndarray) or video.dtype != np.uint8 or video.ndim != ndim or video.shape[-1] != 3:
        got = f"{getattr(video, 'dtype', type(video).__name__)} {getattr(video, 'shape', '')}"
        raise ValueError(f"expected a uint8 {what} array, got {got}; convert with .astype(np.uint8)")
    if min(video.shape) == 0:
        raise ValueError(f"expected a non-empty {what} array, got shape {video.shape}")


def palette_labels(frame: np.ndarray) -> np.ndarray:
    """Index into ``NAMES`` of each pixel's nearest palette colour, ``UNKNOWN`` (-1) if none is near."""
    px = frame.reshape(-1, 1, 3).astype(np.float32)  # (H*W, 1, 3)
    dist = np.sqrt(((px - _PALETTE[None]) ** 2).sum(-1))  # (H*W, K)
    labels = dist.argmin(1)
    labels[dist.min(1) > UNKNOWN_DISTANCE] = UNKNOWN
    return labels.reshape(frame.shape[:2])


def analyse_frame(frame: np.ndarray) -> FrameReading:
    """Background = most common palette colour; object = largest 4-connected non-background blob."""
    _check_video(frame, ndim=3)
    h, w = frame.shape[:2]
    labels = palette_labels(frame)
    counts = np.bincount(labels[labels >= 0], minlength=len(NAMES))
    if counts.sum() == 0:
        return FrameReading(background=None)
    bg = int(counts.argmax())
    # 1. candidate pixels: any known colour but the background's (mixed edge colours join the object)
    candidates = ((labels >= 0) & (labels != bg)).astype(np.uint8)
    n, comp, stats, centroids = cv2.connectedComponentsWithStats(candidates, connectivity=4)
    if n < 2:
        return FrameReading(background=NAMES[bg])
    # 2. an object across an edge of a wrapping clip (`world.World(wrap=True)`) shows as blobs touching
    # opposite sides in the same row or column: they are one object
    across_x = {(int(a), int(b)) for a, b in zip(comp[:, 0], comp[:, -1]) if a and b}
    across_y = {(int(a), int(b)) for a, b in zip(comp[0, :], comp[-1, :]) if a and b}
    if across_x or across_y:
        parent = list(range(n))

        def find(a: int) -> int:
            while parent[a] != a:
                a = parent[a]
            return a

        for a, b in across_x | across_y:
            parent[find(a)] = find(b)
        comp = np.array([find(i) for i in range(n)])[comp]
    areas = np.bincount(comp.ravel(), minlength=n)
    areas[0] = 0
    # 3. largest component, unless it is a speck
    k = int(areas.argmax())
    area = int(areas[k])
    if area < MIN_OBJECT_FRACTION * h * w:
        return FrameReading(background=NAMES[bg])
    # 4. its majority colour, centre and size
    mask = comp == k
    colour = int(np.bincount(labels[mask], minlength=len(NAMES)).argmax())
    if across_x or across_y:  # the centre on the torus: the part past an edge counted one side over
        ys, xs = np.nonzero(mask)
        wrapped_x = any(find(a) == k for a, _ in across_x)
        wrapped_y = any(find(a) == k for a, _ in across_y)
        xs = np.where(xs < w / 2, xs + w, xs) if wrapped_x else xs
        ys = np.where(ys < h / 2, ys + h, ys) if wrapped_y else ys
        cx, cy = float(xs.mean()) % w, float(ys.mean()) % h
    else:
        cx, cy = (float(c) for c in centroids[k])
    return FrameReading(NAMES[bg], NAMES[colour], (cx, cy), area / (h * w), mask)


#################################################################################
#                                    Videos                                     #
#################################################################################


def _majority(values) -> str | None:
    values = [v for v in values if v is not None]
    return Counter(values).most_common(1)[0][0] if values else None


def _theil_sen(t: np.ndarray, v: np.ndarray) -> float:
    """Median of pairwise slopes: a line fit that ignores up to ~29% of wild points."""
    i, j = np.triu_indices(len(t), 1)
    return float(np.median((v[j] - v[i]) / (t[j] - t[i])))


def still_threshold(span: int, clip_frames: int | None = None, side: float = 64.0) -> float:
    """Fraction of the frame side below which a move over `span` transitions reads as still.

    `clip_frames`: the length of the clip these transitions belong to (default: span + 1), whose
    world pace sets the threshold.
    """
    return STILL_FRACTION * span / 15 * world.pace_ratio(clip_frames or span + 1, side)


def _direction(readings: list[FrameReading], h: int, w: int, clip_frames: int | None = None) -> tuple[str | None, tuple[float, float] | None]:
    """Direction and (dx, dy) over the clip from a robust linear fit of the centroid over time."""
    t = np.array([i for i, r in enumerate(readings) if r.found], dtype=np.float64)
    if len(t) < 2:
        return None, None
    xy = np.array([r.centroid for r in readings if r.found], dtype=np.float64)  # (T, 2)
    # a step of more than half the frame is an object crossing an edge of a wrapping clip: read it as the
    # short way round (no world object moves more than ~3 px per frame at 64 px)
    xy[:, 0], xy[:, 1] = np.unwrap(xy[:, 0], period=w), np.unwrap(xy[:, 1], period=h)
    span = len(readings) - 1
    dx, dy = _theil_sen(t, xy[:, 0]) * span, _theil_sen(t, xy[:, 1]) * span
    fx, fy = dx / w, dy / h  # fractions of the frame side, comparable across axes
    if max(abs(fx), abs(fy)) < still_threshold(span, clip_frames, min(h, w)):
        return "still", (dx, dy)
    if abs(fx) >= abs(fy):
        return ("right" if dx > 0 else "left"), (dx, dy)
    return ("down" if dy > 0 else "up"), (dx, dy)  # image y grows downward


def _flicker(video: np.ndarray, readings: list[FrameReading]) -> float:
    """Mean |frame[t+1] - frame[t]| (grey levels) outside both frames' dilated object masks."""
    if len(video) < 2:
        return float("nan")
    h, w = video.shape[1:3]
    r = max(1, round(MASK_DILATION * max(h, w)))
    kernel = np.ones((2 * r + 1, 2 * r + 1), np.uint8)
    masks = [
        cv2.dilate(fr.mask.astype(np.uint8), kernel).astype(bool) if fr.found else np.zeros((h, w), bool)
        for fr in readings
    ]
    diffs = []
    for t in range(len(video) - 1):
        keep = ~(masks[t] | masks[t + 1])
        if keep.any():
            change = np.abs(video[t + 1].astype(np.int16) - video[t].astype(np.int16))  # (H, W, 3)
            diffs.append(float(change[keep].mean()))
    return float(np.mean(diffs)) if diffs else float("nan")


def analyse_video(video: np.ndarray, clip_frames: int | None = None) -> VideoReading:
    """Read every frame, then the clip's majority colours, direction of motion and flicker.

    `clip_frames`: `video` is a window of a clip this long, whose pace sets the still threshold.
    """
    _check_video(video)
    h, w = video.shape[1:3]
    readings = [analyse_frame(f) for f in video]
    direction, displacement = _direction(readings, h, w, clip_frames)
    return VideoReading(
        frames=readings,
        background=_majority(r.background for r in readings),
        colour=_majority(r.colour for r in readings),
        trajectory=[r.centroid for r in readings],
        direction=direction,
        displacement=displacement,
        flicker=_flicker(video, readings),
        object_found_fraction=sum(r.found for r in readings) / len(readings),
    )


def _parse(caption: str) -> tuple[str, str, str, str]:
    parsed = world.parse_caption(caption)
    if parsed is None:
        raise ValueError(
            f"caption {caption!r} is not canonical; use world.canonical_caption, e.g. "
            "'a red circle moving left on a blue background' or 'a red circle standing still on a blue background'"
        )
    if parsed[0] == parsed[3]:
        raise ValueError(f"caption {caption!r} puts a {parsed[0]} object on a {parsed[3]} background; "
                         "the world never does, so it cannot be scored; pick two different colours")
    return parsed


def score(video: np.ndarray, caption: str) -> dict:
    """Does the clip show the canonical caption's colour, background and motion? Plus the readings."""
    colour, shape, direction, background = _parse(caption)
    reading = analyse_video(video)
    detected_shape, shape_iou = video_shape(video, reading.frames)
    return {
        "colour_ok": reading.colour == colour,
        "shape_ok": detected_shape == shape,
        "background_ok": reading.background == background,
        "direction_ok": reading.direction == direction,
        "colour": colour,
        "shape": shape,
        "background": background,
        "direction": direction,
        "detected_colour": reading.colour,
        "detected_background": reading.background,
        "detected_direction": reading.direction,
        "detected_shape": detected_shape,
        "shape_iou": shape_iou,
        "displacement": reading.displacement,
        "flicker": reading.flicker,
        "object_found_fraction": reading.object_found_fraction,
    }


# An object pixel differs from its frame's background (the median of the frame's border) by more than this
# (RGB distance), or by more than half of the object's contrast with the background where that is lower: an object
# whose colour lies near the background's (orange on yellow: 71 apart) is cut where its colour is halfway, as an
# anti-aliased edge half covered. A fixed 60 read a ground-truth yellow-on-orange object drawn 15 levels toward the
# background as IoU 0.05 (docs/restyle-control/student-guidance/); the floor keeps faint background texture out.
OBJECT_DISTANCE = 60.0
OBJECT_DISTANCE_FLOOR = 35.0  # half the closest palette pair's distance (orange, yellow)
SHAPE_KEPT_IOU = 0.5  # mean object-mask IoU with the source at which an edit counts as keeping the shape


def object_masks(video: np.ndarray) -> np.ndarray:
    """(F, H, W) bool: where each frame differs from its own background (the median of its border pixels) by more
    than OBJECT_DISTANCE, or half the object's contrast where that is lower (the object's colour: the mean of the
    pixels at least 3/4 as far from the background as its 99th-percentile pixel), but never less than the floor."""
    _check_video(video)
    x = video.astype(np.float32)
    border = np.concatenate([x[:, 0], x[:, -1], x[:, :, 0], x[:, :, -1]], axis=1)  # (F, 2H + 2W, 3)
    bg = np.median(border, axis=1)[:, None, None]  # (F, 1, 1, 3)
    d = np.linalg.norm(x - bg, axis=-1)  # (F, H, W)
    far = np.percentile(d.reshape(len(d), -1), 99, axis=1)  # (F,)
    threshold = np.full(len(d), OBJECT_DISTANCE, np.float32)
    for f in np.nonzero(far > OBJECT_DISTANCE_FLOOR)[0]:
        contrast = float(np.linalg.norm(x[f][d[f] >= 0.75 * far[f]].mean(axis=0) - bg[f, 0, 0]))
        threshold[f] = min(OBJECT_DISTANCE, max(OBJECT_DISTANCE_FLOOR, contrast / 2))
    return d > threshold[:, None, None]


def edit_scores(out: np.ndarray, source: np.ndarray, caption: str) -> dict:
    """How an edit of `source` into `out` keeps the source's object: mask IoU per frame (mean), area ratio,
    centroid track error (px at 64 px), shape kept (mean IoU >= SHAPE_KEPT_IOU); and the caption's colour
    and background read on `out` (`score`)."""
    if out.shape != source.shape:
        raise ValueError(f"an edit and its source must have one shape, got {out.shape} and {source.shape}")
    a, b = object_masks(out), object_masks(source)
    inter, union = (a & b).sum(axis=(1, 2)), (a | b).sum(axis=(1, 2))
    ious = inter[union > 0] / union[union > 0]
    track = []
    for ma, mb in zip(a, b):
        if ma.any() and mb.any():
            ya, xa = np.nonzero(ma)
            yb, xb = np.nonzero(mb)
            track.append(math.hypot(xa.mean() - xb.mean(), ya.mean() - yb.mean()))
    iou = float(ious.mean()) if len(ious) else 1.0
    side = 64.0 / max(out.shape[1:3])
    read = score(out, caption)
    return dict(iou=iou, area_ratio=float(a.sum() / max(b.sum(), 1)), track_px=float(np.mean(track)) * side if track else float("nan"),
                shape_kept=iou >= SHAPE_KEPT_IOU, colour_ok=read["colour_ok"], background_ok=read["background_ok"],
                detected_colour=read["detected_colour"], detected_background=read["detected_background"])


#################################################################################
#                                    Shapes                                     #
#################################################################################

SHAPE_EDGE_MARGIN = 1  # px: an object touching the frame's edge (cut off) is not read for shape


def object_alpha(frame: np.ndarray, reading: FrameReading) -> np.ndarray:
    """(H, W) in [0, 1]: how far each pixel lies from the background's colour towards the object's (an
    anti-aliased edge pixel half covered reads 0.5)."""
    bg = _PALETTE[NAMES.index(reading.background)]
    fg = _PALETTE[NAMES.index(reading.colour)]
    d = fg - bg
    x = frame.astype(np.float32) - bg
    return np.clip((x @ d) / float(d @ d), 0, 1)


def shape_template(shape: str, area: float, cx: float, cy: float, h: int, w: int) -> np.ndarray:
    """(H, W) bool: the world's `shape` of `area` pixels, its centroid at (cx, cy), covering >= half a pixel."""
    if shape == "circle":
        size, centre_y = 2 * math.sqrt(area / math.pi), cy
    elif shape == "square":
        size, centre_y = math.sqrt(area), cy
    else:  # upright triangle of base = height = size: its centroid lies size / 6 below its box's centre
        size = math.sqrt(2 * area)
        centre_y = cy - size / 6
    return world._coverage(shape, cx, centre_y, size, h, w) >= 0.5


def read_shape(frame: np.ndarray, reading: FrameReading | None = None) -> tuple[str | None, float]:
    """(shape, IoU): the equal-area template (circle, square, upright triangle) centred on the object's
    centroid that best overlaps its largest connected component, and that overlap; (None, nan) when no
    whole object is in the frame.

    The object is the pixels at least half of the way from the background's colour to the object's, in
    the component `analyse_frame` found (grown by a pixel so soft edges count); world ground truth reads ~1."""
    reading = reading if reading is not None else analyse_frame(frame)
    if not reading.found:
        return None, float("nan")
    h, w = frame.shape[:2]
    near = cv2.dilate(reading.mask.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    n, comp, stats, _ = cv2.connectedComponentsWithStats((near & (object_alpha(frame, reading) >= 0.5)).astype(np.uint8), connectivity=4)
    if n < 2:
        return None, float("nan")
    k = 1 + int(stats[1:, cv2.CC_STAT_AREA].argmax())
    x0, y0, bw, bh, area = stats[k]
    m = SHAPE_EDGE_MARGIN
    if x0 < m or y0 < m or x0 + bw > w - m or y0 + bh > h - m:
        return None, float("nan")
    mask = comp == k
    ys, xs = np.nonzero(mask)
    cx, cy = float(xs.mean()) + 0.5, float(ys.mean()) + 0.5
    best, best_iou = None, -1.0
    for shape in world.SHAPES:
        t = shape_template(shape, float(area), cx, cy, h, w)
        iou = float((t & mask).sum() / max((t | mask).sum(), 1))
        if iou > best_iou:
            best, best_iou = shape, iou
    return best, best_iou


def video_shape(video: np.ndarray, readings: list[FrameReading] | None = None) -> tuple[str | None, float]:
    """The clip's shape (majority over frames with a whole object) and its median template IoU over those frames."""
    readings = readings if readings is not None else [analyse_frame(f) for f in video]
    reads = [read_shape(f, r) for f, r in zip(video, readings)]
    reads = [(s, i) for s, i in reads if s is not None]
    if not reads:
        return None, float("nan")
    shape = _majority(s for s, _ in reads)
    return shape, float(np.median([i for _, i in reads]))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of two uint8 arrays (data range 255); inf when identical."""
    if a.dtype != np.uint8 or b.dtype != np.uint8 or a.shape != b.shape:
        raise ValueError(f"psnr needs two uint8 arrays of one shape, got {a.dtype} {a.shape} and {b.dtype} {b.shape}")
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


#################################################################################
#                                  World suite                                  #
#################################################################################


def run_world_suite(generate: Generator, split: str = "heldout", per_combo: int = 2, seed: int = 0) -> dict:
    """Generate every ``world.eval_prompts`` prompt (seed ``seed * 10_000 + index``) and score it."""
    prompts = world.eval_prompts(split, per_combo, seed)
    rows = []
    for i, (prompt, _spec) in enumerate(tqdm(prompts, desc=f"world suite ({split})", file=sys.stderr)):
        clip_seed = seed * 10_000 + i
        video = generate(prompt, clip_seed)
        try:
            _check_video(video)
        except ValueError as e:
            raise ValueError(f"generate({prompt!r}, {clip_seed}) returned a bad clip: {e}") from None
        rows.append({"prompt": prompt, "seed": clip_seed, **score(video, prompt)})
    n = len(rows)

    def frac(rs, key):
        return sum(r[key] for r in rs) / len(rs) if rs else float("nan")

    per_direction = {}
    for d in world.MOTIONS:
        rs = [r for r in rows if r["direction"] == d]
        if rs:
            per_direction[d] = frac(rs, "direction_ok")
    flickers = [r["flicker"] for r in rows if not math.isnan(r["flicker"])]
    return {
        "n": n,
        "colour": frac(rows, "colour_ok"),
        "background": frac(rows, "background_ok"),
        "direction": frac(rows, "direction_ok"),
        "shape": frac(rows, "shape_ok"),
        "shape_iou": float(np.nanmedian(ious)) if (ious := [r["shape_iou"] for r in rows if not math.isnan(r["shape_iou"])]) else float("nan"),
        "flicker": float(np.mean(flickers)) if flickers else float("nan"),
        "per_direction": per_direction,
        "rows": rows,
    }


def format_table(result: dict) -> str:
    """The suite's headline figures as a one-row Markdown table (accuracies in %, flicker in grey levels)."""
    dirs = list(result["per_direction"])
    head = ["n", "colour", "background", "direction", "shape", "shape IoU (median)", "flicker (0..255)"] + [f"dir: {d}" for d in dirs]
    pct = [f"{100 * result[k]:.1f}%" for k in ("colour", "background", "direction", "shape")]
    vals = [str(result["n"]), *pct, f"{result['shape_iou']:.3f}", f"{result['flicker']:.2f}"] + [f"{100 * result['per_direction'][d]:.1f}%" for d in dirs]
    return "\n".join([
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---:" for _ in head) + "|",
        "| " + " | ".join(vals) + " |",
    ])
