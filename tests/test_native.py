"""kinema's own AutoencoderKL, SpaceTimeUNet loading, Euler solver and MiniLM against the diffusers and transformers
originals on the same weights, and the default model's generate path importing neither.

Tiny random networks for the VAE and the UNet (their zero-initialised outputs randomised, so every path
counts), the real MiniLM, and the shipped default model end to end.
"""

from __future__ import annotations

import copy
import inspect
import json
import subprocess
import sys
import types

import pytest
import torch

from kinema.models.autoencoder import AutoencoderKL
from kinema.models.family import DEFAULT_MODEL
from kinema.models.schedulers import EULER_CONFIG, FlowMatchEuler, make_scheduler
from kinema.models.text import BertTextEncoder, HFTextEncoder, load_text_encoder, resolve_text_encoder
from kinema.models.unet import PRESETS, SpaceTimeUNet
from kinema.models.vae import VAE_PRESETS, build_autoencoder

PROMPT = "a red circle moving right on a blue background"
TOL = 1e-5  # float32, the same weights


def randomise(module: torch.nn.Module, seed: int = 0, scale: float = 0.1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


#################################################################################
#                                  AutoencoderKL                                #
#################################################################################


def diffusers_autoencoder(**overrides):
    from diffusers import AutoencoderKL as Original

    cfg = {**VAE_PRESETS["tiny"], **overrides}
    n = len(cfg["block_out_channels"])
    return Original(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * n,
                    up_block_types=("UpDecoderBlock2D",) * n, **cfg)


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_autoencoder_initialises_as_diffusers_from_the_same_seed(preset):
    torch.manual_seed(3)
    ours = build_autoencoder(preset)
    torch.manual_seed(3)
    theirs = diffusers_autoencoder(**VAE_PRESETS[preset])
    a, b = ours.state_dict(), theirs.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert dict(ours.config) == {k: v for k, v in theirs.config.items() if not k.startswith("_")} | {
        "_use_default_values": ours.config["_use_default_values"]}


@pytest.mark.parametrize("overrides", [{}, dict(block_out_channels=(8, 16, 16), layers_per_block=2),
                                       dict(mid_block_add_attention=False, use_quant_conv=False, use_post_quant_conv=False)],
                         ids=["tiny", "three-levels", "no-attention-no-quant"])
def test_autoencoder_matches_diffusers_on_its_weights(overrides, tmp_path):
    from diffusers import AutoencoderKL as Original

    torch.manual_seed(0)
    theirs = diffusers_autoencoder(**overrides).eval()
    randomise(theirs)
    theirs.save_pretrained(tmp_path / "d", safe_serialization=True)
    theirs = Original.from_pretrained(tmp_path / "d", torch_dtype=torch.float32).eval()
    ours = AutoencoderKL.from_pretrained(tmp_path / "d", torch_dtype=torch.float32)
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        a, b = ours.encode(x).latent_dist, theirs.encode(x).latent_dist
        assert max_diff(a.mean, b.mean) <= TOL and max_diff(a.std, b.std) <= TOL and max_diff(a.kl(), b.kl()) <= TOL
        sa, sb = a.sample(torch.Generator().manual_seed(2)), b.sample(torch.Generator().manual_seed(2))
        assert max_diff(sa, sb) <= TOL
        assert max_diff(ours.decode(sa).sample, theirs.decode(sa).sample) <= TOL
    # and back: what kinema writes, diffusers reads (same config, same tensors)
    ours.save_pretrained(tmp_path / "k")
    back = Original.from_pretrained(tmp_path / "k", torch_dtype=torch.float32)
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in ours.state_dict().items())
    strip = lambda c: {k: v for k, v in c.items() if k not in ("_name_or_path", "_use_default_values")}  # noqa: E731
    assert strip(json.loads((tmp_path / "k" / "config.json").read_text())) == strip(
        json.loads((tmp_path / "d" / "config.json").read_text()))


