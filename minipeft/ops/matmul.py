"""Matrix products: batched, broadcasting ``MatMul`` and the fused affine map ``Linear``.

``Linear`` is the hot path of every Transformer and the seam PEFT plugs into, so it is one
Function with a hand-written backward: with a frozen weight (the base layer under LoRA) it
computes only the input gradient — **frozen means free**.
"""

from __future__ import annotations

from typing import Any

from ..autograd import Context, Function, unbroadcast
from ..backend import xp_of

__all__ = ["MatMul", "Linear"]


def _t(x: Any) -> Any:
    """Swap the last two axes (the matrix transpose of a batch of matrices)."""
    return x.swapaxes(-1, -2)


class MatMul(Function):
    """Z = A @ B.  A (..., n, k), B (..., k, m) → Z (..., n, m); batch axes broadcast.

    dA = dZ @ Bᵀ and dB = Aᵀ @ dZ, each summed over the batch axes its input was broadcast
    along. 1-D operands are promoted by the Tensor wrapper before they reach this Function.
    """

    @staticmethod
    def forward(ctx: Context, a: Any, b: Any) -> Any:
        ctx.save_for_backward(a, b)
        return xp_of(a).matmul(a, b)

    @staticmethod
    def backward(ctx: Context, g: Any) -> tuple[Any, Any]:
        a, b = ctx.saved_tensors
        na, nb = ctx.needs_input_grad
        xp = xp_of(g)
        ga = unbroadcast(xp.matmul(g, _t(b)), a.shape) if na else None
        gb = unbroadcast(xp.matmul(_t(a), g), b.shape) if nb else None
        return ga, gb


class Linear(Function):
    """y = x Wᵀ + b.  x (..., in), W (out, in) as PyTorch stores it, b (out,) → y (..., out).

    The leading axes are flattened to one so each product is a single 2-D GEMM:
    dx = dy W,  dW = dyᵀ x,  db = Σ dy.
    """

    @staticmethod
    def forward(ctx: Context, x: Any, weight: Any, bias: Any = None) -> Any:
        ctx.save_for_backward(x, weight)
        y = (x.reshape(-1, x.shape[-1]) @ weight.T).reshape(*x.shape[:-1], weight.shape[0])
        if bias is not None:
            y += bias
        return y

    @staticmethod
    def backward(ctx: Context, g: Any) -> tuple[Any, ...]:
        x, w = ctx.saved_tensors
        needs = ctx.needs_input_grad
        g2 = g.reshape(-1, g.shape[-1])  # (N, out) with N = product of leading axes
        gx = (g2 @ w).reshape(x.shape) if needs[0] else None
        gw = g2.T @ x.reshape(-1, x.shape[-1]) if needs[1] else None  # (out, in)
        if len(needs) == 2:
            return gx, gw
        gb = g2.sum(axis=0) if needs[2] else None
        return gx, gw, gb
