"""Composite reference implementations, built only from primitive Tensor ops.

Each function here computes what a fused Function in :mod:`minipeft.ops.fused` (attention:
:mod:`minipeft.ops.fused_attention`) computes, but as a chain of primitives (exp, sum, matmul,
where, ...) whose backward autograd derives by itself. They are slower and keep more arrays
alive; they exist to be *obviously right*, so the tests and the lessons can check each fused op
(values and gradients) against its twin.

The arguments are already validated (by :mod:`minipeft.functional` and
:mod:`minipeft.attention`); shapes follow it: logits (N, V) with targets (N,), norms over the last
axis, attention q (*, H, Tq, D) and k, v (*, Hkv, Tk, D).
"""

from __future__ import annotations

import math
from typing import Any

from ..autograd import Context, Function
from ..backend import erf, xp_of
from ..tensor import Tensor

__all__ = [
    "softmax",
    "log_softmax",
    "logsumexp",
    "cross_entropy",
    "layer_norm",
    "rms_norm",
    "gelu",
    "dropout",
    "scaled_dot_product_attention",
    "Erf",
]


def _const(arr: Any) -> Tensor:
    return Tensor._make(arr)


def softmax(x: Tensor, dim: int = -1) -> Tensor:
    """e^(x - m) / Σ e^(x - m), m = max (a constant: softmax does not depend on it)."""
    e = (x - x.amax(dim, keepdim=True).detach()).exp()
    return e / e.sum(dim, keepdim=True)


def log_softmax(x: Tensor, dim: int = -1) -> Tensor:
    """(x - m) - log Σ e^(x - m)."""
    z = x - x.amax(dim, keepdim=True).detach()
    return z - z.exp().sum(dim, keepdim=True).log()


def logsumexp(x: Tensor, dim: Any, keepdim: bool = False) -> Tensor:
    """m + log Σ e^(x - m) over ``dim`` (an int or a tuple)."""
    m = x.amax(dim, keepdim=True).detach()
    y = (x - m).exp().sum(dim, keepdim=True).log() + m
    if keepdim:
        return y
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    keep = [n for i, n in enumerate(x.shape) if i not in {d % x.ndim for d in dims}]
    return y.reshape(*keep)


def cross_entropy(
    logits: Tensor,
    target: Any,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> Tensor:
    """-(1-ε) log p_t - (ε/V) Σ_j log p_j per row, zero for ignored rows, then reduced."""
    xp = xp_of(logits.data)
    t = target.data if isinstance(target, Tensor) else xp.asarray(target)
    n, v = logits.shape
    valid = t != ignore_index
    logp = log_softmax(logits, -1)
    nll = -logp[xp.arange(n), xp.where(valid, t, 0)]  # integer-array indexing (a gather)
    if label_smoothing:
        nll = nll * (1.0 - label_smoothing) - logp.mean(-1) * label_smoothing
    loss = nll * _const(valid.astype(logits.dtype))
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / _const(valid.sum().astype(logits.dtype))


def layer_norm(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float) -> Tensor:
    """(x - mean) / √(var + eps) · w + b over the last axis (biased variance)."""
    mu = x.mean(-1, keepdim=True)
    xc = x - mu
    var = (xc * xc).mean(-1, keepdim=True)
    y = xc / (var + eps).sqrt()
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y


def rms_norm(x: Tensor, weight: Tensor | None, eps: float) -> Tensor:
    """x / √(mean(x²) + eps) · w over the last axis."""
    y = x / ((x * x).mean(-1, keepdim=True) + eps).sqrt()
    return y * weight if weight is not None else y


class Erf(Function):
    """z = erf(x);  dz/dx = (2/√π) e^(-x²).  (A primitive: erf is not built from the others.)"""

    @staticmethod
    def forward(ctx: Context, x: Any) -> Any:
        ctx.save_for_backward(x)
        return erf(x.reshape(-1)).reshape(x.shape)

    @staticmethod
    def backward(ctx: Context, g: Any) -> Any:
        (x,) = ctx.saved_tensors
        return g * (2.0 / math.sqrt(math.pi)) * xp_of(x).exp(-(x * x))


def gelu(x: Tensor, approximate: str = "none") -> Tensor:
    """½x(1 + erf(x/√2)), or ½x(1 + tanh(√(2/π)(x + 0.044715x³))) for "tanh"."""
    if approximate == "tanh":
        inner = (x + x * x * x * 0.044715) * math.sqrt(2.0 / math.pi)
        return x * 0.5 * (inner.tanh() + 1.0)
    return x * 0.5 * (Erf.apply(x * (1.0 / math.sqrt(2.0))) + 1.0)


def dropout(x: Tensor, keep: Any, p: float) -> Tensor:
    """x ⊙ keep / (1 - p) for a given bool ``keep`` mask."""
    return x * _const(keep.astype(x.dtype)) * (1.0 / (1.0 - p))


def scaled_dot_product_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    attn_mask: Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    keep: Any = None,
    dropout_p: float = 0.0,
) -> Tensor:
    """softmax(q kᵀ · scale + mask) v, with k, v heads repeated for grouped-query attention.

    ``attn_mask``: bool (True = may attend) or additive float, broadcastable to (*, H, Tq, Tk).
    ``is_causal``: query i sees keys j ≤ i + (Tk - Tq). Blocked scores become the dtype's most
    negative value, and rows with no allowed key are multiplied by 0 (the fused op's zeros).
    ``keep``: an optional bool dropout mask of shape (*, H, Tq, Tk).
    """
    xp = xp_of(q.data)
    *lead, h, tq, d = q.shape
    hkv, tk = k.shape[-3], k.shape[-2]
    if h != hkv:  # repeat_interleave: head h reads kv head h // G
        grp = h // hkv

        def repeat(t: Tensor) -> Tensor:
            t5 = t.unsqueeze(-3).expand(*lead, hkv, grp, tk, t.shape[-1])
            return t5.reshape(*lead, h, tk, t.shape[-1])

        k, v = repeat(k), repeat(v)
    s = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(d) if scale is None else scale)
    allowed = None
    if attn_mask is not None and attn_mask.dtype == bool:
        allowed = attn_mask.data
    elif attn_mask is not None:
        s = s + attn_mask
    if is_causal:
        causal = xp.arange(tk)[None, :] <= xp.arange(tq)[:, None] + (tk - tq)
        allowed = causal if allowed is None else allowed & causal
    if allowed is not None:
        s = s.masked_fill(~allowed, float(xp.finfo(s.dtype).min))
    p = softmax(s, -1)
    if allowed is not None:
        any_allowed = xp.broadcast_to(allowed, s.shape).any(axis=-1, keepdims=True)
        p = p * _const(any_allowed.astype(p.dtype))
    if keep is not None:
        p = dropout(p, keep, dropout_p)
    return p @ v