def test_autoencoder_trains_like_diffusers(tmp_path):
    """The VAE stage's objective (sampled latents, reconstruction, KL) and its gradients agree."""
    from diffusers import AutoencoderKL as Original

    torch.manual_seed(0)
    theirs = diffusers_autoencoder()
    randomise(theirs)
    theirs.save_pretrained(tmp_path)
    theirs = Original.from_pretrained(tmp_path, torch_dtype=torch.float32).train()
    ours = AutoencoderKL.from_pretrained(tmp_path, torch_dtype=torch.float32).train()
    x, eps = torch.rand(2, 3, 16, 16) * 2 - 1, torch.randn(2, 4, 8, 8)
    for ae in (ours, theirs):
        dist = ae.encode(x).latent_dist
        loss = (ae.decode(dist.mean + dist.std * eps).sample - x).abs().mean() + dist.kl().mean()
        loss.backward()
    grads = {k: p.grad for k, p in ours.named_parameters()}
    assert max(max_diff(grads[k], p.grad) for k, p in theirs.named_parameters()) <= TOL
    ours.register_to_config(scaling_factor=0.5, shift_factor=0.1)  # what training's VAE stage records
    assert ours.config.scaling_factor == 0.5 and ours.config["shift_factor"] == 0.1


def test_autoencoder_refuses_other_blocks():
    with pytest.raises(ValueError, match="DownEncoderBlock2D"):
        AutoencoderKL(down_block_types=("AttnDownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",))


#################################################################################
#                                 SpaceTimeUNet                                 #
#################################################################################


def diffusers_unet_class():
    """SpaceTimeUNet on diffusers' ModelMixin/ConfigMixin, as it was: models/unet.py with its base class swapped back."""
    import kinema.models.unet as unet

    src = inspect.getsource(unet)
    ours = ("from .pretrained import PretrainedModel, register_to_config\n", "class SpaceTimeUNet(PretrainedModel):")
    assert all(src.count(line) == 1 for line in ours)
    src = src.replace(ours[0], "from diffusers.configuration_utils import ConfigMixin, register_to_config\n"
                               "from diffusers.models.modeling_utils import ModelMixin\n")
    src = src.replace(ours[1], "class SpaceTimeUNet(ModelMixin, ConfigMixin):")
    module = types.ModuleType("kinema.models._unet_on_diffusers")
    module.__package__ = "kinema.models"
    sys.modules[module.__name__] = module
    exec(compile(src, unet.__file__, "exec"), module.__dict__)
    return module.SpaceTimeUNet


def unet_inputs(net, b: int = 2, f: int = 3, size: int = 8):
    from kinema.models.seams import FrameCondition, TextEmbeds

    g = torch.Generator().manual_seed(5)
    c = net.config.latent_channels
    x = torch.randn(b, c, f, size, size, generator=g)
    text = TextEmbeds(torch.randn(b, 5, net.config.text_dim, generator=g), torch.tensor([[1] * 5, [1, 1, 1, 0, 0]][:b]).bool())
    mask = torch.zeros(b, f)
    mask[:, 0] = 1  # the first frame known
    cond = FrameCondition(torch.randn(b, c, f, size, size, generator=g) * mask[:, None, :, None, None], mask)
    return x, torch.tensor([900.0, 250.0][:b]), text, cond


def test_unet_loads_and_saves_as_on_diffusers(tmp_path):
    Original = diffusers_unet_class()
    extra = dict(motion_embedding=True, coord_channels=True, length_embedding=True)
    torch.manual_seed(0)
    theirs = Original(latent_channels=4, text_dim=16, **PRESETS["tiny"], **extra).eval()
    randomise(theirs, scale=0.05)
    theirs.save_pretrained(tmp_path / "d", safe_serialization=True)
    ours = SpaceTimeUNet.from_pretrained(tmp_path / "d", torch_dtype=torch.float32)
    theirs = Original.from_pretrained(tmp_path / "d", torch_dtype=torch.float32).eval()
    assert not ours.training and ours.dtype == torch.float32
    args = unet_inputs(ours)
    with torch.no_grad():
        assert max_diff(ours(*args, clip_frames=torch.tensor([16.0, 64.0])),
                        theirs(*args, clip_frames=torch.tensor([16.0, 64.0]))) <= TOL
    # the config reads as before: attributes, get, items, private entries
    assert dict(ours.config) == dict(theirs.config)
    assert ours.config.motion_embedding and ours.config.get("control_channels", 0) == theirs.config.get("control_channels", 0)
    # what kinema writes, diffusers' loader reads: same file names, config and tensors
    ours.save_pretrained(tmp_path / "k")
    assert sorted(p.name for p in (tmp_path / "k").iterdir()) == sorted(p.name for p in (tmp_path / "d").iterdir())
    assert json.loads((tmp_path / "k" / "config.json").read_text()) == {
        **json.loads((tmp_path / "d" / "config.json").read_text()), "_name_or_path": str(tmp_path / "d")}
    back = Original.from_pretrained(tmp_path / "k", torch_dtype=torch.float32)
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in ours.state_dict().items())


