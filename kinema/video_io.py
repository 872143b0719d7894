"""Video and image files at the boundary: uint8 `(F, H, W, 3)` RGB arrays in and out.

    >>> frames, fps = read_video("clip.mp4", max_frames=16, stride=2)
    >>> write_video("out.mp4", frames, fps)                      # H.264, yuv420p
    >>> write_video("out", frames, fps)                          # out/frame_00000.png ...
    >>> write_sidecar("out.mp4", {"prompt": "a red circle"})     # out.mp4.json
    >>> image = read_image("first_frame.jpg")                    # uint8 (H, W, 3)
    >>> resize_frames(frames, 256, 256, policy="crop")

Output names decide the format, never the file system: `.mp4`, `.gif` and `.webp`
write that file; a name with no extension, or ending in `/`, writes a folder of
`frame_00000.png`, `frame_00001.png`, ... (fps is not stored there; keep it in the
sidecar). `check_output_path` runs these checks before any heavy work starts.

Every write is atomic: it goes to a hidden temporary beside the target
(`.clip.mp4.tmp-1a2b3c4d.mp4`, keeping the extension so the encoder picks the
format) that is renamed into place at the end; on any exception, KeyboardInterrupt
included, the temporary is removed and an existing output is left untouched.

`read_video` returns the fps of the frames it returns: the file's rate divided by
`stride`, so writing them back plays at the original speed.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import secrets
import shutil
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

import cv2
import imageio
import numpy as np
from PIL import Image, ImageOps

from kinema.errors import KinemaError, require

PathLike = str | os.PathLike
RGB = tuple[int, int, int]

FILE_FORMATS = {".mp4": "mp4", ".gif": "gif", ".webp": "webp"}  # output extension -> format
CONTAINER_EXTS = (".mp4", ".webm", ".mov", ".mkv", ".avi")  # read with OpenCV's FFmpeg backend
ANIMATION_EXTS = (".gif", ".webp")  # read with Pillow, every frame
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")  # frames in a folder
DEFAULT_FPS = 8.0  # for PNG folders, single images and animations without durations
MIN_FPS = 0.01  # slower rates overflow GIF durations and round to 0 in the FFmpeg writer
MAX_PIXELS = 8192 * 8192  # read_image refuses larger images (Pillow's own bomb limit also applies)
MP4_CRF = 18  # libx264 quality when `quality` is None: visually lossless
FRAME_NAME = "frame_{:05d}.png"
FRAME_RE = re.compile(r"frame_\d{5,}\.png")
RESIZE_POLICIES = ("crop", "pad", "stretch")
WHITE: RGB = (255, 255, 255)


#################################################################################
#                                 Output paths                                  #
#################################################################################


def output_format(path: PathLike) -> str:
    """The format an output name asks for: "mp4", "gif", "webp", or "png" (a folder of PNGs)."""
    text = os.fspath(path)
    suffix = Path(text).suffix.lower()
    if text.endswith(("/", os.sep)) or not suffix:
        return "png"
    require(
        suffix in FILE_FORMATS,
        f"unsupported output extension {suffix!r} in {text}; use .mp4, .gif, .webp, "
        "or a name without extension for a folder of PNGs",
    )
    return FILE_FORMATS[suffix]


def check_output_path(path: PathLike, overwrite: bool = False) -> Path:
    """Validate an output name before any heavy work (rules in the module docstring); return it resolved."""
    fmt = output_format(path)
    out = Path(path).expanduser().resolve()
    require(out.parent.is_dir(), f"output folder {out.parent} does not exist; create it first")
    require(os.access(out.parent, os.W_OK), f"output folder {out.parent} is not writable; choose another")
    if not out.exists():
        return out
    asked = "a folder of PNGs (no extension)" if fmt == "png" else f"a .{fmt} file"
    found = "folder" if out.is_dir() else "file"
    require(out.is_dir() == (fmt == "png"), f"{out} is an existing {found} but {asked} was asked; choose another name")
    require(overwrite, f"{out} already exists; pass --overwrite to replace it")
    if fmt == "png":  # never delete a folder that is not ours, e.g. `--output .`
        strays = sorted(p.name for p in out.iterdir() if not FRAME_RE.fullmatch(p.name))
        shown = ", ".join(strays[:3])
        require(not strays, f"{out} holds files other than frame_NNNNN.png ({shown}); choose a new folder name")
    return out


def sidecar_path(video_path: PathLike) -> Path:
    """The JSON record beside an output: `clip.mp4` -> `clip.mp4.json`, folder `frames` -> `frames.json`."""
    video = Path(video_path).expanduser()  # Path drops a trailing "/"
    return video.with_name(video.name + ".json")


#################################################################################
#                                Atomic writing                                 #
#################################################################################


@contextlib.contextmanager
def _atomic_target(out: Path, folder: bool) -> Iterator[Path]:
    """Yield a hidden temporary beside `out`; move it onto `out` on success, delete it on any failure."""
    suffix = "" if folder else out.suffix
    tmp = out.with_name(f".{out.name}.tmp-{secrets.token_hex(4)}{suffix}")
    # Created by hand, not by tempfile, so the result gets the umask's permissions rather than 0600.
    try:
        tmp.mkdir() if folder else tmp.open("xb").close()
    except OSError as e:  # a folder that refuses new files (read-only, /proc), a full disk
        raise KinemaError(f"could not write {out}: {_first_line(e)}; choose a writable folder") from e
    try:
        yield tmp
        replace_path(tmp, out)
    except OSError as e:  # disk full or permissions mid-write, or the rename refused
        _remove(tmp)
        raise KinemaError(f"could not write {out}: {_first_line(e)}; check free space and permissions") from e
    except BaseException:
        _remove(tmp)
        raise


def _still_free(out: Path, overwrite: bool) -> None:
    """Just before the rename: an output that appeared after the pre-flight check (another run writing the same
    name) is not replaced unless --overwrite was given."""
    require(overwrite or not os.path.lexists(out), f"{out} appeared while kinema was working (another run?); nothing "
                                                   "was replaced: pass --overwrite to replace it or choose another -o")


def replace_path(tmp: Path, out: Path) -> None:
    """Rename `tmp` onto `out`; a folder cannot replace a non-empty folder, so the old one moves aside first
    (and is put back if the rename fails)."""
    if not (tmp.is_dir() and out.is_dir()):
        os.replace(tmp, out)
        return
    old = out.with_name(f".{out.name}.old-{secrets.token_hex(4)}")
    os.rename(out, old)
    try:
        os.rename(tmp, out)
    except BaseException:
        os.rename(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _remove(path: Path) -> None:
    """Delete a file or folder if it is there."""
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _json_text(obj: Any) -> str:
    """Indented UTF-8 JSON, serialised before any file is touched (a TypeError leaves no file)."""
    text = json.dumps(obj, indent=2, ensure_ascii=False) + "\n"
    if not _is_utf8(text):  # a file name with non-UTF-8 bytes (surrogate escapes): ASCII escapes keep it
        text = json.dumps(obj, indent=2) + "\n"
    return text


def write_json_atomic(path: PathLike, obj: Any) -> Path:
    """Write `obj` as indented UTF-8 JSON through a temporary file and an atomic rename.

    A link at `path` is replaced by the file, never followed: nothing outside the target is written.
    """
    text = _json_text(obj)
    out = Path(os.path.abspath(Path(path).expanduser()))  # the last component not resolved
    require(out.parent.is_dir(), f"output folder {out.parent} does not exist; create it first")
    with _atomic_target(out, folder=False) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return out


def check_sidecar_path(video_path: PathLike, overwrite: bool = False) -> Path:
    """The sidecar is an output too: refused before any work if it is a folder, or exists without --overwrite."""
    out = sidecar_path(video_path)
    out = Path(os.path.abspath(out))
    if os.path.lexists(out):
        require(out.is_symlink() or not out.is_dir(), f"{out} (the clip's sidecar) is a folder; remove it or choose another -o")
        require(overwrite, f"{out} (the clip's sidecar) already exists; pass --overwrite to replace it")
    return out


def check_outputs(path: PathLike, overwrite: bool = False) -> tuple[Path, Path]:
    """Check a clip's path and its sidecar's before any heavy work: (clip, sidecar)."""
    out = check_output_path(path, overwrite)
    return out, check_sidecar_path(out, overwrite)


def write_sidecar(video_path: PathLike, record: dict, overwrite: bool = False) -> Path:
    """Write `record` as the JSON sidecar of `video_path` (see `sidecar_path`); a link there is replaced, not followed."""
    require(isinstance(record, dict), f"a sidecar record must be a dict, got {type(record).__name__}")
    return write_json_atomic(check_sidecar_path(video_path, overwrite), record)


#################################################################################
#                                Writing videos                                 #
#################################################################################


def _durations_ms(count: int, fps: float, tick_ms: int) -> list[int]:
    """Per-frame durations on the format's tick, rounded so their running sum tracks i / fps without drift."""
    ticks = [round(i * 1000 / fps / tick_ms) for i in range(count + 1)]
    return [max(1, b - a) * tick_ms for a, b in zip(ticks, ticks[1:])]


