"""`kinema eval`: files against captions, and each suite at its smallest size on the tiny model."""

from __future__ import annotations

import json

import pytest

from kinema import world
from kinema.cli import main
from kinema.video_io import write_video


def test_score_files(tmp_path, capsys):
    clip = world.World(split="all", canonical=True).clip(2)
    path = tmp_path / "clip.mp4"
    write_video(path, clip.video, fps=8)
    assert main(["eval", str(path), "--caption", clip.caption, "--json-out", str(tmp_path / "r.json")]) == 0
    row = json.loads((tmp_path / "r.json").read_text())["rows"][0]
    assert row["colour_ok"] and row["background_ok"] and row["direction_ok"]
    assert "| yes | yes | yes |" in capsys.readouterr().out


def test_bad_caption_is_a_clear_error(tmp_path, capsys):
    path = tmp_path / "clip.gif"
    write_video(path, world.World().clip(1).video, fps=8)
    assert main(["eval", str(path), "--caption", "a cat surfing"]) == 2
    assert "canonical world caption" in capsys.readouterr().err


@pytest.mark.parametrize("suite", ["world", "animate", "vae"])
def test_suites_run(tiny_model_dir, tmp_path, suite):
    out = tmp_path / "r.json"
    args = ["eval", "--suite", suite, "--model", str(tiny_model_dir), "--per-combo", "1", "--steps", "1",
            "--json-out", str(out)]
    assert main(args) == 0
    result = json.loads(out.read_text())
    if suite == "vae":
        assert result["frames"] > 0 and result["worst"] <= result["median"]
    else:
        assert result["n"] == len(world.HELDOUT) and 0 <= result["colour"] <= 1


def test_edit_scores_compare_the_object_with_the_source():
    """The same clip is a perfect edit; the object moved by its own side scores no overlap and a track error
    of at least that side (rolled: a wrapped object lands further); a recoloured copy keeps IoU 1 and reads the new colour."""
    import numpy as np

    from kinema.world import metrics

    w = world.World("all", canonical=True)
    clip = next(c for s in range(50) if (c := w.clip(s)).spec.direction == "right")
    same = metrics.edit_scores(clip.video, clip.video, clip.caption)
    assert same["iou"] == 1.0 and same["area_ratio"] == 1.0 and same["track_px"] == 0.0 and same["shape_kept"]
    side = int(np.ceil(clip.spec.size)) + 2
    moved = np.roll(clip.video, side, axis=1)  # down by more than the object's side
    far = metrics.edit_scores(moved, clip.video, clip.caption)
    assert far["iou"] == 0.0 and not far["shape_kept"] and far["track_px"] >= side - 0.5
    recoloured = clip.video.copy()
    mask = metrics.object_masks(clip.video)
    recoloured[mask] = world.COLOURS["yellow" if clip.spec.colour != "yellow" else "white"]
    caption = world.canonical_caption("yellow" if clip.spec.colour != "yellow" else "white", clip.spec.shape,
                                      clip.spec.direction, clip.spec.background)
    edit = metrics.edit_scores(recoloured, clip.video, caption)
    assert edit["iou"] == 1.0 and edit["colour_ok"] and edit["background_ok"]


def test_object_mask_holds_for_objects_near_the_background_colour():
    """An object whose colour lies near the background's (yellow on orange, 71 apart) drawn a few levels off its
    palette colour toward the background is still the object (cut at half the contrast), where a fixed distance
    lost it; a textured background with no object stays empty."""
    import cv2
    import numpy as np

    from kinema.world import metrics

    w = world.World("all", canonical=True)
    clip = next(c for s in range(200) if (c := w.clip(s)).spec.background == "orange" and c.spec.texture == 0)
    source = metrics.object_masks(clip.video)
    yellow, orange = np.array(world.COLOURS["yellow"], float), np.array(world.COLOURS["orange"], float)
    faded = (yellow + 15 * (orange - yellow) / np.linalg.norm(orange - yellow)).round().astype(np.uint8)
    edit = clip.video.copy()
    edit[source] = faded
    assert np.linalg.norm(faded - orange) < metrics.OBJECT_DISTANCE  # a fixed 60 would find no object at all
    caption = world.canonical_caption("yellow", clip.spec.shape, clip.spec.direction, "orange")
    assert metrics.edit_scores(edit, clip.video, caption)["iou"] >= 0.9  # the source's soft edge pixels aside
    textured = next(c for s in range(200) if (c := w.clip(s)).spec.texture > 0.02)
    empty = textured.video.copy()
    for frame, obj in zip(empty, metrics.object_masks(textured.video)):  # the object painted out, the texture kept
        grown = cv2.dilate(obj.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
        frame[grown] = np.median(np.concatenate([frame[0], frame[-1]]), axis=0).astype(np.uint8)
    assert not metrics.object_masks(empty).any()


def test_eval_source_scores_edits_and_refuses_another_clip(tmp_path, capsys):
    w = world.World("all", canonical=True)
    a, b = w.clip(1), w.clip(2)
    src = write_video(tmp_path / "src.mp4", a.video, fps=8)
    other = write_video(tmp_path / "other.gif", b.video[:8], fps=8)
    assert main(["eval", str(src), "--source", str(src), "--caption", a.caption]) == 0
    assert "| 1.000 | 1.00 | 0.00 | yes |" in capsys.readouterr().out
    assert main(["eval", str(other), "--source", str(src), "--caption", a.caption]) == 2
    err = capsys.readouterr().err
    assert "compare an edit with its own source" in err and err.count("\n") == 1