def test_unet_built_grown_and_cast_as_on_diffusers(tmp_path):
    Original = diffusers_unet_class()
    torch.manual_seed(1)
    ours = SpaceTimeUNet(latent_channels=4, text_dim=16, **PRESETS["tiny"])
    torch.manual_seed(1)
    theirs = Original(latent_channels=4, text_dim=16, **PRESETS["tiny"])
    assert all(torch.equal(v, theirs.state_dict()[k]) for k, v in ours.state_dict().items())
    assert {k: v for k, v in ours.config.items() if k != "_use_default_values"} == {
        k: v for k, v in theirs.config.items() if k != "_use_default_values"}
    assert sorted(ours.config["_use_default_values"]) == sorted(theirs.config["_use_default_values"])
    randomise(ours)
    grown = ours.grow(motion_embedding=True, coord_channels=True, length_embedding=True)
    assert grown.config.coord_channels and grown.config.length_embedding
    args = unet_inputs(ours)
    with torch.no_grad():
        assert max_diff(grown(*args), ours(*args)) <= TOL
    ours.save_pretrained(tmp_path)
    half = SpaceTimeUNet.from_pretrained(tmp_path, torch_dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16 and all(p.dtype == torch.bfloat16 for p in half.parameters())


def test_unet_weights_must_match_the_config(tmp_path):
    net = SpaceTimeUNet(latent_channels=4, text_dim=16, **PRESETS["tiny"])
    net.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "motion_embedding": True}))
    with pytest.raises(RuntimeError, match="Missing key"):
        SpaceTimeUNet.from_pretrained(tmp_path)


#################################################################################
#                                   Scheduler                                   #
#################################################################################


@pytest.mark.parametrize("n", [1000, 7])
@pytest.mark.parametrize("shift", [1.0, 3.0, 0.5])
def test_euler_is_diffusers_flow_match_euler_to_the_bit(n, shift):
    from diffusers import FlowMatchEulerDiscreteScheduler

    theirs = FlowMatchEulerDiscreteScheduler(num_train_timesteps=n, shift=shift)
    ours = make_scheduler("euler", {"num_train_timesteps": n, "shift": shift})
    assert isinstance(ours, FlowMatchEuler)
    assert dict(ours.config) == {k: v for k, v in theirs.config.items() if not k.startswith("_")}
    assert torch.equal(ours.timesteps, theirs.timesteps) and torch.equal(ours.sigmas, theirs.sigmas)
    g = torch.Generator().manual_seed(0)
    for steps, start in [(1, 0), (4, 0), (25, 0), (25, 7), (50, 49)]:
        x, v = torch.randn(2, 3, 4, generator=g), torch.randn(steps, 2, 3, 4, generator=g)
        out = []
        for s in (ours, theirs):
            s.set_timesteps(steps)
            s.set_begin_index(start)
            y = x
            for i, t in enumerate(s.timesteps[start:]):
                y = s.step(v[i], t, y, return_dict=False)[0]
            out.append(y)
        assert torch.equal(ours.timesteps, theirs.timesteps) and torch.equal(ours.sigmas, theirs.sigmas)
        assert torch.equal(out[0], out[1])
    ours.set_timesteps(5)  # without a begin index the first step is found from the timestep, as diffusers does
    theirs.set_timesteps(5)
    t = ours.timesteps[0]
    assert torch.equal(ours.step(v[0], t, x).prev_sample, theirs.step(v[0], t, x).prev_sample)


