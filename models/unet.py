"""kinema's own denoiser: a compact pseudo-3D UNet with temporal attention.

2D conv ResBlocks applied per frame (down and back up with skips); at the chosen
levels a space-time block of spatial self-attention (tokens of one frame), text
cross-attention and temporal self-attention (one spatial position across frames,
with a frame-position embedding), all modulated by the timestep and pooled text.
The input is the noisy latents concatenated with the frame condition (latents and
mask), so one network serves text-to-video, image-to-video and continuation.

Two optional inputs give the text a per-frame, per-position path, which the direction of
motion needs ("moving right": the object is further right in later frames): with
`motion_embedding`, an MLP of (pooled text, frame position) adds a per-frame term to the
embedding that modulates every ResBlock; with `coord_channels`, the input carries the
(y, x) coordinates of each latent pixel, so that modulation can place things. Both are
zero at initialisation, so `grow` adds them to a trained network without changing
its output.

A third optional input, `length_embedding`, tells the network how long the whole clip is that it
is making a window of (`clip_frames`, given per call as `DenoiserInputs.clip_frames`; default the
window's own frames). In the world, longer clips move more slowly so the object never leaves the
frame; a window of a 256-frame clip should creep where a 16-frame clip crosses the frame. The
length enters the embedding that modulates every block, through an MLP of a sinusoidal code of
log2(clip_frames / 16) whose output layer starts at zero, so `grow` adds it too without changing the
function (as SVD's fps and motion micro-conditioning do).

Structure injection (for restyling): one pass over a source, given `Injection.record()`, records every
self-attention's queries and keys and the ResBlock outputs of the second-finest decoder level; the
pass given its `replay()` uses the recorded ones in place of its own, so the layout and motion come
from the source while the values, the text cross-attention and the other levels are free to follow a
new prompt (plug-and-play feature injection, Tumanyan et al. 2023).

The network knows nothing about noise schedules: it maps (x_t, timestep) to the
velocity the caller trained it on. Every per-call input (clip length, injection, a step cache) comes through
the call, never through an attribute, so one loaded network serves interleaved calls. Layout everywhere:
(B, C, F, H, W).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from kinema.errors import require

from .attention import attention
from .pretrained import PretrainedModel, register_to_config
from .seams import DenoiserInputs, FrameCondition, Injection, TextEmbeds

#################################################################################
#                                    Helpers                                    #
#################################################################################

GROWN_PREFIXES = ("motion.", "length.", "control.")  # parameters `grow` adds (zero-initialised outputs)
LENGTH_CODE_SCALE = 100.0  # log2(clip frames / 16) in [0, 5] -> [0, 500], the range sinusoidal codes resolve


def sinusoidal(x: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of a float tensor (N,) -> (N, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=x.device, dtype=torch.float32) / half)
    args = x.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def per_frame(x: torch.Tensor) -> torch.Tensor:
    """(B, C, F, H, W) -> (B*F, C, H, W)."""
    b, c, f, h, w = x.shape
    return x.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)


def to_video(x: torch.Tensor, b: int) -> torch.Tensor:
    """(B*F, C, H, W) -> (B, C, F, H, W)."""
    bf, c, h, w = x.shape
    return x.reshape(b, bf // b, c, h, w).permute(0, 2, 1, 3, 4)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


#################################################################################
#                                    Blocks                                     #
#################################################################################


class ResBlock(nn.Module):
    """Per-frame 2D conv residual block with FiLM from the conditioning embedding."""

    def __init__(self, cin: int, cout: int, emb_dim: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.film = nn.Linear(emb_dim, 2 * cout)
        self.norm2 = nn.GroupNorm(groups, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        # x (B*F, C, H, W), emb (B*F, E)
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(F.silu(emb))[:, :, None, None].chunk(2, dim=1)  # (B*F, C, 1, 1) each
        h = self.conv2(F.silu(modulate(self.norm2(h), shift, scale)))
        return self.skip(x) + h


class Attention(nn.Module):
    """Multi-head attention through kinema's one attention function."""

    def __init__(self, dim: int, head_dim: int, context_dim: int | None = None):
        super().__init__()
        self.heads = max(1, dim // head_dim)
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(context_dim or dim, 2 * dim, bias=False)
        self.out = nn.Linear(dim, dim)
        self.backend = "sdpa"

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                injection: Injection | None = None):
        # x (N, S, D), context (N, L, Dc), mask (N, L) bool; injection: self-attention only
        n, s, d = x.shape
        ctx = x if context is None else context
        q = self.q(x).view(n, s, self.heads, -1).transpose(1, 2)  # (N, heads, S, d)
        k, v = self.kv(ctx).view(n, ctx.shape[1], 2, self.heads, -1).permute(2, 0, 3, 1, 4)  # (N, heads, L, d)
        if injection is not None:  # the source's queries and keys: its attention pattern, this pass's values
            q, k = injection(q), injection(k)
        m = None if mask is None else mask[:, None, None, :]  # (N, 1, 1, L)
        o = attention(q, k, v, m, backend=self.backend)  # (N, heads, S, d)
        return self.out(o.transpose(1, 2).reshape(n, s, d))


