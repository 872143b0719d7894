"""LoRAs on LTX-Video and AnimateDiff in the layouts their communities use, converted and loaded by diffusers' loaders
for each family (`models/lora.py` `DIFFUSERS_LORA`):

- LTX-Video (`LTXVideoLoraLoaderMixin`): diffusers/PEFT (`transformer.transformer_blocks.0.attn1.to_q.lora_A.weight`)
  and ComfyUI (`diffusion_model.transformer_blocks.0.attn1.to_q.lora_A.weight`);
- AnimateDiff (`StableDiffusionLoraLoaderMixin`): diffusers/PEFT (`unet.down_blocks.0.attentions.0.…to_q.lora_A.weight`,
  motion modules too) and kohya (`lora_unet_down_blocks_0_attentions_0_…_to_q.lora_down.weight` + `.alpha`, SD's 1x1
  `proj_in` convolutions, and `lora_te_text_model_encoder_layers_0_self_attn_q_proj…` on the CLIP text encoder).

Each random LoRA is checked against the same LoRA merged into the weights by hand (W + scale * alpha/r * up @ down):
equal to 1e-5; scale 0 is the plain model; two LoRAs stack additively; a Wan LoRA on an LTX folder, unmatched layers
and wrong shapes are one-line errors before any weights load.
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

PROMPT = "a red circle moving right on the blue background"
RANK = 4
SMALL = ["--frames", "9", "--height", "32", "--width", "32", "--steps", "2", "--quiet"]
# the layers a LoRA adapts in each attention / feed-forward block (diffusers' names)
ATTENTION = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k", "attn2.to_v",
             "attn2.to_out.0")
LTX_LAYERS = (*ATTENTION, "ff.net.0.proj", "ff.net.2")
CLIP_LAYERS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1", "mlp.fc2")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from kinema.models import animatediff_testing, ltx_testing

    root = tmp_path_factory.mktemp("loras")
    return dict(ltx=ltx_testing.folder(root / "ltx"), animatediff=animatediff_testing.pipeline_folder(root / "ad"))


@pytest.fixture(scope="module")
def plain(folders):
    return {name: load_model(path) for name, path in folders.items()}


#################################################################################
#                        Random LoRAs and their merged weights                  #
#################################################################################


def _targets(model, family: str, text: bool = False) -> dict[tuple[str, str], torch.nn.Module]:
    """(component, module name) -> the layer a LoRA of `family` adapts in these tests."""
    if family == "ltx":
        modules = dict(model.denoiser.transformer.named_modules())
        return {("transformer", n): m for n, m in modules.items() if n.endswith(LTX_LAYERS) and "transformer_blocks" in n}
    if text:
        return {("text_encoder", n): m for n, m in model.text_encoder.model.named_modules() if n.endswith(CLIP_LAYERS)}
    modules = dict(model.denoiser.unet.named_modules())
    return {("unet", n): m for n, m in modules.items()
            if n.endswith(ATTENTION) or (n.endswith(".proj_in") and isinstance(m, torch.nn.Conv2d))}


def make_lora(model, family: str, path, layout: str, seed: int, alpha: float | None = None, text: bool = False,
              extra: dict | None = None) -> dict:
    """A random LoRA of the family's layers in `layout` (`alpha`: kohya's); returns {(component, module): delta W} at
    scale 1."""
    g = torch.Generator().manual_seed(seed)
    tensors, deltas = {}, {}
    for i, ((part, name), m) in enumerate(_targets(model, family, text).items()):
        if layout == "kohya" and "motion_modules" in name:
            continue  # kohya's SD LoRAs adapt the spatial layers (the ones diffusers' converter names)
        conv = isinstance(m, torch.nn.Conv2d)  # SD's 1x1 proj_in
        in_f, out_f = (m.in_channels, m.out_channels) if conv else (m.in_features, m.out_features)
        down = torch.randn(RANK, in_f, generator=g) * 0.2
        up = torch.randn(out_f, RANK, generator=g) * 0.2
        # only kohya's files carry alphas: `alpha` and twice it, layer by layer (diffusers' loaders match such per-layer
        # alphas by names that are not the layers'; kinema gives PEFT its config by layer name)
        a = alpha * (1 + i % 2) if layout == "kohya" and alpha is not None else RANK
        deltas[(part, name)] = (a / RANK) * up @ down
        if conv:
            down, up = down[..., None, None], up[..., None, None]
        if layout == "peft":
            tensors |= {f"{part}.{name}.lora_A.weight": down, f"{part}.{name}.lora_B.weight": up}
        elif layout == "comfy":
            tensors |= {f"diffusion_model.{name}.lora_A.weight": down, f"diffusion_model.{name}.lora_B.weight": up}
        else:  # kohya: lora_unet_… / lora_te_text_model_… with `.alpha`
            key = ("lora_unet_" if part == "unet" else "lora_te_text_model_") + name.replace(".", "_")
            tensors |= {f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up, f"{key}.alpha": torch.tensor(a)}
    tensors |= extra or {}
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return deltas


def merged(folder, family: str, *weighted):
    """The plain model with each (deltas, scale) added to its weights by hand."""
    model = load_model(folder)
    layers = {**_targets(model, family), **(_targets(model, family, text=True) if family == "animatediff" else {})}
    with torch.no_grad():
        for deltas, scale in weighted:
            for key, d in deltas.items():
                w = layers[key].weight
                w += scale * d.reshape(w.shape)
    return model


def velocity(model, family: str):
    """The denoiser's output on fixed random inputs (text states given, so the text encoder is not involved)."""
    g = torch.Generator().manual_seed(3)
    if family == "ltx":
        x, dim = torch.randn(2, 8, 2, 4, 4, generator=g), 32
    else:
        x, dim = torch.randn(2, 4, 3, 8, 8, generator=g), 8
    t = torch.tensor([700.0, 700.0])
    text = TextEmbeds(torch.randn(2, 6, dim, generator=g), torch.ones(2, 6, dtype=torch.bool))
    with torch.no_grad():
        return model.denoiser.predict(x, t, text)