def _encode_mp4(tmp: Path, frames: np.ndarray, fps: float, quality: int | None) -> None:
    """H.264 in yuv420p; an odd height or width is padded to even by repeating the last row or column."""
    crf = MP4_CRF if quality is None else round(51 * (100 - quality) / 100)
    pad = ((0, frames.shape[1] % 2), (0, frames.shape[2] % 2), (0, 0))  # yuv420p needs even sizes
    writer = imageio.v2.get_writer(
        tmp, format="FFMPEG", mode="I", fps=fps, codec="libx264", pixelformat="yuv420p",
        macro_block_size=1, quality=None, ffmpeg_log_level="error",
        ffmpeg_params=["-crf", str(crf), "-preset", "medium", "-movflags", "+faststart"],
    )  # fmt: skip
    try:
        for frame in frames:
            writer.append_data(np.pad(frame, pad, mode="edge"))
    finally:
        writer.close()


def _encode_gif(tmp: Path, frames: np.ndarray, fps: float, quality: int | None) -> None:
    """Animated GIF looping forever, durations in centiseconds; `quality` is ignored (256-colour palettes)."""
    # Pillow merges identical consecutive frames into one longer frame: timing is kept, frame count is not.
    images = [Image.fromarray(frame) for frame in frames]
    durations = _durations_ms(len(images), fps, tick_ms=10)
    images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=durations, loop=0)


