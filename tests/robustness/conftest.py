"""The robustness suite's shared pieces: the CLI run in-process, damaged inputs, and the contract checks.

The contract every command keeps, whatever it is given (issue 9): it ends with exit status 0, or 2 and
one line `kinema...: error: ...` on stderr (warning lines may come before it), never a traceback, and
leaves no output, temporary or partial file behind unless it succeeded.
"""

from __future__ import annotations

import struct
import subprocess
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

PROMPT = "a red circle moving right on a blue background"
MEMORY_CAP = 2 * 2**30  # the free memory the suite reports to kinema: whatever the arguments, no test eats the machine


@dataclass
class Outcome:
    """Exit status and captured streams of one in-process `kinema` run."""

    code: int
    err: str
    out: str


@pytest.fixture
def kinema(capsys):
    """Run `kinema ARGV` in-process (argparse's SystemExit caught); an uncaught exception fails the test."""
    from kinema.cli import main

    def run(*argv) -> Outcome:
        capsys.readouterr()
        with warnings.catch_warnings(record=True) as caught:  # Python prints these on stderr: part of the output
            warnings.simplefilter("always")
            try:
                code = main([str(a) for a in argv])
            except SystemExit as e:
                code = e.code
        captured = capsys.readouterr()
        shown = "".join(f"{w.filename}:{w.lineno}: {w.category.__name__}: {w.message}\n" for w in caught)
        return Outcome(code, shown + captured.err, captured.out)

    return run


@pytest.fixture(autouse=True)
def capped_memory(monkeypatch):
    """kinema's free-memory probe reports at most MEMORY_CAP, so a huge request is refused, not attempted."""
    from kinema import resources

    real = resources.available_memory

    def capped(device="cpu"):
        free = real(device)
        return MEMORY_CAP if free is None else min(free, MEMORY_CAP)

    monkeypatch.setattr(resources, "available_memory", capped)


def listing(folder: Path) -> set[str]:
    """Every file and folder under `folder` (hidden ones included), as relative paths."""
    return {str(p.relative_to(folder)) for p in Path(folder).rglob("*")}


def check_contract(result: Outcome, before: set[str], after: set[str], outputs: set[str] = frozenset()) -> None:
    """The contract of the module docstring; `outputs` are the names a success may add."""
    assert "Traceback" not in result.err, result.err
    assert result.code in (0, 2), (result.code, result.err)
    lines = [line for line in result.err.splitlines() if line.strip()]
    if result.code == 0:
        assert not any(": error:" in line or "Warning: " in line for line in lines), result.err
        added = after - before
        assert added <= set(outputs), f"unexpected files {sorted(added - set(outputs))}"
        assert not any(".tmp-" in name or ".old-" in name for name in after), sorted(after)
        return
    errors = [line for line in lines if not line.startswith("kinema: warning:")]
    assert len(errors) == 1 and errors[0].startswith("kinema") and ": error: " in errors[0], result.err
    assert after == before, f"left behind: {sorted(after ^ before)}"


#################################################################################
#                                Damaged inputs                                 #
#################################################################################


def gradient_clip(frames: int, height: int, width: int) -> np.ndarray:
    """Smooth moving colour ramps, uint8 (F, H, W, 3)."""
    t, y, x = np.meshgrid(np.arange(frames), np.arange(height), np.arange(width), indexing="ij")
    return np.stack([(x * 8 + t * 16) % 256, (y * 6) % 256, (x + y + t * 10) % 256], axis=-1).astype(np.uint8)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_declaring(width: int, height: int, idat: bytes = b"", end: bool = True) -> bytes:
    """A PNG whose header declares `width` x `height` RGB, with the given compressed data (none by default)."""
    head = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    body = _png_chunk(b"IDAT", idat) if idat else b""
    return head + body + (_png_chunk(b"IEND", b"") if end else b"")


def _ffmpeg(*args: str) -> None:
    import imageio_ffmpeg

    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", *args], check=True, timeout=60)


def _truncate(src: Path, dst: Path, fraction: float = 0.5) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: max(1, int(len(data) * fraction))])
    return dst


def _save(image: Image.Image, path: Path, **kw) -> Path:
    image.save(path, **kw)
    return path


