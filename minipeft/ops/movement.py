"""Movement primitives: reshape, permute, broadcast_to, getitem, cat, stack, embedding.

None of these do arithmetic; their backward moves the gradient back to where each element came
from. ``GetItem`` with integer arrays (and ``Embedding``) may read one element several times, so
their backward is a *scatter-add*: repeated indices add up.
"""

from __future__ import annotations

from typing import Any

from ..autograd import Context, Function, unbroadcast
from ..backend import scatter_add, xp_of

__all__ = ["Reshape", "Permute", "BroadcastTo", "GetItem", "Cat", "Stack", "Embedding"]


class Reshape(Function):
    """z = x viewed with a new shape (same elements, row-major order)."""

    @staticmethod
    def forward(ctx: Context, x: Any, shape: tuple[int, ...]) -> Any:
        ctx.src = x.shape
        return x.reshape(shape)

    @staticmethod
    def backward(ctx: Context, g: Any) -> Any:
        return g.reshape(ctx.src)


class Permute(Function):
    """z = x with its axes reordered by ``dims``; backward applies the inverse permutation."""

    @staticmethod
    def forward(ctx: Context, x: Any, dims: tuple[int, ...]) -> Any:
        ctx.dims = dims
        return x.transpose(dims)

    @staticmethod
    def backward(ctx: Context, g: Any) -> Any:
        inverse = [0] * len(ctx.dims)
        for i, d in enumerate(ctx.dims):
            inverse[d] = i
        return g.transpose(inverse)


class BroadcastTo(Function):
    """z = x stretched to ``shape``; backward sums over the stretched axes."""

    @staticmethod
    def forward(ctx: Context, x: Any, shape: tuple[int, ...]) -> Any:
        ctx.src = x.shape
        return xp_of(x).broadcast_to(x, shape)

    @staticmethod
    def backward(ctx: Context, g: Any) -> Any:
        return unbroadcast(g, ctx.src)


def _is_basic(index: Any) -> bool:
    """True when an index uses only ints, slices, None and Ellipsis (no element repeats)."""
    parts = index if isinstance(index, tuple) else (index,)
    return all(isinstance(p, (int, slice)) or p is None or p is Ellipsis for p in parts)


class GetItem(Function):
    """z = x[index] — basic slicing or integer/bool array indexing.

    Backward: a zero array of x's shape receiving ``g`` at the indexed places; with integer
    arrays an element read twice gets both gradients (scatter-add).
    """

    @staticmethod
    def forward(ctx: Context, x: Any, index: Any) -> Any:
        ctx.src = (x.shape, x.dtype)
        ctx.index = index
        return x[index]

    @staticmethod
    def backward(ctx: Context, g: Any) -> Any:
        shape, dtype = ctx.src
        out = xp_of(g).zeros(shape, dtype=g.dtype)
        if _is_basic(ctx.index):
            out[ctx.index] = g
        else:
            scatter_add(out, ctx.index, g)
        return out


class Cat(Function):
    """z = concatenation of the inputs along ``axis``; backward splits the gradient back."""

    @staticmethod
    def forward(ctx: Context, *xs: Any, axis: int = 0) -> Any:
        ctx.axis = axis
        ctx.sizes = [x.shape[axis] for x in xs]
        return xp_of(xs[0]).concatenate(xs, axis=axis)

    @staticmethod
    def backward(ctx: Context, g: Any) -> tuple[Any, ...]:
        grads, start = [], 0
        for size, needed in zip(ctx.sizes, ctx.needs_input_grad):
            sl = [slice(None)] * g.ndim
            sl[ctx.axis] = slice(start, start + size)
            grads.append(g[tuple(sl)] if needed else None)
            start += size
        return tuple(grads)


class Stack(Function):
    """z = the inputs stacked along a new ``axis``; backward takes each slice back."""

    @staticmethod
    def forward(ctx: Context, *xs: Any, axis: int = 0) -> Any:
        ctx.axis = axis
        return xp_of(xs[0]).stack(xs, axis=axis)

    @staticmethod
    def backward(ctx: Context, g: Any) -> tuple[Any, ...]:
        xp = xp_of(g)
        parts = xp.moveaxis(g, ctx.axis, 0)
        return tuple(p if needed else None for p, needed in zip(parts, ctx.needs_input_grad))


class Embedding(Function):
    """z[..., :] = W[ids[...], :] — a row lookup.  W (V, C), ids (...) int → z (..., C).

    Backward: dW = scatter-add of the upstream rows into a zero (V, C) array; a token that
    occurs twice gets both gradients. ``ids`` is a constant (second input is not a Tensor).
    """

    @staticmethod
    def forward(ctx: Context, weight: Any, ids: Any) -> Any:
        ctx.save_for_backward(ids)
        ctx.wshape = weight.shape
        return weight[ids]

    @staticmethod
    def backward(ctx: Context, g: Any) -> Any:
        (ids,) = ctx.saved_tensors
        dw = xp_of(g).zeros(ctx.wshape, dtype=g.dtype)
        scatter_add(dw, ids.reshape(-1), g.reshape(-1, ctx.wshape[1]))
        return dw
