"""Image-to-video on tiny random components: frame-0 fidelity, last image, resize policy, formats, errors.

A random tiny VAE reconstructs images badly, so fidelity is measured against the VAE's own
round trip `decode(encode(image))`: the pipeline must add no error beyond the VAE's. The quality
targets of the issue (PSNR vs the input itself) need the trained default model.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import kinema
from kinema import jobs
from kinema.cli import main
from kinema.errors import KinemaError
from kinema.models.conditions import anchor_condition, augment, to_video
from kinema.models.seams import to_uint8
from kinema.pipelines.image_to_video import as_rgb, check_frame_conditions, check_image_noise, prepare_image
from kinema.video_io import read_video, resize_frames

PROMPT = "a red circle moving right on a blue background"
SMALL = dict(frames=4, height=16, width=16, steps=2, progress=False)
RED, BLUE, WHITE = (200, 30, 30), (30, 40, 210), (255, 255, 255)


@pytest.fixture(scope="module")
def i2v_dir(trained_like_model, tmp_path_factory):
    """The randomised tiny model, its index saying it was trained for every frame condition."""
    path = tmp_path_factory.mktemp("models") / "tiny-i2v"
    shutil.copytree(trained_like_model.path, path)
    index = json.loads((path / "kinema.json").read_text())
    index["frame_conditions"] = ["first", "first_k", "first_last"]
    (path / "kinema.json").write_text(json.dumps(index))
    return path


@pytest.fixture(scope="module")
def i2v_model(i2v_dir):
    return kinema.load(i2v_dir, device="cpu", dtype="float32")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def vae_round_trip(model, image: np.ndarray) -> np.ndarray:
    """decode(encode(image)) as uint8 (H, W, 3): the best any latent pipeline can do."""
    with torch.inference_mode():
        return to_uint8(model.vae.decode(model.vae.encode(to_video(image))))[0]


def smooth_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A gradient background with a coloured disc: structure a VAE round trip can show."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.stack([x, y, 1 - x], axis=-1) * 160 + 40
    cy, cx = rng.uniform(0.3, 0.7, 2) * (h, w)
    img[(np.mgrid[0:h, 0:w][0] - cy) ** 2 + (np.mgrid[0:h, 0:w][1] - cx) ** 2 < (min(h, w) / 4) ** 2] = RED
    return img.round().astype(np.uint8)


def halves(h: int, w: int, top=RED, bottom=BLUE) -> np.ndarray:
    img = np.empty((h, w, 3), np.uint8)
    img[: h // 2], img[h // 2 :] = top, bottom
    return img


####################################### fidelity #######################################


def test_frame0_reproduces_the_image_up_to_the_vae(i2v_model):
    image = smooth_image(16, 16)
    out = kinema.animate(image, PROMPT, model=i2v_model, **SMALL)
    assert out.shape == (4, 16, 16, 3) and out.dtype == np.uint8
    assert psnr(out[0], vae_round_trip(i2v_model, image)) >= 45  # batch vs single-frame decode: <= 1 level off
    assert np.abs(out[0].astype(int) - vae_round_trip(i2v_model, image)).max() <= 1


def test_image_noise_reaches_the_denoiser_but_not_frame0(i2v_model):
    image = smooth_image(16, 16, seed=1)
    clean = kinema.animate(image, PROMPT, model=i2v_model, image_noise=0.0, **SMALL)
    noisy = kinema.animate(image, PROMPT, model=i2v_model, image_noise=0.5, **SMALL)
    again = kinema.animate(image, PROMPT, model=i2v_model, image_noise=0.5, **SMALL)
    assert np.array_equal(clean[0], noisy[0])  # the known frame is re-injected clean
    assert not np.array_equal(clean[1:], noisy[1:])  # the augmented condition changes the motion
    assert np.array_equal(noisy, again)  # the augmentation is seeded


def test_last_image_is_the_last_frame(i2v_model):
    first, last = smooth_image(16, 16, seed=2), smooth_image(16, 16, seed=3)[::-1].copy()
    out = kinema.animate(first, PROMPT, last_image=last, model=i2v_model, **SMALL)
    assert psnr(out[0], vae_round_trip(i2v_model, first)) >= 45
    assert psnr(out[-1], vae_round_trip(i2v_model, last)) >= 45
    assert psnr(out[-1], vae_round_trip(i2v_model, first)) < 40


def test_path_pil_and_array_give_the_same_clip(i2v_model, tmp_path):
    image = smooth_image(20, 30, seed=4)
    Image.fromarray(image).save(tmp_path / "a.png")
    a = kinema.animate(tmp_path / "a.png", PROMPT, model=i2v_model, **SMALL)
    b = kinema.animate(str(tmp_path / "a.png"), PROMPT, model=i2v_model, **SMALL)
    c = kinema.animate(Image.fromarray(image), PROMPT, model=i2v_model, **SMALL)
    d = kinema.animate(image, PROMPT, model=i2v_model, **SMALL)
    assert np.array_equal(a, b) and np.array_equal(a, c) and np.array_equal(a, d)


####################################### resize policy #######################################


def test_resize_policy_is_honoured(i2v_model):
    wide = np.empty((8, 32, 3), np.uint8)
    wide[:], wide[:, :16] = BLUE, RED  # left half red, right half blue
    padded = np.zeros((16, 16, 3), np.uint8)
    padded[6:10, :8], padded[6:10, 8:] = RED, BLUE  # fit 32x8 into 16x16: a 16x4 band, black bars above and below
    assert np.array_equal(prepare_image(wide, 16, 16, "pad"), padded)
    cropped = prepare_image(wide, 16, 16, "crop")  # the centre 8x8, enlarged: no bars, red left, blue right
    assert (cropped[:, :3] == RED).all() and (cropped[:, 13:] == BLUE).all() and cropped.max(axis=(1, 2)).min() > 100

    pad = kinema.animate(wide, PROMPT, resize="pad", model=i2v_model, **SMALL)[0]
    crop = kinema.animate(wide, PROMPT, resize="crop", model=i2v_model, **SMALL)[0]
    assert psnr(pad, vae_round_trip(i2v_model, padded)) >= 45  # frame 0 carries the black bars
    assert psnr(crop, vae_round_trip(i2v_model, cropped)) >= 45
    assert psnr(crop, vae_round_trip(i2v_model, padded)) < 30  # and crop does not
    with pytest.raises(KinemaError, match="resize policy"):
        kinema.animate(wide, PROMPT, resize="fit", model=i2v_model, **SMALL)


####################################### image formats #######################################


def _exif_rotated(path):
    stored = np.empty((10, 20, 3), np.uint8)
    stored[:, :10], stored[:, 10:] = RED, BLUE  # left red, right blue as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation 6: rotate 90 degrees clockwise to display
    Image.fromarray(stored).save(path, exif=exif, quality=95, subsampling=0)
    return np.rot90(stored, k=-1)  # displayed: red on top, blue below


def _gif_first_frame(path):
    frames = [Image.fromarray(halves(16, 16)), Image.fromarray(halves(16, 16, BLUE, RED))]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100)
    return halves(16, 16)


def _rgba(path):
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., :3], rgba[:8, :, 3] = RED, 255  # opaque red on top, transparent below
    Image.fromarray(rgba, "RGBA").save(path)
    return halves(16, 16, RED, WHITE)  # composited on white


def _grey16(path):
    deep = np.tile(np.linspace(0, 65535, 16).astype(np.uint16), (16, 1))
    Image.fromarray(deep).save(path)
    return np.repeat(np.rint(deep / 257).astype(np.uint8)[..., None], 3, axis=2)  # scaled, not clipped


def _cmyk(path):
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(path, quality=95)
    return np.full((16, 16, 3), 255, np.uint8) * np.array([1, 0, 0], np.uint8)  # pure red


def _plain(fmt, **kw):
    def write(path):
        Image.fromarray(halves(16, 16)).save(path, format=fmt, **kw)
        return halves(16, 16)

    return write


FORMATS = {
    "png": ("a.png", _plain("PNG"), 0),
    "jpeg": ("a.jpg", _plain("JPEG", quality=95, subsampling=0), 16),
    "webp": ("a.webp", _plain("WEBP", lossless=True), 0),
    "gif": ("a.gif", _gif_first_frame, 0),
    "bmp": ("a.bmp", _plain("BMP"), 0),
    "tiff": ("a.tiff", _plain("TIFF"), 0),
    "rgba-png": ("rgba.png", _rgba, 0),
    "grey16-png": ("grey.png", _grey16, 0),
    "cmyk-jpeg": ("cmyk.jpg", _cmyk, 16),
    "exif-jpeg": ("exif.jpg", _exif_rotated, 16),
}


@pytest.mark.parametrize("kind", FORMATS)
def test_image_formats_end_to_end(i2v_model, tmp_path, kind):
    name, write, tolerance = FORMATS[kind]
    expected = resize_frames(write(tmp_path / name), 16, 16)
    anchor = prepare_image(tmp_path / name, 16, 16)
    assert np.abs(anchor.astype(int) - expected).max() <= tolerance  # lossy JPEG: a few levels off
    out = kinema.animate(tmp_path / name, PROMPT, model=i2v_model, frames=2, height=16, width=16, steps=1,
                         progress=False)
    assert np.abs(out[0].astype(int) - vae_round_trip(i2v_model, anchor)).max() <= 1


####################################### pure helpers #######################################


def test_one_driver_takes_the_condition_the_family_makes(i2v_model, monkeypatch):
    """image_to_video asks the model's family for its ImageCondition: `known` is what stays exact, None re-injects nothing."""
    from dataclasses import replace

    from kinema.pipelines.common import Settings
    from kinema.pipelines.image_to_video import image_to_video

    made, original = [], i2v_model.family.image_condition
    monkeypatch.setattr(i2v_model.family, "image_condition", lambda *a: made.append(original(*a)) or made[-1])
    s, image = Settings(frames=4, height=16, width=16, steps=2, seed=0), smooth_image(16, 16)
    kept = image_to_video(i2v_model, PROMPT, image, s, image_noise=0.05, progress=False)
    assert len(made) == 1 and torch.equal(kept.latents[:, :, :1], made[0].known.latents[:, :, :1])
    assert not torch.equal(made[0].cond.latents, made[0].known.latents)  # the denoiser sees the augmented copy
    monkeypatch.setattr(i2v_model.family, "image_condition", lambda *a: replace(original(*a), known=None))
    free = image_to_video(i2v_model, PROMPT, image, s, image_noise=0.05, progress=False)
    assert not torch.equal(free.latents[:, :, :1], made[0].known.latents[:, :, :1])


