"""Properties of kinema.video_io on tiny synthetic clips: round trips, atomic writes, clear errors."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from kinema import video_io
from kinema.errors import KinemaError
from kinema.video_io import (
    check_output_path,
    output_format,
    read_image,
    read_video,
    resize_frames,
    sidecar_path,
    write_json_atomic,
    write_sidecar,
    write_video,
)

F, H, W = 5, 32, 48


def gradient_clip(frames: int = F, height: int = H, width: int = W) -> np.ndarray:
    """Smooth moving colour ramps: what lossy codecs and palettes are built for."""
    t, y, x = np.meshgrid(np.arange(frames), np.arange(height), np.arange(width), indexing="ij")
    return np.stack([(x * 4 + t * 8) % 256, (y * 6) % 256, (x + y) * 2 + t * 10], axis=-1).astype(np.uint8)


def noise_clip(seed: int = 0) -> np.ndarray:
    """Random pixels: only lossless formats bring these back exactly."""
    return np.random.default_rng(seed).integers(0, 256, (F, H, W, 3), dtype=np.uint8)


def flat_clip(count: int) -> np.ndarray:
    """Frame i is filled with grey level 20 * i, so a frame's index can be read off its mean."""
    return np.stack([np.full((16, 16, 3), 20 * i, np.uint8) for i in range(count)])


def frame_ids(frames: np.ndarray) -> list[int]:
    """Invert `flat_clip`."""
    return [int(round(f.mean() / 20)) for f in frames]


