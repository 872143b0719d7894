"""The structure control input: edge maps, the UNet's adapter, training it on a frozen backbone, and the drivers' flags."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from kinema.errors import KinemaError


def shape_clip(colour, background, frames=4, size=16, shape="square", x0=4):
    """uint8 (F, size, size, 3): one filled shape moving right by 1 px a frame."""
    video = np.empty((frames, size, size, 3), np.uint8)
    video[:] = background
    yy, xx = np.mgrid[:size, :size]
    for t in range(frames):
        cx, cy = x0 + t + 2.5, size / 2
        inside = (np.abs(xx - cx) <= 3) & (np.abs(yy - cy) <= 3) if shape == "square" else (xx - cx) ** 2 + (yy - cy) ** 2 <= 9
        video[t][inside] = colour
    return video


@pytest.fixture(scope="module")
def control_model_dir(tmp_path_factory):
    """The tiny model grown with a control adapter whose outputs are randomised (so the control changes predictions)."""
    import kinema
    from kinema.models.family import load_model

    path = tmp_path_factory.mktemp("models") / "tiny"
    kinema.init(path, preset="tiny", seed=0)
    model = load_model(path)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.denoiser.parameters():  # every zero-initialised output random: predictions read every input
            if p.abs().sum() == 0 and p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    model.denoiser = model.denoiser.grow(motion_embedding=False, coord_channels=False, control_channels=4)
    with torch.no_grad():
        for o in model.denoiser.control.out:
            o.weight.copy_(torch.randn(o.weight.shape, generator=g) * 0.2)
    out = tmp_path_factory.mktemp("models") / "tiny-control"
    kinema.save(model, out)
    return out


def test_edge_maps_carry_the_outline_not_the_colours():
    from kinema.models.control import edge_maps

    a = edge_maps(shape_clip((220, 40, 40), (40, 60, 200)))
    b = edge_maps(shape_clip((240, 230, 40), (10, 10, 10)))
    other = edge_maps(shape_clip((220, 40, 40), (40, 60, 200), shape="circle"))
    assert a.shape == (4, 16, 16) and float(a.min()) >= 0 and float(a.max()) == pytest.approx(1.0)
    assert float((a - b).abs().mean()) < 0.05  # another colour pair, the same outline
    assert float((a - other).abs().mean()) > 4 * float((a - b).abs().mean())  # another outline reads differently
    flat = edge_maps(np.full((2, 16, 16, 3), 90, np.uint8))
    assert float(flat.max()) < 1e-6  # no edge, no signal (the floor keeps noise from being stretched to 1)


def test_latent_grid_is_a_lossless_pixel_unshuffle():
    from kinema.models.control import to_latent_grid

    maps = torch.rand(3, 16, 16)
    grid = to_latent_grid(maps, 4)
    assert grid.shape == (1, 16, 3, 4, 4)
    back = torch.nn.functional.pixel_shuffle(grid[0].permute(1, 0, 2, 3), 4)[:, 0]
    assert torch.equal(back, maps)
    with pytest.raises(KinemaError, match="do not divide"):
        to_latent_grid(torch.rand(1, 18, 16), 4)


def test_grown_adapter_keeps_the_function_and_scale_zero_is_no_control(trained_like_model):
    from kinema.models.seams import TextEmbeds

    net = trained_like_model.denoiser.eval()
    big = net.grow(motion_embedding=False, coord_channels=False, control_channels=4).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 4, 8, 8, generator=g)
    t = torch.tensor([500.0, 900.0])
    text = TextEmbeds(torch.randn(2, 5, net.config.text_dim, generator=g), torch.ones(2, 5, dtype=torch.bool))
    control = torch.rand(2, 4, 4, 8, 8, generator=g)
    with torch.no_grad():
        before = net(x, t, text)
        assert torch.allclose(big(x, t, text), before, atol=1e-6)  # no control: the old network
        assert torch.allclose(big(x, t, text, control=control), before, atol=1e-6)  # zero projections: still the same
        for o in big.control.out:
            torch.nn.init.normal_(o.weight, std=0.2)
        steered = big(x, t, text, control=control)
        assert float((steered - before).abs().max()) > 1e-3
        assert torch.allclose(big(x, t, text, control=control, control_scale=0.0), before, atol=1e-6)
        per_sample = big(x, t, text, control=control, control_scale=torch.tensor([1.0, 0.0]))
        assert torch.allclose(per_sample[0], steered[0], atol=1e-6) and torch.allclose(per_sample[1], before[1], atol=1e-6)
        one = big(x, t, text, control=control[:1])  # one control for a batch: broadcast
        assert torch.allclose(one[0], steered[0], atol=1e-5)
    with pytest.raises(KinemaError, match="control channels"):
        big(x, t, text, control=torch.rand(2, 3, 4, 8, 8))


def test_training_the_adapter_leaves_the_backbone_untouched(trained_like_model, tmp_path):
    import shutil

    import yaml
    from safetensors.torch import load_file

    from kinema.train import train

    model = tmp_path / "model"
    shutil.copytree(trained_like_model.path, model)  # outputs not at zero: gradients reach the adapter
    cfg = yaml.safe_load(open("configs/tiny.yaml"))
    cfg["dataset"] = "world-wide"
    cfg["denoiser"].update(control=True, control_dropout=0.5, train="control", steps=4,
                           grow=["motion_embedding"])  # grown in the same run: it stays frozen (at zero) too
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    before = load_file(model / "denoiser" / "diffusion_pytorch_model.safetensors")
    train(tmp_path / "c.yaml", model, tmp_path / "run", stages="denoiser")
    after = load_file(model / "denoiser" / "diffusion_pytorch_model.safetensors")
    assert json.loads((model / "denoiser" / "config.json").read_text())["control_channels"] == 4
    grown = [k for k in after if k.startswith("control.")]
    assert grown and all(k not in before for k in grown)
    assert all(torch.equal(before[k], after[k]) for k in before)  # frozen: bit for bit
    assert float(after["motion.2.weight"].abs().sum()) == 0  # the other grown input did not learn
    assert any(float(after[k].abs().sum()) > 0 for k in grown if k.startswith("control.out"))  # the adapter learnt


def test_wide_world_draws_beyond_the_world_sizes_and_keeps_the_plain_world():
    from kinema import world

    plain = [world.World(split="train").spec(s) for s in range(200)]
    wide = [world.World(split="train", wide=True).spec(s) for s in range(200)]
    assert all(64 / 6 <= s.size <= 64 / 4 for s in plain)
    sizes = np.array([s.size for s in wide])
    assert sizes.min() < 64 / 6 and sizes.max() > 64 / 4 and sizes.max() <= 64 / 3
    assert plain[:3] == [world.World(split="train").spec(s) for s in range(3)]  # the plain world as it was


def test_generate_and_animate_take_a_control_clip(control_model_dir, tmp_path):
    import kinema
    from kinema import jobs

    src = shape_clip((220, 40, 40), (40, 60, 200))
    job = jobs.prepare_generate("a green square", control_model_dir, control=src, steps=2, height=16, width=16)
    assert job.settings.frames == 4 and job.settings.control.shape == (1, 4, 4, 8, 8)
    assert job.inputs == dict(control="array", control_scale=1.0)
    with_control = jobs.run(job, progress=False)
    without = kinema.generate("a green square", model=control_model_dir, frames=4, steps=2, height=16, width=16)
    assert np.abs(with_control.frames.astype(int) - without.astype(int)).max() > 0
    zero = jobs.run(jobs.prepare_generate("a green square", control_model_dir, control=src, control_scale=0.0, steps=2,
                                          height=16, width=16), progress=False)
    assert np.array_equal(zero.frames, without)  # scale 0: the adapter adds nothing
    assert with_control.record["settings"]["control"] == [1, 4, 4, 8, 8]
    anchor = src[0]
    a = jobs.prepare_animate(anchor, "a green square", control_model_dir, control=src, steps=2, height=16, width=16)
    assert a.settings.control is not None and a.inputs["control"] == "array"
    assert jobs.run(a, progress=False).frames.shape == (4, 16, 16, 3)


def test_long_generate_gives_each_window_its_frames_of_the_control():
    from kinema.models.seams import DenoiserInputs, TextEmbeds
    from kinema.pipelines.long_video import fused_predict

    seen = []

    class Recorder:
        dtype = torch.float32

        def predict(self, latents, t, text, cond=None, inputs=None):
            seen.append(inputs.control.clone())
            return torch.zeros_like(latents)

    control = torch.arange(8.0).reshape(1, 1, 8, 1, 1).expand(1, 2, 8, 2, 2)
    text = TextEmbeds(torch.zeros(1, 2, 4), torch.ones(1, 2, dtype=torch.bool))
    plan = [(0, 4), (2, 6), (4, 8)]
    predict = fused_predict(Recorder(), [text] * 3, None, 1.0, plan, inputs=DenoiserInputs(control=control))
    predict(torch.zeros(1, 2, 8, 2, 2), torch.tensor([500.0]))
    assert [c[0, 0, :, 0, 0].tolist() for c in seen] == [[0, 1, 2, 3], [2, 3, 4, 5], [4, 5, 6, 7]]


def test_restyle_uses_the_source_edges_by_default_where_the_model_has_the_input(control_model_dir, tiny_model_dir):
    from kinema import jobs

    src = shape_clip((220, 40, 40), (40, 60, 200))
    job = jobs.prepare_restyle(src, "a green square", control_model_dir, steps=2, height=16, width=16, flow=False)
    assert job.inputs["control"] == "edges" and job.settings.control is not None
    assert jobs.run(job, progress=False).frames.shape == (4, 16, 16, 3)
    off = jobs.prepare_restyle(src, "a green square", control_model_dir, steps=2, height=16, width=16, flow=False,
                               control="none")
    assert off.settings.control is None
    plain = jobs.prepare_restyle(src, "a green square", tiny_model_dir, steps=2, height=16, width=16, flow=False)
    assert plain.inputs["control"] == "none" and plain.settings.control is None
    fe = jobs.prepare_restyle(src, "a green square", control_model_dir, steps=2, height=16, width=16, flow=False,
                              method="flowedit", control_scale=0.5)
    assert fe.settings.control_scale == 0.5 and jobs.run(fe, progress=False).frames.shape == (4, 16, 16, 3)


@pytest.mark.parametrize("kwargs, message", [
    (dict(control=np.zeros((3, 16, 16, 3), np.uint8), frames=4), "control video has 3 frames and the clip 4"),
    (dict(control=np.zeros((4, 32, 32, 3), np.uint8)), "control video is 32x32 and the clip 16x16"),
    (dict(control=np.zeros((4, 16, 16, 3), np.uint8), control_scale=9.0), r"--control-scale must be a number in \[0, 5\]"),
    (dict(control=np.zeros((4, 16, 16, 3), np.uint8), control_scale=float("nan")), "--control-scale must be"),
    (dict(control_scale=1.0), "--control-scale scales a control clip"),
    (dict(control=np.zeros((4, 16, 16), np.uint8)), "control video must be uint8"),
    (dict(control=np.zeros((8, 16, 16, 3), np.uint8), context_length=2, follow_motion=True), "drop --follow-motion"),
])
def test_bad_control_input_is_one_line_error(control_model_dir, kwargs, message):
    from kinema import jobs

    with pytest.raises(KinemaError, match=message) as e:
        jobs.prepare_generate("a red circle", control_model_dir, height=16, width=16, steps=2, **kwargs)
    assert "\n" not in str(e.value)


def test_control_on_a_model_without_the_input_is_refused(tiny_model_dir):
    from kinema import jobs

    src = np.zeros((4, 16, 16, 3), np.uint8)
    with pytest.raises(KinemaError, match="has no structure control input; drop --control"):
        jobs.prepare_generate("a red circle", tiny_model_dir, control=src, height=16, width=16)
    with pytest.raises(KinemaError, match="has no structure control input; pass --control none"):
        jobs.prepare_restyle(src, "a red circle", tiny_model_dir, control="edges", height=16, width=16)
    with pytest.raises(KinemaError, match="restyle's --control is edges or none"):
        jobs.prepare_restyle(src, "a red circle", tiny_model_dir, control="depth", height=16, width=16)
    with pytest.raises(KinemaError, match="drop it with --control none"):
        jobs.prepare_restyle(src, "a red circle", tiny_model_dir, control_scale=2.0, height=16, width=16)


def test_cli_control_errors_exit_2_before_loading(control_model_dir, tmp_path):
    import subprocess
    import sys

    import imageio.v3 as iio

    clip = tmp_path / "c.gif"
    iio.imwrite(clip, shape_clip((220, 40, 40), (40, 60, 200), frames=3), duration=125, loop=0)
    out = subprocess.run([sys.executable, "-m", "kinema.cli", "generate", "a red circle", "-o", str(tmp_path / "o.mp4"),
                          "--model", str(control_model_dir), "--control", str(clip), "--frames", "4", "--height", "16",
                          "--width", "16"], capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0, out.stderr
    assert "the control video has 3 frames and the clip 4" in out.stderr
    assert not (tmp_path / "o.mp4").exists()


def test_a_control_lora_trained_under_the_student_rides_in_its_file(control_model_dir, tmp_path):
    """`base_lora` + `lora_targets`: a LoRA of the control adapter alone, trained with a student LoRA merged into the
    frozen network; `ship_default.student_with_control` puts it into the student's file. The folder is untouched, and
    without a control the student with its control part computes what the student alone did."""
    import importlib.util
    import shutil
    from pathlib import Path

    import yaml
    from safetensors.torch import load_file

    import kinema
    from kinema.models.lora import add_adapter, save_lora
    from kinema.models.seams import TextEmbeds
    from kinema.train import train

    model_dir = tmp_path / "model"
    shutil.copytree(control_model_dir, model_dir)
    net = kinema.load(model_dir, device="cpu", dtype="float32").denoiser
    add_adapter(net, "student", 4)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for n, p in net.named_parameters():
            if ".student." in n and "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    student = save_lora(net, "student", tmp_path / "student.safetensors", 4)
    cfg = yaml.safe_load(open("configs/tiny.yaml"))
    cfg["dataset"] = "world-wide"
    targets = r"^control\.(stem\.[02]|down\.\d+\.[02]|out\.\d+)$"
    cfg["denoiser"].update(control=True, control_dropout=0.0, train="control", steps=4, lora=4, lora_alpha=4,
                           lora_targets=targets, base_lora=str(student), lora_out=str(tmp_path / "control.safetensors"),
                           on_policy=[1.0, 0.9, 0.5], on_policy_guidance=2.0, on_policy_control_scale=1.5)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    before = load_file(model_dir / "denoiser" / "diffusion_pytorch_model.safetensors")
    train(tmp_path / "c.yaml", model_dir, tmp_path / "run", stages="denoiser")
    after = load_file(model_dir / "denoiser" / "diffusion_pytorch_model.safetensors")
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    control = load_file(tmp_path / "control.safetensors")
    assert control and all(k.startswith("control.") for k in control)
    assert any(float(v.abs().sum()) > 0 for k, v in control.items() if "lora_B" in k)  # it learnt

    spec = importlib.util.spec_from_file_location("ship_default", Path("scripts/ship_default.py"))
    ship = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ship)
    both = ship.student_with_control(student, tmp_path / "control.safetensors", tmp_path / "both.safetensors")
    assert load_file(both).keys() == load_file(student).keys() | control.keys()

    def predict(loras, with_control):
        net = kinema.load(model_dir, device="cpu", dtype="float32", loras=[str(p) for p in loras]).denoiser
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(1, 4, 4, 8, 8, generator=gen)
        text = TextEmbeds(torch.randn(1, 3, net.config.text_dim, generator=gen), torch.ones(1, 3, dtype=torch.bool))
        extra = dict(control=torch.rand(1, 4, 4, 8, 8, generator=gen), control_scale=torch.ones(1)) if with_control else {}
        with torch.no_grad():
            return net(x, torch.tensor([900.0]), text, **extra)

    assert torch.allclose(predict([both], False), predict([student], False), atol=1e-6)
    assert not torch.allclose(predict([both], True), predict([student], True), atol=1e-4)
    assert not torch.allclose(predict([student], True), predict([], True), atol=1e-4)


def test_the_students_restyle_lora_is_stacked_for_restyle_under_the_control_alone(control_model_dir, tmp_path):
    """`fast.restyle.lora` (`ship_default.student_restyle`): a backbone LoRA stacked on the student when it restyles
    with the control on; not for generate or animate, not with --control none, not without the student, and not on a
    model loaded without it. It travels with the folder, and a bad name in the index is a one-line error."""
    import importlib.util
    import json
    import shutil
    from pathlib import Path

    import kinema
    from kinema import jobs
    from kinema.errors import KinemaError
    from kinema.models.family import load_model
    from kinema.models.lora import add_adapter, save_lora

    folder = tmp_path / "model"
    shutil.copytree(control_model_dir, folder)
    for name, targets in (("student", None), ("restyle", None), ("control", r"^control\.out\.\d+$")):
        net = load_model(folder).denoiser  # a fresh network for each adapter
        add_adapter(net, name, 2, **({"targets": targets} if targets else {}))
        save_lora(net, name, tmp_path / f"{name}.safetensors", 2, **({"targets": targets} if targets else {}))
    shutil.copy(tmp_path / "student.safetensors", folder / "fast.safetensors")
    index = json.loads((folder / "kinema.json").read_text())
    (folder / "kinema.json").write_text(json.dumps({**index, "fast": dict(lora="fast.safetensors", steps=2, guidance=1.0)}))
    spec = importlib.util.spec_from_file_location("ship_default", Path("scripts/ship_default.py"))
    ship = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ship)
    with pytest.raises(SystemExit, match="adapts the control adapter"):
        ship.student_restyle(folder, tmp_path / "control.safetensors")
    assert ship.student_restyle(folder, tmp_path / "restyle.safetensors") == folder / "fast-restyle.safetensors"
    assert json.loads((folder / "kinema.json").read_text())["fast"]["restyle"] == {"lora": "fast-restyle.safetensors"}

    student, restyle = (str(folder / "fast.safetensors"), 1.0), (str(folder / "fast-restyle.safetensors"), 1.0)
    src = shape_clip((220, 40, 40), (40, 60, 200))
    small = dict(height=16, width=16, flow=False)
    job = jobs.prepare_restyle(src, "a green square", folder, fast=True, **small)
    assert job.placement.loras == (student, restyle) and job.settings.control is not None
    assert jobs.run(job, progress=False).record["loras"][-1]["path"] == restyle[0]
    assert jobs.prepare_restyle(src, "a green square", folder, fast=True, control="none", **small).placement.loras == (student,)
    assert jobs.prepare_restyle(src, "a green square", folder, fast=False, **small).placement.loras == ()
    assert jobs.prepare_generate("a green square", folder, fast=True, frames=4, height=16, width=16).placement.loras == (student,)
    loaded = kinema.load(folder, device="cpu", dtype="float32", loras=[student[0]])
    assert jobs.prepare_restyle(src, "a green square", loaded, fast=True, **small).placement.loras == (student,)
    both = kinema.load(folder, device="cpu", dtype="float32", loras=[student[0], restyle[0]])
    assert jobs.prepare_restyle(src, "a green square", both, fast=True, **small).placement.loras == (student, restyle)

    kinema.save(kinema.load(folder, device="cpu", dtype="float32"), tmp_path / "copy")  # the folder's files come along
    assert (tmp_path / "copy" / "fast-restyle.safetensors").read_bytes() == (folder / "fast-restyle.safetensors").read_bytes()
    for bad in ("../x.safetensors", "x.bin", 3, ".x.safetensors"):
        (folder / "kinema.json").write_text(json.dumps({**index, "fast": dict(lora="fast.safetensors", steps=2,
                                                                              guidance=1.0, restyle={"lora": bad})}))
        with pytest.raises(KinemaError, match="fast must be"):
            jobs.prepare_restyle(src, "a green square", folder, fast=True, **small)