def test_anchor_condition_layout():
    first, last = torch.ones(1, 4, 1, 2, 3), torch.full((1, 4, 1, 2, 3), 2.0)
    c = anchor_condition(first, None, 5)
    assert c.latents.shape == (1, 4, 5, 2, 3) and c.mask.tolist() == [[1, 0, 0, 0, 0]]
    assert torch.equal(c.latents[:, :, 0], first[:, :, 0]) and c.latents[:, :, 1:].abs().sum() == 0
    c = anchor_condition(first, last, 5)
    assert c.mask.tolist() == [[1, 0, 0, 0, 1]] and torch.equal(c.latents[:, :, -1], last[:, :, 0])
    assert anchor_condition(first, None, 1).mask.tolist() == [[1]]
    with pytest.raises(KinemaError, match="2 latent frames"):
        anchor_condition(first, last, 1)


def test_augment_touches_only_known_frames_with_the_given_std():
    c = anchor_condition(torch.zeros(1, 4, 1, 32, 32), torch.zeros(1, 4, 1, 32, 32), 4)
    assert augment(c, 0.0, seed=0) is c
    a = augment(c, 0.1, seed=0)
    assert torch.equal(a.mask, c.mask) and a.latents[:, :, 1:3].abs().sum() == 0
    assert float(a.latents[:, :, [0, 3]].std()) == pytest.approx(0.1, rel=0.1)
    assert torch.equal(a.latents, augment(c, 0.1, seed=0).latents)
    assert not torch.equal(a.latents, augment(c, 0.1, seed=1).latents)


