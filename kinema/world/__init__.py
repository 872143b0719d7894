"""The kinema world: a procedural, seeded, endless source of captioned clips.

One coloured shape (circle, square or triangle) moves at constant speed, or stands
still, on a solid background. Every clip is a pure function of its seed, so anyone
can regenerate the training data and the evaluation prompts.

    >>> world = World(split="train")
    >>> clip = world.clip(seed=0)          # clip.video: uint8 (F, H, W, 3)
    >>> clip.caption, clip.spec.direction

The vocabulary is fixed (evaluations outside the project rely on it):

- colours: ``COLOURS`` (name -> RGB);
- shapes: circle, square, triangle; object size 1/6 to 1/4 of the frame side;
- motion: left, right, up, down, still; a moving object travels 1/3 to 0.6 of the
  frame side over 16 frames at constant speed and stays wholly inside the frame
  (longer clips move more slowly so the object never leaves);
- background: a colour of the palette other than the object's, with faint texture
  or noise in half the clips;
- canonical caption ``a {colour} {shape} moving {direction} on a {bg} background``
  or ``a {colour} {shape} standing still on a {bg} background``.

Held-out split: the 12 (colour, shape, motion) combinations in ``HELDOUT`` (10% of
the 120) are never produced in training mode; every colour, shape and motion still
appears in training in other combinations.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

import numpy as np

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "white": (240, 240, 240),
    "black": (20, 20, 20),
    "orange": (250, 140, 30),
    "purple": (150, 60, 200),
}
SHAPES = ("circle", "square", "triangle")
MOTIONS = ("left", "right", "up", "down", "still")
DIRECTION_VECTORS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1), "still": (0, 0)}

HELDOUT: tuple[tuple[str, str, str], ...] = (
    ("red", "circle", "right"),
    ("green", "square", "left"),
    ("blue", "triangle", "up"),
    ("yellow", "circle", "down"),
    ("white", "square", "still"),
    ("black", "triangle", "right"),
    ("orange", "circle", "left"),
    ("purple", "square", "up"),
    ("red", "triangle", "down"),
    ("green", "circle", "still"),
    ("blue", "square", "right"),
    ("yellow", "triangle", "left"),
)
ALL_COMBOS = tuple(itertools.product(COLOURS, SHAPES, MOTIONS))
TRAIN_COMBOS = tuple(c for c in ALL_COMBOS if c not in HELDOUT)
SPLITS = {"train": TRAIN_COMBOS, "heldout": HELDOUT, "all": ALL_COMBOS}

# Paraphrases used in training so the text encoder's generalisation is used; the
# canonical form is drawn half of the time so it works best.
_MOVING_TEMPLATES = (
    "a {c} {s} moving {d} on a {b} background",
    "a {c} {s} slides {d} on a {b} background",
    "a {c} {s} drifting to the {d} over a {b} background",
    "on a {b} background, a {c} {s} moves {d}",
    "a {c} {s} travels {d} across a {b} background",
    "{c} {s} moving {d}, {b} background",
)
_VERTICAL_TEMPLATES = (
    "a {c} {s} moving {d} on a {b} background",
    "a {c} {s} slides {d} on a {b} background",
    "a {c} {s} drifting {d}ward over a {b} background",
    "on a {b} background, a {c} {s} moves {d}",
    "a {c} {s} travels {d} across a {b} background",
    "{c} {s} moving {d}, {b} background",
)
_STILL_TEMPLATES = (
    "a {c} {s} standing still on a {b} background",
    "a {c} {s} resting on a {b} background",
    "a motionless {c} {s} on a {b} background",
    "on a {b} background, a {c} {s} stays still",
    "a static {c} {s} over a {b} background",
    "{c} {s} not moving, {b} background",
)


def colour_distance(a: str, b: str) -> float:
    """RGB distance between two palette colours (red/orange 105, orange/yellow 71, blue/purple 114)."""
    return float(np.linalg.norm(np.subtract(COLOURS[a], COLOURS[b], dtype=float)))


@dataclass(frozen=True)
class ClipSpec:
    """Everything that determines a world clip."""

    colour: str
    shape: str
    direction: str  # one of MOTIONS
    background: str
    size: float  # object side / diameter in pixels
    start: tuple[float, float]  # centre (x, y) at frame 0, pixels
    velocity: tuple[float, float]  # pixels per frame
    texture: float  # amplitude of the background texture, 0..1 of 255
    wrap: bool = False  # the frame is a torus: what leaves one side comes back on the other

    def centre(self, t: int) -> tuple[float, float]:
        """Centre at frame t, pixels; for a wrapping clip, unwrapped (render draws it modulo the side)."""
        return (self.start[0] + self.velocity[0] * t, self.start[1] + self.velocity[1] * t)


@dataclass
class Clip:
    """A rendered world clip."""

    video: np.ndarray  # uint8 (F, H, W, 3)
    caption: str
    spec: ClipSpec


def canonical_caption(colour: str, shape: str, direction: str, background: str) -> str:
    if direction == "still":
        return f"a {colour} {shape} standing still on a {background} background"
    return f"a {colour} {shape} moving {direction} on a {background} background"


_CANONICAL = re.compile(
    r"^\s*an? (?P<c>\w+) (?P<s>\w+) (?:moving (?P<d>left|right|up|down)|standing still)"
    r" on an? (?P<b>\w+) background\s*$"
)


def parse_caption(caption: str) -> tuple[str, str, str, str] | None:
    """(colour, shape, direction, background) of a canonical caption, or None."""
    m = _CANONICAL.match(caption.lower())
    if not m or m["c"] not in COLOURS or m["s"] not in SHAPES or m["b"] not in COLOURS:
        return None
    return m["c"], m["s"], m["d"] or "still", m["b"]


def paraphrase(spec: ClipSpec, rng: np.random.Generator) -> str:
    """The canonical caption half of the time, otherwise a random paraphrase."""
    if rng.random() < 0.5:
        return canonical_caption(spec.colour, spec.shape, spec.direction, spec.background)
    templates = _templates(spec.direction)
    t = templates[int(rng.integers(1, len(templates)))]
    return t.format(c=spec.colour, s=spec.shape, d=spec.direction, b=spec.background)


def _templates(direction: str) -> tuple[str, ...]:
    if direction == "still":
        return _STILL_TEMPLATES
    return _VERTICAL_TEMPLATES if direction in ("up", "down") else _MOVING_TEMPLATES


def captions_for(colour: str, shape: str, direction: str, background: str) -> list[str]:
    """Every caption (canonical first, then the paraphrases) of one clip's content."""
    return [t.format(c=colour, s=shape, d=direction, b=background) for t in _templates(direction)]


