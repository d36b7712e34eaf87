"""The fused norms: LayerNorm and RMSNorm, one Function each, over the last axis of x (M, K).

    layer_norm  x̂ = (x - μ)/σ, y = x̂ w + b    dx = (ĝ - mean ĝ - x̂ mean(ĝ x̂)) / σ
    rms_norm    x̂ = x / rms(x), y = x̂ w       dx = (ĝ - x̂ mean(ĝ x̂)) / rms(x)

with ĝ = g ⊙ w. float16 inputs are computed in float32 (their statistics lose too much in
float16) and the result returns in the input's dtype. With the kernels on (CUDA, or the CPU's
blocked passes), the forward keeps μ and 1/σ per row instead of x̂, and the backward recomputes
x̂ from x; the array code below is the reference (``use_kernels(False)``).
"""

from __future__ import annotations

from typing import Any

from ..autograd import Context, Function
from ..backend import xp_of
from .dispatch import float32_if_half, kernels_for

__all__ = ["LayerNorm", "RMSNorm"]


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
        dtype = x.dtype
        x, *wb = float32_if_half(x, *wb)
        w = wb[0] if has_weight else None
        b = wb[-1] if len(wb) > int(has_weight) else None
        ctx.kernel = kernels_for(xp)
        if ctx.kernel:  # saves mean and 1/σ per row, not x̂ (the backward recomputes it)
            y, mu, rstd = ctx.kernel.layer_norm_forward(x, w, b, eps)
            ctx.save_for_backward(x, mu, rstd, w)
            return y.astype(dtype, copy=False)
        xhat = x - x.mean(axis=-1, keepdims=True)
        var = xp.square(xhat).mean(axis=-1, keepdims=True)
        rstd = 1.0 / xp.sqrt(var + eps)  # (M, 1)
        xhat *= rstd
        y = xhat * w if w is not None else xhat.copy()
        if b is not None:
            y += b
        ctx.save_for_backward(xhat, rstd, w)
        return y.astype(dtype, copy=False)

    @staticmethod
    def backward(ctx: Context, g: Any) -> tuple[Any, ...]:
        (g,) = float32_if_half(g)
        if ctx.kernel:
            return _layer_norm_kernel_backward(ctx, g)
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


def _layer_norm_kernel_backward(ctx: Context, g: Any) -> tuple[Any, ...]:
    """dx and dw = Σ_rows g ⊙ x̂ from the kernels, db = Σ_rows g, each only when wanted (a
    frozen norm, as in PEFT, needs only dx)."""
    x, mu, rstd, w = ctx.saved_tensors
    needs = ctx.needs_input_grad
    dx, dw = ctx.kernel.layer_norm_backward(x, g, w, mu, rstd, needs[0], w is not None and needs[1])
    grads: list[Any] = [dx] + ([dw] if w is not None else [])
    if len(needs) > len(grads):
        grads.append(g.sum(axis=0) if needs[-1] else None)
    return tuple(grads)


class RMSNorm(Function):
    """y = x̂ · w with x̂ = x / √(mean(x²) + eps) over the last axis of x (M, K) (LLaMA).

    Backward, with ĝ = g ⊙ w:  dx = (ĝ - x̂ · mean(ĝ ⊙ x̂)) / rms,  dw = Σ_rows g ⊙ x̂.
    """

    @staticmethod
    def forward(ctx: Context, x: Any, *w: Any, eps: float) -> Any:
        xp = xp_of(x)
        dtype = x.dtype
        x, *w = float32_if_half(x, *w)
        ctx.kernel = kernels_for(xp)
        if ctx.kernel:  # saves 1/rms per row, not x̂
            y, rrms = ctx.kernel.rms_norm_forward(x, w[0] if w else None, eps)
            ctx.save_for_backward(x, rrms, w[0] if w else None)
            return y.astype(dtype, copy=False)
        rrms = 1.0 / xp.sqrt(xp.square(x).mean(axis=-1, keepdims=True) + eps)  # (M, 1)
        xhat = x * rrms
        weight = w[0] if w else None
        ctx.save_for_backward(xhat, rrms, weight)
        y = xhat * weight if weight is not None else xhat
        return y.astype(dtype, copy=False)

    @staticmethod
    def backward(ctx: Context, g: Any) -> tuple[Any, ...]:
        (g,) = float32_if_half(g)
        needs = ctx.needs_input_grad
        if ctx.kernel:
            x, rrms, w = ctx.saved_tensors
            want_dw = w is not None and needs[1]
            dx, dw = ctx.kernel.rms_norm_backward(x, g, w, rrms, needs[0], want_dw)
            return dx if w is None else (dx, dw)
        xhat, rrms, w = ctx.saved_tensors
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
