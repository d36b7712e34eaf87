"""LoRA's forward as one Function: y = x Wᵀ + b + s · (x Aᵀ) Bᵀ, with a frozen W.

    x (N, d_in), W (d_out, d_in), b (d_out,), A (r, d_in), B (d_out, r), s = α/r  → y (N, d_out)

The composite (base Linear, then ``lora_B(lora_A(x)) * s``, then an add) spends most of its
time outside the base GEMM: a GEMM with inner size r (BLAS runs those far below peak), then two
passes over the (N, d_out) output (scale, add). This op picks the cheaper of two exact forms:

- **merged** (many rows, N·(d_in + d_out) > d_in·d_out): W' = W + s·B A, then one GEMM
  y = x W'ᵀ + b. Forming W' costs (2r + 1)·d_in·d_out flops, less than the low-rank path's
  2r·N·(d_in + d_out) plus its passes over (N, d_out) — the case of a training batch.
- **low-rank** (few rows: generation, small batches): y = x Wᵀ + b, then y += (s·x Aᵀ) Bᵀ,
  with the scale on the (N, r) factor, not on the (N, d_out) output.

Backward (frozen W and b; u = x Aᵀ (N, r), v = g B (N, r)):
    dx = g W' = g W + s·v A,   dA = s·vᵀ x,   dB = s·gᵀ u.
The merged form recomputes W' instead of keeping it (a weight-sized array per layer would stay
alive until backward); it saves x, W, A and B only, all held by the graph or the model anyway.
A packed (4-bit or GGUF-block) base — QLoRA — passes its bytes as the weight with ``state`` and
``dequantize``: Ŵ = dequantize(packed, state) is formed in forward and again in backward, as
the packed linear op does, so only the packed bytes stay alive between the two.

Both forms agree with the composite to float rounding (tests, float64). ``use_fused(False)``
sends LoRA layers back to the composite (the reference; benchmarks measure both).
"""

from __future__ import annotations

from typing import Any

from ..autograd import Context, Function
from .switch import Switch

__all__ = ["LoraLinear", "use_merged", "use_fused"]

use_fused = Switch()  # LoRA layers take this Function where it applies; off: the composite


def use_merged(n_rows: int, d_in: int, d_out: int) -> bool:
    """Whether forming W' = W + s·B A is cheaper than the low-rank path for ``n_rows`` rows."""
    return n_rows * (d_in + d_out) > d_in * d_out


def _merged_weight(w: Any, a: Any, b: Any, scale: float) -> Any:
    """W' = W + s · B A  (d_out, d_in), a fresh array."""
    wm = b @ a
    wm *= scale
    wm += w
    return wm


def _float_weight(ctx: Context, w: Any) -> Any:
    """W itself, or Ŵ = dequantize(packed, state) in the input's dtype for a packed base."""
    if ctx.unpack is None:
        return w
    dequantize, state, dtype = ctx.unpack
    return dequantize(w, state).astype(dtype, copy=False)


class LoraLinear(Function):
    """y = x Wᵀ + b + s·(x Aᵀ) Bᵀ (see the module docstring).

    Inputs: x (..., d_in), weight (d_out, d_in), lora_a (r, d_in), lora_b (d_out, r), then bias
    (d_out,) when the base layer has one. Parameters: ``scale`` (s); for a packed base,
    ``dequantize`` and ``state`` (then ``weight`` is the packed bytes). A float W and b may
    require grad (then dW = gᵀ x and db = Σ g are computed too), though LoRA freezes them.
    """

    @staticmethod
    def forward(ctx: Context, x: Any, w: Any, a: Any, b: Any, *bias: Any, scale: float,
                dequantize: Any = None, state: Any = None) -> Any:  # fmt: skip
        ctx.unpack = None if dequantize is None else (dequantize, state, x.dtype)
        x2 = x.reshape(-1, x.shape[-1])  # (N, d_in)
        ctx.save_for_backward(x2, w, a, b)  # a packed base: its bytes, not Ŵ
        w = _float_weight(ctx, w)
        merged = use_merged(x2.shape[0], w.shape[1], w.shape[0])
        if merged:
            y = x2 @ _merged_weight(w, a, b, scale).T
        else:
            y = x2 @ w.T
            u = x2 @ a.T  # (N, r)
            u *= scale
            y += u @ b.T
        if bias:
            y += bias[0]
        ctx.scale, ctx.merged, ctx.x_shape = scale, merged, x.shape
        return y.reshape(*x.shape[:-1], w.shape[0])

    @staticmethod
    def backward(ctx: Context, g: Any) -> tuple[Any, ...]:
        x2, w, a, b = ctx.saved_tensors
        w = _float_weight(ctx, w)  # a packed base: dequantized again
        s = ctx.scale
        needs = ctx.needs_input_grad
        g2 = g.reshape(-1, g.shape[-1])  # (N, d_out)
        v = g2 @ b if (needs[0] or needs[2]) else None  # (N, r)
        gx = ga = gb = gw = None
        if needs[0]:
            if ctx.merged:
                gx = g2 @ _merged_weight(w, a, b, s)
            else:
                gx = g2 @ w
                gx += (v * s) @ a
            gx = gx.reshape(ctx.x_shape)
        if needs[1]:
            gw = g2.T @ x2
        if needs[2]:
            ga = (v.T @ x2) * s  # (r, d_in)
        if needs[3]:
            gb = g2.T @ (x2 @ a.T)  # (d_out, r)
            gb *= s
        if len(needs) == 4:
            return gx, gw, ga, gb
        return gx, gw, ga, gb, (g2.sum(axis=0) if needs[4] else None)
