"""`--attention`, `--transformer FILE.gguf` and `--offload` on LTX-Video and AnimateDiff, on tiny folders.

LTX-Video's transformer runs diffusers' attention dispatcher (`set_attention_backend`): native and _native_math give
sdpa's output; a CUDA kernel on the CPU or an unknown backend is a one-line error. Its GGUF files (the original `ltxv`
layout city96's files use, or diffusers') load through diffusers' `from_single_file`, checked against the folder by
their header first. AnimateDiff's UNet attention processors do not go through the dispatcher: it takes sdpa and
xformers, refuses the rest in one line, and takes no GGUF file. AnimateDiff's `--offload model` moves CLIP, the UNet
and the VAE to the device in turn (accelerate's hooks; run here with the CPU as the execution device).
"""

from __future__ import annotations

import json

import pytest
import torch

import kinema
from kinema import jobs
from kinema.cli import main
from kinema.errors import KinemaError
from kinema.models.family import load_model
from kinema.models.seams import TextEmbeds

PROMPT = "a red circle moving right on the blue background"
SMALL = ["--frames", "9", "--height", "32", "--width", "32", "--steps", "2", "--quiet"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from kinema.models import animatediff_testing, ltx_testing

    root = tmp_path_factory.mktemp("runtime")
    return dict(ltx=ltx_testing.folder(root / "ltx"), animatediff=animatediff_testing.pipeline_folder(root / "ad"))


def velocity(model, seed=3):
    """The LTX denoiser's output on fixed inputs, one prompt's text padded (a mask to the cross-attention)."""
    g = torch.Generator().manual_seed(seed)
    x, t = torch.randn(2, 8, 2, 4, 4, generator=g), torch.tensor([700.0, 700.0])
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, 4:] = False
    with torch.no_grad():
        return model.denoiser.predict(x, t, TextEmbeds(torch.randn(2, 6, 32, generator=g), mask))


