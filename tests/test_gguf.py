"""`--transformer FILE.gguf` for Wan: a tiny random transformer written as GGUF here (the `gguf` package; Q4_K by
kinema's own writer), loaded through diffusers' GGUF support and compared with float32; files of another family or
shape, or no GGUF at all, are one-line errors before anything loads."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

import kinema
from kinema.cli import main
from kinema.errors import KinemaError
from kinema.models import runtime, wan
from kinema.models.seams import TextEmbeds

gguf = pytest.importorskip("gguf")

PROMPT = "a red circle moving right on a blue background"
# (max abs diff / max abs output) each type must stay within: F32 exact, F16 ~1e-3, 8 bits, 4 bits
BOUNDS = {"F32": 1e-6, "F16": 3e-3, "Q8_0": 0.03, "Q4_0": 0.35, "Q4_K": 0.35}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A tiny Wan T2V folder whose transformer's rows fit GGUF's blocks (256 wide: Q4_K's super-blocks)."""
    from kinema.models import wan_testing as wt

    root = wt.t2v_folder(tmp_path_factory.mktemp("wang") / "t2v")
    torch.manual_seed(1)
    tr = wt.transformer(num_attention_heads=2, attention_head_dim=128, ffn_dim=256, num_layers=2)
    shutil.rmtree(root / "transformer")
    tr.save_pretrained(root / "transformer", safe_serialization=True)
    return root


@pytest.fixture(scope="module")
def transformer(folder):
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel.from_pretrained(folder / "transformer", local_files_only=True).eval()