def all_captions() -> list[str]:
    """Every caption the world can produce (canonical and paraphrased), sorted."""
    out = set()
    for c, s, d in ALL_COMBOS:
        for b in COLOURS:
            if b != c:
                out.update(captions_for(c, s, d, b))
    return sorted(out)


def _sample_spec(
    rng: np.random.Generator, combo: tuple[str, str, str], background: str | None, size_px: int, frames: int,
    wrap: bool = False, wide: bool = False,
) -> ClipSpec:
    colour, shape, direction = combo
    if background is None:
        choices = [b for b in COLOURS if b != colour]
        background = choices[int(rng.integers(len(choices)))]
    side = float(size_px)
    wide = wide and rng.random() < 0.5
    size = float(rng.uniform(side / 8, side / 3) if wide else rng.uniform(side / 6, side / 4))
    lo, hi = size / 2 + 1, side - size / 2 - 1  # centre range keeping the object inside
    if wide and rng.random() < 0.3:  # partly outside the frame: up to 30% of the object's side
        lo, hi = lo - 0.3 * size - 1, hi + 0.3 * size + 1
    dx, dy = DIRECTION_VECTORS[direction]
    # speed is defined over 16 frames so clips of other lengths move at the same pace
    shortest = side / 8 if wide else side / 3  # wide clips also move slower, down to 1/8 of the side in 16 frames
    travel = float(rng.uniform(shortest, max(shortest, min(0.6 * side, hi - lo)))) if direction != "still" else 0.0
    speed = min(travel / 15.0, (hi - lo) / max(frames - 1, 1))  # longer clips move slower rather than leave
    if wrap:  # or keep the 16-frame pace at any length, leaving one side and coming back on the other
        speed = travel / 15.0
    span = speed * (frames - 1)
    start = []
    for d in (dx, dy):
        if wrap and d != 0:  # anywhere along the way: a window of a wrapping clip has no first frame
            start.append(float(rng.uniform(0, side)))
        elif d == 0:
            start.append(float(rng.uniform(lo, hi)))
        elif d > 0:
            start.append(float(rng.uniform(lo, max(lo, hi - span))))
        else:
            start.append(float(rng.uniform(min(hi, lo + span), hi)))
    texture = float(rng.uniform(0.01, 0.03)) if rng.random() < 0.5 else 0.0
    return ClipSpec(colour, shape, direction, background, size, (start[0], start[1]), (dx * speed, dy * speed), texture,
                    wrap)


def pace_ratio(frames: int, side: float = 64.0) -> float:
    """The slowest moving object's speed per frame in a `frames`-frame clip over that in a 16-frame clip.

    1 up to ~33 frames; below it for longer clips, where the speed is capped so the largest object
    (1/4 of the side) can cross the frame once: about 0.127 at 256 frames of 64 px.
    """
    slowest16 = side / 3 / 15  # the shortest travel, 1/3 of the side over 16 frames
    return min(1.0, (side - side / 4 - 2) / max(frames - 1, 1) / slowest16)


_SUPERSAMPLE = 4


def _coverage(shape: str, cx: float, cy: float, size: float, h: int, w: int) -> np.ndarray:
    """Fraction of each pixel covered by the shape (anti-aliased by 4x4 supersampling)."""
    s = _SUPERSAMPLE
    ys = (np.arange(h * s) + 0.5) / s
    xs = (np.arange(w * s) + 0.5) / s
    X, Y = np.meshgrid(xs, ys)
    r = size / 2
    if shape == "circle":
        inside = (X - cx) ** 2 + (Y - cy) ** 2 <= r * r
    elif shape == "square":
        inside = (np.abs(X - cx) <= r) & (np.abs(Y - cy) <= r)
    elif shape == "triangle":  # upright isosceles, base and height = size
        top, bottom = cy - r, cy + r
        frac = np.clip((Y - top) / size, 0, 1)
        inside = (Y >= top) & (Y <= bottom) & (np.abs(X - cx) <= frac * r)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return inside.reshape(h, s, w, s).mean(axis=(1, 3))