def states(model):
    return model.text_encoder.encode([PROMPT, "the circle"]).hidden


def load(folder, loras, strict=True):
    jobs._CACHE.clear()
    return kinema.load(folder, device="cpu", dtype="float32", loras=loras, lora_strict=strict)


#################################################################################
#                                 Layouts, scales                               #
#################################################################################


@pytest.mark.parametrize("family,layout,alpha", [("ltx", "peft", None), ("ltx", "comfy", None),
                                                 ("animatediff", "peft", None), ("animatediff", "kohya", 2.0)])
def test_lora_equals_hand_merged_weights(folders, plain, tmp_path, family, layout, alpha):
    path = tmp_path / f"{layout}.safetensors"
    deltas = make_lora(plain[family], family, path, layout, seed=1, alpha=alpha)
    model = load(folders[family], [(str(path), 0.7)])
    record = model.loras[0]
    assert record["layers"] == len(deltas) and record["unmatched"] == 0 and record["rank"] == RANK
    got, want = velocity(model, family), velocity(merged(folders[family], family, (deltas, 0.7)), family)
    assert (got - want).abs().max() <= 1e-5, (got - want).abs().max()
    assert (got - velocity(plain[family], family)).abs().max() > 1e-3  # the LoRA does something


def test_animatediff_motion_module_and_conv_layers(folders, plain, tmp_path):
    """diffusers/PEFT keys reach the motion modules' layers and SD's 1x1 `proj_in` convolutions (kohya's LoCon-free
    LoRAs of SD adapt those)."""
    path = tmp_path / "conv.safetensors"
    g = torch.Generator().manual_seed(9)
    unet = dict(plain["animatediff"].denoiser.unet.named_modules())
    conv = next(n for n, m in unet.items() if n.endswith("attentions.0.proj_in") and isinstance(m, torch.nn.Conv2d))
    motion = next(n for n in unet if n.endswith("motion_modules.0.transformer_blocks.0.attn1.to_q"))
    down_c = torch.randn(RANK, unet[conv].in_channels, 1, 1, generator=g)
    up_c = torch.randn(unet[conv].out_channels, RANK, 1, 1, generator=g)
    down_m = torch.randn(RANK, unet[motion].in_features, generator=g)
    up_m = torch.randn(unet[motion].out_features, RANK, generator=g)
    save_file({f"unet.{conv}.lora_A.weight": down_c, f"unet.{conv}.lora_B.weight": up_c,
               f"unet.{motion}.lora_A.weight": down_m, f"unet.{motion}.lora_B.weight": up_m}, str(path))
    deltas = {("unet", conv): up_c[..., 0, 0] @ down_c[..., 0, 0], ("unet", motion): up_m @ down_m}
    model = load(folders["animatediff"], [(str(path), 0.5)])
    assert model.loras[0]["layers"] == 2
    want = velocity(merged(folders["animatediff"], "animatediff", (deltas, 0.5)), "animatediff")
    assert (velocity(model, "animatediff") - want).abs().max() <= 1e-5
    proj = tmp_path / "motion_proj_in.safetensors"  # called as proj_in(input=...): PEFT's layers cannot take it
    save_file({f"unet.{motion.split('.transformer_blocks')[0]}.proj_in.lora_A.weight": down_m}, str(proj))
    with pytest.raises(KinemaError, match=r"none of its layers .*motion_modules\.0\.proj_in"):
        jobs.placement_for(folders["animatediff"], device="cpu", lora=[str(proj)])


