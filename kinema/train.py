"""Train a kinema model on a clip dataset (the world by default): first the frame VAE, then the denoiser in its latent space.

    kinema init runs/default/model --preset small
    kinema train configs/default.yaml --model runs/default/model
    kinema train configs/default.yaml --model FOLDER --stages denoiser   # continue a trained folder's denoiser
    accelerate launch -m kinema.cli train configs/default.yaml --model runs/default/model   # many GPUs
    accelerate launch --multi_gpu --num_processes 2 -m kinema.cli train configs/tiny.yaml --model M  # CPUs: gloo

Reads top to bottom: config, data, checkpoints, the VAE stage, the denoiser stage. Every stage reads
clips through a `ClipDataset` that the config names (`dataset: world`).
Both stages run through accelerate. `batch` is the global batch: a step draws the same samples whatever the
number of processes, each process taking an equal share (`shard`), so N processes train the same weights as
one (within float tolerance) and a run resumes with another process count. Both stages resume from the newest complete checkpoint in
`RUN/checkpoints/` after a kill (written to a temporary folder, then renamed), and log
loss, steps/s and ETA to stderr and `RUN/train.log`. The model folder is rewritten
(atomically) with the current weights (EMA for the denoiser) at every checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .config import load_yaml
from .models.family import Model, load_model, resolve_model_path, valid_interval
from .models.kinema_family import save
from .errors import KinemaError, require
from .models import FrameCondition, TextEmbeds
from .models.seams import to_unit
from .models.control import edge_maps, to_latent_grid
from .models.unet import GROWN_PREFIXES

#################################################################################
#                                     Config                                    #
#################################################################################


@dataclass
class VAEStage:
    steps: int = 3000
    batch: int = 32
    lr: float = 1e-3
    kl_weight: float = 1e-6
    warmup: int = 100
    object_weight: float = 10.0  # loss weight of object pixels vs background (objects are ~3% of a frame)


@dataclass
class DenoiserStage:
    steps: int = 6000
    batch: int = 8
    lr: float = 3e-4
    warmup: int = 200
    cooldown: int = 0  # the last `cooldown` steps before `steps` decay the lr linearly towards 0
    ema: float = 0.999
    clips: int = 4000  # world clips encoded once into the latent cache
    text_dropout: float = 0.1
    # frame-condition dropout: none (text-to-video), first frame, first k frames, first and last frame
    cond_probs: tuple[float, ...] = (0.4, 0.3, 0.2, 0.1)
    image_noise: float = 0.05  # max std of the noise added to conditioning latents
    logit_mean: float = 0.0
    logit_std: float = 1.0
    # [[step, mean], ...]: from each step on, draw noise levels around this logit mean instead (higher: noisier,
    # where the layout and the direction of motion are decided)
    logit_mean_from: tuple = ()
    # backbone inputs to add to the loaded denoiser before training (zero-initialised, so a trained network
    # keeps its behaviour): "motion_embedding" (per-frame text path), "coord_channels" (pixel coordinates)
    grow: tuple[str, ...] = ()
    # weight of a second loss on frame-to-frame differences (pred[f+1] - pred[f] vs target[f+1] - target[f]):
    # static content cancels in it, so it weighs the motion, which the plain loss barely sees
    motion_loss: float = 0.0
    # frame lags of the motion loss, averaged: 1 compares consecutive frames; a long lag (15: first vs last
    # of a 16-frame window) gives slowly moving windows of long clips, whose consecutive frames barely
    # differ, a signal of their direction as large as a fast clip's
    motion_lags: tuple[int, ...] = (1,)
    # [prob, sigma_min]: with this probability a sample's noise level is drawn uniformly from [sigma_min, 1]
    # instead: the direction of motion is decided in the first, noisiest sampling steps, which the
    # logit-normal rarely trains (P(sigma > 0.95) is about 1.6% at mean 0.8)
    high_noise: tuple[float, ...] = ()
    grown_lr_scale: float = 1.0  # lr multiplier for the parameters `grow` adds (they start at zero)
    # windows of longer world clips (which move more slowly, so the object stays in frame), for a denoiser
    # with a length embedding: `long_clips` of them, of clip lengths log-uniform in `long_frames`, each a
    # window of `frames` frames at a random offset; `long_share` of every batch is drawn from them
    long_clips: int = 0
    long_frames: tuple[int, ...] = (17, 512)
    long_share: float = 0.0
    # the longer clips wrap (`world.World(wrap=True)`): they keep the 16-frame pace on a torus, starting anywhere,
    # so a window of one looks like any other: a stationary motion that sliding windows can extend without end
    long_wrap: bool = False
    # a structure control input (`models/control.py`): the adapter is grown with r*r input channels (16 for the
    # default VAE's 4x compression), the short clips' edge maps are cached with their latents, and each sample
    # has its control dropped (the adapter skipped) with `control_dropout`, so the network still generates without
    # one; windows of long clips never carry one
    # a LoRA of this rank (PEFT, `models/lora.py`) learns instead of the denoiser's own weights, which stay as they are;
    # the model folder is left untouched and the adapter goes to `lora_out` (default RUN/lora.safetensors)
    lora: int = 0
    lora_alpha: float | None = None  # None: the rank (a scale of 1)
    lora_out: str | None = None
    # the layers the LoRA adapts (a regex over module names, as PEFT's target_modules); None: `models/lora.py` TARGETS
    # (the backbone's, not the control adapter's); "^control\\..*" trains one on the control adapter alone
    lora_targets: str | None = None
    # a LoRA file merged into the network before the LoRA above is trained on it: the folder's few-step student, so
    # the control adapter learns under the network the student runs (its file then carries both, `models/lora.py`)
    base_lora: str | None = None
    # with a LoRA: first adapt the autoencoder for `vae_lora_steps` steps with a LoRA of `vae_lora_rank` on the
    # data's frames (the VAE stage's loss), for colours or textures its latents cannot hold; the clips are then
    # encoded with it, and the file carries both adapters (`models/lora.py` VAE_PREFIX)
    vae_lora_steps: int = 0
    vae_lora_rank: int = 8
    vae_lora_lr: float = 1e-3
    # reflow distillation (Liu et al. 2022, "2-rectified flow"; guidance distilled into it as in InstaFlow): `reflow`
    # pairs (noise, the teacher's sample from it: `reflow_steps` Euler steps at guidance `reflow_guidance`, a
    # `reflow_cond` share with the clip's first frame as the frame condition) are drawn once into the cache, and the
    # student learns the straight path between each pair, so a few Euler steps without guidance follow it
    reflow: int = 0
    reflow_steps: int = 25
    reflow_guidance: float = 5.0
    reflow_guidance_interval: tuple[float, ...] = ()  # [lo, hi]: the teacher guides only there (`loop.guided`); (): every step
    reflow_cond: float = 0.3
    reflow_batch: int = 8
    control: bool = False
    control_dropout: float = 0.3
    # loss weight of the object's latent cells (any object pixel in the cell, and the cells around it) against the
    # background's, normalised by the batch's mean weight: an object covers ~3-10% of a frame, and one close to its
    # background's colour moves the latents little, so a plain MSE barely sees whether it is drawn. The masks come
    # from the clips' pixels (`object_cells`), cached beside the latents
    object_weight: float = 1.0
    # [share, distance]: that share of every batch drawn from clips whose object and background colours lie within
    # `distance` (RGB, 0-441) of each other (red on orange, orange on yellow, purple on blue); the dataset's
    # `contrast(label)` gives it (the world's). (): clips uniformly
    close_pairs: tuple[float, ...] = ()
    # on-policy steps (for an adapter trained under a few-step student, `base_lora`): the noise levels the student
    # samples at (its sigmas, e.g. [1.0, 0.9418, 0.8038, 0.0602] for 4 steps at shift 8). Each sample takes one of
    # them at random; its input is the state the student's own Euler steps reach there from the sample's noise (no
    # gradient; guidance `on_policy_guidance` on the first step, as the student restyles), and its target the velocity
    # that takes that state straight to the clip, (x_t - x0) / sigma, its error weighed by sigma^2 (the error of the
    # clip it implies, so the last, lowest level does not outweigh the others). The first level is the usual
    # flow-matching sample at pure noise. `on_policy_control_scale`: the control's scale in these steps (the student
    # restyles at 1.5)
    on_policy: tuple[float, ...] = ()
    on_policy_guidance: float = 1.0
    on_policy_control_scale: float = 1.0
    # which parameters learn: "all", or "control" (only the control adapter; the backbone frozen, as T2I-Adapter trains
    # its adapter: without a control the network computes exactly what it did)
    train: str = "all"


@dataclass
class TrainConfig:
    seed: int = 0
    frames: int = 16
    size: int = 64
    dataset: str = "world"  # where clips come from: a name in DATASETS, or "folder" (your clips in `data`)
    data: str | None = None  # dataset "folder": a folder of captioned clips (`kinema/data.py`)
    stride: int = 1  # dataset "folder": take every stride-th frame
    skip_bad: bool = False  # dataset "folder": leave out (and list) unreadable or short clips instead of stopping
    bf16: bool | None = None  # bf16 autocast; None: where the processor runs bf16 fast (resources.auto_dtype)
    log_every: int = 25
    checkpoint_every: int = 250
    keep_checkpoints: int = 2
    sample_steps: int = 25  # denoising steps of the sample grid written at the end
    vae: VAEStage = field(default_factory=VAEStage)
    denoiser: DenoiserStage = field(default_factory=DenoiserStage)
    sample_prompts: tuple[str, ...] = (
        "a red circle moving right on a blue background",
        "a yellow square moving up on a black background",
        "a white triangle moving left on a green background",
        "a purple circle standing still on an orange background",
    )


#################################################################################
#                                      Data                                     #
#################################################################################


class ClipDataset(Protocol):
    """Where training reads clips: a seeded, endless source, every clip a pure function of its seed.

    Made by a `DATASETS` factory as `factory(split, size, wrap)`: `split` "train", or "heldout" (the VAE's PSNR),
    frames `size` pixels square, `wrap` for long clips that keep the short clips' pace (`denoiser.long_wrap`;
    a dataset without them raises KinemaError). A label is a JSON-able dict naming a clip's content: the
    latent cache keeps it, and each training sample draws its caption from it at every step.
    """

    def clip(self, seed: int, frames: int, times: Sequence[int] | None = None) -> tuple[np.ndarray, dict]:
        """Frames `times` (default: all) of the `frames`-frame clip `seed`, uint8 (len(times), H, W, 3), and its label."""

    def captions(self, label: dict) -> list[str]:
        """Every caption `caption` can draw for the label (the text cache encodes each once)."""

    def caption(self, label: dict, rng: np.random.Generator) -> str:
        """One caption of the label, drawn with `rng`."""


class WorldDataset:
    """The kinema world as a ClipDataset; a label is the clip's colour, shape, direction and background."""

    def __init__(self, split: str = "train", size: int = 64, wrap: bool = False, wide: bool = False):
        from . import world  # imported where the world is chosen: training itself knows no world

        self.world, self.split, self.size, self.wrap, self.wide = world, split, size, wrap, wide

    def clip(self, seed: int, frames: int, times: Sequence[int] | None = None) -> tuple[np.ndarray, dict]:
        # wide sizes for short clips only: windows of long clips keep the world's, and with them the pace the
        # length input learnt
        wide = self.wide and not self.wrap and frames <= 16
        spec = self.world.World(split=self.split, frames=frames, size=self.size, wrap=self.wrap, wide=wide).spec(seed)
        video = self.world.render(spec, frames, self.size, self.size, seed=seed, times=times)
        return video, dict(colour=spec.colour, shape=spec.shape, direction=spec.direction, background=spec.background)

    def captions(self, label: dict) -> list[str]:
        return self.world.captions_for(**label)

    def caption(self, label: dict, rng: np.random.Generator) -> str:
        spec = self.world.ClipSpec(**label, size=0, start=(0, 0), velocity=(0, 0), texture=0)
        return self.world.paraphrase(spec, rng)

    def contrast(self, label: dict) -> float:
        """RGB distance between the clip's object and background colours (`denoiser.close_pairs`)."""
        return self.world.colour_distance(label["colour"], label["background"])


