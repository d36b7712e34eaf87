"""The frozen 4-bit linear map of QLoRA (Dettmers et al., 2023, eq. 5): y = x Ŵᵀ + b.

    Ŵ = dequantize(packed, state)   (out, in), in the input's dtype
    y = x Ŵᵀ + b                    x (..., in) → y (..., out)
    dx = dy Ŵ,   db = Σ dy          (no dŴ: a 4-bit weight never trains)

Ŵ exists only inside ``forward`` and, again, inside ``backward``; between the two the op keeps
just the 4-bit bytes and their quantization state, which the layer holds anyway — so a model's
float weights are never all alive at once, which is the point of QLoRA. Re-dequantizing costs one
more pass over the weight per step; keeping Ŵ would cost 8× the 4-bit weight's memory per layer.

The dequantizer is passed in (``dequantize(packed, state) -> array``), so this file stays below
``minipeft.quant`` in the layer order and serves every packed format with that signature:
bitsandbytes' NF4/FP4 (``Linear4bit``) and llama.cpp's Q8_0/Q4_0/Q4_1 blocks (``LinearGGUF``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..autograd import Context, Function

__all__ = ["Linear4bit"]


def _weight(packed: Any, state: Any, dequantize: Callable[[Any, Any], Any], dtype: Any) -> Any:
    """Ŵ (out, in) in ``dtype`` (the compute dtype: the input's)."""
    return dequantize(packed, state).astype(dtype, copy=False)


class Linear4bit(Function):
    """y = x Ŵᵀ (+ b) with Ŵ dequantized from ``packed`` on the fly (see the module docstring).

    Inputs: x (..., in), packed (the 4-bit bytes, never requiring grad), then bias (out,) when
    the layer has one. Parameters: ``state`` (its QuantState) and ``dequantize``.
    """

    @staticmethod
    def forward(
        ctx: Context, x: Any, packed: Any, *bias: Any, state: Any, dequantize: Callable
    ) -> Any:
        if ctx.needs_input_grad[1]:
            raise TypeError(
                "a packed (4-bit or GGUF-block) weight cannot require grad (it is frozen; train "
                "an adapter on top of it, e.g. LoRA: that is QLoRA)"
            )
        w = _weight(packed, state, dequantize, x.dtype)  # (out, in), freed on return
        y = x.reshape(-1, x.shape[-1]) @ w.T  # (N, out) with N = product of leading axes
        y = y.reshape(*x.shape[:-1], w.shape[0])
        if bias:
            y += bias[0].astype(y.dtype, copy=False)
        # Only what dx needs: the 4-bit bytes (already held by the layer), not x and not Ŵ.
        ctx.save_for_backward(packed)
        ctx.state, ctx.dequantize, ctx.x_shape = state, dequantize, x.shape
        return y

    @staticmethod
    def backward(ctx: Context, g: Any) -> tuple[Any, ...]:
        needs = ctx.needs_input_grad
        g2 = g.reshape(-1, g.shape[-1])  # (N, out)
        gx = None
        if needs[0]:
            (packed,) = ctx.saved_tensors
            w = _weight(packed, ctx.state, ctx.dequantize, g.dtype)  # dequantized again
            gx = (g2 @ w).reshape(ctx.x_shape)
        if len(needs) == 2:
            return gx, None
        return gx, None, (g2.sum(axis=0) if needs[2] else None)
