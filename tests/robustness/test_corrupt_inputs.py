"""Damaged, unusual and hostile inputs fed to every driver that reads files or text: clean refusals or clips."""

from __future__ import annotations

import pytest

from .conftest import PROMPT, build_inputs, check_contract, listing

SMALL = ["--height", "16", "--width", "16", "--steps", "1", "--quiet"]
# The valid-but-unusual inputs, which must succeed; every other input must end in a one-line error or a clip.
VALID_IMAGES = {"grey L", "grey+alpha LA", "RGBA", "RGBA webp", "1-bit", "paletted P", "paletted with transparency",
                "16-bit grey", "16-bit RGB", "32-bit float tiff", "CMYK jpeg", "1x1", "300x1 strip", "odd 17x13",
                "EXIF-rotated jpeg"}
VALID_VIDEOS = {"one-frame .mp4", "one-frame .gif", "single image as a video", "folder of 3 frames",
                "variable-frame-rate .gif", "variable-frame-rate .mp4", "odd-sized 17x13 .mp4", "odd-sized 33x19 .avi",
                "odd-sized 17x13 .gif", "animated .webp"}


def driver_args(driver: str, source, out, model) -> list:
    """A cheap, otherwise valid command of `driver` reading `source` and writing `out`."""
    if driver == "animate":
        return ["animate", source, PROMPT, "-o", out, "--model", model, "--frames", "2", *SMALL]
    if driver == "extend":
        return ["extend", source, PROMPT, "-o", out, "--model", model, "--frames", "10", "--context-length", "2",
                "--context-stride", "1", *SMALL]
    if driver == "restyle":
        return ["restyle", source, PROMPT, "-o", out, "--model", model, "--max-frames", "3", *SMALL]
    return ["eval", source, "--caption", PROMPT, "--json-out", out.with_suffix(".json")]


@pytest.mark.parametrize("driver", ["animate", "extend", "restyle", "eval"])
def test_every_damaged_or_odd_file(driver, bad_inputs, kinema, tiny_model_dir, tmp_path):
    """Each input: exit 0 with the clip and its sidecar, or exit 2 with one line; never a traceback or a stray file."""
    images, videos = bad_inputs
    inputs, valid = (images, VALID_IMAGES) if driver == "animate" else (videos, VALID_VIDEOS)
    problems = []
    for i, (name, path) in enumerate(inputs.items()):
        out_dir = tmp_path / f"case{i}"
        out_dir.mkdir()
        out = out_dir / "clip.mp4"
        result = kinema(*driver_args(driver, path, out, tiny_model_dir))
        try:
            check_contract(result, set(), listing(out_dir), {"clip.mp4", "clip.mp4.json", "clip.json"})
            assert name not in valid or result.code == 0, f"a valid input was refused: {result.err}"
            assert result.code != 0 or driver == "eval" or (out.is_file() and out.stat().st_size > 0)
        except AssertionError as e:
            problems.append(f"{name}: {e}")
    assert not problems, "\n".join(problems)


def test_inputs_are_never_modified(bad_inputs, tmp_path):
    """Reading leaves the inputs' folder as it was: no cache, lock or temporary file beside a source."""
    images, _ = bad_inputs
    root = next(iter(images.values())).parent
    fresh = tmp_path / "fresh"
    build_inputs(fresh)
    assert listing(root) == listing(fresh)


SURROGATE = b"a red circle \xff\xfe moving".decode("utf-8", "surrogateescape")  # what Python makes of non-UTF-8 argv
PROMPTS = {
    "non-UTF-8 bytes": (SURROGATE, 2),
    "only whitespace": (" \t\n  ", 2),
    "empty": ("", 2),
    "over 10000 characters": ("a red circle " * 1000, 2),
    "9000 characters": (("a red circle moving right " * 400)[:9000], 0),
    "NUL and control characters": ("a red\x00 circle\x1b[31m moving", 0),
    "emoji and right-to-left text": ("a red circle 🔴 moving right \u202e on blue", 0),
    "newlines": ("a red circle\nmoving right\r\non blue", 0),
}


@pytest.mark.parametrize("case", PROMPTS)
@pytest.mark.parametrize("driver", ["generate", "animate", "extend", "restyle"])
def test_prompts(driver, case, bad_inputs, kinema, tiny_model_dir, tmp_path):
    """Prompts of every kind of text: refused in one line before any work, or a clip whose sidecar keeps them."""
    import json

    images, videos = bad_inputs
    prompt, expected = PROMPTS[case]
    out = tmp_path / "clip.gif"
    source = {"animate": images["RGBA"], "extend": videos["one-frame .mp4"], "restyle": videos["folder of 3 frames"]}
    args = driver_args(driver, source.get(driver, ""), out, tiny_model_dir)
    if driver == "generate":
        args = ["generate", PROMPT, "-o", out, "--model", tiny_model_dir, "--frames", "2", *SMALL]
    args[args.index(PROMPT)] = prompt
    result = kinema(*args)
    check_contract(result, set(), listing(tmp_path), {"clip.gif", "clip.gif.json"})
    assert result.code == expected, result.err
    if expected == 0:
        assert json.loads((tmp_path / "clip.gif.json").read_text(encoding="utf-8"))["prompt"] == prompt


@pytest.mark.parametrize("option", ["--negative-prompt", "--prompt-schedule"])
def test_non_utf8_in_other_text_options(option, kinema, tiny_model_dir, tmp_path):
    value = SURROGATE if option == "--negative-prompt" else f"0:{SURROGATE}|1:a blue square"
    result = kinema("generate", PROMPT, "-o", tmp_path / "clip.mp4", "--model", tiny_model_dir, "--frames", "2",
                    option, value, *SMALL)
    check_contract(result, set(), listing(tmp_path))
    assert result.code == 2 and "UTF-8" in result.err


def test_non_utf8_output_name_is_kept(kinema, tiny_model_dir, tmp_path):
    """A file name with non-UTF-8 bytes is legal on POSIX: the clip is written and its sidecar records the name."""
    name = b"clip-\xff.gif".decode("utf-8", "surrogateescape")
    result = kinema("generate", PROMPT, "-o", tmp_path / name, "--model", tiny_model_dir, "--frames", "2", *SMALL)
    check_contract(result, set(), listing(tmp_path), {name, name + ".json"})
    assert result.code == 0