def test_check_frame_conditions_and_image_noise():
    assert check_frame_conditions(["first", "first_k", "first_last"], last_image=True) is None
    assert check_frame_conditions(["first"], last_image=False) is None
    assert "not trained" in check_frame_conditions([], last_image=False)
    for trained in ([], ["first", "first_k"]):
        with pytest.raises(KinemaError, match="--last-image needs a model trained"):
            check_frame_conditions(trained, last_image=True)
    assert check_image_noise(0) == 0.0 and check_image_noise(0.02) == 0.02
    for bad in (-0.1, 1.5, float("nan"), float("inf"), "0.1"):
        with pytest.raises(KinemaError, match="image-noise"):
            check_image_noise(bad)


def test_as_rgb_rejects_bad_arrays_and_objects(monkeypatch):
    from kinema import video_io

    for bad, message in [
        (np.zeros((8, 8, 3), np.float32), "uint8 RGB"),
        (np.zeros((8, 8, 4), np.uint8), "uint8 RGB"),
        (np.zeros((8, 8), np.uint8), "uint8 RGB"),
        (np.zeros((0, 8, 3), np.uint8), "zero size"),
        ([[0, 0, 0]], "file path, a PIL image"),
    ]:
        with pytest.raises(KinemaError, match=message):
            as_rgb(bad)
    monkeypatch.setattr(video_io, "MAX_PIXELS", 63)
    with pytest.raises(KinemaError, match="over the limit of 63 pixels"):
        as_rgb(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(KinemaError, match="over the limit of 63 pixels"):
        as_rgb(Image.new("RGB", (8, 8)))
    assert as_rgb(Image.new("LA", (2, 2), (0, 0))).tolist() == [[[255] * 3] * 2] * 2  # transparent -> white


####################################### API and CLI #######################################


def test_api_warns_for_untrained_model_and_refuses_last_image_before_loading(tiny_model_dir, monkeypatch):
    image = smooth_image(16, 16)
    with pytest.warns(UserWarning, match="not trained with a first-frame condition"):
        out = kinema.animate(image, PROMPT, model=tiny_model_dir, **SMALL)
    assert out.shape == (4, 16, 16, 3)
    monkeypatch.setattr(jobs, "load", lambda *a, **k: pytest.fail("a model was loaded"))
    with pytest.raises(KinemaError, match="--last-image needs a model trained"):
        kinema.animate(image, PROMPT, last_image=image, model=tiny_model_dir, **SMALL)


def run_main(argv) -> int:
    try:
        return main([str(a) for a in argv])
    except SystemExit as e:  # argparse errors
        return e.code


def test_cli_png_folder_equals_the_api(i2v_dir, i2v_model, tmp_path):
    image = smooth_image(24, 40, seed=5)
    Image.fromarray(image).save(tmp_path / "photo.png")
    out = tmp_path / "frames"
    code = run_main(["animate", tmp_path / "photo.png", PROMPT, "--model", i2v_dir, "-o", out, "--frames", 3,
                     "--height", 16, "--width", 16, "--steps", 2, "--image-noise", 0.03, "--resize", "pad", "--quiet"])
    assert code == 0
    frames, _ = read_video(out)
    api_frames = kinema.animate(image, PROMPT, model=i2v_model, frames=3, height=16, width=16, steps=2,
                                image_noise=0.03, resize="pad", progress=False)
    assert np.array_equal(frames, api_frames)
    side = json.loads((tmp_path / "frames.json").read_text())
    assert side["command"] == "animate" and side["image"].endswith("photo.png") and side["last_image"] is None
    assert side["resize"] == "pad" and side["image_noise"] == 0.03 and side["timings"]["vae_encode"] >= 0


def test_cli_headline_command_with_last_image(i2v_dir, tmp_path):
    for name, seed in (("photo.png", 6), ("end.jpg", 7)):
        Image.fromarray(smooth_image(30, 20, seed)).save(tmp_path / name)
    out = tmp_path / "out.mp4"
    r = subprocess.run([sys.executable, "-m", "kinema.cli", "animate", str(tmp_path / "photo.png"), PROMPT,
                        "-o", str(out), "--last-image", str(tmp_path / "end.jpg"), "--model", str(i2v_dir),
                        "--frames", "5", "--height", "16", "--width", "24", "--steps", "2", "--quiet"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    frames, fps = read_video(out)
    assert frames.shape == (5, 16, 24, 3) and fps == pytest.approx(8)
    assert json.loads((tmp_path / "out.mp4.json").read_text())["last_image"].endswith("end.jpg")


def test_cli_warns_once_for_an_untrained_model(tiny_model_dir, tmp_path, capsys):
    Image.fromarray(smooth_image(16, 16)).save(tmp_path / "a.png")
    code = run_main(["animate", tmp_path / "a.png", PROMPT, "--model", tiny_model_dir, "-o", tmp_path / "a.gif",
                     "--frames", 2, "--height", 16, "--width", 16, "--steps", 1, "--quiet"])
    err = capsys.readouterr().err
    assert code == 0 and err.count("warning") == 1 and len(err.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    Image.fromarray(smooth_image(16, 16)).save(d / "ok.png")
    (d / "text.png").write_text("not an image")
    (d / "empty.png").write_bytes(b"")
    Image.new("1", (8193, 8193)).save(d / "huge.png")  # 67.1 M pixels > video_io.MAX_PIXELS = 8192 * 8192
    (d / "folder.png").mkdir()
    return d


BAD = [
    (["{d}/missing.png"], "does not exist"),
    (["{d}/text.png"], "as an image"),
    (["{d}/empty.png"], "empty (0 bytes)"),
    (["{d}/huge.png"], "over the limit max_pixels=67108864"),
    (["{d}/folder.png"], "is a folder"),
    (["{d}/ok.png", "--last-image", "{d}/missing.png"], "does not exist"),
    (["{d}/ok.png", "--last-image", "{d}/text.png"], "as an image"),
    (["{d}/ok.png", "--last-image", "{d}/ok.png", "--frames", "1"], "--frames >= 2"),
    (["{d}/ok.png", "--image-noise", "-0.5"], "--image-noise must be"),
    (["{d}/ok.png", "--image-noise", "nan"], "finite"),
    (["{d}/ok.png", "--resize", "fit"], "invalid choice"),
    (["{d}/ok.png", "--height", "18"], "multiple of 4"),
]


@pytest.mark.parametrize("args,message", BAD)
def test_cli_bad_input_one_line_exit_2_nothing_written(i2v_dir, inputs, tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.setattr(jobs, "load", lambda *a, **k: pytest.fail("a model was loaded"))
    image, *extra = [a.format(d=inputs) for a in args]
    code = run_main(["animate", image, PROMPT, "--model", i2v_dir, "-o", tmp_path / "clip.mp4", *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_cli_last_image_refused_for_a_model_without_first_last(tiny_model_dir, inputs, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(jobs, "load", lambda *a, **k: pytest.fail("a model was loaded"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        code = run_main(["animate", inputs / "ok.png", PROMPT, "--model", tiny_model_dir, "-o", tmp_path / "clip.mp4",
                         "--last-image", inputs / "ok.png"])
    err = capsys.readouterr().err
    assert code == 2 and "--last-image needs a model trained for first-and-last-frame" in err
    assert len(err.strip().splitlines()) == 1 and list(tmp_path.iterdir()) == []
