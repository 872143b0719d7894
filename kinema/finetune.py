"""`kinema train --data DIR --model FOLDER` for the diffusers families: a PEFT LoRA on Wan's or LTX-Video's
transformer, or on AnimateDiff's UNet (its spatial and motion attention), trained on a folder of captioned clips.

    kinema train --data my-clips --model Wan2.1-T2V-1.3B-Diffusers --lora 16 --frames 33 --height 320 --width 576
    kinema generate "..." --model Wan2.1-T2V-1.3B-Diffusers --lora runs/finetune-my-clips/lora.safetensors

The clips are read as for kinema's own model (`kinema/data.py`: every clip checked before the model loads),
centre-cropped to the size asked (default: the model's), and encoded once into a latent cache with the family's
own VAE seam (its normalised latents, the posterior mode) and text seam (T5 or CLIP states per caption), in the
run folder. Each step then noises cached latents and asks the family's denoiser seam (`predict`, the same call
the one loop makes when sampling) for its output, and the loss is the family's own:

    flow matching (Wan, LTX-Video)   x = (1 - s) x0 + s n, target n - x0, timestep 1000 s; s is drawn
                                     logit-normal (mean 0, std 1) and moved by the flow shift the model samples
                                     with (Wan's `flow_shift`, LTX's shift for the clip's size), so training
                                     sees the noise levels sampling visits
    DDPM (AnimateDiff)               t uniform in [0, 1000), x = sqrt(ab) x0 + sqrt(1 - ab) n with the
                                     scheduler's betas; target n (epsilon) or sqrt(ab) n - sqrt(1 - ab) x0
                                     (v_prediction), as the folder's scheduler says

Decisions, written down here: LoRA only (`--full` rewrites kinema's own small model; a multi-GB diffusers
transformer is adapted, not rewritten); AdamW at 1e-4 (diffusers' LoRA scripts' rate), 50 warm-up steps (a tenth of shorter runs),
cosine decay to a tenth, gradient norm clipped at 1, 10% of captions dropped to the empty prompt (guidance
keeps working), no EMA; bf16 weights with float32 adapters and gradient checkpointing on CUDA, float32 on CPU.
Wan 2.2's two-expert folders adapt `transformer` (the high-noise expert, the one kinema loads Wan LoRAs onto)
on its own noise levels (above the boundary). Image-to-video-only checkpoints are refused (they need an image
at every step). The file is diffusers' PEFT layout (`transformer.blocks.0.attn1.to_q.lora_A.weight`, alpha =
rank), which `--lora`, diffusers' `load_lora_weights` and ComfyUI read.

Checkpoints (the adapter and the optimiser state) are written atomically every 100 steps and a run resumes
from the newest; `accelerate launch` runs more processes, each taking an equal share of the batch, their
gradients averaged. At the end: `lora_loss.png` and `samples.gif` (up to four captions, the LoRA loaded as
`--lora` loads it).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .data import FolderDataset
from .errors import require
from .models.family import ModelInfo
from .models.seams import TextEmbeds, to_unit

# what each family adapts (its `lora_training`: the module, PEFT's target pattern, the noise levels it serves) lives
# with the family in models/; this module asks the registry, never which family it is
META = "kinema_finetune"  # the file's metadata entry: how it was made (not `kinema_lora`: that is kinema's own layout)
ADAPTER = "fit"


@dataclass(frozen=True)
class Recipe:
    """One run's settings (recorded in checkpoints and the LoRA's metadata; a resume must match them)."""

    family: str
    rank: int
    steps: int
    batch: int
    lr: float
    frames: int
    height: int
    width: int
    stride: int = 1
    warmup: int = 50
    text_dropout: float = 0.1
    checkpoint_every: int = 100
    seed: int = 0


def check(info: ModelInfo, rank, steps: int, frames: int | None, height: int | None, width: int | None,
          full: bool = False, vae_steps: int = 0, config=None) -> tuple[int, int, int]:
    """Refuse what this trainer cannot do, in one line each, before anything loads; (frames, height, width)."""
    name = f"{info.name} ({info.path})"
    require(not full, f"--full rewrites kinema's own model; {name} is adapted with a LoRA: pass --lora RANK")
    require(not vae_steps, f"--vae-steps adapts kinema's own autoencoder; drop it for {name}")
    require(config is None, f"a training config sets kinema's own recipe; drop it for {name} (the flags set this one)")
    require(isinstance(rank, int) and not isinstance(rank, bool) and 1 <= rank <= 1024,
            f"--lora must be a LoRA rank in [1, 1024], got {rank!r}")
    require(isinstance(steps, int) and steps >= 1, f"--steps must be a whole number >= 1, got {steps!r}")
    require("generate" in info.tasks, f"{name} is an image-to-video checkpoint; fine-tuning takes text-to-video ones")
    d = info.defaults
    frames, height, width = frames or d.frames, height or d.height, width or d.width
    info.check_frames(frames)
    require(info.max_context is None or frames <= info.max_context,
            f"--frames {frames} exceeds the motion adapter's {info.max_context} positions; use at most {info.max_context}")
    m = info.size_multiple
    require(height % m == 0 and width % m == 0, f"--height {height} --width {width}: this model takes sizes in "
                                                f"multiples of {m}, such as {max(m, height // m * m)}x{max(m, width // m * m)}")
    return frames, height, width


#################################################################################
#                                     Cache                                     #
#################################################################################


def build_cache(model, data: FolderDataset, recipe: Recipe, run: Path) -> dict:
    """Every clip's latents (the VAE seam's normalised posterior mode) and every caption's text states, once;
    named by the clips, so a changed folder is encoded again. Written to a temporary file, then renamed."""
    name = f"{recipe.family}-{data.fingerprint()}-{len(data)}-{recipe.frames}-{recipe.height}x{recipe.width}"
    path = run / "cache" / f"{name}.safetensors"
    if path.is_file():
        return {**load_file(path), **json.loads(path.with_suffix(".json").read_text())}
    path.parent.mkdir(parents=True, exist_ok=True)
    captions = [""] + sorted({c for _, c in data.items})  # 0: the empty prompt (caption dropout)
    latents, caption_of = [], []
    with torch.no_grad():
        for i in tqdm(range(len(data)), desc="encode clips"):
            video, label = data.clip(i, recipe.frames)
            x = to_unit(video, device=model.device)
            latents.append(model.vae.encode(x).float().cpu().half())
            caption_of.append(captions.index(label["caption"]))
        hidden, mask = [], []
        for c in tqdm(captions, desc="encode captions"):
            t = model.text_encoder.encode([c])
            hidden.append(t.hidden.float().cpu().half()), mask.append(t.mask.cpu())
    length = max(h.shape[1] for h in hidden)
    hidden = [F.pad(h, (0, 0, 0, length - h.shape[1])) for h in hidden]
    mask = [F.pad(m, (0, length - m.shape[1])) for m in mask]
    tensors = dict(latents=torch.cat(latents), text_hidden=torch.cat(hidden), text_mask=torch.cat(mask),
                   caption_of=torch.tensor(caption_of, dtype=torch.int64))
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, tmp)
    path.with_suffix(".json").write_text(json.dumps(dict(captions=captions)))
    os.replace(tmp, path)
    return {**tensors, "captions": captions}


#################################################################################
#                                The family's loss                              #
#################################################################################


class Noising:
    """Noise levels, noised latents and targets of one family's training objective (see the module's table)."""

    def __init__(self, model, recipe: Recipe):
        from .models.family import family_of
        from .pipelines.common import Settings

        info, sched = model.info, model.scheduler_config
        self.prediction = info.prediction
        self.steps = int(sched.get("num_train_timesteps", 1000))
        self.low = float(spec(info)["low"])  # Wan 2.2: the levels `transformer` serves
        if self.prediction == "flow":  # the shift sampling uses at this size (LTX's by token count), else the folder's
            clip = Settings(frames=recipe.frames, height=recipe.height, width=recipe.width)
            shift = family_of(info).settings(info, clip).shift
            self.shift = float(shift if shift is not None else sched.get("shift", 1.0) or 1.0)
        else:
            from diffusers import DDPMScheduler

            keys = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
                    "rescale_betas_zero_snr")
            ddpm = DDPMScheduler(**{k: sched[k] for k in keys if k in sched})
            self.alphas_cumprod = ddpm.alphas_cumprod.double()

    def __call__(self, x0: torch.Tensor, noise: torch.Tensor, z: np.ndarray):
        """(noised latents, timesteps (B,), target) for clean latents `x0`; `z`: one standard normal draw per sample,
        which sets its noise level (flow: logit-normal; DDPM: its normal quantile, so t is uniform)."""
        shape = (x0.shape[0],) + (1,) * (x0.ndim - 1)
        if self.prediction == "flow":
            u = 1 / (1 + np.exp(-z))  # logit-normal
            s = self.shift * u / (1 + (self.shift - 1) * u)  # the sampling shift
            s = np.clip(self.low + (1 - self.low) * s, 1e-3, 1.0)
            sigma = torch.tensor(s, dtype=torch.float32, device=x0.device).view(shape)
            return (1 - sigma) * x0 + sigma * noise, sigma.flatten() * self.steps, noise - x0
        quantile = np.array([0.5 * (1 + math.erf(v / math.sqrt(2))) for v in z])
        t = torch.from_numpy(np.minimum((quantile * self.steps).astype(np.int64), self.steps - 1))
        ab = self.alphas_cumprod[t].float().to(x0.device).view(shape)
        a, b = ab.sqrt(), (1 - ab).sqrt()
        target = noise if self.prediction == "epsilon" else a * noise - b * x0  # v_prediction
        return a * x0 + b * noise, t.float().to(x0.device), target


#################################################################################
#                                   The LoRA                                    #
#################################################################################


def spec(info: ModelInfo) -> dict:
    """The family's `lora_training`: dict(part, targets, low); an error for a family this trainer does not take."""
    from .models.family import family_of

    out = family_of(info).lora_training(info)
    require(out is not None, f"{info.name} ({info.path}) is not fine-tuned with a family LoRA")
    return out


