"""The op API on Tensors: free functions with PyTorch's names and signatures.

Each function checks its arguments, then calls one primitive Function. The ones that PyTorch
also has as Tensor methods are installed on :class:`~minipeft.tensor.Tensor` by
:func:`install_methods`, so ``x.sum(dim=1)`` and ``minipeft.sum(x, dim=1)`` are the same code.
Reductions take PyTorch's ``dim``/``keepdim`` and accept NumPy's ``axis``/``keepdims`` too.
"""

from __future__ import annotations

import builtins
from collections import namedtuple
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..backend import broadcast_shapes, xp_of
from . import elementwise as E
from . import matmul as M
from . import movement as V
from . import reduce as R

if TYPE_CHECKING:
    from ..tensor import Tensor

__all__ = [
    "add", "sub", "mul", "truediv", "div", "neg", "pow", "matmul", "sum", "mean", "amax", "max",
    "var", "reshape", "flatten", "unsqueeze", "squeeze", "permute", "transpose", "swapaxes",
    "broadcast_to", "expand", "cat", "stack", "split", "chunk", "where", "masked_fill", "clip",
    "maximum", "minimum", "exp", "log", "sqrt", "tanh", "sigmoid", "relu", "silu", "abs",
    "install_methods",
]  # fmt: skip

MaxResult = namedtuple("MaxResult", ["values", "indices"])


def _tensor(x: Any) -> Tensor:
    from ..tensor import Tensor  # noqa: PLC0415 — tensor.py imports this module

    return x if isinstance(x, Tensor) else Tensor(x)


def _dim(dim: Any, axis: Any) -> Any:
    return axis if dim is None else dim


def _axis(dim: int, ndim: int) -> int:
    """``dim`` as an axis in [0, ndim); out of [-ndim, ndim) raises (``dim % ndim`` would wrap
    a bad dim silently onto a valid one)."""
    if not -ndim <= dim < ndim:
        raise IndexError(f"dimension {dim} is out of range: expected one in [{-ndim}, {ndim - 1}]")
    return dim % ndim


# ------------------------------------------------------------------------ arithmetic
def _operands(a: Any, b: Any) -> tuple[Tensor, Any]:
    """A scalar on the left takes the right Tensor's device and dtype, as in ``1.0 + x``."""
    from ..tensor import Tensor  # noqa: PLC0415

    if not isinstance(a, Tensor) and isinstance(b, Tensor):
        return b._other(a), b
    return _tensor(a), b


def add(input: Any, other: Any) -> Tensor:  # noqa: A002
    """input + other (torch.add without ``alpha``); either side may be a Python scalar."""
    a, b = _operands(input, other)
    return a + b


def sub(input: Any, other: Any) -> Tensor:  # noqa: A002
    """input - other; either side may be a Python scalar."""
    a, b = _operands(input, other)
    return a - b


def mul(input: Any, other: Any) -> Tensor:  # noqa: A002
    """input * other (elementwise); either side may be a Python scalar."""
    a, b = _operands(input, other)
    return a * b


def truediv(input: Any, other: Any) -> Tensor:  # noqa: A002
    """input / other (true division: integer inputs give the default float, as in PyTorch)."""
    a, b = _operands(input, other)
    return a / b


div = truediv  # torch.div without ``rounding_mode``


def neg(input: Any) -> Tensor:  # noqa: A002
    """-input."""
    return -_tensor(input)


def pow(input: Any, exponent: Any) -> Tensor:  # noqa: A001, A002
    """input ** exponent; a scalar exponent, a Tensor one, or a scalar base (torch.pow(2, x))."""
    a, b = _operands(input, exponent)
    return a**b


def matmul(a: Tensor, b: Tensor) -> Tensor:
    """a @ b with NumPy/PyTorch semantics (1-D operands are promoted, then squeezed back)."""
    a, b = a._pair(b)
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError(
            f"matmul needs at least 1-D operands, found shapes {a.shape} and {b.shape}"
        )
    a2 = a.reshape(1, -1) if a.ndim == 1 else a
    b2 = b.reshape(-1, 1) if b.ndim == 1 else b
    if a2.shape[-1] != b2.shape[-2]:
        raise ValueError(
            f"matmul shape mismatch: {a.shape} @ {b.shape} (inner dimensions "
            f"{a2.shape[-1]} and {b2.shape[-2]} differ)"
        )
    try:
        broadcast_shapes(a2.shape[:-2], b2.shape[:-2])
    except ValueError:
        raise ValueError(
            f"matmul batch dimensions do not broadcast: {a.shape} @ {b.shape}"
        ) from None
    out = M.MatMul.apply(a2, b2)
    if a.ndim == 1:
        out = out.squeeze(-2)
    if b.ndim == 1:
        out = out.squeeze(-1)
    return out