def _wide_world(split: str = "train", size: int = 64, wrap: bool = False) -> WorldDataset:
    return WorldDataset(split, size, wrap, wide=True)


# TrainConfig.dataset -> factory(split, size, wrap) -> ClipDataset; "world-wide": half the short clips with objects
# of 1/8 to 1/3 of the side, some partly outside the frame, some slower (`world.World(wide=True)`)
DATASETS = {"world": WorldDataset, "world-wide": _wide_world}


def open_dataset(cfg: TrainConfig, split: str = "train", wrap: bool = False) -> ClipDataset:
    if cfg.dataset == "folder":
        from .data import FolderDataset

        if wrap or split != "train":
            raise KinemaError("a folder of clips has no long wrapping clips or held-out split; set denoiser.long_clips: 0 "
                              "and train the denoiser only")
        return _FOLDERS.setdefault((cfg.data, cfg.size, cfg.frames, cfg.stride, cfg.skip_bad),
                                   FolderDataset(cfg.data, cfg.size, cfg.frames, cfg.stride, cfg.skip_bad))
    return DATASETS[cfg.dataset](split=split, size=cfg.size, wrap=wrap)


_FOLDERS: dict = {}  # a folder is scanned (every clip checked) once per process


#################################################################################
#                                  Checkpoints                                  #
#################################################################################


def latest_checkpoint(run: Path) -> Path | None:
    ckpts = sorted((run / "checkpoints").glob("[0-9]*-*"))  # "1-vae-0000250", "2-denoiser-0001000"
    return ckpts[-1] if ckpts else None