def _encode_webp(tmp: Path, frames: np.ndarray, fps: float, quality: int | None) -> None:
    """Animated WebP looping forever: lossless when `quality` is None, else lossy at that quality."""
    # libwebp, like GIF, merges identical consecutive frames into one longer frame.
    images = [Image.fromarray(frame) for frame in frames]
    durations = _durations_ms(len(images), fps, tick_ms=1)
    lossy = {"quality": quality} if quality is not None else {"lossless": True}
    images[0].save(tmp, format="WEBP", save_all=True, append_images=images[1:], duration=durations, loop=0, **lossy)


def _encode_png(tmp: Path, frames: np.ndarray, fps: float, quality: int | None) -> None:
    """A folder of `frame_00000.png`, ...; lossless, so `quality` is ignored, and fps is not stored."""
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(tmp / FRAME_NAME.format(i), compress_level=4)


Encoder = Callable[[Path, np.ndarray, float, int | None], None]
_ENCODERS: dict[str, Encoder] = {"mp4": _encode_mp4, "gif": _encode_gif, "webp": _encode_webp, "png": _encode_png}


def _check_frames(frames: Any) -> None:
    """Require uint8 (F, H, W, 3) with at least one frame of at least one pixel."""
    is_array = isinstance(frames, np.ndarray)
    got = f"{frames.dtype} {tuple(frames.shape)}" if is_array else type(frames).__name__
    ok = is_array and frames.dtype == np.uint8 and frames.ndim == 4 and frames.shape[3] == 3
    require(ok and min(frames.shape[:3]) >= 1, f"frames must be a uint8 RGB array (F, H, W, 3) with F >= 1; got {got}")


def write_video(
    path: PathLike, frames: np.ndarray, fps: float, overwrite: bool = False, quality: int | None = None
) -> Path:
    """Write uint8 (F, H, W, 3) frames atomically as mp4, gif, webp or a PNG folder, chosen by the name."""
    _check_video(frames, fps, quality)
    out = check_output_path(path, overwrite)
    fmt = output_format(path)
    with _atomic_target(out, folder=fmt == "png") as tmp:
        _encode(tmp, out, fmt, frames, fps, quality)
        _still_free(out, overwrite)
    return out


def _check_video(frames: np.ndarray, fps: float, quality: int | None) -> None:
    _check_frames(frames)
    require(math.isfinite(fps) and fps >= MIN_FPS, f"fps must be a number >= {MIN_FPS}, got {fps}")
    # quality 1..100, higher is better: libx264 CRF 51 * (100 - q) / 100 for mp4, lossy WebP quality for webp.
    require(quality is None or 1 <= quality <= 100, f"quality must be 1..100 or None, got {quality}")


