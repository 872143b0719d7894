"""Untrusted files run no code: safetensors only, YAML as data, model folders that cannot reach outside themselves,
and damaged or hostile model folders refused in one line."""

from __future__ import annotations

import ast
import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from .conftest import PROMPT, check_contract, listing

REPO = Path(__file__).resolve().parents[2]
SOURCES = [p for d in ("kinema", "models", "pipelines", "scripts") for p in sorted((REPO / d).rglob("*.py"))]


class Payload:
    """Unpickling this creates `marker`: proof that a pickle was loaded."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


@pytest.fixture
def model_copy(tiny_model_dir, tmp_path):
    path = tmp_path / "model"
    shutil.copytree(tiny_model_dir, path)
    return path


def generate_with(kinema, model: Path, out_dir: Path):
    out_dir.mkdir(exist_ok=True)
    before = listing(out_dir)
    result = kinema("generate", PROMPT, "--model", model, "-o", out_dir / "clip.mp4", "--frames", "2", "--height", "16",
                    "--width", "16", "--steps", "1", "--quiet")
    check_contract(result, before, listing(out_dir), {"clip.mp4", "clip.mp4.json"})
    return result


#################################################################################
#                                   Weights                                     #
#################################################################################


@pytest.mark.parametrize("component", ["denoiser", "vae"])
@pytest.mark.parametrize("name", ["diffusion_pytorch_model.bin", "model.pt", "weights.ckpt"])
def test_pickle_only_weights_are_refused_unread(component, name, kinema, model_copy, tmp_path):
    marker = tmp_path / "unpickled"
    for f in (model_copy / component).glob("*.safetensors"):
        f.unlink()
    (model_copy / component / name).write_bytes(pickle.dumps(Payload(marker)))
    for command in (["info", model_copy], None):
        result = kinema(*command) if command else generate_with(kinema, model_copy, tmp_path / "out")
        check_contract(result, set(), set())
        assert result.code == 2 and "safetensors only" in result.err and not marker.exists()


def test_pickles_beside_safetensors_are_ignored(kinema, model_copy, tmp_path):
    marker = tmp_path / "unpickled"
    for component in ("denoiser", "vae"):
        (model_copy / component / "diffusion_pytorch_model.bin").write_bytes(pickle.dumps(Payload(marker)))
    assert generate_with(kinema, model_copy, tmp_path / "out").code == 0 and not marker.exists()


@pytest.mark.parametrize("damage", ["pickle named .safetensors", "truncated", "empty", "random bytes"])
def test_damaged_safetensors_are_one_line_errors(damage, kinema, model_copy, tmp_path):
    marker = tmp_path / "unpickled"
    weights = next((model_copy / "denoiser").glob("*.safetensors"))
    data = weights.read_bytes()
    weights.write_bytes({"pickle named .safetensors": pickle.dumps(Payload(marker)), "truncated": data[: len(data) // 2],
                         "empty": b"", "random bytes": os.urandom(4096)}[damage])
    for result in (kinema("info", model_copy), generate_with(kinema, model_copy, tmp_path / "out")):
        check_contract(result, set(), set())
        assert result.code == 2 and not marker.exists(), result.err


#################################################################################
#                                Config files                                   #
#################################################################################

PYTHON_TAGS = [
    "seed: !!python/object/apply:os.system ['touch {marker}']",
    "seed: !!python/object/apply:builtins.open ['{marker}', 'w']",
    "seed: !!python/name:os.system",
    "seed: !!python/module:os",
    "!!python/object/new:builtins.open ['{marker}', 'w']",
]


@pytest.mark.parametrize("text", PYTHON_TAGS)
def test_yaml_python_tags_are_refused_unrun(text, kinema, tiny_model_dir, tmp_path):
    marker = tmp_path / "ran"
    config = tmp_path / "evil.yaml"
    config.write_text(text.replace("{marker}", str(marker)) + "\n")
    before = listing(tmp_path)
    result = kinema("train", config, "--model", tiny_model_dir, "--run", tmp_path / "run")
    check_contract(result, before, listing(tmp_path))
    assert result.code == 2 and "YAML" in result.err and not marker.exists()


@pytest.mark.parametrize("text,key", [("seed: 1\nlearnin_rate: 0.1\n", "learnin_rate"),
                                      ("vae:\n  steps: 3\n  stepz: 4\n", "stepz"),
                                      ("denoiser:\n  ema: 0.9\n  __class__: os.system\n", "__class__")])
def test_unknown_config_keys_are_refused(text, key, kinema, tiny_model_dir, tmp_path):
    config = tmp_path / "typo.yaml"
    config.write_text(text)
    before = listing(tmp_path)
    result = kinema("train", config, "--model", tiny_model_dir, "--run", tmp_path / "run")
    check_contract(result, before, listing(tmp_path))
    assert result.code == 2 and key in result.err


def _fields(cls) -> list[str]:
    import dataclasses

    return [f.name for f in dataclasses.fields(cls)]


def _train_fields() -> list[str]:
    from kinema.train import DenoiserStage, TrainConfig, VAEStage

    return _fields(TrainConfig) + _fields(VAEStage) + _fields(DenoiserStage)


YAML_LEAF = st.none() | st.booleans() | st.integers(-10**20, 10**20) | st.floats() | st.text(max_size=6)
YAML_VALUE = st.recursive(YAML_LEAF, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.sampled_from(_train_fields()) | st.text(max_size=4), inner, max_size=3), max_leaves=8)
CONFIG_DATA = st.dictionaries(st.sampled_from(_train_fields()) | st.text(max_size=6) | st.integers(), YAML_VALUE, max_size=5)


def _has_declared_types(obj) -> bool:
    import dataclasses
    import typing

    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        v, kind = getattr(obj, f.name), hints[f.name]
        if dataclasses.is_dataclass(kind):
            ok = _has_declared_types(v)
        elif typing.get_origin(kind) is tuple:
            item = typing.get_args(kind)[0]
            ok = isinstance(v, tuple) and all(isinstance(x, item) and not isinstance(x, bool) or item is bool for x in v)
        else:
            ok = isinstance(v, kind) and (kind is bool or not isinstance(v, bool))
        if not ok:
            return False
    return True


@settings(max_examples=60, deadline=None, database=None, derandomize=True)
@given(data=CONFIG_DATA)
def test_any_config_data_is_a_one_line_error_or_a_typed_config(data):
    """Whatever a YAML file holds, the config loader refuses it in one line or returns the declared types."""
    from kinema.config import from_dict
    from kinema.errors import KinemaError
    from kinema.train import TrainConfig

    try:
        cfg = from_dict(TrainConfig, data, "fuzz.yaml")
    except KinemaError as e:
        assert "\n" not in str(e)
        return
    assert _has_declared_types(cfg), cfg


@settings(max_examples=40, deadline=None, database=None, derandomize=True)
@given(text=st.text(max_size=60) | st.binary(max_size=60))
def test_any_config_text_is_a_one_line_error_or_a_config(text, tmp_path_factory):
    from kinema.config import load_yaml
    from kinema.errors import KinemaError
    from kinema.train import TrainConfig

    path = tmp_path_factory.mktemp("yaml") / "fuzz.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
    try:
        load_yaml(TrainConfig, path)
    except KinemaError as e:
        assert "\n" not in str(e)


#################################################################################
#                               Model folders                                   #
#################################################################################


def _edit_index(model: Path, **entries) -> None:
    index = json.loads((model / "kinema.json").read_text())
    index.update(entries)
    (model / "kinema.json").write_text(json.dumps(index))


def test_text_encoder_path_cannot_escape_the_model_folder(kinema, model_copy, tmp_path):
    """`../` in kinema.json, or a link inside the folder that points out of it, is refused before loading."""
    from kinema.models.text import resolve_text_encoder

    outside = tmp_path / "outside-encoder"
    shutil.copytree(resolve_text_encoder("builtin:minilm"), outside)
    for spec in ("../outside-encoder", "text/../../outside-encoder", "link"):
        if spec == "link":
            (model_copy / "link").symlink_to(outside)
        _edit_index(model_copy, text_encoder=spec)
        result = generate_with(kinema, model_copy, tmp_path / "out")
        assert result.code == 2 and "outside the model folder" in result.err, (spec, result.err)
    shutil.copytree(outside, model_copy / "text")  # a relative path inside the folder is fine
    _edit_index(model_copy, text_encoder="text")
    assert generate_with(kinema, model_copy, tmp_path / "out").code == 0


def test_component_folders_cannot_be_links_out(kinema, model_copy, tmp_path):
    shutil.move(model_copy / "vae", tmp_path / "elsewhere")
    (model_copy / "vae").symlink_to(tmp_path / "elsewhere")
    result = generate_with(kinema, model_copy, tmp_path / "out")
    assert result.code == 2 and "vae/" in result.err


HOSTILE = {
    "text_encoder not a string": lambda m: _edit_index(m, text_encoder=5),
    "max_text_length not a number": lambda m: _edit_index(m, max_text_length="abc"),
    "defaults a list": lambda m: _edit_index(m, defaults=[1]),
    "defaults of words": lambda m: _edit_index(m, defaults={"frames": "many"}),
    "negative default steps": lambda m: _edit_index(m, defaults={"steps": -3}),
    "NaN default guidance": lambda m: (m / "kinema.json").write_text(
        (m / "kinema.json").read_text().replace('"guidance": 5.0', '"guidance": NaN')),
    "frame_conditions a number": lambda m: _edit_index(m, frame_conditions=7),
    "index a list": lambda m: (m / "kinema.json").write_text("[1, 2]"),
    "index null": lambda m: (m / "kinema.json").write_text("null"),
    "index not JSON": lambda m: (m / "kinema.json").write_text("{'format': "),
    "index a folder": lambda m: ((m / "kinema.json").unlink(), (m / "kinema.json").mkdir()),
    "config not JSON": lambda m: (m / "denoiser" / "config.json").write_text("{"),
    "config a list": lambda m: (m / "vae" / "config.json").write_text("[]"),
    "config without channels": lambda m: (m / "vae" / "config.json").write_text("{}"),
    "config with other channels": lambda m: (m / "denoiser" / "config.json").write_text(json.dumps(
        {**json.loads((m / "denoiser" / "config.json").read_text()), "channels": [7]})),
    "config with other shapes": lambda m: (m / "denoiser" / "config.json").write_text(json.dumps(
        {**json.loads((m / "denoiser" / "config.json").read_text()), "head_dim": 3})),
    "scheduler config missing": lambda m: (m / "scheduler" / "scheduler_config.json").unlink(),
    "scheduler shift a word": lambda m: (m / "scheduler" / "scheduler_config.json").write_text('{"shift": "x"}'),
    "missing component": lambda m: shutil.rmtree(m / "scheduler"),
    "index nested 200,000 deep": lambda m: (m / "kinema.json").write_text("[" * 200_000 + "]" * 200_000),
    "config nested 200,000 deep": lambda m: (m / "denoiser" / "config.json").write_text("[" * 200_000 + "]" * 200_000),
    "scheduler timesteps -5": lambda m: (m / "scheduler" / "scheduler_config.json").write_text('{"num_train_timesteps": -5}'),
    "scheduler timesteps 0": lambda m: (m / "scheduler" / "scheduler_config.json").write_text('{"num_train_timesteps": 0}'),
    "scheduler timesteps 1e11": lambda m: (m / "scheduler" / "scheduler_config.json").write_text(
        '{"num_train_timesteps": 100000000000}'),
    "restyle_strength a word": lambda m: _edit_index(m, defaults={"restyle_strength": "x"}),
    "motion_length zero": lambda m: _edit_index(m, defaults={"motion_length": 0}),
    "max_text_length 100000": lambda m: _edit_index(m, max_text_length=100_000),
    "weights a link out of the folder": lambda m: _link_weights_out(m),
}


def _link_weights_out(model: Path) -> None:
    weights = next((model / "denoiser").glob("*.safetensors"))
    outside = model.parent / "outside.safetensors"
    shutil.move(weights, outside)
    weights.symlink_to(outside)


@pytest.mark.parametrize("case", HOSTILE)
def test_damaged_or_hostile_model_folder(case, kinema, model_copy, tmp_path):
    """Each damage: `info` and `generate` end with one line, no output and no traceback."""
    HOSTILE[case](model_copy)
    info = kinema("info", model_copy)
    check_contract(info, set(), set())
    result = generate_with(kinema, model_copy, tmp_path / "out")
    assert result.code == 2, result.err


#################################################################################
#                         Source: no code from files                            #
#################################################################################


def _calls(path: Path):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


def _is(value: ast.AST, constant) -> bool:
    return isinstance(value, ast.Constant) and value.value is constant


def _keyword(node: ast.Call, name: str):
    return next((kw.value for kw in node.keywords if kw.arg == name), None)


def test_sources_found():
    assert len(SOURCES) > 20 and any(p.name == "cli.py" for p in SOURCES)


def test_trust_remote_code_is_never_enabled():
    """No call passes trust_remote_code other than a literal False, as a keyword or as a key of a kwargs dict."""
    bad = []
    for p in SOURCES:
        for node in ast.walk(ast.parse(p.read_text(), str(p))):
            values = [kw.value for kw in getattr(node, "keywords", []) if kw.arg == "trust_remote_code"]
            if isinstance(node, ast.Dict):
                values += [v for k, v in zip(node.keys, node.values) if _is(k, "trust_remote_code") or
                           isinstance(k, ast.Constant) and k.value == "trust_remote_code"]
            bad += [f"{p.relative_to(REPO)}:{node.lineno}" for v in values if not _is(v, False)]
    assert not bad, bad


UNSAFE = {"pickle.load", "pickle.loads", "yaml.load", "yaml.load_all", "yaml.unsafe_load", "yaml.unsafe_load_all",
          "yaml.full_load", "eval", "exec", "marshal.loads", "dill.load", "cloudpickle.load", "torch.jit.load"}


def test_no_pickle_eval_exec_or_unsafe_yaml():
    """torch.load only with weights_only=True, never use_safetensors=False; no pickle, unsafe YAML, eval or exec."""
    bad = []
    for p in SOURCES:
        for node, name in _calls(p):
            where = f"{p.relative_to(REPO)}:{node.lineno} {name}"
            if name in UNSAFE:
                bad.append(where)
            if name == "torch.load" and not _is(_keyword(node, "weights_only"), True):
                bad.append(where + " without weights_only=True")
            if _is(_keyword(node, "use_safetensors"), False):
                bad.append(where + " use_safetensors=False")
    assert not bad, bad


def test_a_config_nested_100000_deep_is_one_line(kinema, tiny_model_dir, tmp_path):
    config = tmp_path / "deep.yaml"
    config.write_text("a: " + "[" * 100_000 + "]" * 100_000 + "\n")
    result = kinema("train", config, "--model", tiny_model_dir, "--run", tmp_path / "run")
    check_contract(result, set(), set())
    assert result.code == 2 and "nested too deeply" in result.err, result.err


def test_init_refuses_a_link_and_leaves_its_target(kinema, tiny_model_dir, tmp_path):
    """`kinema init LINK --overwrite`, LINK a link to a model folder: one line, nothing written, nothing left beside."""
    target = tmp_path / "model"
    shutil.copytree(tiny_model_dir, target)
    link = tmp_path / "link"
    link.symlink_to(target)
    before = listing(tmp_path)
    result = kinema("init", link, "--preset", "tiny", "--overwrite")
    assert result.code == 2 and "is a link" in result.err and "\n" not in result.err.strip(), result.err
    assert listing(tmp_path) == before and link.is_symlink()