# ------------------------------------------------------------------------ reductions
def sum(x: Tensor, dim: Any = None, keepdim: bool = False, *, axis: Any = None,
        keepdims: bool | None = None) -> Tensor:  # fmt: skip
    """Σ over ``dim`` (all dims when None)."""
    axes = R.normalize_axes(_dim(dim, axis), x.ndim)
    return R.Sum.apply(x, axis=axes, keepdims=keepdim if keepdims is None else keepdims)


def mean(x: Tensor, dim: Any = None, keepdim: bool = False, *, axis: Any = None,
         keepdims: bool | None = None) -> Tensor:  # fmt: skip
    """Arithmetic mean over ``dim``."""
    axes = R.normalize_axes(_dim(dim, axis), x.ndim)
    return R.Mean.apply(x, axis=axes, keepdims=keepdim if keepdims is None else keepdims)


def amax(x: Tensor, dim: Any = None, keepdim: bool = False, *, axis: Any = None,
         keepdims: bool | None = None) -> Tensor:  # fmt: skip
    """Maximum over ``dim`` (the gradient goes to the arg-max, split between ties)."""
    axes = R.normalize_axes(_dim(dim, axis), x.ndim)
    return R.Max.apply(x, axis=axes, keepdims=keepdim if keepdims is None else keepdims)


def max(x: Tensor, dim: int | None = None, keepdim: bool = False, *, axis: Any = None,
        keepdims: bool | None = None) -> Any:  # fmt: skip
    """PyTorch's max: all elements → a scalar; with ``dim`` → ``(values, indices)``."""
    d = _dim(dim, axis)
    kd = keepdim if keepdims is None else keepdims
    if d is None:
        return amax(x)
    from ..tensor import Tensor  # noqa: PLC0415

    values = amax(x, d, kd)
    xp = xp_of(x.data)
    idx = xp.argmax(x.data, axis=d)
    return MaxResult(values, Tensor._make(xp.expand_dims(idx, d) if kd else idx))


def var(x: Tensor, dim: Any = None, keepdim: bool = False, *, correction: int | None = None,
        unbiased: bool | None = None, axis: Any = None,
        keepdims: bool | None = None) -> Tensor:  # fmt: skip
    """Variance Σ(x - x̄)² / (N - correction); PyTorch's default correction is 1."""
    if correction is None:
        correction = 1 if unbiased is None else int(unbiased)
    axes = R.normalize_axes(_dim(dim, axis), x.ndim)
    kd = keepdim if keepdims is None else keepdims
    return R.Var.apply(x, axis=axes, keepdims=kd, correction=correction)


# ------------------------------------------------------------------------ shapes
def _shape_arg(shape: tuple[Any, ...]) -> tuple[int, ...]:
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        return tuple(shape[0])
    return tuple(shape)


def reshape(x: Tensor, *shape: Any) -> Tensor:
    """Same elements, new shape; one entry may be -1 (inferred)."""
    shape = _shape_arg(shape)
    n, known = x.numel(), 1
    for s in shape:
        known *= s if s != -1 else 1
    if shape.count(-1) > 1 or (-1 not in shape and known != n) or (known and n % known):
        raise ValueError(f"cannot reshape a tensor of shape {x.shape} ({n} elements) to {shape}")
    return V.Reshape.apply(x, shape=shape)


def flatten(x: Tensor, start_dim: int = 0, end_dim: int = -1) -> Tensor:
    s, e = _axis(start_dim, builtins.max(x.ndim, 1)), _axis(end_dim, builtins.max(x.ndim, 1))
    return reshape(x, *x.shape[:s], -1, *x.shape[e + 1 :])


