"""Fused ops: one Function per hot op, with a hand-derived backward.

Each class computes in one pass what the composite version in :mod:`minipeft.ops.composite`
builds from many primitives, and saves only what its backward needs. Tests check every one
against its composite twin (values and gradients, float64) and against central differences.

Notation (rows are the reduced axis; ⊙ is elementwise, Σ_j sums a row):

    softmax        p = e^(x - m) / Σ_j e^(x - m)          dx = p ⊙ (g - Σ_j g ⊙ p)
    log_softmax    y = x - m - log Σ_j e^(x - m)          dx = g - e^y · Σ_j g
    logsumexp      y = m + log Σ_j e^(x - m)              dx = g · e^(x - y)
    cross-entropy  ℓ = lse(x) - (1-ε) x_t - (ε/V) Σ_j x_j dx = c · (p - (1-ε) onehot(t) - ε/V)
    layer_norm     x̂ = (x - μ)/σ, y = x̂ w + b              dx = (ĝ - mean ĝ - x̂ mean(ĝ x̂)) / σ
    rms_norm       x̂ = x / rms(x), y = x̂ w                 dx = (ĝ - x̂ mean(ĝ x̂)) / rms(x)
                   (both in :mod:`minipeft.ops.fused_norms`, re-exported here)
    attention      S = q kᵀ s, P = softmax(S), O = P v     see :mod:`minipeft.ops.fused_attention`

with m the row max (subtracted so e^(·) never overflows), ĝ = g ⊙ w and c a per-row weight.
float16 inputs to cross-entropy and the norms are computed in float32 (their sums and
statistics lose too much in float16, the reason PyTorch's autocast runs them in float32):
cross-entropy returns a float32 loss; a norm returns its input's dtype.
Every temporary is fresh, so in-place updates (``out=``, ``*=``) on it are safe; the upstream
gradient ``g`` may be a read-only broadcast view and is never written.
"""

from __future__ import annotations

import math
from typing import Any

from ..autograd import Context, Function
from ..backend import erf, xp_of
from . import cuda_kernels as K
from .dispatch import float32_if_half, kernels_for
from .fused_norms import LayerNorm, RMSNorm
from .reduce import stable_max

__all__ = [
    "Softmax",
    "LogSoftmax",
    "LogSumExp",
    "CrossEntropy",
    "LayerNorm",
    "RMSNorm",
    "Gelu",
    "Dropout",
]

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)  # a Python float: never promotes float32 to float64
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_GELU_C = 0.044715


class Softmax(Function):
    """p = softmax(x) along ``axis``;  dx = p ⊙ (g - Σ_j g ⊙ p)."""

    @staticmethod
    def forward(ctx: Context, x: Any, axis: int) -> Any:
        xp = xp_of(x)
        if K.enabled(xp) and axis in (-1, x.ndim - 1) and x.dtype == "float32":
            p = K.softmax_rows(xp.array(x, order="C"))  # a fresh copy, softmaxed in place
        else:
            p = x - x.max(axis=axis, keepdims=True)
            xp.exp(p, out=p)
            p /= p.sum(axis=axis, keepdims=True)
        ctx.axis = axis
        ctx.save_for_backward(p)
        return p

    @staticmethod
    def backward(ctx: Context, g: Any) -> Any:
        (p,) = ctx.saved_tensors
        dx = g * p
        s = dx.sum(axis=ctx.axis, keepdims=True)
        xp_of(dx).subtract(g, s, out=dx)
        dx *= p
        return dx


class LogSoftmax(Function):
    """y = x - logsumexp(x) along ``axis``;  dx = g - softmax(x) · Σ_j g."""

    @staticmethod
    def forward(ctx: Context, x: Any, axis: int) -> Any:
        xp = xp_of(x)
        z = x - x.max(axis=axis, keepdims=True)
        lse = xp.log(xp.exp(z).sum(axis=axis, keepdims=True))
        z -= lse
        ctx.axis = axis
        ctx.save_for_backward(z)
        return z

    @staticmethod
    def backward(ctx: Context, g: Any) -> Any:
        (y,) = ctx.saved_tensors
        xp = xp_of(g)
        dx = xp.exp(y)
        dx *= -g.sum(axis=ctx.axis, keepdims=True)
        dx += g
        return dx