def build_inputs(root: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    """(damaged or unusual images, damaged or unusual videos), by name: every file a user might hand kinema."""
    from kinema import video_io

    root.mkdir(parents=True, exist_ok=True)
    rgb = gradient_clip(1, 24, 32)[0]
    img = Image.fromarray(rgb)
    good = {fmt: _save(img, root / f"good.{fmt}") for fmt in ("png", "jpg", "gif", "webp")}
    clip = video_io.write_video(root / "clip8.mp4", gradient_clip(8, 32, 32), fps=8)
    gif = video_io.write_video(root / "clip8.gif", gradient_clip(8, 32, 32), fps=8)
    webp = video_io.write_video(root / "clip8.webp", gradient_clip(8, 32, 32), fps=8)

    broken: dict[str, Path] = {}
    for ext in ("mp4", "gif", "png", "jpg", "webp", "webm", "avi"):  # zero bytes, and text in disguise
        (root / f"empty.{ext}").write_bytes(b"")
        broken[f"zero-byte .{ext}"] = root / f"empty.{ext}"
        (root / f"text.{ext}").write_text("this is not a video\n" * 20)
        broken[f"text named .{ext}"] = root / f"text.{ext}"
    for name, src in [*((f"truncated .{k}", v) for k, v in good.items()), ("truncated .mp4", clip),
                      ("truncated animated .gif", gif), ("truncated animated .webp", webp)]:
        for fraction in (0.5, 0.1):
            broken[f"{name} ({fraction:.0%})"] = _truncate(src, root / f"cut{int(fraction * 100)}-{src.name}", fraction)
    (root / "header.png").write_bytes(png_declaring(32, 24))  # signature + IHDR + IEND, no pixels
    (root / "header-noend.png").write_bytes(png_declaring(32, 24, end=False))
    (root / "header.jpg").write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00")
    (root / "header.gif").write_bytes(b"GIF89a" + struct.pack("<HHBBB", 32, 24, 0, 0, 0))
    (root / "header.mp4").write_bytes(clip.read_bytes()[:32])  # the ftyp box only
    (root / "header.webp").write_bytes(b"RIFF\x24\x00\x00\x00WEBPVP8 ")
    broken.update({f"header-only {p.name}": p for p in sorted(root.glob("header*"))})
    (root / "huge.png").write_bytes(png_declaring(100_000, 100_000, zlib.compress(b"\x00" * 64)))
    (root / "huge-wide.png").write_bytes(png_declaring(1_000_000, 1, zlib.compress(b"\x00" * 64)))
    (root / "huge.gif").write_bytes(b"GIF89a" + struct.pack("<HHBBB", 65535, 65535, 0, 0, 0) + b";")
    (root / "zero-size.png").write_bytes(png_declaring(0, 0, zlib.compress(b"\x00")))
    tiny_gif = root / "canvas.gif"  # a 1x1 frame on a declared 10000x10000 canvas, which Pillow would allocate
    img.resize((1, 1)).save(tiny_gif)
    tiny_gif.write_bytes(tiny_gif.read_bytes()[:6] + struct.pack("<HH", 10_000, 10_000) + tiny_gif.read_bytes()[10:])
    broken.update({f"declared size {p.name}": p for p in (root / "huge.png", root / "huge-wide.png", root / "huge.gif",
                                                            root / "zero-size.png", tiny_gif)})
    garbage = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    (root / "noise.mp4").write_bytes(clip.read_bytes()[:64] + garbage)  # a valid start, then random bytes
    broken["valid header then noise .mp4"] = root / "noise.mp4"
    (root / "nonframes").mkdir()
    (root / "nonframes" / "notes.txt").write_text("no frames here")
    (root / "emptydir").mkdir()
    (root / "folder.mp4").mkdir()
    mixed = root / "mixed-sizes"
    mixed.mkdir()
    _save(img, mixed / "frame_00000.png")
    _save(img.resize((16, 16)), mixed / "frame_00001.png")
    bad_frame = root / "bad-frame"
    bad_frame.mkdir()
    _save(img, bad_frame / "frame_00000.png")
    _truncate(good["png"], bad_frame / "frame_00001.png", 0.3)
    broken.update({"folder of no images": root / "nonframes", "empty folder": root / "emptydir",
                   "folder named .mp4": root / "folder.mp4", "frames of two sizes": mixed,
                   "folder with a truncated frame": bad_frame, "missing file": root / "absent.mp4",
                   "unknown extension": _save(img, root / "image.xyz", format="PNG")})

    images = dict(broken)  # all of the above are bad images too
    images.update(_image_modes(root, img))
    videos = dict(broken)
    videos.update(_odd_videos(root, rgb))
    return images, videos


def _image_modes(root: Path, img: Image.Image) -> dict[str, Path]:
    """Valid images in every mode and shape that kinema must read: grey, alpha, 16-bit, CMYK, paletted, tiny."""
    import cv2

    modes = root / "modes"
    modes.mkdir()
    grey16 = np.linspace(0, 65535, 24 * 32).reshape(24, 32).astype(np.uint16)
    rgb16 = np.repeat(grey16[..., None], 3, axis=2)
    rgb16[..., 1] //= 2
    cv2.imwrite(str(modes / "rgb16.png"), rgb16)
    out = {
        "grey L": _save(img.convert("L"), modes / "grey.png"),
        "grey+alpha LA": _save(img.convert("LA"), modes / "la.png"),
        "RGBA": _save(img.convert("RGBA"), modes / "rgba.png"),
        "RGBA webp": _save(img.convert("RGBA"), modes / "rgba.webp"),
        "1-bit": _save(img.convert("1"), modes / "bits.png"),
        "paletted P": _save(img.convert("P"), modes / "pal.png"),
        "paletted with transparency": _save(img.convert("P"), modes / "pal-t.png", transparency=0),
        "16-bit grey": _save(Image.fromarray(grey16), modes / "grey16.png"),
        "16-bit RGB": modes / "rgb16.png",
        "32-bit float tiff": _save(Image.fromarray(grey16.astype(np.float32) / 65535), modes / "float.tif"),
        "CMYK jpeg": _save(img.convert("CMYK"), modes / "cmyk.jpg"),
        "1x1": _save(img.resize((1, 1)), modes / "one.png"),
        "300x1 strip": _save(img.resize((300, 1)), modes / "strip.png"),
        "odd 17x13": _save(img.resize((17, 13)), modes / "odd.bmp"),
    }
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90
    out["EXIF-rotated jpeg"] = _save(img, modes / "rotated.jpg", exif=exif)
    return out


def _odd_videos(root: Path, rgb: np.ndarray) -> dict[str, Path]:
    """Valid videos that are short, odd-sized or irregular in time."""
    from kinema import video_io

    vids = root / "videos"
    vids.mkdir()
    frames_dir = vids / "frames"
    video_io.write_video(frames_dir, gradient_clip(3, 24, 32), fps=8)
    vfr_gif = vids / "vfr.gif"
    images = [Image.fromarray(f) for f in gradient_clip(5, 13, 17)]
    images[0].save(vfr_gif, save_all=True, append_images=images[1:], duration=[20, 300, 40, 1000, 60], loop=0)
    _ffmpeg("-f", "lavfi", "-i", "testsrc=size=32x24:rate=10", "-vf", "setpts='if(lt(N,3),N*2,N*7)'",
            "-fps_mode", "vfr", "-frames:v", "6", "-pix_fmt", "yuv420p", str(vids / "vfr.mp4"))
    _ffmpeg("-f", "lavfi", "-i", "testsrc=size=17x13:rate=8", "-frames:v", "5", "-c:v", "libx264",
            "-pix_fmt", "yuv444p", str(vids / "odd.mp4"))
    _ffmpeg("-f", "lavfi", "-i", "testsrc=size=33x19:rate=8", "-frames:v", "4", "-c:v", "mjpeg", str(vids / "odd.avi"))
    return {
        "one-frame .mp4": video_io.write_video(vids / "one.mp4", gradient_clip(1, 24, 32), fps=8),
        "one-frame .gif": video_io.write_video(vids / "one.gif", gradient_clip(1, 24, 32), fps=8),
        "single image as a video": _save(Image.fromarray(rgb), vids / "still.png"),
        "folder of 3 frames": frames_dir,
        "variable-frame-rate .gif": vfr_gif,
        "variable-frame-rate .mp4": vids / "vfr.mp4",
        "odd-sized 17x13 .mp4": vids / "odd.mp4",
        "odd-sized 33x19 .avi": vids / "odd.avi",
        "odd-sized 17x13 .gif": video_io.write_video(vids / "odd.gif", gradient_clip(4, 13, 17), fps=8),
        "animated .webp": video_io.write_video(vids / "anim.webp", gradient_clip(3, 24, 32), fps=8),
    }


@pytest.fixture(scope="session")
def bad_inputs(tmp_path_factory):
    """(images, videos) from `build_inputs`, built once."""
    return build_inputs(tmp_path_factory.mktemp("inputs"))