def render(
    spec: ClipSpec, frames: int = 16, height: int = 64, width: int = 64, seed: int = 0, times: list[int] | None = None
) -> np.ndarray:
    """Render a spec to uint8 (F, H, W, 3), or only the frames at `times`. Coordinates are for a square of side `width`."""
    rng = np.random.default_rng(seed)
    bg = np.array(COLOURS[spec.background], dtype=np.float32)
    fg = np.array(COLOURS[spec.colour], dtype=np.float32)
    base = np.broadcast_to(bg, (height, width, 3)).copy()
    if spec.texture > 0:  # faint, smooth texture: low-resolution noise upsampled
        coarse = rng.standard_normal((height // 8 + 1, width // 8 + 1, 1)).astype(np.float32)
        tex = np.kron(coarse, np.ones((8, 8, 1), np.float32))[:height, :width]
        base += 255.0 * spec.texture * tex
    times = list(range(frames)) if times is None else list(times)
    out = np.empty((len(times), height, width, 3), np.uint8)
    scale_y = height / width
    for i, t in enumerate(times):
        cx, cy = spec.centre(t)
        if spec.wrap:  # draw the copies one side over too, so an object across an edge shows on both sides
            cx, cy = cx % width, cy % width
            cov = np.zeros((height, width), np.float64)
            xs = [0] + ([width] if cx < spec.size else []) + ([-width] if cx > width - spec.size else [])
            ys = [0] + ([width] if cy < spec.size else []) + ([-width] if cy > width - spec.size else [])
            for ox in xs:
                for oy in ys:
                    cov = np.maximum(cov, _coverage(spec.shape, cx + ox, (cy + oy) * scale_y, spec.size, height, width))
            cov = cov[..., None]
        else:
            cov = _coverage(spec.shape, cx, cy * scale_y, spec.size, height, width)[..., None]
        out[i] = np.clip(base * (1 - cov) + fg * cov, 0, 255).round().astype(np.uint8)
    return out


class World:
    """Seeded source of captioned clips from one split ("train", "heldout" or "all")."""

    def __init__(self, split: str = "train", frames: int = 16, size: int = 64, canonical: bool = False,
                 wrap: bool = False, wide: bool = False):
        """`wrap`: clips keep the 16-frame pace at any length, on a torus (the object leaves one side and comes
        back on the other), starting anywhere; otherwise clips longer than ~33 frames move more slowly so the
        object stays in frame (`pace_ratio`). `wide`: half the clips have objects of 1/8 to 1/3 of the side
        (else 1/6 to 1/4), a third of those partly outside the frame, moving 1/8 to 0.6 of the side in 16
        frames (else 1/3 to 0.6): the range a structure control is trained on."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {sorted(SPLITS)}")
        self.split, self.frames, self.size, self.canonical, self.wrap = split, frames, size, canonical, wrap
        self.wide = wide
        self.combos = SPLITS[split]

    def spec(self, seed: int, combo: tuple[str, str, str] | None = None, background: str | None = None) -> ClipSpec:
        rng = np.random.default_rng([seed, 1])
        if combo is None:
            combo = self.combos[int(rng.integers(len(self.combos)))]
        return _sample_spec(rng, combo, background, self.size, self.frames, self.wrap, self.wide)

    def clip(self, seed: int, combo: tuple[str, str, str] | None = None, background: str | None = None) -> Clip:
        spec = self.spec(seed, combo, background)
        video = render(spec, self.frames, self.size, self.size, seed=seed)
        if self.canonical:
            caption = canonical_caption(spec.colour, spec.shape, spec.direction, spec.background)
        else:
            caption = paraphrase(spec, np.random.default_rng([seed, 2]))
        return Clip(video, caption, spec)

    def batch(self, seeds) -> tuple[np.ndarray, list[str], list[ClipSpec]]:
        clips = [self.clip(int(s)) for s in seeds]
        return np.stack([c.video for c in clips]), [c.caption for c in clips], [c.spec for c in clips]


def eval_prompts(split: str = "heldout", per_combo: int = 2, seed: int = 0) -> list[tuple[str, ClipSpec]]:
    """Fixed evaluation prompts: `per_combo` backgrounds for each combination of the split."""
    world = World(split=split, canonical=True)
    out = []
    for i, combo in enumerate(world.combos):
        rng = np.random.default_rng([seed, i])
        bgs = [b for b in COLOURS if b != combo[0]]
        for j in rng.permutation(len(bgs))[:per_combo]:
            spec = world.spec(seed * 100_000 + i * 10 + int(j), combo, bgs[int(j)])
            out.append((canonical_caption(*combo, bgs[int(j)]), spec))
    return out