def test_init_writes_diffusers_scheduler_config():
    from diffusers import FlowMatchEulerDiscreteScheduler

    assert EULER_CONFIG == {k: v for k, v in FlowMatchEulerDiscreteScheduler().config.items() if not k.startswith("_")}


#################################################################################
#                                    MiniLM                                     #
#################################################################################

PROMPTS = [PROMPT, "", "A YELLOW Square, moving UP!!", "café naïve Über 東京 🙂", "word " * 60, "a",
           "  spaces\tand\nnewlines ", "antidisestablishmentarianism unaffable"]


@pytest.mark.parametrize("max_length", [32, 8])
def test_minilm_matches_transformers(max_length):
    folder = resolve_text_encoder("builtin:minilm")
    ours, theirs = load_text_encoder(folder, max_length), HFTextEncoder(folder, max_length)
    assert isinstance(ours, BertTextEncoder) and ours.dim == theirs.dim == 384
    for batch in ([PROMPT], PROMPTS, [""], PROMPTS[2:4]):
        a, b = ours.encode(batch), theirs.encode(batch)
        assert a.hidden.shape == b.hidden.shape and torch.equal(a.mask, b.mask)
        assert max_diff(a.hidden, b.hidden) <= TOL


def test_other_text_encoders_stay_on_transformers(tmp_path):
    """A folder that is not a plain BERT with tokenizer.json and safetensors goes to transformers."""
    import shutil

    folder = tmp_path / "enc"
    shutil.copytree(resolve_text_encoder("builtin:minilm"), folder)
    (folder / "tokenizer.json").unlink()
    assert isinstance(load_text_encoder(folder), HFTextEncoder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "position_embedding_type": "relative_key"}))
    from kinema.models.bert import BertConfig

    assert BertConfig.of_folder(folder) is None


#################################################################################
#                                  End to end                                   #
#################################################################################


def original_model(model):
    """The same loaded model with diffusers' AutoencoderKL, the diffusers-based SpaceTimeUNet and transformers' MiniLM."""
    from diffusers import AutoencoderKL as Original

    from kinema.models.vae import FrameVAE

    path = model.path
    orig = copy.copy(model)
    orig.text_encoder = HFTextEncoder(resolve_text_encoder(model.index["text_encoder"]), model.index.get("max_text_length", 32))
    orig.vae = FrameVAE(Original.from_pretrained(path / "vae", torch_dtype=torch.float32).eval())
    orig.denoiser = diffusers_unet_class().from_pretrained(path / "denoiser", torch_dtype=torch.float32).eval()
    return orig


def test_default_model_clip_is_the_same_through_the_originals(monkeypatch):
    from diffusers import FlowMatchEulerDiscreteScheduler

    import kinema.pipelines.common as common
    from kinema import jobs

    job = jobs.prepare_generate(PROMPT, seed=0, steps=6, device="cpu", dtype="float32")
    ours = jobs.load(job.info, job.placement)
    assert isinstance(ours.vae.autoencoder, AutoencoderKL) and isinstance(ours.text_encoder, BertTextEncoder)
    a = jobs.run(job, ours, progress=False)
    theirs = original_model(ours)
    monkeypatch.setattr(common, "make_scheduler", lambda kind, config, shift=None: FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=int(config.get("num_train_timesteps", 1000)), shift=float(config.get("shift", 1.0) if shift is None else shift)))
    b = jobs.run(job, theirs, progress=False)
    assert a.latents.shape == b.latents.shape
    assert max_diff(a.latents, b.latents) <= 1e-4


# Runs `kinema generate` on the default model (one step) in a fresh interpreter, then names the libraries it imported.
IMPORTS = """
import sys
from kinema.cli import main
rc = main(sys.argv[1:])
print(" ".join(sorted(m for m in ("diffusers", "transformers") if m in sys.modules)) or "none")
sys.exit(rc)
"""


def test_generate_on_the_default_model_imports_neither_diffusers_nor_transformers(tmp_path):
    assert DEFAULT_MODEL.is_dir()
    run = subprocess.run([sys.executable, "-c", IMPORTS, "generate", PROMPT, "-o", str(tmp_path / "c.mp4"), "--steps", "1",
                          "--quiet", "--threads", "1"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split()[-1] == "none", run.stdout