def network(model):
    """The module the LoRA adapts: Wan's / LTX's transformer, AnimateDiff's UNet."""
    return getattr(model.denoiser, spec(model.info)["part"])


def add_lora(net, targets: str, rank: int) -> list[tuple[str, torch.nn.Parameter]]:
    """Inject a fresh trainable adapter on the layers `targets` matches (B at zero: the model unchanged at step 0);
    its named parameters."""
    from peft import LoraConfig, inject_adapter_in_model

    net.requires_grad_(False)
    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=float(rank), target_modules=targets, init_lora_weights=True),
                            net, adapter_name=ADAPTER)
    params = [(n, p) for n, p in net.named_parameters() if f".{ADAPTER}." in n and "lora_" in n]
    require(params, f"no layer of this model matches the LoRA's targets ({targets})")
    for _, p in params:
        p.data = p.data.float()  # float32 adapters on bf16 weights
        p.requires_grad_(True)
    return params


def save_family_lora(net, part: str, recipe: Recipe, path: Path, step: int, data: str) -> Path:
    """The adapter in diffusers' PEFT layout (`part`: `transformer.` / `unet.`, + PEFT's keys, alpha = rank), atomically."""
    from peft import get_peft_model_state_dict

    state = get_peft_model_state_dict(net, adapter_name=ADAPTER)
    tensors = {f"{part}.{k}": v.detach().float().contiguous().cpu() for k, v in state.items()}
    meta = {META: json.dumps(dict(asdict(recipe), step=step, data=str(data)))}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, tmp, metadata=meta)
    os.replace(tmp, path)
    return path