def _encode(tmp: Path, out: Path, fmt: str, frames: np.ndarray, fps: float, quality: int | None) -> None:
    try:
        _ENCODERS[fmt](tmp, frames, float(fps), quality)
    except OSError as e:  # disk full, permissions, the encoder process dying
        raise KinemaError(f"could not write {out}: {_first_line(e)}; check free space and permissions") from e
    # imageio's FFmpeg writer can fail without raising (a full disk, a rate it cannot parse): read back what
    # was written before the rename, so a truncated file never replaces the old one
    require(fmt == "png" or tmp.stat().st_size > 0, f"could not write {out}: the {fmt} encoder wrote nothing")
    found = _written_frames(tmp, fmt)
    require(found == len(frames) or (fmt in ("gif", "webp") and found >= 1),  # animations may merge equal frames
            f"could not write {out}: {found} of {len(frames)} frames could be read back from what the {fmt} encoder "
            "wrote; check free space and permissions")


def _written_frames(tmp: Path, fmt: str) -> int:
    """Frames that can be read back from a just-written output."""
    if fmt == "png":
        return sum(1 for p in tmp.iterdir() if FRAME_RE.fullmatch(p.name))
    if fmt == "mp4":  # decoded, not only counted: a cut-short file can keep a whole header
        n = 0
        with _capture(tmp) as capture:
            while capture.isOpened() and capture.grab():
                n += 1
        return n
    try:
        with Image.open(tmp) as im:
            return getattr(im, "n_frames", 1)
    except (OSError, ValueError):
        return 0


def write_outputs(path: PathLike, result, overwrite: bool = False) -> tuple[Path, Path]:
    """Write a job's clip and its JSON sidecar (`result.frames`, `.fps`, `.record`) as one pair.

    Both paths are checked first (`check_outputs`); both are written to temporaries, and only when
    both are complete are they renamed into place (the clip, then the sidecar), so a failure leaves
    the old pair as it was and no new file. The record's timings gain the seconds spent writing.
    """
    import time

    t0 = time.perf_counter()
    _check_video(result.frames, result.fps, None)
    out, side = check_outputs(path, overwrite)
    fmt = output_format(path)
    with _atomic_target(side, folder=False) as tmp_side, _atomic_target(out, folder=fmt == "png") as tmp:
        _encode(tmp, out, fmt, result.frames, result.fps, None)
        timings = {**result.record.get("timings", {}), "write": round(time.perf_counter() - t0, 4)}
        tmp_side.write_text(_json_text({**result.record, "timings": timings}), encoding="utf-8")
        _still_free(out, overwrite)
        _still_free(side, overwrite)
    return out, side


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


#################################################################################
#                                Reading videos                                 #
#################################################################################


def _first_line(error: BaseException) -> str:
    """A library error's message cut to one line, as KinemaError requires."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _existing(path: PathLike) -> Path:
    """The path if it exists and, for a file, is not empty."""
    src = Path(path).expanduser()
    require(src.exists(), f"{src} does not exist; check the path")
    require(src.is_dir() or src.stat().st_size > 0, f"{src} is empty (0 bytes); re-create or re-download it")
    return src


def _select(count: int, start: int, stride: int, max_frames: int | None, src: Path) -> range:
    """Indexes start, start + stride, ... below `count`, at most `max_frames` of them."""
    require(count > 0, f"{src} has no frames")
    require(start < count, f"start={start} is beyond the end of {src} ({count} frames)")
    stop = count if max_frames is None else min(count, start + stride * max_frames)
    return range(start, stop, stride)


def _natural_key(path: Path) -> list:
    """Sort key putting `f2.png` before `f10.png`."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def shrink(frame: np.ndarray, max_side: int | None) -> np.ndarray:
    """`frame` scaled down (area average) so that its long side is at most `max_side`; as it is when it fits."""
    h, w = shrunk_size(*frame.shape[:2], max_side)
    return frame if (h, w) == frame.shape[:2] else cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA)


def shrunk_size(height: int, width: int, max_side: int | None) -> tuple[int, int]:
    """(height, width) after `shrink`."""
    if max_side is None or max(height, width) <= max_side:
        return height, width
    k = max_side / max(height, width)
    return max(1, round(height * k)), max(1, round(width * k))