class SpaceTimeBlock(nn.Module):
    """Spatial self-attention, text cross-attention, temporal self-attention and a feed-forward."""

    def __init__(self, dim: int, head_dim: int, text_dim: int, emb_dim: int, groups: int):
        super().__init__()
        self.norm_in = nn.GroupNorm(groups, dim)
        self.norms = nn.ModuleList([nn.LayerNorm(dim, elementwise_affine=False) for _ in range(4)])
        self.spatial = Attention(dim, head_dim)
        self.cross = Attention(dim, head_dim, context_dim=text_dim)
        self.temporal = Attention(dim, head_dim)
        self.frame_pos = nn.Linear(64, dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(approximate="tanh"), nn.Linear(2 * dim, dim))
        self.ada = nn.Linear(emb_dim, 8 * dim)  # shift and scale for each of the four norms

    def forward(self, x: torch.Tensor, emb: torch.Tensor, text: TextEmbeds, injection: Injection | None = None) -> torch.Tensor:
        # x (B, C, F, H, W), emb (B, E); injection: of the spatial and temporal self-attention
        b, c, f, h, w = x.shape
        t = per_frame(x)  # (B*F, C, H, W)
        t = self.norm_in(t).reshape(b, f, c, h * w).transpose(2, 3)  # (B, F, S, C)
        mods = self.ada(F.silu(emb))[:, None, None].chunk(8, dim=-1)  # 8 x (B, 1, 1, C)
        n = [lambda y, i=i: modulate(self.norms[i](y), mods[2 * i], mods[2 * i + 1]) for i in range(4)]

        t = t + self.spatial(n[0](t).reshape(b * f, h * w, c), injection=injection).reshape(b, f, h * w, c)  # (B*F, S, C)
        q = n[1](t).reshape(b, f * h * w, c)  # (B, F*S, C): cross-attention is per token
        t = t + self.cross(q, text.hidden, text.mask).reshape(b, f, h * w, c)
        pos = self.frame_pos(sinusoidal(torch.arange(f, device=x.device), 64).to(x.dtype))  # (F, C)
        tt = (n[2](t) + pos[None, :, None]).transpose(1, 2).reshape(b * h * w, f, c)  # (B*S, F, C)
        t = t + self.temporal(tt, injection=injection).reshape(b, h * w, f, c).transpose(1, 2)
        t = t + self.ff(n[3](t))
        return x + t.transpose(2, 3).reshape(b, f, c, h, w).transpose(1, 2)  # (B, C, F, H, W)


class Level(nn.Module):
    """ResBlocks and optional space-time blocks at one resolution."""

    def __init__(self, cin: int, cout: int, layers: int, attn: bool, cfg: dict):
        super().__init__()
        self.res = nn.ModuleList(
            ResBlock(cin if i == 0 else cout, cout, cfg["emb_dim"], cfg["groups"]) for i in range(layers)
        )
        self.attn = nn.ModuleList(
            SpaceTimeBlock(cout, cfg["head_dim"], cfg["text_dim"], cfg["emb_dim"], cfg["groups"]) if attn else nn.Identity()
            for _ in range(layers)
        )

    def forward(self, x, emb, emb_frames, text, injection: Injection | None = None, features: bool = False):
        """`injection` reaches the space-time blocks' self-attention, and the ResBlock outputs when `features`."""
        b = x.shape[0]
        for res, attn in zip(self.res, self.attn):
            y = res(per_frame(x), emb_frames)
            x = to_video(y if injection is None or not features else injection(y), b)
            if not isinstance(attn, nn.Identity):
                x = attn(x, emb, text, injection)
        return x


#################################################################################
#                                     Model                                     #
#################################################################################


