"""One attention function for every backend: sdpa (default), xformers, chunked."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kinema.errors import KinemaError

BACKENDS = ("sdpa", "xformers", "chunked")
CHUNK_ELEMENTS = 2**24  # score-matrix elements per chunk for the chunked backend (64 MB in fp32)


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None, backend: str = "sdpa"
) -> torch.Tensor:
    """Softmax attention. q (B, heads, Nq, d), k/v (B, heads, Nk, d); mask bool broadcastable to (B, heads, Nq, Nk)."""
    if backend == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    if backend == "chunked":
        return _chunked(q, k, v, mask)
    if backend == "xformers":
        return _xformers(q, k, v, mask)
    raise KinemaError(f"unknown attention backend {backend!r}; choose one of {', '.join(BACKENDS)}")


def _chunked(q, k, v, mask):
    """Query-chunked attention: the score matrix never exceeds CHUNK_ELEMENTS elements."""
    b, h, nq, _ = q.shape
    nk = k.shape[2]
    rows = max(1, CHUNK_ELEMENTS // (h * nk))  # (batch x query) rows per chunk
    if mask is not None:
        mask = mask.expand(b, h, nq, nk)
    out = torch.empty_like(q)
    qb = max(1, min(nq, rows))  # queries per chunk
    bb = max(1, rows // qb)  # batch items per chunk
    for i in range(0, b, bb):
        for j in range(0, nq, qb):
            m = None if mask is None else mask[i : i + bb, :, j : j + qb]
            out[i : i + bb, :, j : j + qb] = F.scaled_dot_product_attention(
                q[i : i + bb, :, j : j + qb], k[i : i + bb], v[i : i + bb], attn_mask=m
            )
    return out


def xformers_available() -> bool:
    try:
        import xformers.ops  # noqa: F401
    except Exception:
        return False
    return True


def _xformers(q, k, v, mask):
    if not xformers_available():
        raise KinemaError("attention backend 'xformers' needs the xformers package: pip install 'kinema[xformers]', or use --attention sdpa")
    import xformers.ops as xops

    bias = None
    if mask is not None:  # additive bias, (B, heads, Nq, Nk); xformers wants it materialised
        b, h, nq, _ = q.shape
        bias = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill(~mask, float("-inf"))
        bias = bias.expand(b, h, nq, k.shape[2])
    out = xops.memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_bias=bias)
    return out.transpose(1, 2)