#################################################################################
#                                   Training                                    #
#################################################################################


def finetune_family(info: ModelInfo, data: str | Path, run: Path, rank: int = 8, steps: int = 1000,
                    frames: int | None = None, stride: int = 1, skip_bad: bool = False, lora_out=None,
                    lr: float | None = None, batch: int = 8, height: int | None = None, width: int | None = None,
                    sample_steps: int | None = None, samples: int = 4, full: bool = False, vae_steps: int = 0,
                    config=None) -> Path:
    """Train a LoRA of `rank` on a Wan, LTX-Video or AnimateDiff folder (`info`) from a folder of captioned clips;
    returns the LoRA file (`lora_out`, default RUN/lora.safetensors). Resumes from RUN's newest checkpoint."""
    from accelerate import Accelerator

    from .models.family import load_model
    from .train import (Logger, latest_checkpoint, load_optimizer, lr_at, optimizer_tensors, plot_curve, save_checkpoint,
                        shard)

    lora = spec(info)
    require(isinstance(batch, int) and batch >= 1, f"--batch must be a whole number >= 1, got {batch!r}")
    require(lr is None or (isinstance(lr, float) and 0 < lr < 1), f"--lr must be in (0, 1), got {lr!r}")
    frames, height, width = check(info, rank, steps, frames, height, width, full, vae_steps, config)
    recipe = Recipe(info.family, rank, steps, batch, lr or 1e-4, frames, height, width, stride, warmup=min(50, steps // 10))
    folder = FolderDataset(data, (height, width), frames, stride, skip_bad)  # every clip checked before loading
    out = Path(lora_out) if lora_out else run / "lora.safetensors"
    require(not out.is_dir(), f"--lora-out {out} is a folder; name a .safetensors file")
    run.mkdir(parents=True, exist_ok=True)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    shard(batch, accelerator)
    cuda = accelerator.device.type == "cuda"
    model = load_model(info, device=accelerator.device, dtype=torch.bfloat16 if cuda else torch.float32)
    with accelerator.main_process_first():  # one process encodes the cache, the others read it
        cache = build_cache(model, folder, recipe, run)
    net = network(model)
    torch.manual_seed(recipe.seed)  # the adapter's A starts random: the same in every process and every run
    params = add_lora(net, lora["targets"], rank)
    if cuda and getattr(net, "_supports_gradient_checkpointing", False):
        net.enable_gradient_checkpointing()
    net.train()
    opt = torch.optim.AdamW([p for _, p in params], lr=recipe.lr, weight_decay=0.0)
    start, history = 0, []
    ckpt = latest_checkpoint(run)
    if ckpt is not None:
        meta = json.loads((ckpt / "meta.json").read_text())
        require(meta.get("recipe", {}) | {"steps": steps} == asdict(recipe),
                f"{run} holds a run with other settings ({meta.get('recipe')}); give another --run")
        tensors = load_file(ckpt / "state.safetensors")
        named = dict(params)
        for n, v in tensors.items():
            if n.startswith("lora."):
                named[n[5:]].data.copy_(v)
        load_optimizer(opt, tensors, meta)
        start, history = int(meta["step"]), meta["history"]
        print(f"resuming from {ckpt}", flush=True)
    noising = Noising(model, recipe)
    mine = shard(batch, accelerator)
    dev, dtype = accelerator.device, model.denoiser.dtype
    log = Logger(run, "lora", start, steps, accelerator.is_main_process)
    for step in range(start, steps):
        rng = np.random.default_rng([recipe.seed, step])  # the global batch's draws; each process takes its share
        idx = torch.from_numpy(rng.integers(0, len(cache["caption_of"]), batch)[mine])
        caps = cache["caption_of"][idx].clone()
        caps[torch.from_numpy(rng.random(batch)[mine] < recipe.text_dropout)] = 0
        z = rng.normal(0.0, 1.0, batch)[mine]
        x0 = cache["latents"][idx].float().to(dev)
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        noise = torch.randn(batch, *x0.shape[1:], generator=gen)[mine].to(dev)
        xt, t, target = noising(x0, noise, z)
        text = TextEmbeds(cache["text_hidden"][caps].to(dev, dtype), cache["text_mask"][caps].bool().to(dev))
        for g in opt.param_groups:
            g["lr"] = lr_at(step, recipe.lr, recipe.warmup, steps)
        pred = model.denoiser.predict(xt.to(dtype), t, text)
        loss = F.mse_loss(pred.float(), target)
        loss.backward()
        if accelerator.num_processes > 1:  # data parallel: each process's gradient of its share, averaged
            for _, p in params:
                p.grad = accelerator.reduce(p.grad, "mean")
            loss = accelerator.reduce(loss.detach(), "mean")
        torch.nn.utils.clip_grad_norm_([p for _, p in params], 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        done = step + 1
        history.append([done, loss.detach().item()])
        log.bar.update(1)
        if done % 10 == 0 or done == steps:
            log.log(done, loss=float(np.mean([h[1] for h in history[-10:]])))
        if (done % recipe.checkpoint_every == 0 or done == steps) and accelerator.is_main_process:
            tensors, meta = optimizer_tensors(opt)
            tensors.update({f"lora.{n}": p.detach() for n, p in params})
            meta.update(stage="lora", step=done, history=history, recipe=asdict(recipe))
            save_checkpoint(run, "lora", done, tensors, meta, 2)
            save_family_lora(net, lora["part"], recipe, out, done, str(data))
    log.close()
    if accelerator.is_main_process:
        plot_curve(history, run / "lora_loss.png", f"{info.family} LoRA loss ({'flow matching' if noising.prediction == 'flow' else noising.prediction} MSE)")
        captions = list(dict.fromkeys(c for _, c in folder.items))[:samples]
        if captions and samples:
            sample_gif(info, out, captions, recipe, run / "samples.gif", sample_steps)
    return out


def sample_gif(info: ModelInfo, lora: Path, captions: list[str], recipe: Recipe, path: Path,
               steps: int | None = None) -> Path:
    """One clip per caption (seed 0, the model's sampler) with the LoRA loaded as `--lora` loads it, stacked as rows."""
    from .models.family import load_model
    from .models.lora import load_loras
    from .pipelines.common import Settings
    from .pipelines.text_to_video import text_to_video
    from .video_io import write_video

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_model(info, device=device, dtype=torch.bfloat16 if device == "cuda" else torch.float32)
    model.loras = tuple(load_loras(model.denoiser, [(str(lora), 1.0)], True, model.text_encoder))
    d = info.defaults
    settings = Settings(frames=recipe.frames, height=recipe.height, width=recipe.width, steps=steps or d.steps,
                        guidance=d.guidance, scheduler=d.scheduler, fps=d.fps, guidance_interval=d.guidance_interval)
    settings = model.family.settings(info, settings)
    rows = [text_to_video(model, c, settings, progress=False).frames for c in captions]
    return write_video(path, np.concatenate(rows, axis=1), fps=d.fps, overwrite=True)