class LogSumExp(Function):
    """y = m + log Σ e^(x - m) over ``axis`` (int or tuple);  dx = g · e^(x - y)."""

    @staticmethod
    def forward(ctx: Context, x: Any, axis: tuple[int, ...], keepdims: bool) -> Any:
        xp = xp_of(x)
        m = stable_max(x, axis)
        y = xp.log(xp.exp(x - m).sum(axis=axis, keepdims=True))
        y += m
        ctx.axis, ctx.keepdims = axis, keepdims
        ctx.save_for_backward(x, y)
        return y if keepdims else y.squeeze(axis)

    @staticmethod
    def backward(ctx: Context, g: Any) -> Any:
        x, y = ctx.saved_tensors
        if not ctx.keepdims:
            g = xp_of(g).expand_dims(g, ctx.axis)
        dx = x - y
        xp_of(dx).exp(dx, out=dx)
        dx *= g
        return dx


class CrossEntropy(Function):
    """Softmax cross-entropy of logits (N, V) against integer targets (N,).

    ℓ_i = valid_i · (lse_i - (1-ε) x_{i,t_i} - (ε/V) Σ_j x_ij), with valid_i = [t_i ≠ ignore].
    ``reduction``: "none" → ℓ (N,), "sum" → Σ ℓ, "mean" → Σ ℓ / Σ valid (NaN if nothing is
    valid, like PyTorch). Backward: dx_i = c_i (p_i - (1-ε) onehot(t_i) - ε/V) with
    c_i = g_i · valid_i (none), g · valid_i (sum) or g · valid_i / Σ valid (mean).
    Only e = e^(x - m) (N, V) and its row sums are kept for backward; the logits are not.
    """

    @staticmethod
    def forward(
        ctx: Context, x: Any, target: Any, ignore_index: int, reduction: str, smoothing: float
    ) -> Any:
        xp = xp_of(x)
        (x,) = float32_if_half(x)
        if K.enabled(xp):
            return _cross_entropy_kernel(ctx, x, target, ignore_index, reduction, smoothing)
        n, v = x.shape
        valid = target != ignore_index
        safe = xp.where(valid, target, 0)  # ignored rows gather column 0, then get weight 0
        rows = xp.arange(n)
        z = x - x.max(axis=1, keepdims=True)
        picked = z[rows, safe]  # (N,) shifted target logits
        zsum = z.sum(axis=1) if smoothing else None
        xp.exp(z, out=z)  # e = e^(x - m); p = e / s is formed only in backward (one pass fewer)
        s = z.sum(axis=1)
        loss = xp.log(s)
        loss -= (1.0 - smoothing) * picked if smoothing else picked
        if smoothing:
            loss -= (smoothing / v) * zsum
        w = valid.astype(x.dtype)
        loss *= w
        count = w.sum()
        ctx.meta = (reduction, smoothing, count)
        ctx.save_for_backward(z, s, safe, w)
        return _reduce(loss, count, reduction)

    @staticmethod
    def backward(ctx: Context, g: Any) -> Any:
        if len(ctx.meta) == 4:  # the kernel's forward
            x, target, lse, w = ctx.saved_tensors
            c = g * w  # (N,) per-row weight, as below
            if ctx.meta[0] == "mean":
                c /= xp_of(w).maximum(ctx.meta[2], 1)
            return K.cross_entropy_backward(x, target, lse, c, ctx.meta[1])
        e, s, safe, w = ctx.saved_tensors
        reduction, smoothing, count = ctx.meta[:3]
        xp = xp_of(e)
        c = g * w  # (N,) per-row weight; g is a scalar for "sum"/"mean"
        if reduction == "mean":
            c /= xp.maximum(count, 1)
        dx = e * (c / s)[:, None]  # c · p
        dx[xp.arange(e.shape[0]), safe] -= (1.0 - smoothing) * c if smoothing else c
        if smoothing:
            dx -= (smoothing / e.shape[1]) * c[:, None]
        return dx