def mae(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


####################################### round trips #######################################


@pytest.mark.parametrize("name", ["frames", "clip.webp"])
def test_lossless_round_trip_is_exact(tmp_path, name):
    clip = noise_clip()
    out = write_video(tmp_path / name, clip, fps=8)
    frames, fps = read_video(out)
    assert frames.dtype == np.uint8 and np.array_equal(frames, clip)
    assert fps == pytest.approx(8.0)


def test_png_folder_layout(tmp_path):
    out = write_video(tmp_path / "frames", noise_clip(), fps=8)
    assert out.is_dir() and sorted(os.listdir(out)) == [f"frame_{i:05d}.png" for i in range(F)]


def test_gif_round_trip_is_close(tmp_path):
    clip = gradient_clip()
    frames, fps = read_video(write_video(tmp_path / "clip.gif", clip, fps=8))
    assert frames.shape == clip.shape and mae(frames, clip) < 8
    assert fps == pytest.approx(8.0, rel=0.05)


def test_gif_merges_identical_frames_but_keeps_duration(tmp_path):
    clip = np.repeat(gradient_clip(1), 4, axis=0)
    frames, fps = read_video(write_video(tmp_path / "still.gif", clip, fps=8))
    assert len(frames) == 1 and len(frames) / fps == pytest.approx(4 / 8, rel=0.05)


@pytest.mark.parametrize("height,width", [(H, W), (33, 47)])
def test_mp4_round_trip(tmp_path, height, width):
    clip = gradient_clip(height=height, width=width)
    frames, fps = read_video(write_video(tmp_path / "clip.mp4", clip, fps=8))
    assert frames.shape == (F, height + height % 2, width + width % 2, 3)  # odd sizes padded to even
    assert mae(frames[:, :height, :width], clip) < 12
    assert fps == 8.0


def test_mp4_fps_and_quality(tmp_path):
    low = write_video(tmp_path / "low.mp4", gradient_clip(), fps=24, quality=10)
    high = write_video(tmp_path / "high.mp4", gradient_clip(), fps=24)
    assert read_video(low)[1] == 24.0 and low.stat().st_size < high.stat().st_size


def test_single_image_is_one_frame(tmp_path):
    Image.fromarray(noise_clip()[0]).save(tmp_path / "a.png")
    frames, fps = read_video(tmp_path / "a.png")
    assert frames.shape == (1, H, W, 3) and fps == 8.0


####################################### atomic writes #######################################

FORMATS = ["clip.mp4", "clip.gif", "clip.webp", "frames"]


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
@pytest.mark.parametrize("name", FORMATS)
def test_failed_write_leaves_nothing(tmp_path, monkeypatch, name, error):
    fmt = output_format(name)
    real = video_io._ENCODERS[fmt]

    def encode_then_fail(tmp, frames, fps, quality):
        real(tmp, frames[:2], fps, quality)  # a partial output exists when the failure hits
        raise error("simulated failure")

    monkeypatch.setitem(video_io._ENCODERS, fmt, encode_then_fail)
    with pytest.raises(error):
        write_video(tmp_path / name, gradient_clip(), fps=8)
    assert os.listdir(tmp_path) == []


class InterruptedAtFrame2(np.ndarray):
    """A clip whose iteration raises KeyboardInterrupt at frame 2, i.e. inside the encoder loop."""

    def __iter__(self):
        for i, frame in enumerate(np.asarray(self)):
            if i == 2:
                raise KeyboardInterrupt
            yield frame


@pytest.mark.parametrize("name", FORMATS)
def test_interrupt_inside_the_encoder_leaves_nothing(tmp_path, name):
    with pytest.raises(KeyboardInterrupt):
        write_video(tmp_path / name, gradient_clip().view(InterruptedAtFrame2), fps=8)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("name", ["clip.webp", "frames"])
def test_failed_overwrite_keeps_the_old_output(tmp_path, monkeypatch, name):
    old = noise_clip(1)
    write_video(tmp_path / name, old, fps=8)
    fmt = output_format(name)

    def fail(tmp, frames, fps, quality):
        raise KeyboardInterrupt

    monkeypatch.setitem(video_io._ENCODERS, fmt, fail)
    with pytest.raises(KeyboardInterrupt):
        write_video(tmp_path / name, noise_clip(2), fps=8, overwrite=True)
    assert os.listdir(tmp_path) == [name] and np.array_equal(read_video(tmp_path / name)[0], old)


@pytest.mark.parametrize("name", ["clip.gif", "frames"])
def test_overwrite_refused_then_accepted(tmp_path, name):
    write_video(tmp_path / name, noise_clip(), fps=8)
    with pytest.raises(KinemaError, match="--overwrite"):
        write_video(tmp_path / name, noise_clip()[:3], fps=8)
    write_video(tmp_path / name, noise_clip()[:3], fps=8, overwrite=True)
    assert len(read_video(tmp_path / name)[0]) == 3  # a replaced folder keeps no stale frames
    assert os.listdir(tmp_path) == [name]


@pytest.mark.parametrize(
    "frames,fps",
    [
        (np.zeros((F, H, W, 3), np.float32), 8),
        (np.zeros((H, W, 3), np.uint8), 8),
        (np.zeros((0, H, W, 3), np.uint8), 8),
        (np.zeros((F, H, W, 4), np.uint8), 8),
        (np.zeros((F, H, W, 3), np.uint8), 0),
    ],
)
def test_bad_frames_or_fps_rejected_before_writing(tmp_path, frames, fps):
    with pytest.raises(KinemaError):
        write_video(tmp_path / "clip.mp4", frames, fps=fps)
    assert os.listdir(tmp_path) == []


####################################### output paths #######################################


@pytest.mark.parametrize(
    "name,fmt", [("a.mp4", "mp4"), ("a.GIF", "gif"), ("a.webp", "webp"), ("frames", "png"), ("run.mp4/", "png")]
)
def test_output_format(name, fmt):
    assert output_format(name) == fmt


def test_check_output_path_errors(tmp_path):
    (tmp_path / "taken.mp4").write_bytes(b"x")
    (tmp_path / "dir.mp4").mkdir()
    (tmp_path / "file").write_bytes(b"x")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    cases = {
        "clip.avi": "extension",
        "missing/clip.mp4": "create it first",
        "taken.mp4": "--overwrite",
        "dir.mp4": "existing folder",
        "file": "existing file",
    }
    for name, message in cases.items():
        with pytest.raises(KinemaError, match=message):
            check_output_path(tmp_path / name)
    with pytest.raises(KinemaError, match="other than frame_"):
        check_output_path(tmp_path / "mine", overwrite=True)
    assert check_output_path(tmp_path / "taken.mp4", overwrite=True) == (tmp_path / "taken.mp4").resolve()
    assert check_output_path(tmp_path / "new.gif").is_absolute()


def test_sidecar(tmp_path):
    assert sidecar_path("out/clip.mp4").name == "clip.mp4.json"
    assert sidecar_path("out/frames/").name == "frames.json"
    record = {"prompt": "a red circle", "seed": 3, "fps": 8.0}
    path = write_sidecar(tmp_path / "clip.mp4", record)
    assert json.loads(path.read_text()) == record
    with pytest.raises(KinemaError, match="--overwrite"):
        write_sidecar(tmp_path / "clip.mp4", record)
    write_sidecar(tmp_path / "clip.mp4", {"seed": 4}, overwrite=True)
    with pytest.raises(TypeError):
        write_json_atomic(tmp_path / "bad.json", {"x": object()})
    assert os.listdir(tmp_path) == ["clip.mp4.json"] and json.loads(path.read_text()) == {"seed": 4}


####################################### reading errors #######################################


def test_read_video_errors(tmp_path):
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "text.mp4").write_text("this is not a video\n" * 20)
    (tmp_path / "text.gif").write_text("this is not a gif\n" * 20)
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "empty_dir").mkdir()
    cases = {
        "empty.mp4": "empty",
        "text.mp4": "truncated or not a video",
        "text.gif": "could not read",
        "notes.txt": "unknown extension",
        "missing.mp4": "does not exist",
        "empty_dir": "no image files",
    }
    for name, message in cases.items():
        with pytest.raises(KinemaError, match=message):
            read_video(tmp_path / name)


