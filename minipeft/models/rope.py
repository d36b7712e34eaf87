"""Rotary position embeddings (RoPE, Su et al. 2021, "RoFormer"), in Hugging Face's layout.

RoPE encodes position ``m`` by rotating each pair of query/key features by the angle
``m · θ_i`` with ``θ_i = base^(-2i / D)``, i = 0 .. D/2 - 1 (``inv_freq``). A rotation by
``m θ`` of q and by ``n θ`` of k leaves ``q · k`` depending on ``m - n`` only (eq. 16 of the
paper), so attention sees relative positions.

HF pairs feature ``i`` with feature ``i + D/2`` (not ``2i`` with ``2i + 1`` as the paper does) and
writes the rotation with ``rotate_half``::

    rotate_half(x) = cat(-x[..., D/2:], x[..., :D/2])
    x_rot = x * cos + rotate_half(x) * sin,   cos/sin = cos/sin(cat(m θ, m θ))   shape (B, T, D)

Checkpoints made by transformers use this convention for their q_proj/k_proj weights, so the
same layout here is what makes them load unchanged.
"""

from __future__ import annotations

from typing import Any

from .. import functional as F
from .. import nn
from ..backend import xp_of
from ..creation import arange, tensor
from ..ops.api import cat
from ..tensor import Tensor, float32

__all__ = [
    "rope_inv_freq",
    "RotaryEmbedding",
    "rotate_half",
    "apply_rotary_pos_emb",
    "apply_rotary_pos_emb_composite",
]


def rope_inv_freq(head_dim: int, base: float = 10000.0, device: str = "cpu") -> Tensor:
    """θ_i = 1 / base^(2i / D) for i = 0 .. D/2 - 1, float32, shape (D/2,)."""
    if head_dim % 2:
        raise ValueError(
            f"RoPE needs an even head_dim (it rotates feature pairs), found {head_dim}"
        )
    exponents = arange(0, head_dim, 2, device=device).to(float32) / head_dim  # 2i / D
    return 1.0 / (tensor(float(base), device=device) ** exponents)


class RotaryEmbedding(nn.Module):
    """Holds ``inv_freq`` (a non-persistent buffer: recomputed, never saved) and makes cos/sin.

    ``forward(x, position_ids)``: position_ids (B or 1, T) int → (cos, sin), each (B or 1, T, D)
    in x's dtype. Positions carry no gradient, so cos/sin are computed on raw arrays.
    """

    def __init__(self, head_dim: int, base: float = 10000.0) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.base = float(base)
        self.register_buffer("inv_freq", rope_inv_freq(head_dim, base), persistent=False)

    def forward(self, x: Tensor, position_ids: Tensor) -> tuple[Tensor, Tensor]:
        inv = self.inv_freq.data
        xp = xp_of(inv)
        if inv.dtype.itemsize < 4:  # angles m·θ in at least float32, as HF computes them
            inv = inv.astype(float32)
        pos = position_ids.data.astype(inv.dtype)
        freqs = pos[..., None] * inv  # (B, T, D/2): m θ_i
        emb = xp.concatenate([freqs, freqs], axis=-1)  # (B, T, D), HF's half-split pairing
        cos = Tensor(xp.cos(emb).astype(x.dtype, copy=False))  # stays on inv_freq's device
        sin = Tensor(xp.sin(emb).astype(x.dtype, copy=False))
        return cos, sin

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, base={self.base}"


def rotate_half(x: Tensor) -> Tensor:
    """cat(-x2, x1) where x1, x2 are the first and second halves of the last dim."""
    half = x.shape[-1] // 2
    return cat([-x[..., half:], x[..., :half]], dim=-1)


def apply_rotary_pos_emb(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor) -> tuple[Any, Any]:
    """Rotate q (B, H, T, D) and k (B, H_kv, T, D) by cos/sin (B, T, D) (broadcast over heads)."""
    return F.rotary_embedding(q, cos, sin), F.rotary_embedding(k, cos, sin)


def apply_rotary_pos_emb_composite(q: Tensor, k: Tensor, cos: Tensor,
                                   sin: Tensor) -> tuple[Any, Any]:  # fmt: skip
    """The same rotation from primitives (``rotate_half``, ``*``, ``+``): the fused op's test
    reference."""
    cos = cos.unsqueeze(1)  # (B, 1, T, D)
    sin = sin.unsqueeze(1)
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
