"""Reductions: sum, mean, max, var over an axis (or all axes), with ``keepdims``.

The backward of a reduction broadcasts the upstream gradient back over the reduced axes; when
``keepdims=False`` those axes are first re-inserted as size-1 axes (:func:`_expand`).
"""

from __future__ import annotations

from typing import Any

from ..autograd import Context, Function
from ..backend import xp_of

__all__ = ["Sum", "Mean", "Max", "Var", "normalize_axes", "stable_max"]

Axes = tuple[int, ...] | None


def normalize_axes(axis: Any, ndim: int) -> Axes:
    """``None`` → None (all axes); an int or sequence → a sorted tuple of non-negative axes."""
    if axis is None:
        return None
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    out = []
    for a in axes:
        if not -max(ndim, 1) <= a < max(ndim, 1):
            raise IndexError(f"dimension {a} is out of range for a tensor with {ndim} dims")
        out.append(a % ndim if ndim else None)
    # a 0-d tensor accepts dim 0 / -1 (as PyTorch does) and has no axis to reduce
    return tuple(sorted({a for a in out if a is not None}))


def stable_max(x: Any, axis: Any) -> Any:
    """Raw-array row max (keepdims) with ±inf replaced by 0, so x - m is never inf - inf (= NaN)
    for a -inf row. Used by the fused softmax-style Functions to shift before exponentiating."""
    xp = xp_of(x)
    m = x.max(axis=axis, keepdims=True)
    return xp.where(xp.isfinite(m), m, 0)


def _expand(g: Any, shape: tuple[int, ...], axes: Axes, keepdims: bool) -> Any:
    """Reshape a reduced gradient so it broadcasts against the input ``shape``."""
    if not keepdims:
        kept = [1 if (axes is None or i in axes) else n for i, n in enumerate(shape)]
        g = g.reshape(kept)
    return xp_of(g).broadcast_to(g, shape)


def _count(shape: tuple[int, ...], axes: Axes) -> int:
    n = 1
    for i, s in enumerate(shape):
        if axes is None or i in axes:
            n *= s
    return n


class Sum(Function):
    """z = Σ_axes x;  dz/dx = 1 broadcast over the reduced axes."""

    @staticmethod
    def forward(ctx: Context, x: Any, axis: Axes = None, keepdims: bool = False) -> Any:
        ctx.meta = (x.shape, axis, keepdims)
        return x.sum(axis=axis, keepdims=keepdims)

    @staticmethod
    def backward(ctx: Context, g: Any) -> Any:
        shape, axis, keepdims = ctx.meta
        return _expand(g, shape, axis, keepdims)


class Mean(Function):
    """z = (1/N) Σ_axes x with N the number of reduced elements;  dz/dx = 1/N."""

    @staticmethod
    def forward(ctx: Context, x: Any, axis: Axes = None, keepdims: bool = False) -> Any:
        ctx.meta = (x.shape, axis, keepdims)
        return x.mean(axis=axis, keepdims=keepdims)

    @staticmethod
    def backward(ctx: Context, g: Any) -> Any:
        shape, axis, keepdims = ctx.meta
        n = _count(shape, axis)
        return _expand(g / n, shape, axis, keepdims)


class Max(Function):
    """z = max_axes x;  the gradient goes to the arg-max (split evenly between ties)."""

    @staticmethod
    def forward(ctx: Context, x: Any, axis: Axes = None, keepdims: bool = False) -> Any:
        z = x.max(axis=axis, keepdims=True)
        ctx.save_for_backward(x, z)
        ctx.meta = (x.shape, axis, keepdims)
        if keepdims:
            return z
        return z.reshape(()) if axis is None else z.squeeze(axis)

    @staticmethod
    def backward(ctx: Context, g: Any) -> Any:
        x, z = ctx.saved_tensors
        shape, axis, keepdims = ctx.meta
        hit = x == z
        share = (hit / hit.sum(axis=axis, keepdims=True)).astype(g.dtype)  # bool/int is float64
        return _expand(g, shape, axis, keepdims) * share


class Var(Function):
    """z = Σ (x - x̄)² / (N - correction);  dz/dx = 2 (x - x̄) / (N - correction)."""

    @staticmethod
    def forward(
        ctx: Context, x: Any, axis: Axes = None, keepdims: bool = False, correction: int = 0
    ) -> Any:
        n = _count(x.shape, axis)
        centered = x - x.mean(axis=axis, keepdims=True)
        denom = max(n - correction, 0)
        ctx.save_for_backward(centered)
        ctx.meta = (x.shape, axis, keepdims, denom)
        return (centered * centered).sum(axis=axis, keepdims=keepdims) / denom

    @staticmethod
    def backward(ctx: Context, g: Any) -> Any:
        (centered,) = ctx.saved_tensors
        shape, axis, keepdims, denom = ctx.meta
        return _expand(g, shape, axis, keepdims) * (2 * centered / denom)