def test_kohya_text_encoder_lora_adapts_clip(folders, plain, tmp_path):
    """`lora_te_…` keys go onto the CLIP text encoder (diffusers' `load_lora_into_text_encoder`), alphas applied."""
    path = tmp_path / "te.safetensors"
    deltas = make_lora(plain["animatediff"], "animatediff", path, "kohya", seed=2, alpha=2.0, text=True)
    model = load(folders["animatediff"], [(str(path), 0.8)])
    assert model.loras[0]["layers"] == len(deltas) > 0
    want = states(merged(folders["animatediff"], "animatediff", (deltas, 0.8)))
    assert (states(model) - want).abs().max() <= 1e-5
    assert (states(model) - states(plain["animatediff"])).abs().max() > 1e-3


@pytest.mark.parametrize("family,layout", [("ltx", "comfy"), ("animatediff", "kohya")])
def test_scale_zero_is_no_lora(folders, plain, tmp_path, family, layout):
    path = tmp_path / f"{layout}.safetensors"
    make_lora(plain[family], family, path, layout, seed=3, alpha=2.0)
    zero = load(folders[family], [(str(path), 0.0)])
    assert (velocity(zero, family) - velocity(plain[family], family)).abs().max() <= 1e-6


@pytest.mark.parametrize("family,layouts", [("ltx", ("peft", "comfy")), ("animatediff", ("peft", "kohya"))])
def test_two_loras_stack(folders, plain, tmp_path, family, layouts):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    da = make_lora(plain[family], family, a, layouts[0], seed=4)
    db = make_lora(plain[family], family, b, layouts[1], seed=5, alpha=2.0)
    model = load(folders[family], [f"{a}:0.5", f"{b}:-0.8"])
    want = velocity(merged(folders[family], family, (da, 0.5), (db, -0.8)), family)
    assert (velocity(model, family) - want).abs().max() <= 1e-5


#################################################################################
#                                    Refusals                                   #
#################################################################################