@pytest.mark.parametrize("name", ["clip.mp4", "clip.gif", "clip.webp"])
def test_truncated_file_returns_frames_or_kinema_error(tmp_path, name):
    clip = np.random.default_rng(0).integers(0, 256, (24, 64, 64, 3), dtype=np.uint8)
    data = write_video(tmp_path / name, clip, fps=8).read_bytes()
    for fraction in (0.1, 0.5, 0.9):
        cut = tmp_path / f"cut{os.path.splitext(name)[1]}"
        cut.write_bytes(data[: int(len(data) * fraction)])
        try:
            frames, _ = read_video(cut)
        except KinemaError as e:
            assert "\n" not in str(e)
        else:  # mp4 with the index at the front decodes the frames that survived the cut
            assert frames.dtype == np.uint8 and frames.shape[1:] == (64, 64, 3) and 1 <= len(frames) < 24


def test_folder_frame_sizes_must_match(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "1.png")
    Image.new("RGB", (8, 9)).save(tmp_path / "2.png")
    with pytest.raises(KinemaError, match="2.png"):
        read_video(tmp_path)


def test_folder_natural_order_ignores_other_files(tmp_path):
    for i in (10, 2, 1):
        Image.fromarray(flat_clip(11)[i]).save(tmp_path / f"f{i}.png")
    (tmp_path / "notes.txt").write_text("not a frame")
    (tmp_path / ".hidden.png").write_bytes(b"")
    assert frame_ids(read_video(tmp_path)[0]) == [1, 2, 10]


@pytest.mark.parametrize("kwargs", [{"stride": 0}, {"start": -1}, {"max_frames": 0}, {"start": 10}])
def test_bad_selection(tmp_path, kwargs):
    folder = write_video(tmp_path / "frames", flat_clip(10), fps=8)
    with pytest.raises(KinemaError):
        read_video(folder, **kwargs)


####################################### frame selection #######################################


@pytest.fixture(scope="module")
def ten_frames(tmp_path_factory):
    folder = tmp_path_factory.mktemp("select")
    clip = flat_clip(10)
    return {name: write_video(folder / name, clip, fps=8) for name in ("frames", "clip.mp4", "clip.webp")}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(start=st.integers(0, 9), stride=st.integers(1, 4), max_frames=st.none() | st.integers(1, 5))
def test_selection_matches_slicing_on_png_folder(ten_frames, start, stride, max_frames):
    frames, fps = read_video(ten_frames["frames"], max_frames=max_frames, stride=stride, start=start)
    assert frame_ids(frames) == list(range(10))[start::stride][:max_frames]
    assert fps == 8.0 / stride


@pytest.mark.parametrize("name", ["clip.mp4", "clip.webp"])
def test_selection_on_decoded_files(ten_frames, name):
    frames, fps = read_video(ten_frames[name], max_frames=3, stride=3, start=1)
    assert frame_ids(frames) == [1, 4, 7] and fps == pytest.approx(8.0 / 3)
    with pytest.raises(KinemaError, match="beyond the end"):
        read_video(ten_frames[name], start=10)


####################################### images #######################################