class ControlAdapter(nn.Module):
    """Per-frame structure maps -> a feature added to each encoder level's output (T2I-Adapter, Mou et al. 2023).

    The maps come pixel-unshuffled to the latent grid (`models/control.py`: a 64x64 edge map is 16 channels at
    16x16). A conv stack per level, strided as the encoder is, each ending in a 1x1 projection that starts at
    zero, so a grown network computes what it did before until training moves the projections.
    """

    def __init__(self, cin: int, channels: tuple[int, ...]):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(cin, channels[0], 3, padding=1), nn.SiLU(),
                                  nn.Conv2d(channels[0], channels[0], 3, padding=1), nn.SiLU())
        self.down = nn.ModuleList(
            nn.Sequential(nn.Conv2d(a, b, 3, stride=2, padding=1), nn.SiLU(), nn.Conv2d(b, b, 3, padding=1), nn.SiLU())
            for a, b in zip(channels[:-1], channels[1:]))
        self.out = nn.ModuleList(nn.Conv2d(c, c, 1) for c in channels)

    def zero(self) -> None:
        for o in self.out:
            nn.init.zeros_(o.weight)
            nn.init.zeros_(o.bias)

    def forward(self, maps: torch.Tensor) -> list[torch.Tensor]:
        # maps (B*F, Cc, h, w) -> one (B*F, C_i, h_i, w_i) per encoder level
        h = self.stem(maps)
        feats = [self.out[0](h)]
        for down, out in zip(self.down, self.out[1:]):
            h = down(h)
            feats.append(out(h))
        return feats