def test_wan_lora_on_ltx_is_refused_in_one_line(folders, tmp_path, capsys):
    from kinema.models.wan_testing import t2v_folder

    wan = load_model(t2v_folder(tmp_path / "wan"))
    g = torch.Generator().manual_seed(6)
    tensors, modules = {}, dict(wan.denoiser.transformer.named_modules())
    for name, diffusers_name in (("self_attn.q", "attn1.to_q"), ("cross_attn.k", "attn2.to_k")):
        m = modules[f"blocks.0.{diffusers_name}"]
        tensors |= {f"diffusion_model.blocks.0.{name}.lora_down.weight": torch.randn(RANK, m.in_features, generator=g),
                    f"diffusion_model.blocks.0.{name}.lora_up.weight": torch.randn(m.out_features, RANK, generator=g),
                    f"diffusion_model.blocks.0.{name}.alpha": torch.tensor(2.0)}
    comfy, peft = tmp_path / "wan_comfy.safetensors", tmp_path / "wan_peft.safetensors"
    save_file(tensors, str(comfy))
    save_file({"transformer.blocks.0.attn1.to_q.lora_A.weight": torch.randn(RANK, 24),
               "transformer.blocks.0.attn1.to_q.lora_B.weight": torch.randn(24, RANK)}, str(peft))
    with pytest.raises(KinemaError, match="none of its layers is in this ltx transformer"):
        jobs.placement_for(folders["ltx"], device="cpu", lora=[str(peft)])
    for path in (comfy, peft):
        out = tmp_path / "clip.mp4"
        assert main(["generate", PROMPT, "--model", str(folders["ltx"]), "--device", "cpu", *SMALL, "--lora", str(path),
                     "-o", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(path) in err and "ltx" in err and not out.exists(), err


def test_unmatched_layers_listed_or_skipped(folders, plain, tmp_path):
    path = tmp_path / "extra.safetensors"
    extra = {"unet.down_blocks.7.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight": torch.randn(RANK, 8),
             "unet.down_blocks.7.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.weight": torch.randn(8, RANK)}
    deltas = make_lora(plain["animatediff"], "animatediff", path, "peft", seed=7, extra=extra)
    with pytest.raises(KinemaError, match=rf"{len(deltas)} of {len(deltas) + 1} layers match .*down_blocks\.7\..*"
                                          "--no-lora-strict"):
        jobs.placement_for(folders["animatediff"], device="cpu", lora=[str(path)])
    model = load(folders["animatediff"], [str(path)], strict=False)
    assert model.loras[0]["unmatched"] == 1
    want = velocity(merged(folders["animatediff"], "animatediff", (deltas, 1.0)), "animatediff")
    assert (velocity(model, "animatediff") - want).abs().max() <= 1e-5


def test_lora_of_another_width_is_refused(folders, tmp_path):
    bad = tmp_path / "wide.safetensors"
    save_file({"transformer.transformer_blocks.0.attn1.to_q.lora_A.weight": torch.randn(RANK, 48),
               "transformer.transformer_blocks.0.attn1.to_q.lora_B.weight": torch.randn(32, RANK)}, str(bad))
    with pytest.raises(KinemaError, match="made for this model's size"):
        jobs.placement_for(folders["ltx"], device="cpu", lora=[str(bad)])


def test_split_sd_folder_checks_the_adapter_s_layers(tmp_path):
    """An SD 1.5 folder with a separate motion adapter: a LoRA of the motion modules is matched against the UNet as
    `load` builds it (UNet2DConditionModel + MotionAdapter, on the meta device)."""
    from kinema.models import animatediff_testing
    from kinema.models.family import describe

    sd, adapter = animatediff_testing.sd_and_adapter_folders(tmp_path / "split")
    info = describe(sd, motion_adapter=adapter)
    name = "unet.down_blocks.0.motion_modules.0.transformer_blocks.0.attn1.to_q"
    ok, bad = tmp_path / "motion.safetensors", tmp_path / "motion9.safetensors"
    save_file({f"{name}.lora_A.weight": torch.randn(RANK, 8), f"{name}.lora_B.weight": torch.randn(8, RANK)}, str(ok))
    save_file({f"{name.replace('.0.motion', '.9.motion')}.lora_A.weight": torch.randn(RANK, 8)}, str(bad))
    jobs.placement_for(info, device="cpu", lora=[str(ok)])
    with pytest.raises(KinemaError, match="none of its layers"):
        jobs.placement_for(info, device="cpu", lora=[str(bad)])


#################################################################################
#                               CLI and the sidecar                             #
#################################################################################


@pytest.mark.parametrize("family,layout", [("ltx", "comfy"), ("animatediff", "kohya")])
def test_cli_records_loras(folders, plain, tmp_path, family, layout):
    path = tmp_path / f"{layout}.safetensors"
    make_lora(plain[family], family, path, layout, seed=8, alpha=2.0)
    out = tmp_path / "clip.mp4"
    jobs._CACHE.clear()
    assert main(["generate", PROMPT, "--model", str(folders[family]), "--device", "cpu", *SMALL,
                 "--lora", f"{path}:0.5", "-o", str(out)]) == 0
    record = json.loads((tmp_path / "clip.mp4.json").read_text())
    assert record["loras"][0]["scale"] == 0.5 and record["loras"][0]["path"] == str(path.resolve())
    assert record["loras"][0]["rank"] == RANK and record["loras"][0]["unmatched"] == 0
