"""LoRAs on Wan's transformer in the layouts its community uses, converted and loaded by diffusers' Wan loader:
diffusers/PEFT (`transformer.blocks.0.attn1.to_q.lora_A.weight`), ComfyUI / Wan-community
(`diffusion_model.blocks.0.self_attn.q.lora_down.weight` + `.alpha`) and kohya/musubi
(`lora_unet_blocks_0_self_attn_q.lora_down.weight` + `.alpha`).

Each random LoRA is checked against the same LoRA merged into the weights by hand (W + scale * alpha/r * up @ down):
equal to 1e-5; scale 0 is the plain transformer; two LoRAs stack additively; unmatched layers, wrong shapes and a
kinema LoRA are one-line errors before any weights load.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

import kinema
from kinema import jobs
from kinema.cli import main
from kinema.errors import KinemaError
from kinema.models.family import load_model
from kinema.models.seams import TextEmbeds

PROMPT = "a red circle moving right on a blue background"
RANK = 4
# diffusers' module name -> (original Wan name, kohya/musubi name) of every layer the community LoRAs adapt
LAYERS = {"attn1.to_q": ("self_attn.q", "self_attn_q"), "attn1.to_k": ("self_attn.k", "self_attn_k"),
          "attn1.to_v": ("self_attn.v", "self_attn_v"), "attn1.to_out.0": ("self_attn.o", "self_attn_o"),
          "attn2.to_q": ("cross_attn.q", "cross_attn_q"), "attn2.to_k": ("cross_attn.k", "cross_attn_k"),
          "attn2.to_v": ("cross_attn.v", "cross_attn_v"), "attn2.to_out.0": ("cross_attn.o", "cross_attn_o"),
          "ffn.net.0.proj": ("ffn.0", "ffn_0"), "ffn.net.2": ("ffn.2", "ffn_2")}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from kinema.models.wan_testing import t2v_folder

    return t2v_folder(tmp_path_factory.mktemp("wanl") / "t2v")


@pytest.fixture(scope="module")
def plain(folder):
    return load_model(folder)


def make_lora(plain, path, layout: str, seed: int, alpha: float | None = None, extra: dict | None = None):
    """A random LoRA of every block's layers in `layout`; returns {module: delta W} at scale 1 (alpha / r applied)."""
    g = torch.Generator().manual_seed(seed)
    modules = dict(plain.denoiser.transformer.named_modules())
    blocks = len(plain.denoiser.transformer.blocks)
    tensors, deltas = {}, {}
    for i in range(blocks):
        for name, (orig, kohya) in LAYERS.items():
            m = modules[f"blocks.{i}.{name}"]
            down = torch.randn(RANK, m.in_features, generator=g) * 0.2
            up = torch.randn(m.out_features, RANK, generator=g) * 0.2
            a = alpha if alpha is not None else RANK
            deltas[f"blocks.{i}.{name}"] = (a / RANK) * up @ down
            if layout == "peft":
                tensors[f"transformer.blocks.{i}.{name}.lora_A.weight"] = down
                tensors[f"transformer.blocks.{i}.{name}.lora_B.weight"] = up
            elif layout == "comfy":
                key = f"diffusion_model.blocks.{i}.{orig}"
                tensors |= {f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up, f"{key}.alpha": torch.tensor(a)}
            else:
                key = f"lora_unet_blocks_{i}_{kohya}"
                tensors |= {f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up, f"{key}.alpha": torch.tensor(a)}
    tensors |= extra or {}
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return deltas


def merged(folder, *weighted):
    """The plain model with each (deltas, scale) added to its weights by hand."""
    model = load_model(folder)
    modules = dict(model.denoiser.transformer.named_modules())
    with torch.no_grad():
        for deltas, scale in weighted:
            for name, d in deltas.items():
                modules[name].weight += scale * d
    return model


def velocity(model):
    g = torch.Generator().manual_seed(3)
    x, t = torch.randn(2, 16, 2, 8, 8, generator=g), torch.tensor([700.0, 700.0])
    text = TextEmbeds(torch.randn(2, 5, 16, generator=g), torch.ones(2, 5, dtype=torch.bool))
    with torch.no_grad():
        return model.denoiser.predict(x, t, text)


def load(folder, loras, strict=True):
    jobs._CACHE.clear()
    return kinema.load(folder, device="cpu", dtype="float32", loras=loras, lora_strict=strict)


@pytest.mark.parametrize("layout,alpha", [("peft", None), ("comfy", 2.0), ("kohya", 8.0)])
def test_lora_equals_hand_merged_weights(folder, plain, tmp_path, layout, alpha):
    path = tmp_path / f"{layout}.safetensors"
    deltas = make_lora(plain, path, layout, seed=1, alpha=alpha)
    model = load(folder, [(str(path), 0.7)])
    assert model.loras[0]["layers"] == len(deltas) and model.loras[0]["unmatched"] == 0 and model.loras[0]["rank"] == RANK
    diff = (velocity(model) - velocity(merged(folder, (deltas, 0.7)))).abs().max()
    assert diff <= 1e-5, diff
    assert (velocity(model) - velocity(plain)).abs().max() > 1e-3  # the LoRA does something


