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
    attention      S = q kᵀ s, P = softmax(S), O = P v     see :class:`Attention`

with m the row max (subtracted so e^(·) never overflows), ĝ = g ⊙ w and c a per-row weight.
Every temporary is fresh, so in-place updates (``out=``, ``*=``) on it are safe; the upstream
gradient ``g`` may be a read-only broadcast view and is never written.
"""

from __future__ import annotations

import math
from typing import Any

from ..autograd import Context, Function, unbroadcast
from ..backend import erf, xp_of

__all__ = [
    "Softmax",
    "LogSoftmax",
    "LogSumExp",
    "CrossEntropy",
    "LayerNorm",
    "RMSNorm",
    "Gelu",
    "Dropout",
    "Attention",
    "causal_allowed",
]

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)  # a Python float: never promotes float32 to float64
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_GELU_C = 0.044715


def _stable_max(x: Any, axis: int) -> Any:
    """Row max with ±inf replaced by 0, so x - m is never inf - inf (= NaN) for a -inf row."""
    xp = xp_of(x)
    m = x.max(axis=axis, keepdims=True)
    return xp.where(xp.isfinite(m), m, 0)


class Softmax(Function):
    """p = softmax(x) along ``axis``;  dx = p ⊙ (g - Σ_j g ⊙ p)."""

    @staticmethod
    def forward(ctx: Context, x: Any, axis: int) -> Any:
        xp = xp_of(x)
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
        m = _stable_max(x, axis)
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
        if reduction == "none":
            return loss
        total = loss.sum()
        if reduction == "sum":
            return total
        # 0/0 → NaN like PyTorch, without a host sync or a NumPy warning
        return xp.where(count > 0, total / xp.maximum(count, 1), xp.nan).astype(x.dtype)

    @staticmethod
    def backward(ctx: Context, g: Any) -> Any:
        e, s, safe, w = ctx.saved_tensors
        reduction, smoothing, count = ctx.meta
        xp = xp_of(e)
        c = g * w  # (N,) per-row weight; g is a scalar for "sum"/"mean"
        if reduction == "mean":
            c /= xp.maximum(count, 1)
        dx = e * (c / s)[:, None]  # c · p
        dx[xp.arange(e.shape[0]), safe] -= (1.0 - smoothing) * c if smoothing else c
        if smoothing:
            dx -= (smoothing / e.shape[1]) * c[:, None]
        return dx


class LayerNorm(Function):
    """y = x̂ · w + b with x̂ = (x - μ) / √(σ² + eps) over the last axis of x (M, K).

    Backward, with ĝ = g ⊙ w and means over the K axis:
    dx = (ĝ - mean(ĝ) - x̂ · mean(ĝ ⊙ x̂)) / √(σ² + eps),  dw = Σ_rows g ⊙ x̂,  db = Σ_rows g.
    mean(ĝ) = (g @ w) / K and mean(ĝ ⊙ x̂) = ((g ⊙ x̂) @ w) / K are matrix-vector products.
    Inputs: x (M, K), then weight (K,) and bias (K,) when ``has_weight`` / ``has_bias``.
    """

    @staticmethod
    def forward(ctx: Context, x: Any, *wb: Any, eps: float, has_weight: bool) -> Any:
        xp = xp_of(x)
        xhat = x - x.mean(axis=-1, keepdims=True)
        var = xp.square(xhat).mean(axis=-1, keepdims=True)
        rstd = 1.0 / xp.sqrt(var + eps)  # (M, 1)
        xhat *= rstd
        w = wb[0] if has_weight else None
        b = wb[-1] if len(wb) > int(has_weight) else None
        y = xhat * w if w is not None else xhat.copy()
        if b is not None:
            y += b
        ctx.save_for_backward(xhat, rstd, w)
        return y

    @staticmethod
    def backward(ctx: Context, g: Any) -> tuple[Any, ...]:
        xhat, rstd, w = ctx.saved_tensors
        needs = ctx.needs_input_grad
        k = xhat.shape[-1]
        gx = g * xhat if (needs[0] or (w is not None and needs[1])) else None
        grads: list[Any] = [None]
        if w is not None:
            grads.append(gx.sum(axis=0) if needs[1] else None)
        if len(needs) > len(grads):
            grads.append(g.sum(axis=0) if needs[-1] else None)
        if needs[0]:
            if w is None:
                a, c = g.mean(axis=-1), gx.mean(axis=-1)
                dx = g - a[:, None]
            else:
                a, c = (g @ w) / k, (gx @ w) / k
                dx = g * w
                dx -= a[:, None]
            xp_of(g).multiply(xhat, c[:, None], out=gx)
            dx -= gx
            dx *= rstd
            grads[0] = dx
        return tuple(grads)


class RMSNorm(Function):
    """y = x̂ · w with x̂ = x / √(mean(x²) + eps) over the last axis of x (M, K) (LLaMA).

    Backward, with ĝ = g ⊙ w:  dx = (ĝ - x̂ · mean(ĝ ⊙ x̂)) / rms,  dw = Σ_rows g ⊙ x̂.
    """

    @staticmethod
    def forward(ctx: Context, x: Any, *w: Any, eps: float) -> Any:
        xp = xp_of(x)
        rrms = 1.0 / xp.sqrt(xp.square(x).mean(axis=-1, keepdims=True) + eps)  # (M, 1)
        xhat = x * rrms
        weight = w[0] if w else None
        ctx.save_for_backward(xhat, rrms, weight)
        return xhat * weight if weight is not None else xhat

    @staticmethod
    def backward(ctx: Context, g: Any) -> tuple[Any, ...]:
        xhat, rrms, w = ctx.saved_tensors
        needs = ctx.needs_input_grad
        gx = g * xhat
        dw = gx.sum(axis=0) if (w is not None and needs[1]) else None
        dx = None
        if needs[0]:
            k = xhat.shape[-1]
            c = (gx @ w) / k if w is not None else gx.mean(axis=-1)
            dx = g * w if w is not None else g.copy()
            xp_of(g).multiply(xhat, c[:, None], out=gx)
            dx -= gx
            dx *= rrms
        return (dx, dw) if w is not None else dx


class Gelu(Function):
    """GELU.  "none": y = x Φ(x) = ½x(1 + erf(x/√2)), dy/dx = Φ(x) + x φ(x).

    "tanh" (GPT-2's gelu_new): u = √(2/π)(x + 0.044715x³), t = tanh u, y = ½x(1 + t),
    dy/dx = ½(1 + t) + ½x(1 - t²) √(2/π)(1 + 3·0.044715x²).
    """

    @staticmethod
    def forward(ctx: Context, x: Any, approximate: str) -> Any:
        xp = xp_of(x)
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


def causal_allowed(tq: int, tk: int, xp: Any) -> Any:
    """Bool (Tq, Tk): query i may attend key j iff j ≤ i + (Tk - Tq) (aligned to the last keys)."""
    return xp.arange(tk)[None, :] <= xp.arange(tq)[:, None] + (tk - tq)


class Attention(Function):
    """O = softmax(q kᵀ · scale + mask) v, with grouped-query heads, in one Function.

    Shapes: q (*, H, Tq, D), k and v (*, Hkv, Tk, D) with H = G · Hkv; query head h reads kv
    head h // G (PyTorch's ``repeat_interleave`` order). Instead of repeating k and v, q is
    viewed as (*, Hkv, G·Tq, D), so each kv head meets its G query heads in one GEMM and the
    backward's dK, dV are summed over the group by the same GEMM.

    ``blocked`` is a bool array broadcastable to (*, Hkv, G, Tq, Tk) (True = may NOT attend) or
    None; an additive float mask is an optional 4th input of that shape family. Blocked scores
    become -inf; a row with no allowed key gives P = 0 (so O = 0 and no gradient), not NaN.
    ``keep`` is an optional bool dropout mask (*, Hkv, G·Tq, Tk) drawn by the caller.

    Backward (per row i; FlashAttention's identity Σ_j dP_ij P_ij = dO_i · O_i):
        dV = Pᵀ dO,  dP = dO Vᵀ,  dS = P ⊙ (dP - dO·O),  dQ = dS K · scale,  dK = dSᵀ (Q · scale).
    With dropout (keep mask k, P̃ = P ⊙ k/(1-p), O = P̃ V): dV = P̃ᵀ dO, dP = (dO Vᵀ) ⊙ k/(1-p).
    """

    @staticmethod
    def forward(
        ctx: Context,
        q: Any,
        k: Any,
        v: Any,
        *mask: Any,
        blocked: Any,
        scale: float,
        mask_shape5: tuple[int, ...] | None,
        keep: Any = None,
        dropout_p: float = 0.0,
    ) -> Any:
        xp = xp_of(q)
        *lead, h, tq, d = q.shape
        hkv, tk = k.shape[-3], k.shape[-2]
        grp = h // hkv
        qs = (q * scale).reshape(*lead, hkv, grp * tq, d)  # fresh, so the reshape is a view
        s = qs @ k.swapaxes(-1, -2)  # (*, Hkv, G·Tq, Tk)
        s5 = s.reshape(*lead, hkv, grp, tq, tk)  # a view for masking per (head, query)
        if mask:
            s5 += mask[0].reshape(mask_shape5)
        if blocked is not None:
            xp.copyto(s5, -xp.inf, where=blocked)
        s -= _stable_max(s, -1)
        xp.exp(s, out=s)
        total = s.sum(axis=-1, keepdims=True)
        total[total == 0] = 1  # a fully blocked row: all zeros stay zeros
        s /= total  # s is now P
        pd = s
        if keep is not None:  # bool (*, Hkv, G·Tq, Tk), drawn by the caller
            pd = s * keep
            pd *= 1.0 / (1.0 - dropout_p)
        o = pd @ v  # (*, Hkv, G·Tq, D)
        ctx.meta = (scale, dropout_p, q.shape, mask[0].shape if mask else None)
        needs = ctx.needs_input_grad  # keep only what the wanted gradients read
        ctx.save_for_backward(qs if needs[1] else None, k, v, s, o, keep)
        return o.reshape(*lead, h, tq, v.shape[-1])

    @staticmethod
    def backward(ctx: Context, g: Any) -> tuple[Any, ...]:
        qs, k, v, p, o, keep = ctx.saved_tensors
        scale, dropout_p, qshape, mshape = ctx.meta
        needs = ctx.needs_input_grad
        do = g.reshape(o.shape)
        dq = dk = dv = dmask = None
        if needs[2]:
            pd = p
            if keep is not None:
                pd = p * keep
                pd *= 1.0 / (1.0 - dropout_p)
            dv = pd.swapaxes(-1, -2) @ do
        if needs[0] or needs[1] or (len(needs) > 3 and needs[3]):
            ds = do @ v.swapaxes(-1, -2)  # dP̃, then dP, then dS in place
            if keep is not None:
                ds *= keep
                ds *= 1.0 / (1.0 - dropout_p)
            ds -= (do * o).sum(axis=-1, keepdims=True)  # Σ_j dP_ij P_ij = dO_i · O_i
            ds *= p
            if needs[0]:
                dq = ds @ k
                dq *= scale
                dq = dq.reshape(qshape)
            if needs[1]:
                dk = ds.swapaxes(-1, -2) @ qs
            if mshape is not None and needs[3]:
                *lead, h, tq, _ = qshape
                dmask = unbroadcast(ds.reshape(*lead, h, tq, -1), mshape)
        if len(needs) > 3:
            return dq, dk, dv, dmask
        return dq, dk, dv