class SpaceTimeUNet(PretrainedModel):
    """Pseudo-3D UNet over latent video, conditioned on text, timestep and known frames."""

    _repeated_blocks = ("ResBlock", "SpaceTimeBlock")  # what `--compile` compiles one by one (diffusers' convention)

    @register_to_config
    def __init__(
        self,
        latent_channels: int = 8,
        channels: tuple[int, ...] = (64, 128, 192),
        attention_levels: tuple[bool, ...] = (False, True, True),
        layers_per_level: int = 1,
        head_dim: int = 32,
        text_dim: int = 384,
        emb_dim: int = 256,
        groups: int = 16,
        motion_embedding: bool = False,
        coord_channels: bool = False,
        length_embedding: bool = False,
        control_channels: int = 0,
    ):
        super().__init__()
        cfg = dict(emb_dim=emb_dim, groups=groups, head_dim=head_dim, text_dim=text_dim)
        self.time_mlp = nn.Sequential(nn.Linear(256, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.text_pool = nn.Linear(text_dim, emb_dim)
        if motion_embedding:  # (pooled text, frame position) -> a per-frame embedding term
            self.motion = nn.Sequential(nn.Linear(text_dim + 64, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if length_embedding:  # log2(clip frames / 16) -> an embedding term (the pace of the whole clip)
            self.length = nn.Sequential(nn.Linear(64, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if control_channels:  # structure maps (pixel-unshuffled edges) -> features added to each encoder level
            self.control = ControlAdapter(control_channels, tuple(channels))
        self.conv_in = nn.Conv2d(2 * latent_channels + 1 + 2 * coord_channels, channels[0], 3, padding=1)
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        ch = channels[0]
        for i, c in enumerate(channels):
            self.down.append(Level(ch, c, layers_per_level, attention_levels[i], cfg))
            ch = c
            if i < len(channels) - 1:
                self.downsample.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
        self.mid = Level(ch, ch, 1, True, cfg)
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i in reversed(range(len(channels))):
            c = channels[i]
            self.up.append(Level(ch + c, c, layers_per_level, attention_levels[i], cfg))
            ch = c
            if i > 0:
                self.upsample.append(nn.Conv2d(c, channels[i - 1], 3, padding=1))
                ch = channels[i - 1]
        self.norm_out = nn.GroupNorm(groups, channels[0])
        self.conv_out = nn.Conv2d(channels[0], latent_channels, 3, padding=1)
        self.initialize_weights()

    def initialize_weights(self):
        """Xavier linears; zero the outputs of every residual branch so training starts at identity."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, ResBlock):
                nn.init.zeros_(m.conv2.weight)
                nn.init.zeros_(m.conv2.bias)
                nn.init.zeros_(m.film.weight)
            elif isinstance(m, SpaceTimeBlock):
                for a in (m.spatial, m.cross, m.temporal):
                    nn.init.zeros_(a.out.weight)
                nn.init.zeros_(m.ff[-1].weight)
                nn.init.zeros_(m.ada.weight)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)
        if self.config.motion_embedding:
            nn.init.zeros_(self.motion[-1].weight)
            nn.init.zeros_(self.motion[-1].bias)
        if self.config.length_embedding:
            nn.init.zeros_(self.length[-1].weight)
            nn.init.zeros_(self.length[-1].bias)
        if self.config.get("control_channels", 0):
            self.control.zero()

    def grow(self, motion_embedding: bool = True, coord_channels: bool = True, length_embedding: bool = False,
             control_channels: int = 0) -> "SpaceTimeUNet":
        """A copy with the per-frame text path, coordinate channels, clip-length input and/or a structure control
        adapter added, computing the same function.

        The new weights start at zero (the motion and length MLPs' output layers, the coordinate
        channels' input filters, the control adapter's projections), so training continues from this network's
        behaviour instead of from scratch.
        """
        config = {k: v for k, v in self.config.items() if not k.startswith("_")}
        config.update(motion_embedding=motion_embedding or self.config.motion_embedding,
                      coord_channels=coord_channels or self.config.coord_channels,
                      length_embedding=length_embedding or self.config.get("length_embedding", False),
                      control_channels=control_channels or self.config.get("control_channels", 0))
        new = type(self)(**config).to(self.conv_in.weight.device)
        state = self.state_dict()
        w = state["conv_in.weight"]  # (out, in, 3, 3)
        extra = new.conv_in.weight.shape[1] - w.shape[1]
        state["conv_in.weight"] = torch.cat([w, w.new_zeros(w.shape[0], extra, *w.shape[2:])], dim=1)
        missing, unexpected = new.load_state_dict(state, strict=False)
        assert not unexpected and all(k.startswith(GROWN_PREFIXES) for k in missing), (missing, unexpected)
        return new if w.dtype == torch.float32 else new.to(w.dtype)

    @property
    def structure_level(self) -> Level:
        """The level whose ResBlock outputs structure injection carries: the second-finest decoder level.

        8x8 latents in the default model, where layout is set but colour is not yet, as restyling found
        on world clips (`pipelines/video_to_video.py`); the queries and keys of every spatial and
        temporal self-attention are carried too.
        """
        return self.up[-2] if len(self.up) > 1 else self.up[-1]

    def set_attention_backend(self, backend: str) -> None:
        for m in self.modules():
            if isinstance(m, Attention):
                m.backend = backend

    def forward(
        self, x: torch.Tensor, timestep: torch.Tensor, text: TextEmbeds, cond: FrameCondition | None = None,
        clip_frames: torch.Tensor | None = None, injection: Injection | None = None,
        control: torch.Tensor | None = None, control_scale: torch.Tensor | float = 1.0, cache=None,
    ):
        # x (B, C, F, H, W) noisy latents; timestep (B,) in [0, 1000]; clip_frames (B,): the whole clip's frames
        # (None: the window's own); injection: structure injection of this call (record or replay);
        # control (B, Cc, F, H, W): structure maps on the latent grid (None: the adapter is skipped, the network is
        # the one it was before the adapter grew); control_scale: a float or (B,) (0 per sample: control dropout);
        # cache: a step cache of this call's trajectory (`models/cache.py`), asked after the first level
        b, _, f, h, w = x.shape
        cond = cond if cond is not None else FrameCondition.empty(x)
        hm = text.mask.to(text.hidden.dtype)[..., None]  # (B, L, 1)
        pooled = (text.hidden * hm).sum(1) / hm.sum(1).clamp(min=1)  # (B, D)
        emb = self.time_mlp(sinusoidal(timestep, 256).to(x.dtype)) + self.text_pool(pooled)  # (B, E)
        if self.config.get("length_embedding", False):
            if clip_frames is None:
                clip_frames = torch.full((b,), float(f), device=x.device)
            code = torch.log2(clip_frames.float().clamp(min=1) / 16) * LENGTH_CODE_SCALE  # (B,)
            emb = emb + self.length(sinusoidal(code, 64).to(x.dtype))  # (B, E)
        emb_frames = emb.repeat_interleave(f, 0)  # (B*F, E)
        if self.config.motion_embedding:
            pos = sinusoidal(torch.arange(f, device=x.device), 64).to(x.dtype)  # (F, 64)
            pairs = torch.cat([pooled.to(x.dtype)[:, None].expand(b, f, -1), pos[None].expand(b, f, -1)], dim=-1)
            emb_frames = emb_frames + self.motion(pairs).reshape(b * f, -1)  # (B*F, E)

        inputs = [x, cond.channels().to(x.dtype)]  # (B, C, F, H, W), (B, C+1, F, H, W)
        if self.config.coord_channels:
            ys, xs = torch.meshgrid(torch.linspace(-1, 1, h, device=x.device), torch.linspace(-1, 1, w, device=x.device), indexing="ij")
            inputs.append(torch.stack([ys, xs])[None, :, None].expand(b, 2, f, h, w).to(x.dtype))
        hx = torch.cat(inputs, dim=1)  # (B, 2C+1 [+2], F, H, W)
        hx = to_video(self.conv_in(per_frame(hx)), b)
        guides = self._control(control, control_scale, b, x.dtype)
        skips = []
        for i, level in enumerate(self.down):
            hx = level(hx, emb, emb_frames, text, injection)
            if guides is not None:
                hx = hx + guides[i]
            if i == 0 and cache is not None and cache.skip(hx):  # step cache: the rest as the last full call left it
                return self._head(cache.reuse(hx), b)
            skips.append(hx)
            if i < len(self.downsample):
                hx = to_video(self.downsample[i](per_frame(hx)), b)
        hx = self.mid(hx, emb, emb_frames, text, injection)
        features = self.structure_level
        for i, level in enumerate(self.up):
            hx = level(torch.cat([hx, skips.pop()], dim=1), emb, emb_frames, text, injection, level is features)
            if i < len(self.upsample):
                y = F.interpolate(per_frame(hx), scale_factor=2.0, mode="nearest")  # (B*F, C, 2H, 2W)
                hx = to_video(self.upsample[i](y), b)
        if cache is not None:
            cache.store(hx)
        return self._head(hx, b)

    def _head(self, hx: torch.Tensor, b: int) -> torch.Tensor:
        """Features at the first level's width (B, C0, F, H, W) -> the output (B, C, F, H, W)."""
        out = self.conv_out(F.silu(self.norm_out(per_frame(hx))))  # (B*F, C, H, W)
        return to_video(out, b)

    def _control(self, control, scale, b: int, dtype) -> list[torch.Tensor] | None:
        """The adapter's per-level features of `control`, times `scale`; None without control."""
        if control is None:
            return None
        require(self.config.get("control_channels", 0) == control.shape[1],
                f"this denoiser takes {self.config.get('control_channels', 0)} control channels, got {control.shape[1]}")
        if control.shape[0] != b:  # one control for a batch of prompts (classifier-free guidance's pairs)
            control = control.expand(b, *control.shape[1:]) if control.shape[0] == 1 else control.repeat(b // control.shape[0], 1, 1, 1, 1)
        scale = torch.as_tensor(scale, dtype=dtype, device=control.device)
        scale = scale.reshape(-1, 1, 1, 1, 1) if scale.ndim else scale
        return [to_video(g, b) * scale for g in self.control(per_frame(control.to(dtype)))]

    def predict(self, latents, timestep, text: TextEmbeds, cond: FrameCondition | None = None,
                inputs: DenoiserInputs | None = None) -> torch.Tensor:
        """The denoiser seam: velocity (noise - x0) for latents at `timestep` (B,) in [0, 1000].

        `inputs.clip_frames` (the whole clip's length, for the length embedding), `inputs.injection`
        (structure injection) and `inputs.cache` (a step cache; a pass with structure injection runs in full and
        leaves it as it was) reach the network through this call; an image context is not for this network.
        """
        inputs = inputs or DenoiserInputs()
        require(inputs.image is None, "kinema's UNet takes its image through the frame condition, not an image context")
        clip = None
        if inputs.clip_frames is not None:
            clip = torch.full((latents.shape[0],), float(inputs.clip_frames), device=latents.device)  # (B,)
        cache = inputs.cache if inputs.injection is None else None
        return self(latents, timestep, text, cond, clip_frames=clip, injection=inputs.injection,
                    control=inputs.control, control_scale=inputs.control_scale, cache=cache)


#################################################################################
#                                    Presets                                    #
#################################################################################

PRESETS: dict[str, dict] = {
    "tiny": dict(channels=(16, 32), attention_levels=(False, True), head_dim=8, emb_dim=32, groups=4),
    # attention at 8x8 and 4x4 latents only: at 16x16 it doubled the step time on 2 CPU cores
    "small": dict(channels=(64, 128, 192), attention_levels=(False, True, True), head_dim=32, emb_dim=256, groups=16),
    "base": dict(channels=(96, 192, 288), attention_levels=(True, True, True), layers_per_level=2, head_dim=32, emb_dim=384, groups=32),
}