def test_scale_zero_is_no_lora(folder, plain, tmp_path):
    path = tmp_path / "comfy.safetensors"
    make_lora(plain, path, "comfy", seed=2, alpha=2.0)
    assert (velocity(load(folder, [(str(path), 0.0)])) - velocity(plain)).abs().max() <= 1e-6


def test_two_loras_stack(folder, plain, tmp_path):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    da = make_lora(plain, a, "peft", seed=3)
    db = make_lora(plain, b, "kohya", seed=4, alpha=2.0)
    model = load(folder, [f"{a}:0.5", f"{b}:-0.8"])
    diff = (velocity(model) - velocity(merged(folder, (da, 0.5), (db, -0.8)))).abs().max()
    assert diff <= 1e-5, diff


def test_unmatched_layers_listed_or_skipped(folder, plain, tmp_path, capsys):
    path = tmp_path / "extra.safetensors"
    extra = {"transformer.blocks.9.attn1.to_q.lora_A.weight": torch.randn(RANK, 24),
             "transformer.blocks.9.attn1.to_q.lora_B.weight": torch.randn(24, RANK)}
    deltas = make_lora(plain, path, "peft", seed=5, extra=extra)
    with pytest.raises(KinemaError, match=rf"{len(deltas)} of {len(deltas) + 1} layers match .*blocks\.9\.attn1\.to_q"):
        load(folder, [str(path)])
    model = load(folder, [str(path)], strict=False)
    assert model.loras[0]["unmatched"] == 1
    assert (velocity(model) - velocity(merged(folder, (deltas, 1.0)))).abs().max() <= 1e-5
    out = tmp_path / "cat.mp4"
    assert main(["generate", PROMPT, "--model", str(folder), "--device", "cpu", "--frames", "5", "--lora", str(path),
                 "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--no-lora-strict" in err and not out.exists()


def test_lora_of_another_size_or_family_is_refused(folder, plain, tmp_path, tiny_model_dir):
    bad = tmp_path / "wide.safetensors"
    save_file({"transformer.blocks.0.attn1.to_q.lora_A.weight": torch.randn(RANK, 48),
               "transformer.blocks.0.attn1.to_q.lora_B.weight": torch.randn(24, RANK)}, str(bad))
    with pytest.raises(KinemaError, match="made for this model's size"):
        jobs.placement_for(folder, device="cpu", lora=[str(bad)])
    junk = tmp_path / "junk.safetensors"
    save_file({"diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.randn(RANK, 24),
               "diffusion_model.blocks.0.self_attn.q.weird": torch.randn(3)}, str(junk))
    with pytest.raises(KinemaError, match="not a wan LoRA in a layout diffusers reads"):
        jobs.placement_for(folder, device="cpu", lora=[str(junk)])
    wan_lora = tmp_path / "peft.safetensors"
    make_lora(plain, wan_lora, "peft", seed=6)
    with pytest.raises(KinemaError, match="not a kinema LoRA"):
        jobs.placement_for(tiny_model_dir, device="cpu", lora=[str(wan_lora)])


def test_kinema_lora_on_wan_is_refused(folder, tiny_model_dir, tmp_path):
    from kinema.models.lora import add_adapter, save_lora

    net = load_model(tiny_model_dir).denoiser
    add_adapter(net, "x", 2)
    path = save_lora(net, "x", tmp_path / "kinema.safetensors", 2)
    with pytest.raises(KinemaError, match="LoRA of kinema's own model, not of this wan transformer"):
        jobs.placement_for(folder, device="cpu", lora=[str(path)])


def test_cli_records_wan_loras(folder, plain, tmp_path):
    path = tmp_path / "comfy.safetensors"
    make_lora(plain, path, "comfy", seed=7, alpha=2.0)
    out = tmp_path / "cat.mp4"
    jobs._CACHE.clear()
    assert main(["generate", PROMPT, "--model", str(folder), "--device", "cpu", "--frames", "5", "--height", "32",
                 "--width", "32", "--steps", "2", "--lora", f"{path}:0.5", "--quiet", "-o", str(out)]) == 0
    record = json.loads((tmp_path / "cat.mp4.json").read_text())
    assert record["loras"][0]["scale"] == 0.5 and record["loras"][0]["path"] == str(path.resolve())


def test_lora_over_int8_weights(folder, plain, tmp_path):
    """LoRAs stay in float above int8 base layers: the output within int8's rounding of the float one."""
    pytest.importorskip("torchao")
    path = tmp_path / "peft.safetensors"
    make_lora(plain, path, "peft", seed=8)
    want = velocity(load(folder, [(str(path), 0.5)]))
    jobs._CACHE.clear()
    model = kinema.load(folder, device="cpu", dtype="float32", loras=[(str(path), 0.5)], quantize="int8")
    assert model.runtime["quantize"]["layers"] > 0
    lora_a = [m for n, m in model.denoiser.transformer.named_modules() if n.endswith("lora_A.lora0")]
    assert lora_a and all(type(m.weight) is torch.nn.Parameter for m in lora_a)  # not quantized
    got = velocity(model)
    assert (got - want).abs().max() / want.abs().max() < 0.03
