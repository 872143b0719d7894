"""One clip on several processes: guidance's branches on two ranks (cfg), or the token sequence on N (ulysses, ring).

    torchrun --nproc-per-node 2 -m kinema.cli batch jobs.jsonl --parallel cfg          # any family, CPU or GPU
    torchrun --nproc-per-node 4 -m kinema.cli batch jobs.jsonl --parallel ulysses:4    # Wan, 4 GPUs

CFG-parallel: every denoiser call's batch split over a group of ranks, the predictions gathered.

Classifier-free guidance batches the conditional and unconditional branches in one call (`loop.guided`), so
with two ranks each runs one branch: CFG-parallel, for any family, since it wraps the denoiser seam only.
Every sample of a batch is computed as it would be alone, so the gathered prediction is the one-process
prediction (within float tolerance). A call whose batch does not split evenly, or that carries per-call
inputs with a batch of their own (structure injection, Wan I2V's image context), runs whole on every rank.

Ranks gather over gloo (CPU tensors; a CUDA prediction goes through the host); with a GPU per rank an NCCL
group gathers on the GPUs (the NCCL path needs two GPUs, so it runs in scripts/gpu_check.sh only).
Every rank of a group must make the same calls: they run the same job, step for step.

Context parallelism (`ulysses:N`, `ring:N`) is diffusers' (`ModelMixin.enable_parallelism`): every attention of
a transformer that has a context-parallel plan (Wan's) runs over all N processes, one GPU each, over NCCL.
diffusers builds it on an accelerator only, so it is GPU-only: scripts/gpu_check.sh runs it where there are
two GPUs; on this project's CPU machines only its checks run (tests/test_batch.py).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .errors import KinemaError, require


def parse(kind: str) -> tuple[str, int]:
    """`--parallel`: ("jobs", 1), ("cfg", 2), ("ulysses", N) or ("ring", N); a bad one is a KinemaError."""
    if kind in ("jobs", "cfg"):
        return kind, 1 if kind == "jobs" else 2
    name, _, degree = kind.partition(":")
    require(name in ("ulysses", "ring") and degree.isdigit() and int(degree) >= 2,
            f"unknown --parallel {kind!r}; use jobs, cfg, ulysses:N or ring:N (N >= 2 processes)")
    return name, int(degree)


def check(kind: str, processes: int) -> None:
    """Refuse, before any work, a --parallel that these processes cannot run."""
    import os

    import torch

    name, n = parse(kind)
    if name == "cfg":
        require(processes >= 2 and processes % 2 == 0,
                f"--parallel cfg runs each job on two processes; launch an even number (got {processes}), e.g. "
                "torchrun --nproc-per-node 2 -m kinema.cli batch JOBS --parallel cfg")
    elif name != "jobs":
        require(processes == n, f"--parallel {kind} runs each job on {n} processes; launch {n} (got {processes}), e.g. "
                                f"torchrun --nproc-per-node {n} -m kinema.cli batch JOBS --parallel {kind}")
        require(torch.cuda.is_available(), f"--parallel {kind} is diffusers' context parallelism, which runs on GPUs only; "
                                           "on CPUs use --parallel cfg or jobs")
        local = int(os.environ.get("LOCAL_WORLD_SIZE", n))
        require(torch.cuda.device_count() >= local, f"--parallel {kind} needs a GPU per process: {local} processes on this "
                                                    f"node, {torch.cuda.device_count()} GPUs")


@dataclass
class SplitBatch:
    """A denoiser whose calls are shared by the `size` ranks of `group`: rank r computes the r-th part of the batch."""

    denoiser: object
    rank: int
    size: int
    group: object = None  # a torch.distributed process group
    split_calls: int = 0

    def __getattr__(self, name):  # dtype, config, hooks: the wrapped denoiser's
        if name == "denoiser":
            raise AttributeError(name)
        return getattr(self.denoiser, name)

    def predict(self, latents, t, text, cond=None, inputs=None):
        import torch
        import torch.distributed as dist

        from .models.seams import FrameCondition, TextEmbeds

        b = latents.shape[0]
        own_batch = inputs is not None and (getattr(inputs, "injection", None) is not None or getattr(inputs, "image", None) is not None)
        if b % self.size or own_batch or t.reshape(-1).shape[0] != b:
            return self.denoiser.predict(latents, t, text, cond, inputs)
        k = b // self.size
        part = slice(self.rank * k, (self.rank + 1) * k)
        mine = None if cond is None else FrameCondition(cond.latents[part], cond.mask[part])
        v = self.denoiser.predict(latents[part], t.reshape(-1)[part], TextEmbeds(text.hidden[part], text.mask[part]), mine, inputs)
        via_host = v.is_cuda and dist.get_backend(self.group) != "nccl"
        send = (v.cpu() if via_host else v).contiguous()
        parts = [torch.empty_like(send) for _ in range(self.size)]
        dist.all_gather(parts, send, group=self.group)
        self.split_calls += 1
        out = torch.cat(parts)
        return out.to(v.device) if via_host else out


def pair_groups(rank: int, size: int):
    """Ranks in pairs (0, 1), (2, 3), ...: (this rank's pair index, its place in the pair, the pair's group).

    Every rank creates every pair's group, in the same order, as torch.distributed requires.
    """
    import torch
    import torch.distributed as dist

    nccl = torch.cuda.is_available() and torch.cuda.device_count() >= size  # a GPU per rank
    mine = None
    for first in range(0, size - size % 2, 2):
        group = dist.new_group([first, first + 1], backend="nccl" if nccl else "gloo")
        if first == rank - rank % 2:
            mine = group
    return rank // 2, rank % 2, mine


def cfg_parallel(model, rank_in_pair: int, group):
    """The model with its denoiser's calls split over the pair (see SplitBatch); the original is unchanged."""
    return replace(model, denoiser=SplitBatch(model.denoiser, rank_in_pair, 2, group))


@dataclass
class ContextParallel:
    """diffusers' context parallelism over all processes (GPU-only; see the module docstring)."""

    name: str  # ulysses or ring
    degree: int
    mesh: object = None

    def apply(self, model):
        """Enable it on every transformer of `model` that has a plan (once; the loaded model keeps it)."""
        from diffusers import ContextParallelConfig
        from torch.distributed.device_mesh import init_device_mesh

        planned = [m for m in model.denoiser.modules() if getattr(m, "_cp_plan", None) and hasattr(m, "enable_parallelism")]
        if not planned:
            raise KinemaError("this model's denoiser has no context-parallel plan in diffusers (Wan's has); "
                              "use --parallel cfg or jobs")
        if self.mesh is None:
            shape = (self.degree, 1) if self.name == "ring" else (1, self.degree)
            self.mesh = init_device_mesh("cuda", shape, mesh_dim_names=("ring", "ulysses"),
                                         backend_override={"ring": "nccl", "ulysses": "nccl"})
        for m in planned:
            if getattr(m, "_parallel_config", None) is None:
                m.enable_parallelism(config=ContextParallelConfig(**{f"{self.name}_degree": self.degree}, mesh=self.mesh))
        return model