def _read_folder(src: Path, start: int, stride: int, max_frames: int | None, fit=lambda f: f) -> tuple[list[np.ndarray], float]:
    """Read the selected image files of a folder, in natural order of their names."""
    files = [p for p in src.iterdir() if p.suffix.lower() in IMAGE_EXTS and not p.name.startswith(".")]
    files = sorted((p for p in files if p.is_file()), key=_natural_key)
    require(files, f"no image files in folder {src}; expected e.g. {FRAME_NAME.format(0)}")
    frames = []
    for i in _select(len(files), start, stride, max_frames, src):
        frames.append(fit(read_image(files[i])))
        shape, first = frames[-1].shape, frames[0].shape
        require(shape == first, f"{files[i]} is {shape[1]}x{shape[0]} but earlier frames are {first[1]}x{first[0]}")
    return frames, DEFAULT_FPS


def _read_animation(src: Path, start: int, stride: int, max_frames: int | None, fit=lambda f: f) -> tuple[list[np.ndarray], float]:
    """Read the selected frames of an animated GIF or WebP; fps from the mean duration of those frames."""
    frames, durations = [], []
    with _open_image(src, MAX_PIXELS) as im:
        for i in _select(getattr(im, "n_frames", 1), start, stride, max_frames, src):
            im.seek(i)
            im.load()  # WebP fills in the duration on load
            frames.append(fit(_to_rgb(im, WHITE)))
            durations.append(im.info.get("duration") or 0)
    durations = [d for d in durations if d > 0]
    return frames, 1000 * len(durations) / sum(durations) if durations else DEFAULT_FPS


@contextlib.contextmanager
def _capture(src: Path) -> Iterator[cv2.VideoCapture]:
    """OpenCV's FFmpeg reader of `src`, quiet: FFmpeg's warnings would bury kinema's one-line errors."""
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    log_level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    capture = cv2.VideoCapture(str(src), cv2.CAP_FFMPEG)
    try:
        yield capture
    finally:
        capture.release()
        cv2.utils.logging.setLogLevel(log_level)


def _read_container(src: Path, start: int, stride: int, max_frames: int | None, fit=lambda f: f) -> tuple[list[np.ndarray], float]:
    """Decode mp4/webm/mov/mkv/avi with OpenCV's FFmpeg backend, skipping unwanted frames without converting."""
    frames, index = [], 0
    with _capture(src) as capture:
        require(capture.isOpened(), f"could not open {src} as a video; the file is truncated or not a video")
        fps = capture.get(cv2.CAP_PROP_FPS)
        try:
            while max_frames is None or len(frames) < max_frames:
                keep = index >= start and (index - start) % stride == 0
                ok, frame = capture.read() if keep else (capture.grab(), None)
                if not ok:
                    break  # the end, or the first undecodable frame of a truncated file
                if keep:
                    frames.append(fit(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)))
                index += 1
        except cv2.error as e:
            raise KinemaError(f"could not decode {src}: {_first_line(e)}") from e
    require(index > 0, f"no frames could be decoded from {src}; the file is truncated or not a video")
    require(index > start, f"start={start} is beyond the end of {src} ({index} frames)")
    return frames, fps if math.isfinite(fps) and fps > 0 else DEFAULT_FPS


def read_video(
    path: PathLike, max_frames: int | None = None, stride: int = 1, start: int = 0, max_side: int | None = None
) -> tuple[np.ndarray, float]:
    """Read frames start, start + stride, ... (at most `max_frames`) as uint8 (F, H, W, 3), with their fps.

    With `max_side`, each frame is scaled down as it is decoded so that its long side is at most that:
    a huge source never lies whole in memory.
    """
    require(stride >= 1, f"stride must be >= 1, got {stride}")
    require(start >= 0, f"start must be >= 0, got {start}")
    require(max_frames is None or max_frames >= 1, f"max_frames must be >= 1 or None, got {max_frames}")
    src = _existing(path)
    suffix = src.suffix.lower()
    def fit(frame: np.ndarray) -> np.ndarray:
        return shrink(frame, max_side)

    if src.is_dir():
        frames, fps = _read_folder(src, start, stride, max_frames, fit)
    elif suffix in ANIMATION_EXTS:
        frames, fps = _read_animation(src, start, stride, max_frames, fit)
    elif suffix in CONTAINER_EXTS:
        frames, fps = _read_container(src, start, stride, max_frames, fit)
    elif suffix in IMAGE_EXTS:
        _select(1, start, stride, max_frames, src)  # a single image is a one-frame video
        frames, fps = [fit(read_image(src))], DEFAULT_FPS
    else:
        known = ", ".join(CONTAINER_EXTS + IMAGE_EXTS)
        raise KinemaError(f"cannot read {src}: unknown extension {suffix!r}; use a folder of frames or one of {known}")
    return np.stack(frames), fps / stride