def save_checkpoint(run: Path, stage: str, step: int, tensors: dict, meta: dict, keep: int) -> Path:
    """Write tensors (safetensors) and meta (JSON) to a temporary folder, then rename into place."""
    root = run / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    name = f"{1 if stage == 'vae' else 2}-{stage}-{step:07d}"
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp / "state.safetensors")
        (tmp / "meta.json").write_text(json.dumps(meta))
        final = root / name
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in sorted(root.glob("[0-9]*-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Optimizer state as flat tensors plus JSON-able hyper-parameters (no pickles)."""
    sd = opt.state_dict()
    tensors = {}
    for pid, state in sd["state"].items():
        for k, v in state.items():
            tensors[f"opt.{pid}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
    return tensors, {"param_groups": sd["param_groups"]}


def load_optimizer(opt: torch.optim.Optimizer, tensors: dict, meta: dict) -> None:
    state: dict = {}
    for key, v in tensors.items():
        if key.startswith("opt."):
            _, pid, k = key.split(".", 2)
            state.setdefault(int(pid), {})[k] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def prefixed(module: torch.nn.Module, prefix: str) -> dict:
    return {f"{prefix}.{k}": v for k, v in module.state_dict().items()}


def unprefixed(tensors: dict, prefix: str) -> dict:
    n = len(prefix) + 1
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


class Logger:
    """Loss, steps/s and ETA to stderr (tqdm) and the run's log file."""

    def __init__(self, run: Path, stage: str, start: int, total: int, enabled: bool):
        self.file = (run / "train.log").open("a") if enabled else None
        self.bar = tqdm(total=total, initial=start, desc=stage, disable=not enabled, dynamic_ncols=True)
        self.stage, self.t0, self.s0, self.total = stage, time.time(), start, total

    def log(self, step: int, **values):
        rate = (step - self.s0) / max(time.time() - self.t0, 1e-9)
        eta = (self.total - step) / max(rate, 1e-9)
        text = " ".join(f"{k}={v:.4g}" for k, v in values.items())
        line = f"{self.stage} step={step} {text} steps/s={rate:.3f} eta={eta / 60:.1f}min"
        self.bar.set_postfix_str(text)
        if self.file:
            self.file.write(line + "\n")
            self.file.flush()

    def close(self):
        self.bar.close()
        if self.file:
            self.file.close()


def lr_at(step: int, base: float, warmup: int, total: int | None) -> float:
    """Linear warm-up, then cosine decay to 10% (or constant when total is None)."""
    if step < warmup:
        return base * (step + 1) / warmup
    if total is None:
        return base
    p = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))


def cooldown_factor(step: int, total: int, cooldown: int) -> float:
    """1 until `total - cooldown`, then linear towards 0: 1/cooldown at the last step (step = total - 1)."""
    return 1.0 if cooldown <= 0 else min(1.0, (total - step) / cooldown)


def shard(batch: int, accelerator) -> slice:
    """This process's equal share of a global batch of `batch` samples."""
    n, rank = accelerator.num_processes, accelerator.process_index
    if batch % n:
        raise KinemaError(f"a batch of {batch} does not split evenly over {n} processes; make the config's batch a multiple of {n}")
    return slice(rank * batch // n, (rank + 1) * batch // n)


def global_mean(value: torch.Tensor, accelerator) -> torch.Tensor:
    """The mean of `value` over the processes (itself in one process)."""
    return value if accelerator.num_processes == 1 else accelerator.reduce(value.detach().clone(), "mean")


def _to_tensor(video: np.ndarray) -> torch.Tensor:
    """uint8 (..., F, H, W, 3) -> float (..., 3, F, H, W) in [-1, 1]."""
    t = to_unit(video.reshape(-1, *video.shape[-3:]))[0]  # (3, N, H, W)
    return t.reshape(3, *video.shape[:-1]).movedim(0, -4)


#################################################################################
#                                   VAE stage                                   #
#################################################################################


def vae_frames(cfg: TrainConfig, rng: np.random.Generator, n: int, split: str = "train",
               part: slice = slice(None)) -> torch.Tensor:
    """Frames `part` of n (n, 3, H, W) in [-1, 1] of the dataset, each from a different clip (diverse batches train faster).

    `rng` draws all n, so a process rendering its share of a batch leaves it where the whole batch would.
    """
    data = open_dataset(cfg, split)
    frames = []
    for i, seed in enumerate(rng.integers(0, 2**31, size=n)):
        t = int(rng.integers(cfg.frames))
        if i in range(n)[part]:
            frames.append(data.clip(int(seed), cfg.frames, times=[t])[0][0])
    return to_unit(np.stack(frames))[0].transpose(0, 1)  # (n, 3, H, W)


def heldout_psnr(vae, cfg: TrainConfig, n: int = 64) -> tuple[float, float]:
    """Median and worst PSNR (dB) of VAE reconstructions of held-out frames."""
    psnr = recon_psnr(vae, vae_frames(cfg, np.random.default_rng(12345), n, split="heldout"))
    return float(psnr.median()), float(psnr.min())


def recon_psnr(vae, x: torch.Tensor) -> torch.Tensor:
    """PSNR (dB) of the VAE's reconstruction of each frame of `x` (n, 3, H, W), 64 frames at a time."""
    with torch.no_grad():
        rec = torch.cat([vae.decode(vae.encode(c[:, :, None]))[:, :, 0] for c in x.split(64)]).float()
    mse = ((rec - x) / 2).pow(2).flatten(1).mean(1)  # in [0, 1] units
    return -10 * torch.log10(mse.clamp(min=1e-10))


class VAEObjective(torch.nn.Module):
    """Reconstruction of sampled latents and the KL term, in one forward (so DDP wraps it)."""

    def __init__(self, ae):
        super().__init__()
        self.ae = ae

    def forward(self, x: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dist = self.ae.encode(x).latent_dist
        rec = self.ae.decode(dist.mean + dist.std * eps).sample
        return rec.float(), dist.kl().mean() / x[0].numel()


def recon_loss(rec: torch.Tensor, x: torch.Tensor, weight: float, accelerator=None) -> torch.Tensor:
    """L1 + MSE, `weight` times heavier on and around the object (`object_weights`), normalised by the weights' mean
    (over every process's batch, so the processes' mean loss is one process's)."""
    w = object_weights(x, weight)
    err = (rec - x).abs()
    norm = w.mean() if accelerator is None else global_mean(w.mean(), accelerator)
    return (w * (err + err * err)).mean() / norm


def object_weights(x: torch.Tensor, weight: float) -> torch.Tensor:
    """Per-pixel loss weights (n, 1, H, W): `weight` on and around pixels that differ from the frame's median colour."""
    bg = x.flatten(2).median(dim=2).values[:, :, None, None]  # (n, 3, 1, 1)
    obj = ((x - bg).abs().amax(1, keepdim=True) > 0.1).float()  # faint texture stays below 0.1
    obj = F.max_pool2d(obj, 3, stride=1, padding=1)  # include the anti-aliased edge
    return 1 + (weight - 1) * obj


def train_vae(cfg: TrainConfig, model: Model, run: Path, accelerator, start: int, state: dict | None) -> None:
    ae = model.vae.autoencoder.float().train()
    opt = torch.optim.AdamW(ae.parameters(), lr=cfg.vae.lr, weight_decay=0.0)
    history = []
    if state is not None:
        ae.load_state_dict(unprefixed(state["tensors"], "model"))
        load_optimizer(opt, state["tensors"], state["meta"])
        history = state["meta"]["history"]
    objective, opt = accelerator.prepare(VAEObjective(ae), opt)
    log = Logger(run, "vae", start, cfg.vae.steps, accelerator.is_main_process)
    down = model.vae.spatial_compression
    part = shard(cfg.vae.batch, accelerator)
    for step in range(start, cfg.vae.steps):
        rng = np.random.default_rng([cfg.seed, 1, step, 0])  # the whole batch's draws, on every process
        x = vae_frames(cfg, rng, cfg.vae.batch, part=part).to(accelerator.device)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg.vae.lr, cfg.vae.warmup, cfg.vae.steps)
        shape = (cfg.vae.batch, model.vae.latent_channels, x.shape[2] // down, x.shape[3] // down)
        eps = torch.from_numpy(rng.standard_normal(shape)[part]).float().to(accelerator.device)
        with accelerator.autocast():
            rec, kl = objective(x, eps)
        loss = recon_loss(rec, x, cfg.vae.object_weight, accelerator) + cfg.vae.kl_weight * kl
        accelerator.backward(loss)
        opt.step()
        opt.zero_grad(set_to_none=True)
        log.bar.update(1)
        done = step + 1
        history.append([done, global_mean(loss, accelerator).item()])
        if done % cfg.log_every == 0:
            log.log(done, loss=float(loss))
        if done % cfg.checkpoint_every == 0 or done == cfg.vae.steps:
            if done == cfg.vae.steps:
                finish_vae(cfg, model, run, accelerator)
            if accelerator.is_main_process:
                tensors, meta = optimizer_tensors(opt)
                tensors.update(prefixed(ae, "model"))
                meta.update(stage="vae", step=done, history=history, config=asdict(cfg))
                save_checkpoint(run, "vae", done, tensors, meta, cfg.keep_checkpoints)
                med, worst = heldout_psnr(model.vae.eval(), cfg)
                model.vae.train()
                log.log(done, loss=float(loss), psnr_median=med, psnr_worst=worst)
    log.close()
    if accelerator.is_main_process:
        plot_curve(history, run / "vae_loss.png", "VAE loss (L1 + MSE + KL)")


def finish_vae(cfg: TrainConfig, model: Model, run: Path, accelerator) -> None:
    """Set latent scale/shift so latents have unit variance, and save the model folder."""
    ae = model.vae.autoencoder.eval()
    ae.register_to_config(scaling_factor=1.0, shift_factor=0.0)
    x = vae_frames(cfg, np.random.default_rng([cfg.seed, 99]), 256)
    with torch.no_grad():
        z = model.vae.encode(x[:, :, None])
    ae.register_to_config(scaling_factor=float(1.0 / z.std()), shift_factor=float(z.mean()))
    if accelerator.is_main_process:
        save(model, model.path, overwrite=True)
    ae.train()


#################################################################################
#                                 Denoiser stage                                #
#################################################################################


def long_window(cfg: TrainConfig, seed: int, data: ClipDataset | None = None) -> tuple[np.ndarray, dict, int]:
    """A `frames`-frame window (uint8) of a longer clip: its frames, label and the clip's length."""
    d = cfg.denoiser
    rng = np.random.default_rng([seed, 7])
    lo, hi = d.long_frames
    length = int(round(float(np.exp(rng.uniform(np.log(lo), np.log(hi))))))
    start = int(rng.integers(0, length - cfg.frames + 1))
    data = open_dataset(cfg, wrap=d.long_wrap) if data is None else data
    video, label = data.clip(seed, length, times=range(start, start + cfg.frames))
    return video, label, length


def build_cache(cfg: TrainConfig, model: Model, run: Path) -> dict:
    """Encode `clips` training clips (and `long_clips` windows of longer ones) to latents and every caption to token states, once."""
    d = cfg.denoiser
    if d.reflow:
        return build_reflow_cache(cfg, model, run)
    name = f"latents-{d.clips}-{cfg.frames}-{cfg.size}"
    if d.long_clips:
        name += f"-long-{d.long_clips}-{d.long_frames[0]}-{d.long_frames[1]}" + ("-wrap" if d.long_wrap else "")
    if cfg.dataset == "folder":  # each clip once, the cache named by the clips it holds
        folder = open_dataset(cfg)
        d = replace(d, clips=len(folder))
        name = f"folder-{folder.fingerprint()}-{len(folder)}-{cfg.frames}-{cfg.size}"
    elif cfg.dataset != "world":  # the world's caches keep the names they had before datasets were named
        name = f"{cfg.dataset}-{name}"
    if d.control:
        name += "-control"
    if d.lora and d.vae_lora_steps:  # encoded by the adapted autoencoder
        name += f"-vae{d.vae_lora_rank}x{d.vae_lora_steps}"
    path = run / "cache" / f"{name}.safetensors"
    if path.is_file():
        data = load_file(path)
        meta = json.loads((path.with_suffix(".json")).read_text())
        return {**data, **meta}
    path.parent.mkdir(parents=True, exist_ok=True)
    data, long_data = open_dataset(cfg), open_dataset(cfg, wrap=d.long_wrap)
    latents, specs, lengths, controls = [], [], [], []  # specs: the clips' labels (the cache's name for them)
    vae = model.vae.eval()
    r = model.info.spatial_compression if d.control else 0
    total = d.clips + d.long_clips
    for i in tqdm(range(0, total, 16), desc="encode clips"):
        videos = []
        for j in range(i, min(i + 16, total)):
            if j < d.clips:
                video, label = data.clip(cfg.seed * 10_000_000 + j, cfg.frames)
                length = cfg.frames
            else:  # seeds of long windows sit apart from the short clips'
                video, label, length = long_window(cfg, cfg.seed * 10_000_000 + 5_000_000 + j, long_data)
            videos.append(video), specs.append(label), lengths.append(length)
            if r and j < d.clips:  # edge maps on the latent grid, quantised to uint8
                controls.append(to_latent_grid(edge_maps(video), r).mul(255).round().to(torch.uint8))
        x = _to_tensor(np.stack(videos))
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16(cfg)):
            latents.append(vae.encode(x).float().half())
    captions = [""] + sorted({c for s in specs for c in data.captions(s)})
    hidden, mask = [], []
    for i in tqdm(range(0, len(captions), 256), desc="encode captions"):
        t = model.text_encoder.encode(captions[i : i + 256])
        hidden.append(F.pad(t.hidden, (0, 0, 0, 32 - t.hidden.shape[1])).half())
        mask.append(F.pad(t.mask, (0, 32 - t.mask.shape[1])))
    data = dict(latents=torch.cat(latents), text_hidden=torch.cat(hidden), text_mask=torch.cat(mask),
                clip_frames=torch.tensor(lengths, dtype=torch.int32))
    if controls:
        data["control"] = torch.cat(controls)  # (clips, r*r, F, h, w) uint8: the short clips' only
    data = {k: v.contiguous() for k, v in data.items()}
    meta = dict(specs=specs, captions=captions)
    tmp = path.with_name(path.name + ".tmp")
    save_file(data, tmp)
    path.with_suffix(".json").write_text(json.dumps(meta))
    os.replace(tmp, path)
    return {**data, **meta}


def object_cells(video: np.ndarray, r: int) -> torch.Tensor:
    """uint8 frames (F, H, W, 3) -> (F, H/r, W/r) bool: latent cells holding an object pixel (one that differs from
    its frame's median colour by more than 25 of 255 in some channel), and the cells around them."""
    x = torch.from_numpy(np.asarray(video)).float()  # (F, H, W, 3)
    bg = x.flatten(1, 2).median(dim=1).values[:, None, None]
    obj = ((x - bg).abs().amax(-1) > 25).float()[:, None]  # (F, 1, H, W)
    cells = F.max_pool2d(obj, r, stride=r)
    return F.max_pool2d(cells, 3, stride=1, padding=1)[:, 0] > 0


def object_cache(cfg: TrainConfig, model: Model, run: Path, cache: dict) -> torch.Tensor:
    """(clips, 1, F, h, w) uint8 object cells of the cache's short clips (windows of long clips: none), rendered
    again from their seeds and kept beside the latent cache (`denoiser.object_weight`)."""
    d = cfg.denoiser
    short = len(cache["specs"]) - d.long_clips
    path = run / "cache" / f"objects-{cfg.dataset}-{short}-{cfg.frames}-{cfg.size}-{cfg.seed}.safetensors"
    if path.is_file():
        return load_file(path)["objects"]
    data, r = open_dataset(cfg), model.info.spatial_compression
    cells = [object_cells(data.clip(cfg.seed * 10_000_000 + j, cfg.frames)[0], r) for j in tqdm(range(short), desc="object cells")]
    masks = torch.stack(cells)[:, None].to(torch.uint8).contiguous()
    if d.long_clips:
        masks = torch.cat([masks, torch.zeros(d.long_clips, *masks.shape[1:], dtype=torch.uint8)])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({"objects": masks}, tmp)
    os.replace(tmp, path)
    return masks


def _encode_captions(model: Model, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    hidden, mask = [], []
    for i in tqdm(range(0, len(captions), 256), desc="encode captions"):
        t = model.text_encoder.encode(captions[i : i + 256])
        hidden.append(F.pad(t.hidden, (0, 0, 0, 32 - t.hidden.shape[1])).half())
        mask.append(F.pad(t.mask, (0, 32 - t.mask.shape[1])))
    return torch.cat(hidden), torch.cat(mask)


def build_reflow_cache(cfg: TrainConfig, model: Model, run: Path) -> dict:
    """`reflow` (noise, teacher sample) pairs of world prompts, drawn once with the loaded (teacher) weights."""
    from .pipelines.common import Settings, initial_noise, latent_shape, sample
    from .pipelines.loop import Timings

    d = cfg.denoiser
    interval = tuple(float(x) for x in d.reflow_guidance_interval) or None
    require(interval is None or valid_interval(interval),
            f"denoiser.reflow_guidance_interval must be [lo, hi] with 0 <= lo < hi <= 1 (got {list(interval)})")
    band = "" if interval is None else "-{}:{}".format(*interval)
    path = run / "cache" / f"reflow-{d.reflow}-{cfg.frames}-{cfg.size}-{d.reflow_steps}-{d.reflow_guidance}{band}-{d.reflow_cond}.safetensors"
    if path.is_file():
        return {**load_file(path), **json.loads(path.with_suffix(".json").read_text())}
    path.parent.mkdir(parents=True, exist_ok=True)
    data = open_dataset(cfg)
    settings = Settings(frames=cfg.frames, height=cfg.size, width=cfg.size, steps=d.reflow_steps,
                        guidance=d.reflow_guidance, guidance_interval=interval)
    vae, net = model.vae.eval(), model.denoiser.eval()
    empty = model.text_encoder.encode([""])
    x0s, noises, conds, masks, specs, prompts = [], [], [], [], [], []
    bar = tqdm(total=d.reflow, desc=f"teacher samples ({d.reflow_steps} steps)")
    for i in range(0, d.reflow, d.reflow_batch):
        seeds = [cfg.seed * 10_000_000 + 7_000_000 + j for j in range(i, min(i + d.reflow_batch, d.reflow))]
        batch, labels, caps, firsts = len(seeds), [], [], []
        for s in seeds:
            rng = np.random.default_rng([s, 3])
            video, label = data.clip(s, cfg.frames)
            labels.append(label), caps.append(data.caption(label, rng))
            firsts.append(video[:1] if rng.random() < d.reflow_cond else None)
        noise = torch.cat([initial_noise(latent_shape(model, settings), s, model.device) for s in seeds])
        cond_latents = torch.zeros_like(noise)
        mask = torch.zeros(batch, noise.shape[2])
        with torch.no_grad():
            for k, first in enumerate(firsts):
                if first is not None:  # image-to-video pairs: the clip's first frame known
                    cond_latents[k, :, :1] = vae.encode(_to_tensor(first[None]).to(model.device)).float()
                    mask[k, 0] = 1
        text = model.text_encoder.encode(caps)
        uncond = TextEmbeds(empty.hidden.expand(batch, -1, -1), empty.mask.expand(batch, -1))
        cond = FrameCondition(cond_latents, mask)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16(cfg)):
            x0 = sample(model, text, uncond, settings, Timings(), cond=cond, known=cond, noise=noise, progress=False)
        x0s.append(x0.float().half()), noises.append(noise.half()), conds.append(cond_latents.half()), masks.append(mask)
        specs += labels
        prompts += caps
        bar.update(batch)
    bar.close()
    captions = [""] + sorted(set(prompts))
    hidden, tmask = _encode_captions(model, captions)
    tensors = dict(latents=torch.cat(x0s), noise=torch.cat(noises), cond_latents=torch.cat(conds),
                   cond_mask=torch.cat(masks), text_hidden=hidden, text_mask=tmask,
                   clip_frames=torch.full((len(specs),), cfg.frames, dtype=torch.int32))
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    meta = dict(specs=specs, captions=captions, prompts=prompts)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, tmp)
    path.with_suffix(".json").write_text(json.dumps(meta))
    os.replace(tmp, path)
    return {**tensors, **meta}


def frame_condition(x0: torch.Tensor, rng: np.random.Generator, cfg: DenoiserStage) -> FrameCondition:
    """Random frame condition per sample: none, first frame, first k frames, or first and last frame."""
    b, _, f = x0.shape[:3]
    mask = torch.zeros(b, f)
    for i in range(b):
        kind = rng.choice(4, p=np.asarray(cfg.cond_probs) / sum(cfg.cond_probs))
        if kind == 1:
            mask[i, 0] = 1
        elif kind == 2:
            mask[i, : int(rng.integers(1, f // 2 + 1))] = 1
        elif kind == 3:
            mask[i, 0] = mask[i, -1] = 1
    noise_std = torch.from_numpy(rng.uniform(0, cfg.image_noise, size=(b, 1, 1, 1, 1))).float()
    noisy = x0 + noise_std * torch.from_numpy(rng.standard_normal(x0.shape)).float()
    return FrameCondition(noisy, mask)


def logit_mean_at(d: DenoiserStage, step: int) -> float:
    """The logit-normal mean of the noise levels at `step`: `logit_mean`, or the last `logit_mean_from` entry reached."""
    mean = d.logit_mean
    for start, value in sorted((int(a), float(b)) for a, b in d.logit_mean_from):
        if step >= start:
            mean = value
    return mean


def denoiser_batch(cfg: TrainConfig, cache: dict, caption_index: dict, step: int, rank: int = 0,
                   data: ClipDataset | None = None, processes: int = 1):
    """Share `rank` of `processes` of the batch of one step, a pure function of (seed, step): resuming replays it
    exactly, with any number of processes."""
    d = cfg.denoiser
    data = open_dataset(cfg) if data is None else data
    rng = np.random.default_rng([cfg.seed, 2, step, 0])
    if d.reflow:
        return _reflow_batch(cfg, cache, caption_index, rng, rank, processes)
    short = len(cache["specs"]) - d.long_clips  # the cache holds the short clips, then the long windows
    idx = rng.integers(0, short, size=d.batch)
    if d.close_pairs:  # some samples from the clips whose object is close to its background's colour
        share, _ = d.close_pairs
        close = cache["close"]
        pick = np.random.default_rng([cfg.seed, 2, step, 2])
        idx = np.where(pick.random(d.batch) < share, close[pick.integers(0, len(close), size=d.batch)], idx)
    if d.long_clips and d.long_share > 0:  # some samples from the windows of longer clips
        long = rng.random(d.batch) < d.long_share
        idx = np.where(long, short + rng.integers(0, d.long_clips, size=d.batch), idx)
    x0 = cache["latents"][torch.from_numpy(idx)].float()
    frames = cache["clip_frames"][torch.from_numpy(idx)] if "clip_frames" in cache else torch.full((d.batch,), cfg.frames)
    caps = []
    for i in idx:
        caps.append("" if rng.random() < d.text_dropout else data.caption(cache["specs"][int(i)], rng))
    ti = torch.tensor([caption_index[c] for c in caps])
    text = TextEmbeds(cache["text_hidden"][ti].float(), cache["text_mask"][ti])
    mean = logit_mean_at(d, step)
    sigma = 1 / (1 + np.exp(-(mean + d.logit_std * rng.standard_normal(d.batch))))
    if d.high_noise:
        prob, low = d.high_noise
        sigma = np.where(rng.random(d.batch) < prob, rng.uniform(low, 1.0, d.batch), sigma)
    sigma = torch.from_numpy(sigma).float()
    noise = torch.from_numpy(rng.standard_normal(x0.shape)).float()
    s = sigma[:, None, None, None, None]
    xt = (1 - s) * x0 + s * noise  # flow matching: x_t between data (s=0) and noise (s=1)
    cond = frame_condition(x0, rng, d)
    control = None
    if d.control:  # (control maps, per-sample scale): 0 drops a sample's control; long windows have none
        crng = np.random.default_rng([cfg.seed, 2, step, 1])
        keep = (crng.random(d.batch) >= d.control_dropout) & (idx < short)
        maps = cache["control"][torch.from_numpy(np.minimum(idx, short - 1))].float() / 255.0
        control = (maps, torch.from_numpy(keep).float())
    weight = None
    if "objects" in cache:  # per-cell loss weights (B, 1, F, h, w)
        weight = 1 + (d.object_weight - 1) * cache["objects"][torch.from_numpy(idx)].float()
    if processes == 1:
        return xt, sigma * 1000, text, cond, noise - x0, frames, control, weight
    p = slice(rank * d.batch // processes, (rank + 1) * d.batch // processes)
    return (xt[p], sigma[p] * 1000, TextEmbeds(text.hidden[p], text.mask[p]), FrameCondition(cond.latents[p], cond.mask[p]),
            (noise - x0)[p], frames[p], None if control is None else (control[0][p], control[1][p]),
            None if weight is None else weight[p])


def _reflow_batch(cfg: TrainConfig, cache: dict, caption_index: dict, rng: np.random.Generator, rank: int,
                  processes: int):
    """A batch of points on the straight paths between the teacher's pairs: x_t = (1 - s) x0 + s z, target z - x0, with
    each pair's own prompt and frame condition (no text dropout: the student runs without guidance)."""
    d = cfg.denoiser
    idx = torch.from_numpy(rng.integers(0, len(cache["prompts"]), size=d.batch))
    x0, noise = cache["latents"][idx].float(), cache["noise"][idx].float()
    ti = torch.tensor([caption_index[cache["prompts"][int(i)]] for i in idx])
    text = TextEmbeds(cache["text_hidden"][ti].float(), cache["text_mask"][ti])
    sigma = 1 / (1 + np.exp(-(d.logit_mean + d.logit_std * rng.standard_normal(d.batch))))
    if d.high_noise:
        prob, low = d.high_noise
        sigma = np.where(rng.random(d.batch) < prob, rng.uniform(low, 1.0, d.batch), sigma)
    sigma = torch.from_numpy(sigma).float()
    s = sigma[:, None, None, None, None]
    xt = (1 - s) * x0 + s * noise
    known = cache["cond_mask"][idx][:, None, :, None, None]
    xt = xt * (1 - known) + ((1 - s) * cache["cond_latents"][idx].float() + s * noise) * known  # as KnownFrames keeps them
    cond = FrameCondition(cache["cond_latents"][idx].float(), cache["cond_mask"][idx])
    frames = cache["clip_frames"][idx]
    p = slice(rank * d.batch // processes, (rank + 1) * d.batch // processes)
    return (xt[p], sigma[p] * 1000, TextEmbeds(text.hidden[p], text.mask[p]), FrameCondition(cond.latents[p], cond.mask[p]),
            (noise - x0)[p], frames[p], None, None)


def motion_term(pred: torch.Tensor, target: torch.Tensor, lags) -> torch.Tensor:
    """Mean over `lags` of the MSE between frame differences at that lag (static content cancels)."""
    terms = [F.mse_loss(pred[:, :, k:] - pred[:, :, :-k], target[:, :, k:] - target[:, :, :-k])
             for k in lags if 0 < k < pred.shape[2]]
    return torch.stack(terms).mean() if terms else pred.new_zeros(())


def train_denoiser(cfg: TrainConfig, model: Model, run: Path, accelerator, start: int, state: dict | None) -> None:
    d = cfg.denoiser
    if d.lora and cfg.dataset == "folder":
        with accelerator.main_process_first():  # the autoencoder adapted first (or its adapter read back), once
            report_vae_fit(cfg, model, adapt_vae(cfg, model, run, accelerator) if d.vae_lora_steps else None)
    with accelerator.main_process_first():  # one process encodes the cache, the others read it
        cache = build_cache(cfg, model, run)
    data = open_dataset(cfg)
    if d.object_weight != 1 and not d.reflow:
        with accelerator.main_process_first():
            cache["objects"] = object_cache(cfg, model, run, cache)
    if d.close_pairs:
        short = len(cache["specs"]) - d.long_clips
        cache["close"] = np.array([i for i in range(short) if data.contrast(cache["specs"][i]) <= d.close_pairs[1]])
        if not len(cache["close"]):
            raise KinemaError(f"denoiser.close_pairs: no clip's colours lie within {d.close_pairs[1]} of each other")
    caption_index = {c: i for i, c in enumerate(cache["captions"])}
    grow_denoiser(model, d.grow, model.info.spatial_compression ** 2 if d.control else 0)
    net = model.denoiser.float().train()
    length_input = bool(net.config.get("length_embedding", False))
    if d.long_clips and not length_input:
        raise KinemaError("denoiser.long_clips needs a denoiser with a length embedding; add "
                          "length_embedding to denoiser.grow")
    if d.lora:  # a PEFT LoRA learns; the denoiser's own weights (and what grew) stay as they are
        from .models.lora import TARGETS, add_adapter, load_loras

        if d.base_lora:  # the student's weights go into the frozen network first
            load_loras(net, [(d.base_lora, 1.0)], merge=True)
            print(f"merged {d.base_lora} into the denoiser", flush=True)
        fresh, rest = [], add_adapter(net, LORA_NAME, d.lora, d.lora_alpha, targets=d.lora_targets or TARGETS)
        for n, p in net.named_parameters():
            p.requires_grad_(f".{LORA_NAME}." in n and "lora_" in n)
    else:
        fresh = [p for n, p in net.named_parameters() if n.startswith(GROWN_PREFIXES)]
        rest = [p for n, p in net.named_parameters() if not n.startswith(GROWN_PREFIXES)]
    if d.train == "control" and not d.lora:  # the backbone frozen: only the control adapter learns
        fresh = [p for n, p in net.named_parameters() if n.startswith("control.")]
        for n, p in net.named_parameters():
            p.requires_grad_(n.startswith("control."))
        rest = []
    ema = _copy(net)  # after any adapter is injected: the EMA follows the same parameters
    groups = ([dict(params=rest, lr_scale=1.0)] if rest else []) + (
        [dict(params=fresh, lr_scale=d.grown_lr_scale)] if fresh else [])
    opt = torch.optim.AdamW(groups, lr=d.lr, weight_decay=0.0)
    history = []
    if state is not None and state["meta"]["stage"] == "denoiser":
        net.load_state_dict(unprefixed(state["tensors"], "model"))
        ema.load_state_dict(unprefixed(state["tensors"], "ema"))
        load_optimizer(opt, state["tensors"], state["meta"])
        history = state["meta"]["history"]
    net, opt = accelerator.prepare(net, opt)
    warm_from = start if state is None else 0  # without optimizer state (a fresh run, or continuing from a folder) warm up again
    uncond = None
    if d.on_policy:
        require("" in caption_index, "denoiser.on_policy needs the empty caption in the cache; set text_dropout > 0")
        i = caption_index[""]
        uncond = TextEmbeds(cache["text_hidden"][i : i + 1].float(), cache["text_mask"][i : i + 1])
    log = Logger(run, "denoiser", start, d.steps, accelerator.is_main_process)
    for step in range(start, d.steps):
        xt, t, text, cond, target, frames, control, weight = denoiser_batch(cfg, cache, caption_index, step,
                                                                    accelerator.process_index, data, accelerator.num_processes)
        dev = accelerator.device
        extra = dict(clip_frames=frames.to(dev)) if length_input else {}
        if control is not None:
            extra.update(control=control[0].to(dev), control_scale=control[1].to(dev))
        if d.on_policy:  # the student's own states, its control scale
            if "control" in extra:
                extra["control_scale"] = extra["control_scale"] * d.on_policy_control_scale
            xt, t, target = on_policy_states(d, net, step, xt, t, target, text, cond, extra, uncond, accelerator)
        for g in opt.param_groups:
            g["lr"] = g.get("lr_scale", 1.0) * lr_at(step - warm_from, d.lr, d.warmup, None) * cooldown_factor(step, d.steps, d.cooldown)
        with accelerator.autocast():
            pred = net(xt.to(dev), t.to(dev), text.to(dev), FrameCondition(cond.latents.to(dev), cond.mask.to(dev)), **extra)
        pred, target = pred.float(), target.to(dev)
        if d.on_policy:  # the loss on the clip each level's prediction implies (x_t - sigma v): the levels weigh alike
            s = (t.to(dev) / 1000)[:, None, None, None, None]
            pred, target = pred * s, target * s
        if weight is None:
            loss = F.mse_loss(pred, target)
        else:  # normalised by the mean weight over every process's batch
            weight = weight.to(dev)
            loss = (weight * (pred - target).pow(2)).mean() / global_mean(weight.mean(), accelerator)
        if d.motion_loss > 0:
            loss = loss + d.motion_loss * motion_term(pred, target, d.motion_lags)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        _ema_update(ema, accelerator.unwrap_model(net), min(d.ema, (1 + step) / (10 + step)))
        log.bar.update(1)
        done = step + 1
        history.append([done, global_mean(loss, accelerator).item()])
        if done % cfg.log_every == 0:
            recent = np.mean([h[1] for h in history[-cfg.log_every :]])
            log.log(done, loss=float(recent))
        if (done % cfg.checkpoint_every == 0 or done == d.steps) and accelerator.is_main_process:
            tensors, meta = optimizer_tensors(opt)
            tensors.update(prefixed(accelerator.unwrap_model(net), "model"))
            tensors.update(prefixed(ema, "ema"))
            meta.update(stage="denoiser", step=done, history=history, config=asdict(cfg))
            save_checkpoint(run, "denoiser", done, tensors, meta, cfg.keep_checkpoints)
            if d.lora:
                export_lora(cfg, ema, done, run, model)
            else:
                export(cfg, model, ema, done)
    log.close()
    if accelerator.is_main_process:
        weighted = ", object cells x{:g}".format(d.object_weight) if d.object_weight != 1 and not d.reflow else ""
        plot_curve(history, run / "denoiser_loss.png", f"denoiser loss (flow matching MSE{weighted})")
        sampler = load_model(model.path)
        if d.lora:  # the samples with the adapter as it is saved
            from .models.lora import load_loras

            sampler.loras = tuple(load_loras(sampler.denoiser, [(lora_path(cfg, run), 1.0)], vae=sampler.vae))
        sample_grid(sampler, cfg.sample_prompts, run / "samples.gif", steps=cfg.sample_steps)


@torch.no_grad()
def on_policy_states(d: DenoiserStage, net, step: int, xt, t, target, text, cond, extra: dict, uncond, accelerator):
    """(x_t, t, target) of `denoiser.on_policy`: each sample at one of the student's noise levels, at the state its
    own Euler steps reach there from the sample's noise, with the velocity that takes that state straight to the
    clip."""
    sigma = (t / 1000)[:, None, None, None, None]
    x0, noise = xt - sigma * target, xt + (1 - sigma) * target  # the batch's clip and noise
    levels = torch.tensor(d.on_policy, dtype=torch.float32)
    k = torch.from_numpy(np.random.default_rng([0, 5, step]).integers(0, len(levels), size=len(t)))
    b, dev = len(t), accelerator.device
    was = net.training
    net.eval()
    text, cond = text.to(dev), FrameCondition(cond.latents.to(dev), cond.mask.to(dev))
    empty = None if uncond is None else TextEmbeds(uncond.hidden.expand(b, -1, -1), uncond.mask.expand(b, -1)).to(dev)
    x, states = noise.clone(), noise.clone()
    for j in range(int(k.max())):
        states[k == j] = x[k == j]
        tj = torch.full((b,), float(levels[j]) * 1000, device=dev)
        with accelerator.autocast():
            v = net(x.to(dev), tj, text, cond, **extra).float().cpu()
            if j == 0 and d.on_policy_guidance != 1:  # guided as the student's first restyle step is
                u = net(x.to(dev), tj, empty, cond, **extra).float().cpu()
                v = u + d.on_policy_guidance * (v - u)
        x = x + (float(levels[j + 1]) - float(levels[j])) * v
    states[k == int(k.max())] = x[k == int(k.max())]
    net.train(was)
    s = levels[k][:, None, None, None, None]
    return states, levels[k] * 1000, (states - x0) / s


GROWABLE = ("motion_embedding", "coord_channels", "length_embedding")


def grow_denoiser(model: Model, inputs, control_channels: int = 0) -> None:
    """Add the named inputs (`DenoiserStage.grow`) and a control adapter of `control_channels` the model's denoiser
    lacks; a no-op when it has them all."""
    known = GROWABLE
    missing = {n: True for n in inputs if not model.denoiser.config.get(n, False)}
    have = model.denoiser.config.get("control_channels", 0)
    if have and control_channels and have != control_channels:
        raise KinemaError(f"the denoiser's control input takes {have} channels, the config's VAE gives {control_channels}")
    if control_channels and not have:
        missing["control adapter"] = True
    if missing:
        print(f"adding {', '.join(missing)} to the denoiser (zero-initialised)", flush=True)
        model.denoiser = model.denoiser.grow(**{k: model.denoiser.config.get(k, False) or k in missing for k in known},
                                             control_channels=control_channels or have)


def sample_grid(model: Model, prompts, path: Path, seeds=(0, 1), steps: int | None = None) -> Path:
    """A GIF grid of samples: one row per prompt, one column per seed."""
    from .pipelines.common import Settings
    from .pipelines.text_to_video import text_to_video
    from .video_io import write_video

    d = model.defaults
    rows = []
    for prompt in prompts:
        clips = [text_to_video(model, prompt, Settings(frames=d["frames"], height=d["height"], width=d["width"],
                                                       steps=steps or d["steps"], guidance=d["guidance"], seed=s,
                                                       guidance_interval=d.get("guidance_interval")),
                               progress=False).frames for s in seeds]
        rows.append(np.concatenate(clips, axis=2))  # (F, H, W * seeds, 3)
    grid = np.concatenate(rows, axis=1)  # (F, H * prompts, W * seeds, 3)
    return write_video(path, grid, fps=d["fps"], overwrite=True)


def _copy(net):
    import copy

    ema = copy.deepcopy(net).eval()
    ema.requires_grad_(False)
    return ema


@torch.no_grad()
def _ema_update(ema, net, decay: float) -> None:
    for e, p in zip(ema.parameters(), net.parameters()):
        e.lerp_(p.detach(), 1 - decay)


def export(cfg: TrainConfig, model: Model, ema, step: int) -> None:
    """Write the EMA weights into the model folder (atomically), recording how they were made."""
    out = Model(None, model.vae, ema, model.scheduler_config, dict(model.index), model.path)
    out.index["frame_conditions"] = ["first", "first_k", "first_last"] if sum(cfg.denoiser.cond_probs[1:]) > 0 else []
    out.index["training"] = dict(step=step, config=asdict(cfg))
    out.index["defaults"] = {**out.index.get("defaults", {}), "frames": cfg.frames, "height": cfg.size, "width": cfg.size}
    save(out, model.path, overwrite=True)


LORA_NAME = "fit"  # the adapter `train_denoiser` trains (not "train": nn.Module has that attribute)


def lora_path(cfg: TrainConfig, run: Path) -> Path:
    return Path(cfg.denoiser.lora_out) if cfg.denoiser.lora_out else run / "lora.safetensors"


def export_lora(cfg: TrainConfig, ema, step: int, run: Path, model: Model) -> Path:
    """Write the EMA adapter to `lora_path` (atomically), with the step and the config in its metadata."""
    from .models.lora import save_lora

    d = cfg.denoiser
    vae = (model.vae.autoencoder, VAE_LORA_NAME, d.vae_lora_rank) if d.vae_lora_steps else None
    return save_lora(ema, LORA_NAME, lora_path(cfg, run), d.lora, d.lora_alpha,
                     extra=dict(step=step, data=cfg.data, config=asdict(cfg)), vae=vae, targets=d.lora_targets)


VAE_LORA_NAME = "fitvae"


def data_frames(cfg: TrainConfig, per_clip: int = 8) -> torch.Tensor:
    """Up to `per_clip` evenly spaced frames of every clip of the folder, (n, 3, H, W) in [-1, 1]."""
    data = open_dataset(cfg)
    times = np.linspace(0, cfg.frames - 1, min(per_clip, cfg.frames)).round().astype(int)
    frames = [data.clip(i, cfg.frames, times=times)[0] for i in range(len(data))]
    return to_unit(np.concatenate(frames))[0].transpose(0, 1)


def adapt_vae(cfg: TrainConfig, model: Model, run: Path, accelerator) -> torch.Tensor:
    """Train (or read back from RUN/vae_lora.safetensors) a LoRA on the autoencoder's layers, on the folder's frames,
    with the VAE stage's loss; it stays on `model.vae` for the encoding and the export. The frames it was fitted on."""
    from safetensors.torch import save_file

    from .models.lora import VAE_TARGETS, add_adapter, adapter_state

    d = cfg.denoiser
    ae = model.vae.autoencoder.float()
    params = add_adapter(ae, VAE_LORA_NAME, d.vae_lora_rank, targets=VAE_TARGETS)
    for n, p in ae.named_parameters():
        p.requires_grad_(f".{VAE_LORA_NAME}." in n and "lora_" in n)
    x = data_frames(cfg)
    path = run / "vae_lora.safetensors"
    if path.is_file():  # fitted before this run was interrupted: the same adapter, so the cache matches it
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(ae, load_file(path), adapter_name=VAE_LORA_NAME)
        print(f"autoencoder adapter read from {path}", flush=True)
    else:
        opt = torch.optim.AdamW(params, lr=d.vae_lora_lr, weight_decay=0.0)
        log = Logger(run, "vae-lora", 0, d.vae_lora_steps, accelerator.is_main_process)
        ae.train()
        for step in range(d.vae_lora_steps):
            rng = np.random.default_rng([cfg.seed, 3, step])
            batch = x[torch.from_numpy(rng.integers(0, len(x), size=cfg.vae.batch))].to(accelerator.device)
            dist = ae.encode(batch).latent_dist
            eps = torch.from_numpy(rng.standard_normal(dist.mean.shape)).float().to(accelerator.device)
            with accelerator.autocast():
                rec = ae.decode(dist.mean + dist.std * eps).sample.float()
            loss = recon_loss(rec, batch, cfg.vae.object_weight)
            loss.backward()
            for g in opt.param_groups:
                g["lr"] = lr_at(step, d.vae_lora_lr, 20, d.vae_lora_steps)
            opt.step()
            opt.zero_grad(set_to_none=True)
            log.bar.update(1)
            if (step + 1) % cfg.log_every == 0:
                log.log(step + 1, loss=float(loss))
        log.close()
        if accelerator.is_main_process:
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            try:
                save_file(adapter_state(ae, VAE_LORA_NAME), str(tmp))
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
    ae.eval().requires_grad_(False)
    return x


def report_vae_fit(cfg: TrainConfig, model: Model, x: torch.Tensor | None) -> None:
    """Print how well the autoencoder draws the folder's frames (median and worst PSNR), and a hint where it is poor."""
    x = data_frames(cfg, per_clip=2) if x is None else x
    psnr = recon_psnr(model.vae.eval(), x)
    med, worst = float(psnr.median()), float(psnr.min())
    adapted = cfg.denoiser.vae_lora_steps > 0
    print(f"autoencoder{' (adapted)' if adapted else ''} on the data's frames: median {med:.1f} dB, worst {worst:.1f} dB",
          flush=True)
    if not adapted and med < VAE_FIT_HINT_DB:
        print(f"hint: the autoencoder redraws these clips poorly (below {VAE_FIT_HINT_DB:.0f} dB), e.g. a colour it never "
              "saw; add --vae-steps 300 to adapt it too", flush=True)


VAE_FIT_HINT_DB = 30.0


def plot_curve(history: list, path: Path, title: str) -> None:
    """Loss curve PNG (raw and smoothed); skipped quietly when matplotlib is absent."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    h = np.asarray(history)
    if len(h) == 0:
        return
    k = max(1, len(h) // 50)
    smooth = np.convolve(h[:, 1], np.ones(k) / k, mode="valid")
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(h[:, 0], h[:, 1], alpha=0.25, lw=0.5, label="per step")
    ax.plot(h[k - 1 :, 0], smooth, lw=1.5, label=f"mean of {k}")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)


#################################################################################
#                                     Entry                                     #
#################################################################################


def auto_bf16() -> tuple[bool, str]:
    """Whether bf16 autocast pays on this machine (`resources.auto_dtype`'s processor probe), and why."""
    from .resources import auto_dtype

    dtype, why = auto_dtype(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    return dtype == torch.bfloat16, why


def use_bf16(cfg: TrainConfig) -> bool:
    """The config's bf16 autocast, or the probe's choice where it leaves it (None)."""
    return auto_bf16()[0] if cfg.bf16 is None else bool(cfg.bf16)


def finetune(data: str | Path, model_dir: str | Path, run_dir: str | Path | None = None, rank: int = 8,
             full: bool = False, frames: int | None = None, stride: int = 1, steps: int = 1000, skip_bad: bool = False,
             lora_out: str | Path | None = None, lr: float | None = None, batch: int = 8,
             config: str | Path | None = None, vae_steps: int = 0, height: int | None = None, width: int | None = None,
             motion_adapter: str | Path | None = None) -> Path:
    """`kinema train --data DIR`: fine-tune a model folder's denoiser on a folder of captioned clips.

    A LoRA of `rank` (default; written to `lora_out`, default RUN/lora.safetensors) or, with `full`, the
    denoiser's own weights (the model folder is rewritten). `steps` count from the folder's own training
    step. Every clip is checked, and the cache encoded, before the first step. Returns the LoRA file or the
    model folder. `config` (YAML) replaces the built-in settings below; the flags still set the data. A Wan,
    LTX-Video or AnimateDiff folder (`motion_adapter`: AnimateDiff's adapter beside an SD 1.5 folder) trains a LoRA
    of its own family (`kinema/finetune.py`), at `height` x `width` (default: the model's).
    """
    from .models.family import describe, family_of

    require(isinstance(steps, int) and steps >= 1, f"--steps must be a whole number >= 1, got {steps!r}")
    require(full or (isinstance(rank, int) and not isinstance(rank, bool) and rank >= 1),
            f"--lora must be a LoRA rank >= 1 (or pass --full), got {rank!r}")
    require(isinstance(batch, int) and batch >= 1, f"--batch must be a whole number >= 1, got {batch!r}")
    require(isinstance(vae_steps, int) and not isinstance(vae_steps, bool) and vae_steps >= 0,
            f"--vae-steps must be a whole number >= 0, got {vae_steps!r}")
    require(not (full and vae_steps), "--vae-steps adapts the autoencoder with a LoRA; drop it with --full")
    require(lr is None or (isinstance(lr, float) and 0 < lr < 1), f"--lr must be in (0, 1), got {lr!r}")
    info = describe(model_dir, motion_adapter)
    run = Path(run_dir) if run_dir else Path("runs") / f"finetune-{Path(data).resolve().name}"
    if family_of(info).lora_training(info) is not None:  # Wan, LTX-Video, AnimateDiff: a LoRA with the family's loss
        from .finetune import finetune_family

        return finetune_family(info, data, run, rank, steps, frames, stride, skip_bad, lora_out, lr, batch, height, width,
                               full=full, vae_steps=vae_steps, config=config)
    require(motion_adapter is None, "--motion-adapter goes with an AnimateDiff (Stable Diffusion 1.5) folder")
    require("lora" in info.features, f"--data fine-tunes kinema's own model; {info.path} is a {info.name} model")
    d = info.defaults
    require(height in (None, d.height) and width in (None, d.width),
            f"--height/--width: kinema's own model fine-tunes at its size, {d.width}x{d.height}")
    require(d.height == d.width, f"--data: the model's clips are {d.width}x{d.height}; fine-tuning takes square models")
    start = int(info.index.get("training", {}).get("step", 0))
    if config is not None:
        cfg = load_yaml(TrainConfig, config)
    else:  # the base run's recipe (noise levels, motion loss, frame conditions), short and gentle
        cfg = TrainConfig(log_every=10, checkpoint_every=100, denoiser=DenoiserStage(
            batch=batch, lr=lr or (1e-3 if not full else 1e-4), warmup=50, cooldown=max(1, steps // 5), ema=0.99,
            text_dropout=0.1, cond_probs=(0.5, 0.3, 0.1, 0.1), image_noise=0.05, logit_mean=0.8, high_noise=(0.5, 0.9),
            motion_loss=1.0))
    cfg.dataset, cfg.data, cfg.stride, cfg.skip_bad = "folder", str(data), stride, skip_bad
    cfg.frames, cfg.size = frames or d.frames, d.height
    cfg.denoiser = replace(cfg.denoiser, steps=start + steps, lora=0 if full else rank, long_clips=0, grow=(),
                           control=False, lora_out=None if lora_out is None else str(lora_out),
                           vae_lora_steps=vae_steps or cfg.denoiser.vae_lora_steps)
    folder = open_dataset(cfg)  # every clip checked now, before the model loads
    cfg.sample_prompts = tuple(dict.fromkeys(c for _, c in folder.items))[:4]
    require(lora_out is None or not Path(lora_out).exists() or Path(lora_out).is_file(),
            f"--lora-out {lora_out} is a folder; name a .safetensors file")
    path = train(None, model_dir, run, "denoiser", cfg=cfg)
    return path if full else lora_path(cfg, run)


def train(config: str | Path | None, model_dir: str | Path, run_dir: str | Path | None = None, stages: str = "all",
          cfg: TrainConfig | None = None) -> Path:
    """Run (or resume) training from a YAML `config` (or a built `cfg`); returns the model folder."""
    from accelerate import Accelerator

    cfg = load_yaml(TrainConfig, config) if cfg is None else cfg
    if cfg.dataset not in (*DATASETS, "folder"):
        raise KinemaError(f"dataset {cfg.dataset!r} is not known; choose one of: {', '.join(DATASETS)}, folder")
    if cfg.dataset == "folder" and (not cfg.data or stages != "denoiser"):
        raise KinemaError("dataset folder needs data: DIR and trains the denoiser only (`kinema train --data DIR`)")
    bad = [n for n in cfg.denoiser.grow if n not in GROWABLE]
    if bad:
        raise KinemaError(f"denoiser.grow names {bad}; known: {', '.join(GROWABLE)}")
    if cfg.denoiser.train not in ("all", "control"):
        raise KinemaError(f"denoiser.train must be 'all' or 'control'; got {cfg.denoiser.train!r}")
    if cfg.denoiser.train == "control" and not cfg.denoiser.control:
        raise KinemaError("denoiser.train: control trains the control adapter; set denoiser.control: true")
    op = tuple(cfg.denoiser.on_policy)
    if op and not (op[0] == 1.0 and all(1 >= a > b > 0 for a, b in zip(op, op[1:])) and op[-1] > 0):
        raise KinemaError(f"denoiser.on_policy must be the student's noise levels from 1.0 down, each > 0; got {list(op)}")
    if op and cfg.denoiser.reflow:
        raise KinemaError("denoiser.on_policy trains under a student; it does not go with reflow")
    if (cfg.denoiser.base_lora or cfg.denoiser.lora_targets) and not cfg.denoiser.lora:
        raise KinemaError("denoiser.base_lora and denoiser.lora_targets go with a LoRA; set denoiser.lora to its rank")
    if cfg.denoiser.base_lora and not Path(cfg.denoiser.base_lora).is_file():
        raise KinemaError(f"denoiser.base_lora: {cfg.denoiser.base_lora} is not a file; name a kinema LoRA (.safetensors)")
    if cfg.denoiser.lora_targets is not None:
        try:
            re.compile(cfg.denoiser.lora_targets)
        except re.error as e:
            raise KinemaError(f"denoiser.lora_targets is not a regular expression ({e}); give one such as '^control\\..*'") from None
    if not 0 <= cfg.denoiser.control_dropout < 1:
        raise KinemaError(f"denoiser.control_dropout must be in [0, 1); got {cfg.denoiser.control_dropout}")
    if not cfg.denoiser.object_weight >= 1:
        raise KinemaError(f"denoiser.object_weight must be >= 1 (1: no weighting); got {cfg.denoiser.object_weight}")
    cp = tuple(cfg.denoiser.close_pairs)
    if cp and not (len(cp) == 2 and 0 < cp[0] <= 1 and cp[1] > 0):
        raise KinemaError(f"denoiser.close_pairs must be [share in (0, 1], RGB distance > 0]; got {list(cp)}")
    if cp and cfg.dataset == "folder":
        raise KinemaError("denoiser.close_pairs needs a dataset that knows its clips' colours (world, world-wide)")
    lf = cfg.denoiser.long_frames
    if cfg.denoiser.long_clips and not (len(lf) == 2 and cfg.frames <= lf[0] <= lf[1]):
        raise KinemaError(f"denoiser.long_frames must be [shortest, longest] clip lengths with {cfg.frames} (frames) "
                          f"<= shortest <= longest; got {list(lf)}")
    run = Path(run_dir) if run_dir else Path("runs") / Path(config).stem
    model_path = resolve_model_path(model_dir)
    run.mkdir(parents=True, exist_ok=True)
    if cfg.bf16 is None:
        cfg.bf16, why = auto_bf16()
        print(f"bf16 autocast {'on' if cfg.bf16 else 'off'} ({why})", flush=True)
    # gloo on CPUs under a launcher (accelerate launch --multi_gpu, torchrun), as on one CPU
    accelerator = Accelerator(mixed_precision="bf16" if cfg.bf16 else "no", cpu=not torch.cuda.is_available())
    for stage_batch in ([cfg.vae.batch] if stages != "denoiser" else []) + ([cfg.denoiser.batch] if stages != "vae" else []):
        shard(stage_batch, accelerator)  # each process an equal share of the global batch, checked before any work
    torch.manual_seed(cfg.seed)
    model = load_model(model_path, device=accelerator.device)
    ckpt = latest_checkpoint(run)
    state = None
    if ckpt is not None:
        state = dict(tensors=load_file(ckpt / "state.safetensors"), meta=json.loads((ckpt / "meta.json").read_text()))
        print(f"resuming from {ckpt}", flush=True)
    stage, step = (state["meta"]["stage"], state["meta"]["step"]) if state else ("vae", 0)
    if stages in ("all", "vae") and stage == "vae" and step < cfg.vae.steps:
        train_vae(cfg, model, run, accelerator, step, state)
        stage, step, state = "vae", cfg.vae.steps, None
    if stages in ("all", "denoiser"):
        if stage != "denoiser":
            step, state = 0, None
            if stages == "denoiser":  # continue from the folder's (EMA) weights, e.g. the shipped default model
                step = int(model.index.get("training", {}).get("step", 0))
        if step < cfg.denoiser.steps:
            train_denoiser(cfg, model, run, accelerator, step, state)
    return model_path
