"""Elementwise primitives: arithmetic, unary math, activations, comparisons-with-gradients.

Binary ops broadcast like NumPy; their backward reduces each gradient to its input's shape with
the shared :func:`~minipeft.autograd.unbroadcast`. Each backward only computes the gradients that
``ctx.needs_input_grad`` asks for.
"""

from __future__ import annotations

from typing import Any

from ..autograd import Context, Function, unbroadcast
from ..backend import xp_of

__all__ = [
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Neg",
    "Pow",
    "PowScalar",
    "Exp",
    "Log",
    "Sqrt",
    "Tanh",
    "Sigmoid",
    "Relu",
    "Silu",
    "Abs",
    "Maximum",
    "Minimum",
    "Where",
    "Clip",
    "Cast",
]


class Add(Function):
    """z = a + b (broadcasting)."""

    @staticmethod
    def forward(ctx: Context, a: Any, b: Any) -> Any:
        ctx.shapes = (a.shape, b.shape)
        return a + b

    @staticmethod
    def backward(ctx: Context, g: Any) -> tuple[Any, Any]:
        sa, sb = ctx.shapes
        na, nb = ctx.needs_input_grad
        return (unbroadcast(g, sa) if na else None, unbroadcast(g, sb) if nb else None)


class Sub(Function):
    """z = a - b."""

    @staticmethod
    def forward(ctx: Context, a: Any, b: Any) -> Any:
        ctx.shapes = (a.shape, b.shape)
        return a - b

    @staticmethod
    def backward(ctx: Context, g: Any) -> tuple[Any, Any]:
        sa, sb = ctx.shapes
        na, nb = ctx.needs_input_grad
        return (unbroadcast(g, sa) if na else None, unbroadcast(-g, sb) if nb else None)


class Mul(Function):
    """z = a · b;  dz/da = b, dz/db = a."""

    @staticmethod
    def forward(ctx: Context, a: Any, b: Any) -> Any:
        ctx.save_for_backward(a, b)
        return a * b

    @staticmethod
    def backward(ctx: Context, g: Any) -> tuple[Any, Any]:
        a, b = ctx.saved_tensors
        na, nb = ctx.needs_input_grad
        return (
            unbroadcast(g * b, a.shape) if na else None,
            unbroadcast(g * a, b.shape) if nb else None,
        )


class Div(Function):
    """z = a / b;  dz/da = 1/b, dz/db = -a/b²."""

    @staticmethod
    def forward(ctx: Context, a: Any, b: Any) -> Any:
        ctx.save_for_backward(a, b)
        return a / b

    @staticmethod
    def backward(ctx: Context, g: Any) -> tuple[Any, Any]:
        a, b = ctx.saved_tensors
        na, nb = ctx.needs_input_grad
        ga = unbroadcast(g / b, a.shape) if na else None
        gb = unbroadcast(-g * a / (b * b), b.shape) if nb else None
        return ga, gb


class Neg(Function):
    """z = -a."""

    @staticmethod
    def forward(ctx: Context, a: Any) -> Any:
        return -a

    @staticmethod
    def backward(ctx: Context, g: Any) -> Any:
        return -g


class PowScalar(Function):
    """z = a ** p for a constant exponent p;  dz/da = p · a^(p-1)."""

    @staticmethod
    def forward(ctx: Context, a: Any, exponent: float) -> Any:
        ctx.save_for_backward(a)
        ctx.exponent = exponent
        return a**exponent

    @staticmethod
    def backward(ctx: Context, g: Any) -> Any:
        (a,) = ctx.saved_tensors
        p = ctx.exponent
        if p == 0:  # d(a⁰)/da = 0, even at a = 0 where p · a^(p-1) would be 0 · inf = nan
            return g * 0
        return g * p * a ** (p - 1)


class Pow(Function):
    """z = a ** b for tensors;  dz/da = b·a^(b-1), dz/db = a^b · ln a (a > 0)."""

    @staticmethod
    def forward(ctx: Context, a: Any, b: Any) -> Any:
        z = a**b
        ctx.save_for_backward(a, b, z)
        return z

    @staticmethod
    def backward(ctx: Context, g: Any) -> tuple[Any, Any]:
        a, b, z = ctx.saved_tensors
        na, nb = ctx.needs_input_grad
        ga = unbroadcast(g * b * a ** (b - 1), a.shape) if na else None
        gb = unbroadcast(g * z * xp_of(a).log(a), b.shape) if nb else None
        return ga, gb


class Exp(Function):
    """z = eˣ;  dz/dx = z."""

    @staticmethod
    def forward(ctx: Context, x: Any) -> Any:
        z = xp_of(x).exp(x)
        ctx.save_for_backward(z)
        return z

    @staticmethod
    def backward(ctx: Context, g: Any) -> Any:
        (z,) = ctx.saved_tensors
        return g * z


class Log(Function):
    """z = ln x;  dz/dx = 1/x."""

    @staticmethod
    def forward(ctx: Context, x: Any) -> Any:
        ctx.save_for_backward(x)
        return xp_of(x).log(x)

    @staticmethod
    def backward(ctx: Context, g: Any) -> Any:
        (x,) = ctx.saved_tensors
        return g / x


class Sqrt(Function):
    """z = √x;  dz/dx = 1 / (2z)."""

    @staticmethod
    def forward(ctx: Context, x: Any) -> Any:
        z = xp_of(x).sqrt(x)
        ctx.save_for_backward(z)
        return z

    @staticmethod
    def backward(ctx: Context, g: Any) -> Any:
        (z,) = ctx.saved_tensors
        return g / (2 * z)