def _velocity(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, t = torch.randn(1, 16, 2, 8, 8, generator=g), torch.tensor([600.0])
    text = TextEmbeds(torch.randn(1, 5, 16, generator=g), torch.ones(1, 5, dtype=torch.bool))
    with torch.no_grad():
        return model.denoiser.predict(x, t, text)


def test_original_layout_round_trips_through_diffusers_converter(transformer):
    """`original_state_dict` is the inverse of diffusers' converter: community names back to the model's."""
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    state = transformer.state_dict()
    original = wan.original_state_dict(state)
    assert "blocks.0.self_attn.q.weight" in original and "head.head.weight" in original
    assert "blocks.0.norm3.weight" in original and "blocks.0.ffn.0.weight" in original
    back = convert_wan_transformer_to_diffusers(dict(original))
    assert set(back) == set(state)
    assert all(back[k] is state[k] for k in state)


def test_q4_k_writer_round_trips_through_gguf_reader():
    """kinema's Q4_K blocks, dequantized by the gguf package, are the values to within 4-bit steps."""
    a = np.random.default_rng(0).standard_normal((6, 512)).astype(np.float32)
    data = runtime.quantize_q4_k(a)
    assert data.shape == (6, 2 * 144) and data.dtype == np.uint8
    back = gguf.quants.dequantize(data, gguf.GGMLQuantizationType.Q4_K)
    step = (a.reshape(-1, 32).max(1) - np.minimum(a.reshape(-1, 32).min(1), 0)) / 15
    assert np.all(np.abs(back - a).reshape(-1, 32).max(1) <= step * 1.1 + 0.02)
    assert np.abs(back - a).mean() < 0.1


@pytest.mark.parametrize("qtype", list(BOUNDS))
@pytest.mark.parametrize("layout", ["original", "diffusers"])
def test_gguf_transformer_matches_float32(folder, transformer, tmp_path, qtype, layout):
    state = transformer.state_dict()
    state = wan.original_state_dict(state) if layout == "original" else state
    path = runtime.save_gguf(state, tmp_path / f"t-{qtype}.gguf", qtype)
    ref = _velocity(kinema.load(folder, device="cpu", dtype="float32"))
    model = kinema.load(folder, device="cpu", dtype="float32", transformer=path)
    out = _velocity(model)
    assert model.runtime["transformer"]["path"] == str(path.resolve())
    types = model.runtime["transformer"]["tensor_types"]
    assert qtype in types or qtype == "F32"
    err = float((out - ref).abs().max() / ref.abs().max())
    assert err <= BOUNDS[qtype], (qtype, err)
    if qtype != "F32":
        assert err > 0  # the file really was quantized, not the folder's weights


def test_generate_with_gguf_records_it(folder, transformer, tmp_path):
    path = runtime.save_gguf(wan.original_state_dict(transformer.state_dict()), tmp_path / "t.gguf", "Q8_0")
    out = tmp_path / "cat.mp4"
    code = main(["generate", PROMPT, "--model", str(folder), "--device", "cpu", "--frames", "5", "--height", "32",
                 "--width", "32", "--steps", "2", "--transformer", str(path), "--quiet", "-o", str(out)])
    assert code == 0
    record = json.loads((tmp_path / "cat.mp4.json").read_text())
    assert record["transformer"]["path"] == str(path.resolve())
    assert record["transformer"]["tensor_types"]["Q8_0"] > 0


def _refused(argv_tail, folder, tmp_path, capsys, message):
    out = tmp_path / "cat.mp4"
    code = main(["generate", PROMPT, "--model", str(folder), "--device", "cpu", "--frames", "5", "-o", str(out),
                 *argv_tail])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err, err
    assert not out.exists()


def test_gguf_of_another_shape_or_family_is_refused(folder, tmp_path, capsys):
    from kinema.models import wan_testing as wt

    other = wt.transformer(num_attention_heads=2, attention_head_dim=128, ffn_dim=256, num_layers=3)  # a block more
    path = runtime.save_gguf(wan.original_state_dict(other.state_dict()), tmp_path / "three.gguf", "Q8_0")
    _refused(["--transformer", str(path)], folder, tmp_path, capsys, "not a Wan transformer of this folder's shape")
    wide = wt.transformer(num_attention_heads=2, attention_head_dim=128, ffn_dim=512, num_layers=2)  # wider FFN
    path = runtime.save_gguf(wan.original_state_dict(wide.state_dict()), tmp_path / "wide.gguf", "Q8_0")
    _refused(["--transformer", str(path)], folder, tmp_path, capsys, "use a GGUF of a transformer of this folder's size")
    llm = runtime.save_gguf({"token_embd.weight": torch.randn(32, 64)}, tmp_path / "llm.gguf", "F32", arch="llama")
    _refused(["--transformer", str(llm)], folder, tmp_path, capsys, "is a GGUF of 'llama', not a Wan transformer")
    stray = runtime.save_gguf({"token_embd.weight": torch.randn(32, 64)}, tmp_path / "stray.gguf", "F32")
    _refused(["--transformer", str(stray)], folder, tmp_path, capsys, "0 of")


def test_not_a_gguf_is_refused(folder, tmp_path, capsys):
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"\x80\x04pickle data, not GGUF" * 10)
    _refused(["--transformer", str(fake)], folder, tmp_path, capsys, "is not a readable GGUF file")
    st = tmp_path / "weights.safetensors"
    st.write_bytes(b"{}")
    _refused(["--transformer", str(st)], folder, tmp_path, capsys, "give a .gguf transformer file")
    _refused(["--transformer", str(tmp_path / "absent.gguf")], folder, tmp_path, capsys, "no such file")


def test_gguf_with_quantize_or_on_kinema_model_is_refused(folder, tiny_model_dir, transformer, tmp_path, capsys):
    path = runtime.save_gguf(transformer.state_dict(), tmp_path / "t.gguf", "Q8_0")
    _refused(["--transformer", str(path), "--quantize", "int8"], folder, tmp_path, capsys, "quantized already")
    _refused(["--transformer", str(path)], tiny_model_dir, tmp_path, capsys, "takes none")


def test_missing_gguf_package_names_the_extra(monkeypatch, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a))
    with pytest.raises(KinemaError, match=r"pip install 'kinema\[gguf\]'"):
        runtime.read_gguf_header(tmp_path / "t.gguf")
