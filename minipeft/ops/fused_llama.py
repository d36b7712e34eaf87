"""LLaMA's fused ops: the SwiGLU product and the rotary embedding, each one Function.

    silu_mul   y = silu(a) ⊙ b = a σ(a) b       da = g b σ(a)(1 + a(1 - σ(a))),  db = g a σ(a)
    rope       y = x ⊙ cos + rotate_half(x) ⊙ sin       dx = g ⊙ cos + rotate_halfᵀ(g ⊙ sin)

with rotate_half(x) = cat(-x₂, x₁) over the halves of the last axis, so its transpose is
rotate_halfᵀ(u) = cat(u₂, -u₁). The composites they replace (``silu(a) * b`` and
:func:`minipeft.models.rope.rotate_half`) are their test references. On CuPy arrays both run
one kernel each way (:mod:`minipeft.ops.cuda_kernels`).
"""

from __future__ import annotations

from typing import Any

from ..autograd import Context, Function
from ..backend import xp_of
from . import cuda_kernels as K
from .elementwise import _sigmoid

__all__ = ["SiluMul", "Rope"]


class SiluMul(Function):
    """SwiGLU's y = silu(a) ⊙ b for a (gate) and b (up) of one shape; saves a, b (held by the
    graph anyway) and σ(a)."""

    @staticmethod
    def forward(ctx: Context, a: Any, b: Any) -> Any:
        if K.enabled(xp_of(a)):
            ctx.save_for_backward(a, b, None)
            return K.silu_mul(a, b)
        s = _sigmoid(a)
        ctx.save_for_backward(a, b, s)
        y = a * s
        y *= b
        return y

    @staticmethod
    def backward(ctx: Context, g: Any) -> tuple[Any, Any]:
        a, b, s = ctx.saved_tensors
        needs = ctx.needs_input_grad
        if s is None:  # the kernel's forward: its backward recomputes σ(a)
            return K.silu_mul_backward(a, b, g)
        sa = a * s  # silu(a)
        db = g * sa if needs[1] else None
        da = None
        if needs[0]:  # g b σ(a)(1 + a(1 - σ(a))) = g b (σ + silu - silu σ)
            da = sa * (1 - s)
            da += s
            da *= b
            da *= g
        return da, db


class Rope(Function):
    """The rotary embedding of x (B, H, T, D) by cos, sin (B or 1, T, D), broadcast over heads.

    Halves: y₁ = x₁ cos₁ - x₂ sin₁, y₂ = x₂ cos₂ + x₁ sin₂; backward dx₁ = g₁ cos₁ + g₂ sin₂,
    dx₂ = g₂ cos₂ - g₁ sin₁. cos and sin are constants (positions carry no gradient).
    """

    @staticmethod
    def forward(ctx: Context, x: Any, cos: Any, sin: Any) -> Any:
        ctx.save_for_backward(cos, sin)
        if K.enabled(xp_of(x)) and x.ndim == 4:
            return K.rope(x, cos, sin)
        return _rotate(x, cos[:, None], sin[:, None], 1.0)

    @staticmethod
    def backward(ctx: Context, g: Any) -> tuple[Any, None, None]:
        cos, sin = ctx.saved_tensors
        if K.enabled(xp_of(g)) and g.ndim == 4:
            return K.rope(g, cos, sin, inverse=True), None, None
        return _rotate(g, cos[:, None], sin[:, None], -1.0), None, None


def _rotate(x: Any, cos: Any, sin: Any, sign: float) -> Any:
    """x ⊙ cos + sign · rotate_half(x) ⊙ sin, written half by half (no concatenation)."""
    h = x.shape[-1] // 2
    y = x * cos
    t = x[..., h:] * sin[..., :h]
    if sign > 0:
        y[..., :h] -= t
    else:
        y[..., :h] += t
    t = x[..., :h] * sin[..., h:]
    if sign > 0:
        y[..., h:] += t
    else:
        y[..., h:] -= t
    return y