class Tanh(Function):
    """z = tanh x;  dz/dx = 1 - z²."""

    @staticmethod
    def forward(ctx: Context, x: Any) -> Any:
        z = xp_of(x).tanh(x)
        ctx.save_for_backward(z)
        return z

    @staticmethod
    def backward(ctx: Context, g: Any) -> Any:
        (z,) = ctx.saved_tensors
        return g * (1 - z * z)


def _sigmoid(x: Any) -> Any:
    """σ(x) = 1 / (1 + e⁻ˣ), written as ½(1 + tanh(x/2)) so it never overflows."""
    xp = xp_of(x)
    return 0.5 * (1 + xp.tanh(0.5 * x))


class Sigmoid(Function):
    """z = σ(x);  dz/dx = z(1 - z)."""

    @staticmethod
    def forward(ctx: Context, x: Any) -> Any:
        z = _sigmoid(x)
        ctx.save_for_backward(z)
        return z

    @staticmethod
    def backward(ctx: Context, g: Any) -> Any:
        (z,) = ctx.saved_tensors
        return g * z * (1 - z)


class Relu(Function):
    """z = max(x, 0);  dz/dx = 1[x > 0]."""

    @staticmethod
    def forward(ctx: Context, x: Any) -> Any:
        mask = x > 0
        ctx.save_for_backward(mask)
        return xp_of(x).maximum(x, x.dtype.type(0))  # not x * mask: -inf · 0 would be nan

    @staticmethod
    def backward(ctx: Context, g: Any) -> Any:
        (mask,) = ctx.saved_tensors
        return g * mask


class Silu(Function):
    """z = x·σ(x) (LLaMA's gate activation);  dz/dx = σ(x)(1 + x(1 - σ(x)))."""

    @staticmethod
    def forward(ctx: Context, x: Any) -> Any:
        s = _sigmoid(x)
        ctx.save_for_backward(x, s)
        return x * s

    @staticmethod
    def backward(ctx: Context, g: Any) -> Any:
        x, s = ctx.saved_tensors
        return g * (s * (1 + x * (1 - s)))


class Abs(Function):
    """z = |x|;  dz/dx = sign(x)."""

    @staticmethod
    def forward(ctx: Context, x: Any) -> Any:
        ctx.save_for_backward(x)
        return xp_of(x).abs(x)

    @staticmethod
    def backward(ctx: Context, g: Any) -> Any:
        (x,) = ctx.saved_tensors
        return g * xp_of(x).sign(x)


class Maximum(Function):
    """z = max(a, b) elementwise; a tie sends half the gradient to each side."""

    @staticmethod
    def forward(ctx: Context, a: Any, b: Any) -> Any:
        xp = xp_of(a)
        ctx.save_for_backward(a, b)
        return xp.maximum(a, b)

    @staticmethod
    def backward(ctx: Context, g: Any) -> tuple[Any, Any]:
        a, b = ctx.saved_tensors
        wa = ((a > b) + 0.5 * (a == b)).astype(g.dtype)  # bool + 0.5 would be float64
        na, nb = ctx.needs_input_grad
        return (
            unbroadcast(g * wa, a.shape) if na else None,
            unbroadcast(g * (1 - wa), b.shape) if nb else None,
        )


class Minimum(Function):
    """z = min(a, b) elementwise; a tie sends half the gradient to each side."""

    @staticmethod
    def forward(ctx: Context, a: Any, b: Any) -> Any:
        xp = xp_of(a)
        ctx.save_for_backward(a, b)
        return xp.minimum(a, b)

    @staticmethod
    def backward(ctx: Context, g: Any) -> tuple[Any, Any]:
        a, b = ctx.saved_tensors
        wa = ((a < b) + 0.5 * (a == b)).astype(g.dtype)  # bool + 0.5 would be float64
        na, nb = ctx.needs_input_grad
        return (
            unbroadcast(g * wa, a.shape) if na else None,
            unbroadcast(g * (1 - wa), b.shape) if nb else None,
        )


class Where(Function):
    """z = cond ? a : b (cond is a constant bool array, broadcast with a and b)."""

    @staticmethod
    def forward(ctx: Context, a: Any, b: Any, cond: Any) -> Any:
        ctx.save_for_backward(cond)
        ctx.shapes = (a.shape, b.shape)
        return xp_of(a).where(cond, a, b)

    @staticmethod
    def backward(ctx: Context, g: Any) -> tuple[Any, Any]:
        (cond,) = ctx.saved_tensors
        sa, sb = ctx.shapes
        na, nb = ctx.needs_input_grad
        zero = g.dtype.type(0)
        xp = xp_of(g)
        return (
            unbroadcast(xp.where(cond, g, zero), sa) if na else None,
            unbroadcast(xp.where(cond, zero, g), sb) if nb else None,
        )


class Clip(Function):
    """z = min(max(x, lo), hi);  dz/dx = 1 inside [lo, hi], 0 where clipped."""

    @staticmethod
    def forward(ctx: Context, x: Any, lo: float | None, hi: float | None) -> Any:
        xp = xp_of(x)
        inside = xp.ones(x.shape, dtype=bool)
        if lo is not None:
            inside &= x >= lo
        if hi is not None:
            inside &= x <= hi
        ctx.save_for_backward(inside)
        return xp.clip(x, lo, hi)

    @staticmethod
    def backward(ctx: Context, g: Any) -> Any:
        (inside,) = ctx.saved_tensors
        return g * inside


class Cast(Function):
    """Change the dtype; the gradient is cast back to the input dtype."""

    @staticmethod
    def forward(ctx: Context, x: Any, dtype: Any) -> Any:
        ctx.src = x.dtype
        return x.astype(dtype)

    @staticmethod
    def backward(ctx: Context, g: Any) -> Any:
        return g.astype(ctx.src)
