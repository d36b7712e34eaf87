"""The frozen linear map on llama.cpp blocks (Q8_0 / Q4_0 / Q4_1): y = x Ŵᵀ + b.

    Ŵ = dequantize(raw, state)      (out, in), in the input's dtype
    y = x Ŵᵀ + b                    x (..., in) → y (..., out)
    dx = dy Ŵ,   db = Σ dy          (no dŴ: the packed blocks never train)

As in :mod:`minipeft.ops.linear4bit`, Ŵ exists only inside ``forward`` and again inside
``backward``; between the two the op keeps only the raw blocks the layer holds anyway. The
dequantizer is passed in (``dequantize(raw, state) -> array``, state = (type name, shape)) so
this file stays below ``minipeft.quant`` in the layer order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..autograd import Context, Function

__all__ = ["LinearGGUF"]


class LinearGGUF(Function):
    """y = x Ŵᵀ (+ b), Ŵ dequantized from the GGUF blocks ``raw`` on the fly.

    Inputs: x (..., in), raw (uint8 blocks, never requiring grad), then bias (out,) when the
    layer has one. Parameters: ``state`` and ``dequantize``.
    """

    @staticmethod
    def forward(
        ctx: Context, x: Any, raw: Any, *bias: Any, state: Any, dequantize: Callable
    ) -> Any:
        if ctx.needs_input_grad[1]:
            raise TypeError(
                "LinearGGUF: the GGUF-quantized weight cannot require grad (it is frozen; "
                "train an adapter on top of it, e.g. LoRA)"
            )
        w = dequantize(raw, state).astype(x.dtype, copy=False)  # (out, in), freed on return
        y = x.reshape(-1, x.shape[-1]) @ w.T  # (N, out), N = product of the leading axes
        y = y.reshape(*x.shape[:-1], w.shape[0])
        if bias:
            y += bias[0].astype(y.dtype, copy=False)
        ctx.save_for_backward(raw)  # only what dx needs: the blocks, not x and not Ŵ
        ctx.state, ctx.dequantize, ctx.x_shape = state, dequantize, x.shape
        return y

    @staticmethod
    def backward(ctx: Context, g: Any) -> tuple[Any, ...]:
        needs = ctx.needs_input_grad
        g2 = g.reshape(-1, g.shape[-1])  # (N, out)
        gx = None
        if needs[0]:
            (raw,) = ctx.saved_tensors
            w = ctx.dequantize(raw, ctx.state).astype(g.dtype, copy=False)  # dequantized again
            gx = (g2 @ w).reshape(ctx.x_shape)
        if len(needs) == 2:
            return gx, None
        return gx, None, (g2.sum(axis=0) if needs[2] else None)