#################################################################################
#                                Reading images                                 #
#################################################################################


@contextlib.contextmanager
def _open_image(src: Path, max_pixels: int) -> Iterator[Image.Image]:
    """Open with Pillow; oversized, truncated and non-image files become KinemaError, in the body too."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # `max_pixels` below decides
            image = Image.open(src)
    except Image.DecompressionBombError as e:
        raise KinemaError(f"{src} is too large for Pillow ({e}); downscale it first") from e
    except Exception as e:  # UnidentifiedImageError, or anything a damaged header provokes
        reason = f"{type(e).__name__}: {_first_line(e)}"
        raise KinemaError(f"could not read {src} as an image ({reason}); is it an image file?") from e
    with image:
        width, height = image.size
        require(width > 0 and height > 0, f"{src} has zero size ({width}x{height}); re-create it")
        require(
            width * height <= max_pixels,
            f"{src} is {width}x{height} = {width * height} pixels, over the limit max_pixels={max_pixels}; "
            "downscale it first",
        )
        try:
            yield image
        except KinemaError:
            raise
        except Exception as e:  # Pillow fails in many ways on damaged data (IndexError on a cut GIF)
            reason = f"{type(e).__name__}: {_first_line(e)}"
            raise KinemaError(f"could not decode {src} ({reason}); the file may be truncated") from e


def _grey_to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    """Scale 16-bit (and 32-bit int or float) grey to 8 bits rather than clipping it."""
    values = values.astype(np.float32)
    if mode == "F" and values.max() <= 1.0:
        values = values * 255  # float images in [0, 1]
    elif mode.startswith("I;16") or (mode == "I" and values.max() > 255):
        values = values / 257  # 16-bit samples: 65535 -> 255 ("I" is how older Pillow opens 16-bit PNGs)
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def _to_rgb(image: Image.Image, background: RGB) -> np.ndarray:
    """Any Pillow mode as uint8 (H, W, 3): alpha composited on `background`, high bit depths scaled down."""
    if image.mode.startswith("I") or image.mode == "F":
        return np.repeat(_grey_to_uint8(np.asarray(image), image.mode)[..., None], 3, axis=2)
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        canvas = Image.new("RGBA", image.size, (*background, 255))
        return np.asarray(Image.alpha_composite(canvas, image.convert("RGBA")).convert("RGB"))
    return np.asarray(image.convert("RGB"))  # L, 1, P, CMYK, YCbCr


def read_image(path: PathLike, background: RGB = WHITE, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read one image (a GIF's first frame) as uint8 (H, W, 3), EXIF-oriented, transparency over `background`."""
    src = _existing(path)
    require(src.is_file(), f"{src} is a folder, not an image; pass an image file")
    with _open_image(src, max_pixels) as image:
        return _to_rgb(ImageOps.exif_transpose(image), background)


#################################################################################
#                                   Resizing                                    #
#################################################################################