def one_line_exit_2(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


#################################################################################
#                                   Attention                                   #
#################################################################################


@pytest.mark.parametrize("backend", ["native", "_native_math", "flex"])
def test_ltx_dispatch_backends_equal_sdpa(folders, backend):
    want = velocity(load_model(folders["ltx"]))
    model = load_model(folders["ltx"], attention=backend)
    got = velocity(model)
    assert (got - want).abs().max() <= 1e-5, (got - want).abs().max()
    processors = {m.processor._attention_backend for m in model.denoiser.transformer.modules() if hasattr(m, "processor")}
    assert {str(getattr(p, "value", p)) for p in processors} == {backend}


def test_ltx_sdpa_is_native_whatever_was_loaded_before(folders):
    """diffusers' dispatcher default is process-wide (the last backend set); sdpa is set on the model explicitly."""
    load_model(folders["ltx"], attention="_native_math")
    model = load_model(folders["ltx"])
    assert {m.processor._attention_backend.value for m in model.denoiser.transformer.modules()
            if hasattr(m, "processor")} == {"native"}


def test_attention_refusals_are_one_line(folders, capsys, tmp_path):
    out = tmp_path / "clip.mp4"
    base = ["generate", PROMPT, "--device", "cpu", *SMALL, "-o", str(out)]
    err = one_line_exit_2([*base, "--model", str(folders["ltx"]), "--attention", "flash"], capsys)
    assert "CUDA kernel" in err
    with pytest.raises(KinemaError, match="not available for .*choose one of sdpa, native"):
        jobs.placement_for(folders["ltx"], device="cpu", attention="magic")
    err = one_line_exit_2([*base, "--model", str(folders["animatediff"]), "--attention", "_native_math"], capsys)
    assert "choose one of sdpa, xformers" in err and not out.exists()


def test_cli_records_ltx_attention(folders, tmp_path):
    out = tmp_path / "clip.mp4"
    jobs._CACHE.clear()
    assert main(["generate", PROMPT, "--model", str(folders["ltx"]), "--device", "cpu", *SMALL, "--attention",
                 "_native_math", "-o", str(out)]) == 0
    assert json.loads((tmp_path / "clip.mp4.json").read_text())["attention"] == "_native_math"


#################################################################################
#                                     GGUF                                      #
#################################################################################


@pytest.fixture(scope="module")
def gguf_files(folders, tmp_path_factory):
    pytest.importorskip("gguf")
    from diffusers import LTXVideoTransformer3DModel

    from kinema.models import ltx, ltx_testing, runtime

    root = tmp_path_factory.mktemp("ltxgguf")
    state = LTXVideoTransformer3DModel.from_pretrained(folders["ltx"] / "transformer", local_files_only=True).state_dict()
    out = {f"{layout}-{q}": runtime.save_gguf(ltx.original_state_dict(state) if layout == "original" else state,
                                              root / f"{layout}-{q}.gguf", q, arch="ltxv")
           for layout in ("original", "diffusers") for q in ("F32", "Q8_0")}
    torch.manual_seed(0)
    two = ltx_testing.transformer()
    two = LTXVideoTransformer3DModel(**{**dict(two.config), "num_layers": 2})
    out["two-layers"] = runtime.save_gguf(ltx.original_state_dict(two.state_dict()), root / "two.gguf", "F32", "ltxv")
    out["wan"] = runtime.save_gguf(ltx.original_state_dict(state), root / "wan.gguf", "F32", arch="wan")
    return out


def test_original_names_round_trip_through_diffusers_converter(folders):
    from diffusers import LTXVideoTransformer3DModel
    from diffusers.loaders.single_file_utils import convert_ltx_transformer_checkpoint_to_diffusers

    from kinema.models import ltx

    state = LTXVideoTransformer3DModel.from_pretrained(folders["ltx"] / "transformer", local_files_only=True).state_dict()
    original = ltx.original_state_dict(state)
    assert "patchify_proj.weight" in original and "adaln_single.linear.weight" in original
    assert "transformer_blocks.0.attn1.q_norm.weight" in original
    back = convert_ltx_transformer_checkpoint_to_diffusers(dict(original))
    assert set(back) == set(state) and all(back[k] is state[k] for k in state)


@pytest.mark.parametrize("name,bound", [("original-F32", 1e-6), ("diffusers-F32", 1e-6), ("original-Q8_0", 0.03)])
def test_ltx_gguf_transformer_matches_the_folder(folders, gguf_files, name, bound):
    want = velocity(load_model(folders["ltx"]))
    jobs._CACHE.clear()
    model = kinema.load(folders["ltx"], device="cpu", dtype="float32", transformer=gguf_files[name])
    got = velocity(model)
    assert (got - want).abs().max() / want.abs().max() <= bound
    types = model.runtime["transformer"]["tensor_types"]
    assert ("Q8_0" in types) == name.endswith("Q8_0")


def test_ltx_gguf_refusals_are_one_line(folders, gguf_files, capsys, tmp_path):
    with pytest.raises(KinemaError, match="GGUF of 'wan', not a LTX-Video transformer"):
        jobs.placement_for(folders["ltx"], device="cpu", transformer=gguf_files["wan"])
    with pytest.raises(KinemaError, match="not a LTX-Video transformer of this folder's shape.*transformer_blocks.1"):
        jobs.placement_for(folders["ltx"], device="cpu", transformer=gguf_files["two-layers"])
    out = tmp_path / "clip.mp4"
    base = ["generate", PROMPT, "--device", "cpu", *SMALL, "-o", str(out)]
    one_line_exit_2([*base, "--model", str(folders["ltx"]), "--transformer", str(gguf_files["two-layers"])], capsys)
    err = one_line_exit_2([*base, "--model", str(folders["animatediff"]), "--transformer",
                           str(gguf_files["original-F32"])], capsys)
    assert "takes none" in err and not out.exists()


def test_cli_records_ltx_gguf(folders, gguf_files, tmp_path):
    out = tmp_path / "clip.mp4"
    jobs._CACHE.clear()
    assert main(["generate", PROMPT, "--model", str(folders["ltx"]), "--device", "cpu", *SMALL, "--transformer",
                 str(gguf_files["original-Q8_0"]), "-o", str(out)]) == 0
    record = json.loads((tmp_path / "clip.mp4.json").read_text())
    assert record["transformer"]["path"] == str(gguf_files["original-Q8_0"].resolve())
    assert record["transformer"]["tensor_types"]["Q8_0"] > 0


#################################################################################
#                              AnimateDiff offload                              #
#################################################################################

CLIP = dict(frames=8, height=32, width=32, steps=2, seed=3, progress=False)


@pytest.mark.parametrize("mode", ["model", "sequential"])
def test_animatediff_offload_hooks_keep_the_clip(folders, mode):
    """The hooks `--offload` puts on CLIP, the UNet and the VAE, with the CPU as their execution device (`load` takes
    --offload on CUDA only): the clip is the resident model's."""
    from kinema.models import animatediff

    want = kinema.generate(PROMPT, model=load_model(folders["animatediff"]), **CLIP)
    model = load_model(folders["animatediff"])
    animatediff.enable_offload(model, mode, torch.device("cpu"))
    assert hasattr(model.denoiser.unet, "_hf_hook") and hasattr(model.vae.autoencoder, "_hf_hook")
    got = kinema.generate(PROMPT, model=model, **CLIP)
    assert abs(got.astype(int) - want.astype(int)).max() <= 1


def test_animatediff_offload_needs_cuda(folders):
    with pytest.raises(KinemaError, match="needs --device cuda"):
        load_model(folders["animatediff"], "cpu", offload="model")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("mode", ["model", "sequential"])
def test_animatediff_offload_cuda(folders, mode):
    want = kinema.generate(PROMPT, model=load_model(folders["animatediff"], "cuda"), **CLIP)
    model = load_model(folders["animatediff"], "cuda", offload=mode)
    assert model.offload == mode and next(model.denoiser.unet.parameters()).device.type != "cuda"
    got = kinema.generate(PROMPT, model=model, **CLIP)
    assert abs(got.astype(int) - want.astype(int)).max() <= 1