def unsqueeze(x: Tensor, dim: int) -> Tensor:
    dim = _axis(dim, x.ndim + 1)
    return reshape(x, *x.shape[:dim], 1, *x.shape[dim:])


def squeeze(x: Tensor, dim: int | None = None) -> Tensor:
    if dim is None:
        return reshape(x, *[s for s in x.shape if s != 1])
    dim = _axis(dim, builtins.max(x.ndim, 1))
    if x.ndim == 0 or x.shape[dim] != 1:
        return x
    return reshape(x, *x.shape[:dim], *x.shape[dim + 1 :])


def permute(x: Tensor, *dims: Any) -> Tensor:
    dims = tuple(_axis(d, x.ndim) for d in _shape_arg(dims))
    if sorted(dims) != list(range(x.ndim)):
        raise ValueError(f"permute needs a permutation of {x.ndim} dims, found {dims}")
    return V.Permute.apply(x, dims=dims)


def transpose(x: Tensor, dim0: int, dim1: int) -> Tensor:
    order = list(range(x.ndim))
    dim0, dim1 = _axis(dim0, x.ndim), _axis(dim1, x.ndim)
    order[dim0], order[dim1] = order[dim1], order[dim0]
    return V.Permute.apply(x, dims=tuple(order))


swapaxes = transpose


def broadcast_to(x: Tensor, *shape: Any) -> Tensor:
    shape = _shape_arg(shape)
    try:
        broadcast_shapes(x.shape, shape)
    except ValueError:
        raise ValueError(f"cannot broadcast shape {x.shape} to {shape}") from None
    return V.BroadcastTo.apply(x, shape=shape)


def expand(x: Tensor, *shape: Any) -> Tensor:
    """PyTorch's expand: -1 keeps a dimension's size."""
    shape = _shape_arg(shape)
    pad = len(shape) - x.ndim
    if -1 in shape[: builtins.max(pad, 0)]:  # x.shape[i - pad] would wrap around silently
        raise ValueError(f"expand {x.shape} to {shape}: -1 is not allowed for a new leading dim")
    full = tuple(x.shape[i - pad] if s == -1 else s for i, s in enumerate(shape))
    return broadcast_to(x, full)


def cat(tensors: Sequence[Tensor], dim: int = 0) -> Tensor:
    """Concatenate along an existing dim; all other dims must agree."""
    tensors = _same_dtype(tensors, "cat")
    ref = tensors[0].shape
    if not ref:
        raise ValueError("cat needs tensors with at least one dim, found 0-d; use stack")
    d = _axis(dim, len(ref))
    for t in tensors[1:]:
        if len(t.shape) != len(ref) or any(a != b for i, (a, b) in
                                            enumerate(zip(t.shape, ref)) if i != d):  # fmt: skip
            raise ValueError(f"cat along dim {dim}: shapes {ref} and {t.shape} differ elsewhere")
    return V.Cat.apply(*tensors, axis=d)


def stack(tensors: Sequence[Tensor], dim: int = 0) -> Tensor:
    """Stack equal-shaped tensors along a new dim."""
    tensors = _same_dtype(tensors, "stack")
    shapes = {t.shape for t in tensors}
    if len(shapes) != 1:
        raise ValueError(f"stack needs equal shapes, found {sorted(shapes)}")
    return V.Stack.apply(*tensors, axis=_axis(dim, tensors[0].ndim + 1))


def _same_dtype(tensors: Sequence[Any], name: str) -> list[Tensor]:
    if not tensors:
        raise ValueError(f"{name} needs at least one tensor")
    ts = [_tensor(t) for t in tensors]
    common = ts[0]
    for t in ts[1:]:  # the dtype rule, pairwise: ints meet floats -> float; two floats raise
        common = common._pair(t)[0]
    return [t.to(common.dtype) for t in ts]