def _resize(batch: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize every frame of (F, H, W, C): INTER_AREA when shrinking, INTER_CUBIC when enlarging."""
    if batch.shape[1:3] == (height, width):
        return batch.copy()  # pure: never hand back the caller's array
    shrink = height <= batch.shape[1] and width <= batch.shape[2]
    interpolation = cv2.INTER_AREA if shrink else cv2.INTER_CUBIC
    resized = [cv2.resize(np.ascontiguousarray(f), (width, height), interpolation=interpolation) for f in batch]
    return np.stack(resized).reshape(len(batch), height, width, -1)  # cv2 drops a single channel axis


def _centre_crop(batch: np.ndarray, aspect: float) -> np.ndarray:
    """The largest centred window of (F, H, W, C) with width / height == `aspect`."""
    height, width = batch.shape[1:3]
    if width > height * aspect:
        crop = max(1, round(height * aspect))
        left = (width - crop) // 2
        return batch[:, :, left : left + crop]
    crop = max(1, round(width / aspect))
    top = (height - crop) // 2
    return batch[:, top : top + crop]


def resize_frames(frames: np.ndarray, height: int, width: int, policy: str = "crop") -> np.ndarray:
    """Resize (F, H, W, C) or (H, W, C) to `height` x `width`: centre `crop`, black `pad`, or `stretch`."""
    require(policy in RESIZE_POLICIES, f"unknown resize policy {policy!r}; use one of {', '.join(RESIZE_POLICIES)}")
    require(height >= 1 and width >= 1, f"target size must be positive, got {height}x{width}")
    require(frames.ndim in (3, 4), f"frames must be (F, H, W, C) or (H, W, C), got shape {tuple(frames.shape)}")
    batch = frames[None] if frames.ndim == 3 else frames
    if policy == "crop":
        out = _resize(_centre_crop(batch, width / height), height, width)
    elif policy == "stretch":
        out = _resize(batch, height, width)
    else:  # pad: fit inside, centre, black borders (black reads as "no content"; an edge mean would not)
        scale = min(height / batch.shape[1], width / batch.shape[2])
        inner_h = min(height, max(1, round(batch.shape[1] * scale)))
        inner_w = min(width, max(1, round(batch.shape[2] * scale)))
        top, left = (height - inner_h) // 2, (width - inner_w) // 2
        out = np.zeros((len(batch), height, width, batch.shape[3]), batch.dtype)
        out[:, top : top + inner_h, left : left + inner_w] = _resize(batch, inner_h, inner_w)
    return out[0] if frames.ndim == 3 else out


#################################################################################
#                          Choosing and probing sources                         #
#################################################################################


def select_frames(video: np.ndarray, start: int = 0, stride: int = 1, max_frames: int | None = None) -> np.ndarray:
    """Frames start, start + stride, ... (at most `max_frames`) of uint8 (F, H, W, 3), as `read_video` picks them."""
    ok = isinstance(video, np.ndarray) and video.dtype == np.uint8 and video.ndim == 4 and video.shape[-1] == 3
    require(ok, f"the source must be a video file, a folder of frames or uint8 (F, H, W, 3) frames; got "
                f"{getattr(video, 'dtype', type(video).__name__)} {getattr(video, 'shape', '')}")
    require(stride >= 1 and start >= 0, f"--stride must be >= 1 and --start >= 0 (got {stride}, {start})")
    require(len(video) > start, f"--start {start} is beyond the end of the source ({len(video)} frames)")
    return video[start::stride][:max_frames]


def read_frames(video, start: int, stride: int, max_frames: int | None) -> tuple[np.ndarray, float | None]:
    """The chosen frames of a file, folder or array, and their fps (None for an array)."""
    if isinstance(video, np.ndarray):
        return select_frames(video, start, stride, max_frames), None
    require(isinstance(video, (str, os.PathLike)), f"the source must be a path or uint8 frames, got {type(video).__name__}")
    return read_video(video, max_frames=max_frames, stride=stride, start=start)


def source_size(video, start: int = 0, stride: int = 1, max_frames: int | None = None) -> tuple[int | None, int, int] | None:
    """(frames that will be read, or None when the file does not say; height; width) from headers only.

    None when the source cannot be probed: `read_video` then reads it and reports what is wrong.
    """
    if isinstance(video, np.ndarray):
        return len(select_frames(video, start, stride, max_frames)), video.shape[1], video.shape[2]
    try:
        with warnings.catch_warnings():  # an oversized image: read_video refuses it in one line, without this warning
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            count, height, width = probe(Path(video).expanduser())
    except Exception:  # a damaged file: read_video gives the one-line reason
        return None
    if count is not None:
        count = len(range(start, count, stride))
        count = count if max_frames is None else min(count, max_frames)
    return count, height, width


def probe(src: Path) -> tuple[int | None, int, int]:
    """(frame count or None, height, width) of a folder, animation, container or image, from headers only."""
    if src.is_dir():
        files = sorted(p for p in src.iterdir() if p.suffix.lower() in IMAGE_EXTS and not p.name.startswith("."))
        with Image.open(files[0]) as im:
            return len(files), im.height, im.width
    suffix = src.suffix.lower()
    if suffix in CONTAINER_EXTS:
        with _capture(src) as capture:  # quiet as read_video: its error is the one to show
            count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
            height, width = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)), int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
        if height <= 0 or width <= 0:
            raise ValueError("no size in the header")
        return (count if count > 0 else None), height, width
    with Image.open(src) as im:
        return getattr(im, "n_frames", 1), im.height, im.width
