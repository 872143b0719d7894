"""LoRA on kinema's own denoiser (PEFT): what it computes, how files are checked, and the --lora flag."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from kinema.errors import KinemaError
from kinema.models import lora
from kinema.models.seams import TextEmbeds


def random_lora(net, path, rank=4, seed=0, scale=0.1):
    """A LoRA of `rank` with random A and B on a copy of `net`, saved to `path`."""
    work = copy.deepcopy(net)
    params = lora.add_adapter(work, "fit", rank)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return lora.save_lora(work, "fit", path, rank)


def merged_by_hand(net, files_scales):
    """`net` with W += scale * alpha / rank * B @ A of every file (convolutions: B's columns times A's filters)."""
    out = copy.deepcopy(net)
    modules = dict(out.named_modules())
    for path, scale in files_scales:
        tensors, meta = lora.read_lora(path)
        for key, a in tensors.items():
            if not key.endswith(".lora_A.weight"):
                continue
            layer = key[: -len(".lora_A.weight")]
            b = tensors[layer + ".lora_B.weight"]
            w = modules[layer].weight
            delta = b.flatten(1) @ a.flatten(1)  # (out, in*k*k)
            with torch.no_grad():
                w += scale * meta["alpha"] / meta["rank"] * delta.reshape(w.shape)
    return out


@pytest.fixture()
def inputs(trained_like_model):
    net = trained_like_model.denoiser
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, net.config.latent_channels, 4, 8, 8, generator=g)
    text = TextEmbeds(torch.randn(2, 5, net.config.text_dim, generator=g), torch.ones(2, 5, dtype=torch.bool))
    return x, torch.tensor([300.0, 800.0]), text


def run(net, inputs):
    with torch.no_grad():
        return net(*inputs)


def test_a_lora_computes_its_hand_merged_weights_and_scale_zero_is_none(trained_like_model, tmp_path, inputs):
    net = trained_like_model.denoiser.eval()
    f = random_lora(net, tmp_path / "a.safetensors")
    base = run(net, inputs)
    for scale in (1.0, 0.5, -0.7):
        loaded = copy.deepcopy(net)
        records = lora.load_loras(loaded, [(f, scale)])
        assert records[0]["rank"] == 4 and records[0]["layers"] > 10 and records[0]["unmatched"] == 0
        out = run(loaded, inputs)
        assert torch.allclose(out, run(merged_by_hand(net, [(f, scale)]), inputs), atol=1e-5)
        assert float((out - base).abs().max()) > 1e-3
    zero = copy.deepcopy(net)
    lora.load_loras(zero, [(f, 0.0)])
    assert torch.allclose(run(zero, inputs), base, atol=1e-6)


def test_two_loras_stack_as_their_weights_add(trained_like_model, tmp_path, inputs):
    net = trained_like_model.denoiser.eval()
    a = random_lora(net, tmp_path / "a.safetensors", rank=4, seed=1)
    b = random_lora(net, tmp_path / "b.safetensors", rank=2, seed=2)
    both = copy.deepcopy(net)
    lora.load_loras(both, [(a, 0.8), (b, 1.3)])
    assert torch.allclose(run(both, inputs), run(merged_by_hand(net, [(a, 0.8), (b, 1.3)]), inputs), atol=1e-5)


def test_merged_loras_are_plain_weights_that_compute_the_same(trained_like_model, tmp_path, inputs):
    """`merge=True` (what `kinema.load` does): the adapters go into the weights and leave no PEFT layer behind."""
    from peft.tuners.lora import LoraLayer

    net = trained_like_model.denoiser.eval()
    a = random_lora(net, tmp_path / "a.safetensors", rank=4, seed=1)
    b = random_lora(net, tmp_path / "b.safetensors", rank=2, seed=2)
    unmerged, merged = copy.deepcopy(net), copy.deepcopy(net)
    lora.load_loras(unmerged, [(a, 0.8), (b, 1.3)])
    records = lora.load_loras(merged, [(a, 0.8), (b, 1.3)], merge=True)
    assert [r["scale"] for r in records] == [0.8, 1.3]
    assert not any(isinstance(m, LoraLayer) for m in merged.modules())
    assert set(merged.state_dict()) == set(net.state_dict())  # the plain network's tensors, no lora_A/lora_B
    out = run(merged, inputs)
    assert torch.allclose(out, run(unmerged, inputs), atol=1e-5)
    assert torch.allclose(out, run(merged_by_hand(net, [(a, 0.8), (b, 1.3)]), inputs), atol=1e-5)
    assert float((out - run(net, inputs)).abs().max()) > 1e-3


def test_files_are_checked_as_data_with_one_line_errors(trained_like_model, tmp_path):
    net = trained_like_model.denoiser.eval()
    good = random_lora(net, tmp_path / "good.safetensors")
    tensors = load_file(good)
    meta = json.loads(__import__("safetensors").safe_open(str(good), "pt").metadata()["kinema_lora"])

    def write(name, t=tensors, m=meta):
        path = tmp_path / name
        save_file(t, str(path), metadata=None if m is None else {"kinema_lora": json.dumps(m)})
        return path

    cases = {
        write("nometa.safetensors", m=None): "is not a kinema LoRA",
        write("other.safetensors", m={**meta, "denoiser": {**meta["denoiser"], "channels": [1, 2]}}): "was made for",
        write("wan.safetensors", m={**meta, "family": "wan"}): "was made for wan",
        write("rank.safetensors", t={k: (v[:2] if k.endswith("lora_A.weight") else v) for k, v in tensors.items()}):
            "this denoiser needs",
        write("extra.safetensors", t={**tensors, "nowhere.q.lora_A.weight": torch.zeros(4, 4),
                                       "nowhere.q.lora_B.weight": torch.zeros(4, 4)}): "layers match this denoiser; unmatched: nowhere.q",
        write("nan.safetensors", t={**tensors, next(iter(tensors)): torch.full_like(next(iter(tensors.values())), float("nan"))}):
            "not finite LoRA weights",
    }
    (tmp_path / "model.bin").write_bytes(b"\x80\x04pickle")
    cases[tmp_path / "model.bin"] = "read as .safetensors only"
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    cases[tmp_path / "junk.safetensors"] = "not a readable safetensors file"
    for path, message in cases.items():
        with pytest.raises(KinemaError, match=message) as e:
            lora.load_loras(copy.deepcopy(net), [(path, 1.0)])
        assert "\n" not in str(e.value)
    loose = copy.deepcopy(net)  # --no-lora-strict: the matching layers load
    records = lora.load_loras(loose, [(tmp_path / "extra.safetensors", 1.0)], strict=False)
    assert records[0]["unmatched"] == 1


def test_parse_spec():
    assert lora.parse_spec("a.safetensors") == ("a.safetensors", 1.0)
    assert lora.parse_spec("a.safetensors:0.5") == ("a.safetensors", 0.5)
    assert lora.parse_spec("C:/x/a.safetensors") == ("C:/x/a.safetensors", 1.0)
    with pytest.raises(KinemaError, match="scale must be a number"):
        lora.parse_spec("a.safetensors:nan")


def test_cli_lora_flag_loads_stacks_and_records(trained_like_model, tmp_path):
    net = trained_like_model.denoiser
    a = random_lora(net, tmp_path / "a.safetensors", seed=3)
    b = random_lora(net, tmp_path / "b.safetensors", seed=4)
    model = str(trained_like_model.path)
    base = [sys.executable, "-m", "kinema.cli", "generate", "a red circle", "--model", model, "--frames", "2",
            "--height", "16", "--width", "16", "--steps", "2", "--quiet", "--threads", "1"]
    out = subprocess.run([*base, "-o", str(tmp_path / "l.mp4"), "--lora", f"{a}:0.5", "--lora", str(b)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    record = json.loads((tmp_path / "l.mp4.json").read_text())
    assert [(r["path"], r["scale"]) for r in record["loras"]] == [(str(a), 0.5), (str(b), 1.0)]
    bad = subprocess.run([*base, "-o", str(tmp_path / "x.mp4"), "--lora", str(tmp_path / "missing.safetensors")],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "no such .safetensors file" in bad.stderr and bad.stderr.strip().count("\n") == 0
    assert not (tmp_path / "x.mp4").exists()


def test_api_load_with_loras_matches_the_flag(trained_like_model, tmp_path):
    import kinema

    a = random_lora(trained_like_model.denoiser, tmp_path / "a.safetensors", seed=5)
    plain = kinema.generate("a red circle", model=trained_like_model.path, frames=2, height=16, width=16, steps=2,
                            progress=False)
    m = kinema.load(trained_like_model.path, device="cpu", dtype="float32", loras=[(a, 0.0)])
    assert (kinema.generate("a red circle", model=m, frames=2, height=16, width=16, steps=2, progress=False) == plain).all()
    m = kinema.load(trained_like_model.path, device="cpu", dtype="float32", loras=[f"{a}:1"])
    assert m.loras[0]["scale"] == 1.0
    assert (kinema.generate("a red circle", model=m, frames=2, height=16, width=16, steps=2, progress=False) != plain).any()


def folder_with_student(trained, tmp_path: Path) -> tuple[Path, dict]:
    """A copy of `trained`'s folder with a random student LoRA named in its `fast` entry (3 steps, guidance 1); and
    the index it had before."""
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(trained.path, folder)
    random_lora(trained.denoiser, folder / "fast.safetensors", seed=6)
    index = json.loads((folder / "kinema.json").read_text())
    (folder / "kinema.json").write_text(json.dumps({**index, "fast": dict(lora="fast.safetensors", steps=3, guidance=1.0)}))
    return folder, index


def test_fast_picks_the_folders_student_and_its_steps(trained_like_model, tmp_path):
    from kinema import jobs

    folder, index = folder_with_student(trained_like_model, tmp_path)
    job = jobs.prepare_generate("a red circle", folder, fast=True, frames=2, height=16, width=16)
    assert (job.settings.steps, job.settings.guidance) == (3, 1.0)
    assert job.placement.loras == ((str(folder / "fast.safetensors"), 1.0),)
    result = jobs.run(job, progress=False)
    assert result.record["loras"][0]["path"] == str(folder / "fast.safetensors")
    given = jobs.prepare_generate("a red circle", folder, fast=True, steps=5, frames=2, height=16, width=16)
    assert given.settings.steps == 5  # the caller's steps win
    import kinema

    loaded = kinema.load(folder, device="cpu", dtype="float32", loras=[folder / "fast.safetensors"])
    assert jobs.prepare_generate("a red circle", loaded, fast=True, frames=2, height=16, width=16).settings.steps == 3
    with pytest.raises(KinemaError, match=r"load it with kinema.load\(loras="):  # a loaded model without the student
        jobs.prepare_generate("a red circle", kinema.load(folder, device="cpu", dtype="float32"), fast=True)
    with pytest.raises(KinemaError, match="has no few-step student; drop --fast"):
        jobs.prepare_generate("a red circle", trained_like_model.path, fast=True)
    (folder / "kinema.json").write_text(json.dumps({**index, "fast": dict(lora="../x.safetensors", steps=3, guidance=1)}))
    with pytest.raises(KinemaError, match="fast must be"):
        jobs.prepare_generate("a red circle", folder, fast=True)
    # a student may sample at its own flow shift; the caller's --shift wins, and a bad one is refused
    (folder / "kinema.json").write_text(json.dumps({**index, "fast": dict(lora="fast.safetensors", steps=3, guidance=1.0,
                                                                          shift=8.0)}))
    assert jobs.prepare_generate("a red circle", folder, fast=True, frames=2, height=16, width=16).settings.shift == 8.0
    assert jobs.prepare_generate("a red circle", folder, fast=True, shift=2.0, frames=2, height=16, width=16).settings.shift == 2.0
    assert jobs.prepare_generate("a red circle", folder, frames=2, height=16, width=16).settings.shift is None  # not fast
    from types import SimpleNamespace

    from kinema.world.evaluate import _suite_settings  # `kinema eval --suite world --fast`: the same student settings

    args = SimpleNamespace(lora=None, steps=None, guidance=None, fast=True)
    settings, loras = _suite_settings(kinema.info(folder), args)
    assert (settings.steps, settings.guidance, settings.shift) == (3, 1.0, 8.0)
    assert loras == [(str(folder / "fast.safetensors"), 1.0)]
    (folder / "kinema.json").write_text(json.dumps({**index, "fast": dict(lora="fast.safetensors", steps=3, guidance=1.0,
                                                                          shift=-1)}))
    with pytest.raises(KinemaError, match="fast must be"):
        jobs.prepare_generate("a red circle", folder, fast=True)
    # the student's own restyle settings (fast.restyle): known names of the right kinds only
    for bad in ({"guidance": "3"}, {"guidance_interval": [1.0, 0.5]}, {"control_scale": 99}, {"steps": 2}, [3.0]):
        (folder / "kinema.json").write_text(json.dumps({**index, "fast": dict(lora="fast.safetensors", steps=3,
                                                                              guidance=1.0, restyle=bad)}))
        with pytest.raises(KinemaError, match="fast must be"):
            jobs.prepare_generate("a red circle", folder, fast=True)


def test_the_shipped_student_loads_at_its_steps():
    from kinema import jobs

    job = jobs.prepare_generate("a red circle moving right on a blue background", fast=True)
    assert (job.settings.steps, job.settings.guidance, job.settings.shift) == (4, 1.0, 8.0)
    assert jobs.prepare_generate("a red circle moving right on a blue background").placement.loras == ()


def test_restyle_uses_the_shipped_student_unless_told_not_to():
    """The default folder's `restyle_fast`: restyle runs the student (its steps, guidance and shift, the control on);
    --no-fast, or a model loaded without the student, restyles with the full model at its restyle settings."""
    import kinema
    from kinema import jobs

    src = Path(__file__).resolve().parents[1] / "samples" / "source.mp4"  # the README's restyle source
    prompt = "a yellow circle moving right on a blue background"
    job = jobs.prepare_restyle(src, prompt)
    assert (job.settings.steps, job.settings.shift) == (4, 8.0)
    # the student's own restyle settings (fast.restyle): guidance 3 on its first step only, control scale 1.5
    assert (job.settings.guidance, tuple(job.settings.guidance_interval), job.settings.control_scale) == (3.0, (0.95, 1.0), 1.5)
    assert job.placement.loras[0][0].endswith("fast.safetensors") and job.inputs["control"] == "edges"
    given = jobs.prepare_restyle(src, prompt, guidance=1.0, control_scale=2.0)  # the caller's settings win
    assert (given.settings.guidance, given.settings.control_scale) == (1.0, 2.0)
    bare = jobs.prepare_restyle(src, prompt, control="none")  # the student without a control: nothing to scale
    assert bare.inputs["control"] == "none" and bare.settings.control is None and bare.settings.guidance == 3.0
    edit = jobs.prepare_restyle(src, prompt, method="flowedit", strength=0.9, source_prompt="a red circle moving right on a blue background")
    assert edit.restyle.method == "flowedit" and edit.settings.steps == 4
    full = jobs.prepare_restyle(src, prompt, fast=False)
    assert (full.settings.steps, full.settings.guidance, full.placement.loras) == (25, 7.5, ())
    assert (tuple(full.settings.guidance_interval), full.settings.control_scale) == ((0.0, 1.0), 2.0)
    plain = kinema.load(device="cpu", dtype="float32")  # loaded without the student: the full model, no error
    assert jobs.prepare_restyle(src, prompt, model=plain).settings.steps == 25
    # under the control the student restyles with its restyle LoRA stacked (fast.restyle.lora); without, it does not
    assert [Path(p).name for p, _ in job.placement.loras] == ["fast.safetensors", "fast-restyle.safetensors"]
    assert [Path(p).name for p, _ in bare.placement.loras] == ["fast.safetensors"]


def test_saving_a_folder_keeps_its_student(trained_like_model, tmp_path):
    """Writing a model folder again (training on from it, or `save` elsewhere) carries the student LoRA its index names."""
    import kinema
    from kinema.models.kinema_family import save

    folder, _ = folder_with_student(trained_like_model, tmp_path)
    model = kinema.load(folder, device="cpu", dtype="float32")
    student = (folder / "fast.safetensors").read_bytes()
    save(model, folder, overwrite=True)  # as training's export does
    assert (folder / "fast.safetensors").read_bytes() == student
    save(model, tmp_path / "copy")
    assert (tmp_path / "copy" / "fast.safetensors").read_bytes() == student
    plain = kinema.load(trained_like_model.path, device="cpu", dtype="float32")
    save(plain, tmp_path / "plain")  # no student named: none written
    assert not (tmp_path / "plain" / "fast.safetensors").exists()