def split(x: Tensor, split_size_or_sections: Any, dim: int = 0) -> tuple[Tensor, ...]:
    """PyTorch's split: an int is a chunk size (the last may be smaller); a list gives sizes."""
    d = _axis(dim, x.ndim)
    n = x.shape[d]
    if isinstance(split_size_or_sections, int):
        step = split_size_or_sections
        if step < 1 and not (step == 0 and n == 0):  # range(0, n, 0) would fail cryptically
            raise ValueError(
                f"split: expected split_size >= 1, found {step} (dim {dim} has size {n})"
            )
        sizes = [builtins.min(step, n - i) for i in range(0, n, step)] if n else [0]
    else:
        sizes = list(split_size_or_sections)
        if builtins.sum(sizes) != n or builtins.min(sizes, default=0) < 0:
            raise ValueError(
                f"split sizes {sizes} must be >= 0 and add up to dim {dim} of size {n}"
            )
    out, start = [], 0
    for size in sizes:
        idx = [slice(None)] * x.ndim
        idx[d] = slice(start, start + size)
        out.append(x[tuple(idx)])
        start += size
    return tuple(out)


def chunk(x: Tensor, chunks: int, dim: int = 0) -> tuple[Tensor, ...]:
    """Split into ``chunks`` pieces of size ⌈n / chunks⌉ (the last may be smaller)."""
    if not isinstance(chunks, int) or chunks < 1:
        raise ValueError(f"chunk: expected chunks >= 1, found {chunks!r}")
    n = x.shape[_axis(dim, x.ndim)]
    return split(x, -(-n // chunks), dim)


# ------------------------------------------------------------------------ selection
def where(condition: Any, a: Any, b: Any) -> Tensor:
    """condition ? a : b elementwise; the condition carries no gradient."""
    from ..tensor import Tensor  # noqa: PLC0415

    ref = a if isinstance(a, Tensor) else b if isinstance(b, Tensor) else _tensor(a)
    ta, tb = ref._pair(a)[1]._pair(b)
    # not hasattr(.., "data"): a NumPy array's .data is a memoryview, a CuPy array's a pointer
    cond = condition.data if isinstance(condition, Tensor) else condition
    return E.Where.apply(ta, tb, cond=xp_of(ta.data).asarray(cond, dtype=bool))


def masked_fill(x: Tensor, mask: Any, value: float) -> Tensor:
    """x with ``value`` wherever ``mask`` is True (mask broadcasts against x)."""
    return where(mask, value, x)


def clip(x: Tensor, min: float | None = None, max: float | None = None) -> Tensor:  # noqa: A002
    return E.Clip.apply(x, lo=min, hi=max)


def maximum(a: Tensor, b: Any) -> Tensor:
    return E.Maximum.apply(*_tensor(a)._pair(b))


def minimum(a: Tensor, b: Any) -> Tensor:
    return E.Minimum.apply(*_tensor(a)._pair(b))


def exp(x: Tensor) -> Tensor:
    return E.Exp.apply(x)


def log(x: Tensor) -> Tensor:
    return E.Log.apply(x)


def sqrt(x: Tensor) -> Tensor:
    return E.Sqrt.apply(x)


def tanh(x: Tensor) -> Tensor:
    return E.Tanh.apply(x)


def sigmoid(x: Tensor) -> Tensor:
    return E.Sigmoid.apply(x)


def relu(x: Tensor) -> Tensor:
    return E.Relu.apply(x)


def silu(x: Tensor) -> Tensor:
    return E.Silu.apply(x)


def abs(x: Tensor) -> Tensor:  # noqa: A001
    return E.Abs.apply(x)


_METHODS = {
    "sum": sum, "mean": mean, "amax": amax, "max": max, "var": var, "reshape": reshape,
    "view": reshape, "flatten": flatten, "unsqueeze": unsqueeze, "squeeze": squeeze,
    "permute": permute, "transpose": transpose, "swapaxes": swapaxes, "expand": expand,
    "broadcast_to": broadcast_to, "split": split, "chunk": chunk, "masked_fill": masked_fill,
    "clip": clip, "clamp": clip, "maximum": maximum, "minimum": minimum, "exp": exp, "log": log,
    "sqrt": sqrt, "tanh": tanh, "sigmoid": sigmoid, "relu": relu, "silu": silu, "abs": abs,
    "__abs__": abs, "add": add, "sub": sub, "mul": mul, "div": div, "neg": neg, "pow": pow,
}  # fmt: skip


def install_methods(cls: type) -> None:
    """Attach the functions above as Tensor methods (``x.sum(1)`` is ``sum(x, 1)``)."""
    for name, fn in _METHODS.items():
        setattr(cls, name, fn)
    cls.contiguous = lambda self: self