def _cross_entropy_kernel(ctx: Context, x: Any, target: Any, ignore_index: int, reduction: str,
                          smoothing: float) -> Any:  # fmt: skip
    """CrossEntropy's forward on the GPU: one kernel gives per-row losses and lse (N,); the
    backward reads the logits (held by the graph anyway), so no (N, V) array is kept."""
    loss, lse = K.cross_entropy_forward(x, target, ignore_index, smoothing)
    w = (target != ignore_index).astype(x.dtype)
    count = w.sum()
    ctx.meta = (reduction, smoothing, count, "kernel")
    ctx.save_for_backward(x, target, lse, w)
    return _reduce(loss, count, reduction)


def _reduce(loss: Any, count: Any, reduction: str) -> Any:
    """Per-row losses (N,) reduced: "none", "sum", or "mean" over the ``count`` valid rows."""
    if reduction == "none":
        return loss
    total = loss.sum()
    if reduction == "sum":
        return total
    xp = xp_of(loss)
    # 0/0 → NaN like PyTorch, without a host sync or a NumPy warning
    return xp.where(count > 0, total / xp.maximum(count, 1), xp.nan).astype(loss.dtype)


class Gelu(Function):
    """GELU.  "none": y = x Φ(x) = ½x(1 + erf(x/√2)), dy/dx = Φ(x) + x φ(x).

    "tanh" (GPT-2's gelu_new): u = √(2/π)(x + 0.044715x³), t = tanh u, y = ½x(1 + t),
    dy/dx = ½(1 + t) + ½x(1 - t²) √(2/π)(1 + 3·0.044715x²).
    """

    @staticmethod
    def forward(ctx: Context, x: Any, approximate: str) -> Any:
        xp = xp_of(x)
        kernel = kernels_for(xp) if approximate == "tanh" else None
        if kernel:  # one kernel (CPU: blocked passes); the backward recomputes from x
            ctx.approximate, ctx.kernel = "kernel", kernel
            ctx.save_for_backward(x)
            return kernel.gelu_tanh(x).reshape(x.shape)
        if approximate == "tanh":
            t = x * x
            t *= _GELU_C
            t += 1.0
            t *= x
            t *= _SQRT_2_OVER_PI
            xp.tanh(t, out=t)
            cdf = t + 1.0
            cdf *= 0.5  # ½(1 + t)
        else:
            t = None
            cdf = erf((x * _INV_SQRT_2).reshape(-1)).reshape(x.shape)  # 1-D: erf needs an array
            cdf += 1.0
            cdf *= 0.5  # Φ(x)
        ctx.approximate = approximate
        ctx.save_for_backward(x, cdf, t)
        return x * cdf

    @staticmethod
    def backward(ctx: Context, g: Any) -> Any:
        if ctx.approximate == "kernel":
            return ctx.kernel.gelu_tanh_backward(ctx.saved_tensors[0], g)
        x, cdf, t = ctx.saved_tensors
        xp = xp_of(x)
        if ctx.approximate == "tanh":
            d = x * x
            d *= 3 * _GELU_C
            d += 1.0
            d *= 1.0 - t * t
            d *= x
            d *= 0.5 * _SQRT_2_OVER_PI
        else:
            d = x * x
            d *= -0.5
            xp.exp(d, out=d)
            d *= x
            d *= _INV_SQRT_2PI  # x φ(x)
        d += cdf
        d *= g
        return d


class Dropout(Function):
    """y = x ⊙ keep / (1 - p) with keep ~ Bernoulli(1 - p) (inverted dropout);  dx = g ⊙ keep/(1-p).

    ``keep`` is a bool array drawn by the caller (so the RNG stream is the caller's choice).
    """

    @staticmethod
    def forward(ctx: Context, x: Any, keep: Any, p: float) -> Any:
        ctx.scale = 1.0 / (1.0 - p)
        ctx.save_for_backward(keep)
        y = x * keep
        y *= ctx.scale
        return y

    @staticmethod
    def backward(ctx: Context, g: Any) -> Any:
        (keep,) = ctx.saved_tensors
        dx = g * keep
        dx *= ctx.scale
        return dx
