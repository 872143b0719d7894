"""`--quantize` (torchao weight-only int8 on the CPU; fp8 and nf4 refused off CUDA), `kinema info --quantize`, and
`--attention` for transformer families through diffusers' dispatcher: outputs close to float32, smaller weights,
the sidecar's record, and one-line errors before any weights load."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

import kinema
from kinema import jobs
from kinema.cli import main
from kinema.errors import KinemaError
from kinema.models import runtime
from kinema.models.family import load_model

pytest.importorskip("torchao")

PROMPT = "a red circle moving right on a blue background"
SMALL = dict(frames=4, height=16, width=16, steps=2, seed=1)


@pytest.fixture(scope="module")
def wan_folder(tmp_path_factory):
    from kinema.models.wan_testing import t2v_folder

    return t2v_folder(tmp_path_factory.mktemp("wanq") / "t2v")


def test_int8_quantizes_every_linear_layer_and_shrinks_them(trained_like_model):
    """torchao's int8 weights: each linear layer's output within int8's rounding of float32's, weights smaller."""
    model = load_model(trained_like_model.path)
    net = model.denoiser
    linears = {n: m for n, m in net.named_modules() if isinstance(m, torch.nn.Linear)}
    x = {n: torch.randn(3, m.in_features) for n, m in linears.items()}
    ref = {n: m(x[n]) for n, m in linears.items()}
    record = runtime.quantize(net, "int8")
    assert record["layers"] == len(linears) > 0
    assert record["weights_mib_after"] < record["weights_mib_before"]
    for n, m in linears.items():
        assert type(m.weight) is not torch.nn.Parameter  # torchao's quantized tensor
        w = dict(trained_like_model.denoiser.named_modules())[n].weight
        bound = 3 * (w.abs().amax(1) / 127).max() * x[n].abs().sum(1).max() / 2 + 1e-6  # half a step per weight
        assert (m(x[n]) - ref[n]).abs().max() <= bound, n


def test_int8_clip_is_close_to_float32_and_recorded(trained_like_model, tmp_path):
    """The whole clip with int8 weights stays near float32's (uint8 frames), and the sidecar says what was done."""
    path = trained_like_model.path
    plain = kinema.generate(PROMPT, model=path, device="cpu", dtype="float32", progress=False, **SMALL)
    result = kinema.generate(PROMPT, model=path, device="cpu", dtype="float32", quantize="int8", progress=False,
                             return_result=True, **SMALL)
    diff = np.abs(result.frames.astype(int) - plain.astype(int))
    assert diff.mean() < 2.0 and diff.max() <= 40, (diff.mean(), diff.max())
    q = result.record["quantize"]
    assert q["method"] == "int8" and q["layers"] > 0 and q["weights_mib_after"] < q["weights_mib_before"]
    model = kinema.load(path, device="cpu", dtype="float32", quantize="int8")
    assert model.runtime["quantize"]["method"] == "int8"
    again = kinema.generate(PROMPT, model=model, progress=False, **SMALL)  # a loaded model keeps its quantizer
    np.testing.assert_array_equal(again, result.frames)


def test_int8_wan_transformer_close_to_float32(wan_folder):
    """Wan's transformer with int8 weights: the denoiser's velocity within 2% of float32's."""
    from kinema.models.seams import TextEmbeds

    model = load_model(wan_folder)
    x, t = torch.randn(1, 16, 3, 8, 8), torch.tensor([700.0])
    text = TextEmbeds(torch.randn(1, 6, 16), torch.ones(1, 6, dtype=torch.bool))
    ref = model.denoiser.predict(x, t, text)
    record = runtime.quantize(model.denoiser, "int8")
    out = model.denoiser.predict(x, t, text)
    assert record["layers"] > 10
    assert (out - ref).abs().max() / ref.abs().max() < 0.02


def test_weight_bytes_counts_quantized_tensors():
    lin = torch.nn.Linear(64, 32, bias=False)
    assert runtime.weight_bytes(lin) == 64 * 32 * 4
    runtime.quantize(torch.nn.Sequential(lin), "int8")
    assert 64 * 32 <= runtime.weight_bytes(lin) <= 64 * 32 + 32 * 4 * 2  # int8 values and one scale per row