def test_read_image_alpha_modes(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0], rgba[:, :2, 3] = 255, 255  # red, opaque on the left half only
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    image = read_image(tmp_path / "rgba.png")
    assert (image[:, :2] == (255, 0, 0)).all() and (image[:, 2:] == 255).all()
    assert (read_image(tmp_path / "rgba.png", background=(0, 0, 0))[:, 2:] == (0, 0, 0)).all()

    Image.fromarray(np.dstack([np.full((4, 4), 0, np.uint8), np.full((4, 4), 128, np.uint8)])).save(tmp_path / "la.png")
    assert np.abs(read_image(tmp_path / "la.png").astype(int) - 127).max() <= 1  # black at half alpha over white

    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 255, 0, 0, 0, 255] + [0] * 762)
    palette.putpixel((0, 0), 0)
    palette.save(tmp_path / "p.png", transparency=0)
    image = read_image(tmp_path / "p.png")
    assert tuple(image[0, 0]) == (255, 255, 255) and tuple(image[1, 1]) == (0, 0, 255)


def test_read_image_grey_16_bit_and_cmyk(tmp_path):
    Image.fromarray(np.full((4, 4), 77, np.uint8)).save(tmp_path / "l.png")
    assert (read_image(tmp_path / "l.png") == 77).all()

    deep = np.array([[0, 32768, 65535, 257]], np.uint16)
    Image.fromarray(deep).save(tmp_path / "i16.png")
    assert Image.open(tmp_path / "i16.png").mode.startswith("I")
    assert read_image(tmp_path / "i16.png")[0, :, 0].tolist() == [0, 128, 255, 1]  # scaled, not clipped

    Image.new("CMYK", (4, 4), (0, 255, 255, 0)).save(tmp_path / "cmyk.tif")
    assert (read_image(tmp_path / "cmyk.tif") == (255, 0, 0)).all()


def test_read_image_applies_exif_orientation(tmp_path):
    image = Image.new("RGB", (20, 10), (200, 30, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    image.save(tmp_path / "rotated.jpg", exif=exif)
    assert read_image(tmp_path / "rotated.jpg").shape == (20, 10, 3)


def test_read_image_guards(tmp_path, monkeypatch):
    Image.new("RGB", (20, 10)).save(tmp_path / "big.png")
    with pytest.raises(KinemaError, match="max_pixels=100"):
        read_image(tmp_path / "big.png", max_pixels=100)
    assert read_image(tmp_path / "big.png", max_pixels=200).shape == (10, 20, 3)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)  # Pillow's own decompression-bomb limit
    with pytest.raises(KinemaError, match="too large"):
        read_image(tmp_path / "big.png")
    monkeypatch.undo()
    (tmp_path / "text.png").write_text("not an image")
    (tmp_path / "empty.png").write_bytes(b"")
    png = (tmp_path / "big.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(png[: len(png) // 2])
    for name in ("text.png", "empty.png", "cut.png", "missing.png"):
        with pytest.raises(KinemaError):
            read_image(tmp_path / name)


####################################### resizing #######################################


def test_crop_keeps_the_centre():
    frames = np.zeros((2, 32, 64, 3), np.uint8)
    frames[:, :, 16:48] = (0, 0, 255)  # blue centre square, black sides
    out = resize_frames(frames, 16, 16, policy="crop")
    assert out.shape == (2, 16, 16, 3) and (out == (0, 0, 255)).all()


def test_pad_keeps_all_content_with_black_borders():
    frames = np.full((2, 32, 64, 3), 255, np.uint8)
    out = resize_frames(frames, 32, 32, policy="pad")
    assert out.shape == (2, 32, 32, 3)
    assert (out[:, :8] == 0).all() and (out[:, 24:] == 0).all() and (out[:, 8:24] == 255).all()


def test_stretch_and_single_frame():
    image = gradient_clip(1)[0]
    out = resize_frames(image, 20, 70, policy="stretch")
    assert out.shape == (20, 70, 3) and out.dtype == np.uint8
    assert resize_frames(image, H, W) is not image and np.array_equal(resize_frames(image, H, W), image)
    with pytest.raises(KinemaError, match="policy"):
        resize_frames(image, 8, 8, policy="zoom")


@settings(max_examples=40, deadline=None)
@given(
    size=st.tuples(st.integers(1, 40), st.integers(1, 40)),
    target=st.tuples(st.integers(1, 40), st.integers(1, 40)),
    policy=st.sampled_from(["crop", "pad", "stretch"]),
    value=st.integers(0, 255),
)
def test_resize_shape_and_flat_colour(size, target, policy, value):
    frames = np.full((2, *size, 3), value, np.uint8)
    out = resize_frames(frames, *target, policy=policy)
    assert out.shape == (2, *target, 3) and out.dtype == np.uint8
    if policy != "pad":
        assert (out == value).all()
    else:
        assert set(np.unique(out)) <= {0, value} and (out == value).any()