def test_info_reports_weights_before_and_after(tiny_model_dir, wan_folder, capsys):
    assert main(["info", str(tiny_model_dir), "--quantize", "int8"]) == 0
    line = [x for x in capsys.readouterr().out.splitlines() if x.startswith("quantize")]
    assert len(line) == 1 and "--quantize int8" in line[0] and "->" in line[0]
    assert main(["info", str(wan_folder), "--quantize", "int8", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)["quantize_estimate"]
    assert report["method"] == "int8" and report["dtype"] == "bfloat16" and report["linear_parameters"] > 0
    est = runtime.estimate_quantized(runtime.weight_folders(kinema.info(wan_folder)), "int8", 4)
    assert est["after"] < est["before"] == est["parameters"] * 4


@pytest.mark.parametrize("mode", ["fp8", "nf4"])
def test_cuda_quantizers_refused_on_cpu_before_loading(tiny_model_dir, tmp_path, capsys, mode):
    out = tmp_path / "clip.mp4"
    code = main(["generate", PROMPT, "--model", str(tiny_model_dir), "--device", "cpu", "--frames", "2", "--quantize",
                 mode, "-o", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "runs on CUDA" in err and "--quantize int8" in err
    assert not out.exists()


def test_unknown_quantizer_refused():
    with pytest.raises(KinemaError, match="unknown --quantize 'int4'"):
        runtime.check_quantize("int4", torch.device("cpu"))


def test_quantize_without_torchao_names_the_extra(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torchao" else real(name, *a))
    with pytest.raises(KinemaError, match=r"pip install 'kinema\[quant\]'"):
        runtime.check_quantize("int8", torch.device("cpu"))


#################################################################################
#                      --attention through diffusers' dispatcher                #
#################################################################################


def test_dispatch_names_are_diffusers_backends():
    from diffusers.models.attention_dispatch import AttentionBackendName

    assert set(runtime.DIFFUSERS_ATTENTION) <= {b.value for b in AttentionBackendName}


def test_wan_attention_backends_give_the_same_velocity(wan_folder):
    """sdpa (native), _native_math and flex on the CPU: the same transformer output."""
    from kinema.models.seams import TextEmbeds

    x, t = torch.randn(2, 16, 3, 8, 8), torch.tensor([700.0, 700.0])
    text = TextEmbeds(torch.randn(2, 6, 16), torch.ones(2, 6, dtype=torch.bool))
    outs = {}
    for name in ("sdpa", "_native_math", "flex"):
        placement = jobs.placement_for(wan_folder, device="cpu", dtype="float32", attention=name)
        model = load_model(wan_folder, placement.device, placement.dtype, placement.attention)
        with torch.no_grad():
            outs[name] = model.denoiser.predict(x, t, text)
    for name in ("_native_math", "flex"):
        torch.testing.assert_close(outs[name], outs["sdpa"], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name,message", [("flash", "CUDA kernel"), ("sage", "CUDA kernel"), ("chunked", "not available")])
def test_wan_attention_refused_on_cpu(wan_folder, tmp_path, capsys, name, message):
    out = tmp_path / "cat.mp4"
    code = main(["generate", PROMPT, "--model", str(wan_folder), "--device", "cpu", "--frames", "5", "--attention", name,
                 "-o", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err, err
    assert not out.exists()


def test_missing_attention_package_names_it(wan_folder, monkeypatch):
    """A CUDA backend whose package is absent: diffusers' requirement, as one line (checked as if on CUDA)."""
    monkeypatch.setattr(runtime, "CPU_ATTENTION", (*runtime.CPU_ATTENTION, "flash"))
    pytest.importorskip("diffusers")
    if importlib_has("flash_attn"):
        pytest.skip("flash-attn is installed")
    with pytest.raises(KinemaError, match="flash-attn"):
        runtime.check_dispatch_attention("flash", torch.device("cpu"))


def test_kinema_model_refuses_dispatcher_names(tiny_model_dir):
    with pytest.raises(KinemaError, match="choose one of sdpa, xformers, chunked"):
        jobs.placement_for(tiny_model_dir, device="cpu", attention="flex")


def importlib_has(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def test_cli_help_lists_the_runtime_flags(capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    out = capsys.readouterr().out
    for flag in ("--quantize", "--compile", "--transformer"):
        assert flag in out


#################################################################################
#                     CUDA: fp8, nf4, int8 and CUDA attention                   #
#################################################################################

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def wide_wan_folder(tmp_path_factory):
    """A tiny Wan folder whose linear layers fit NF4's blocks (256 wide)."""
    from kinema.models import wan_testing as wt

    root = wt.t2v_folder(tmp_path_factory.mktemp("wanc") / "t2v")
    torch.manual_seed(1)
    tr = wt.transformer(num_attention_heads=2, attention_head_dim=128, ffn_dim=256, num_layers=2)
    shutil.rmtree(root / "transformer")
    tr.save_pretrained(root / "transformer", safe_serialization=True)
    return root


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("mode,tol", [("int8", 0.03), ("fp8", 0.1), ("nf4", 0.25)])
def test_cuda_quantizers_close_to_bfloat16(wide_wan_folder, mode, tol):
    from kinema.models.seams import TextEmbeds

    if mode == "fp8" and torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("fp8 needs compute capability 8.9+")
    jobs._CACHE.clear()
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 16, 3, 16, 16, generator=g).cuda(), torch.tensor([700.0, 700.0]).cuda()
    text = TextEmbeds(torch.randn(2, 6, 16, generator=g).cuda(), torch.ones(2, 6, dtype=torch.bool).cuda())
    ref = kinema.load(wide_wan_folder, device="cuda", dtype="bfloat16")
    with torch.no_grad():
        want = ref.denoiser.predict(x, t, text).float()
    jobs._CACHE.clear()
    model = kinema.load(wide_wan_folder, device="cuda", dtype="bfloat16", quantize=mode)
    with torch.no_grad():
        got = model.denoiser.predict(x, t, text).float()
    assert model.runtime["quantize"]["weights_mib_after"] < model.runtime["quantize"]["weights_mib_before"]
    assert float((got - want).abs().mean() / want.abs().mean()) < tol


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("name", ["_native_efficient", "_native_flash", "_native_cudnn", "flex"])
def test_cuda_attention_backends_match_sdpa(wan_folder, name):
    from kinema.models.seams import TextEmbeds

    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 16, 3, 8, 8, generator=g).cuda(), torch.tensor([700.0, 700.0]).cuda()
    text = TextEmbeds(torch.randn(2, 6, 16, generator=g).cuda(), torch.ones(2, 6, dtype=torch.bool).cuda())
    outs = {}
    for backend in ("sdpa", name):
        p = jobs.placement_for(wan_folder, device="cuda", dtype="bfloat16", attention=backend)
        model = load_model(wan_folder, p.device, p.dtype, p.attention)
        with torch.no_grad():
            outs[backend] = model.denoiser.predict(x, t, text).float()
    torch.testing.assert_close(outs[name], outs["sdpa"], atol=3e-2, rtol=3e-2)


def test_batch_tells_quantized_jobs_apart(tiny_model_dir):
    """A batch output made with other weights is another job (its hash differs); the plain job's hash is unchanged."""
    from kinema.batch import job_hash

    plain = jobs.prepare_generate(PROMPT, tiny_model_dir, device="cpu", **{k: v for k, v in SMALL.items()})
    quant = jobs.prepare_generate(PROMPT, tiny_model_dir, device="cpu", quantize="int8", **SMALL)
    compiled = jobs.prepare_generate(PROMPT, tiny_model_dir, device="cpu", compile=True, **SMALL)
    assert job_hash(plain) != job_hash(quant)
    assert job_hash(plain) == job_hash(compiled)  # compiling does not change the clip


@pytest.mark.parametrize("family", ["ltx", "animatediff"])
def test_other_families_take_int8(family, tmp_path):
    from kinema.models import animatediff_testing, ltx_testing

    folder = ltx_testing.folder(tmp_path / "m") if family == "ltx" else animatediff_testing.pipeline_folder(tmp_path / "m")
    kw = dict(frames=9, height=32, width=32, steps=2, device="cpu", dtype="float32", progress=False)
    plain = kinema.generate(PROMPT, model=folder, **kw)
    result = kinema.generate(PROMPT, model=folder, quantize="int8", return_result=True, **kw)
    assert result.record["quantize"]["layers"] > 0
    diff = np.abs(result.frames.astype(int) - plain.astype(int))
    assert diff.mean() < 2 and diff.max() <= 40


def test_kinema_xformers_needs_the_package(tiny_model_dir, wan_folder, monkeypatch):
    """kinema's own xformers backend checks its package; Wan's goes through diffusers' requirement check."""
    import importlib

    monkeypatch.setattr(importlib.import_module("kinema.models.attention"), "xformers_available", lambda: False)
    with pytest.raises(KinemaError, match=r"pip install 'kinema\[xformers\]'"):
        jobs.placement_for(tiny_model_dir, device="cpu", attention="xformers")
    if not importlib_has("xformers"):
        with pytest.raises(KinemaError, match="xformers"):
            jobs.placement_for(wan_folder, device="cpu", attention="xformers")
