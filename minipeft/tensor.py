"""The Tensor: an array (NumPy or CuPy) plus what reverse-mode autodiff needs.

A Tensor holds ``data`` (the raw array), ``requires_grad``, ``grad`` (a raw array on the same
device, ``None`` until a backward reaches it) and, for a tensor made by an op, the ``_node`` that
made it. Operators and methods call the Function classes in :mod:`minipeft.ops`.

**dtype rule** (documented in the README and tested): float32 is the default. Python scalars take
the tensor's dtype (a Python float meeting an int or bool tensor is a float32, the default float).
An integer or bool tensor meeting a float tensor is cast to the float dtype.
Two *different float* dtypes never mix silently: ``float32 + float64`` raises ``TypeError``;
convert one side with ``.to(dtype)``. Tensors on different devices never mix either.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import autograd
from .backend import DeviceError, check_device, device_of, to_device, to_numpy, xp_of
from .ops import elementwise as E
from .ops import movement as V

__all__ = ["Tensor", "float16", "float32", "float64", "int32", "int64", "bool_"]

float16 = np.dtype("float16")
float32 = np.dtype("float32")
float64 = np.dtype("float64")
int32 = np.dtype("int32")
int64 = np.dtype("int64")
bool_ = np.dtype("bool")


def _is_float(dtype: Any) -> bool:
    return np.dtype(dtype).kind == "f"


class Tensor:
    """An n-dimensional array that can record how it was made (see the module docstring)."""

    __array_priority__ = 1000  # make ``ndarray + Tensor`` defer to Tensor.__radd__

    def __init__(
        self, data: Any, dtype: Any = None, device: Any = None, requires_grad: bool = False
    ) -> None:
        from .creation import as_array  # noqa: PLC0415 — creation imports this module

        arr = as_array(data, dtype=dtype, device=device)
        self._init(arr, requires_grad)

    def _init(self, arr: Any, requires_grad: bool) -> None:
        if requires_grad and not _is_float(arr.dtype):
            raise TypeError(f"only float tensors can require grad, found dtype {arr.dtype}")
        self.data = arr
        self.grad: Any = None
        self.requires_grad = bool(requires_grad)
        self._node: autograd.Node | None = None
        self._retains_grad = False

    @classmethod
    def _make(cls, arr: Any, requires_grad: bool = False) -> Tensor:
        """Wrap a raw array without copying or converting (the fast path for op outputs)."""
        t = cls.__new__(cls)
        t._init(arr, requires_grad)
        return t

    # ----------------------------------------------------------------- properties
    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    @property
    def device(self) -> str:
        return device_of(self.data)

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def is_leaf(self) -> bool:
        """True for tensors made by the user (not by an op that recorded a graph)."""
        return self._node is None

    @property
    def grad_fn(self) -> autograd.Node | None:
        """The recorded op that made this tensor (PyTorch's name), or None for a leaf."""
        return self._node

    @property
    def T(self) -> Tensor:  # noqa: N802 — PyTorch/NumPy spelling
        return self.permute(*reversed(range(self.ndim)))

    def numel(self) -> int:
        return int(self.data.size)

    def size(self, dim: int | None = None) -> Any:
        return self.shape if dim is None else self.shape[dim]

    def __len__(self) -> int:
        if self.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return self.shape[0]

    def __repr__(self) -> str:
        extra = ", requires_grad=True" if self.requires_grad else ""
        if self._node is not None:
            extra = f", grad_fn={self._node}"
        dev = "" if self.device == "cpu" else ", device='cuda'"
        body = np.array2string(
            to_numpy(self.data), precision=4, threshold=20, separator=", ", prefix="tensor("
        )
        return f"tensor({body}, dtype={self.dtype}{dev}{extra})"

    # ----------------------------------------------------------------- conversion
    def numpy(self) -> np.ndarray:
        """A host NumPy array (a copy from the GPU; shares memory on the CPU)."""
        return to_numpy(self.data)

    def tolist(self) -> Any:
        return self.numpy().tolist()

    def item(self) -> Any:
        if self.data.size != 1:
            raise ValueError(f"item() needs a tensor with one element, found shape {self.shape}")
        return self.numpy().reshape(()).item()

    def __float__(self) -> float:
        return float(self.item())

    def __int__(self) -> int:
        return int(self.item())

    def __bool__(self) -> bool:
        return bool(self.item())

    def to(self, target: Any) -> Tensor:
        """``t.to("cuda")``, ``t.to("cpu")`` or ``t.to(float64)``: differentiable, no-op if same."""
        if isinstance(target, str):
            device = check_device(target)
            if device == self.device:
                return self
            record = self.requires_grad and autograd.is_grad_enabled()
            out = Tensor._make(to_device(self.data, device), record)
            if record:
                out._node = autograd.Node(_ToDevice, _device_ctx(self.device), (self,))
            return out
        dtype = np.dtype(target)
        if dtype == self.dtype:
            return self
        return E.Cast.apply(self, dtype=dtype)

    def float(self) -> Tensor:
        return self.to(float32)

    def double(self) -> Tensor:
        return self.to(float64)

    def half(self) -> Tensor:
        return self.to(float16)

    def long(self) -> Tensor:
        return self.to(int64)

    def detach(self) -> Tensor:
        """The same data, cut from the graph (no copy)."""
        return Tensor._make(self.data, False)

    def clone(self) -> Tensor:
        return self * 1 if self.requires_grad else Tensor._make(self.data.copy(), False)

    def requires_grad_(self, flag: bool = True) -> Tensor:
        if flag and not _is_float(self.dtype):
            raise TypeError(f"only float tensors can require grad, found dtype {self.dtype}")
        self.requires_grad = bool(flag)
        return self

    def retain_grad(self) -> None:
        """Keep ``.grad`` on this non-leaf tensor after backward."""
        self._retains_grad = True

    def zero_grad(self) -> None:
        self.grad = None

    # ----------------------------------------------------------------- autograd
    def backward(self, grad: Any = None, retain_graph: bool = False) -> None:
        """Backpropagate from this tensor; ``grad`` defaults to 1 for a scalar."""
        if not self.requires_grad:
            raise RuntimeError(
                "backward() on a tensor that does not require grad: no input of the graph has "
                "requires_grad=True (or it was made under no_grad())"
            )
        xp = xp_of(self.data)
        if grad is None:
            if self.data.size != 1:
                raise RuntimeError(
                    f"backward() without a gradient needs a scalar output, found shape "
                    f"{self.shape}; pass grad= with that shape (e.g. ones) or reduce first"
                )
            g = xp.ones(self.data.shape, dtype=self.dtype)
        else:
            g = grad.data if isinstance(grad, Tensor) else xp.asarray(grad, dtype=self.dtype)
            if g.shape != self.data.shape:
                raise RuntimeError(
                    f"backward(): grad shape {g.shape} does not match output shape {self.shape}"
                )
        autograd.backward(self, g, retain_graph=retain_graph)

    # ----------------------------------------------------------------- coercion
    def _other(self, other: Any) -> Tensor:
        """Bring the other operand of a binary op to a Tensor under the dtype rule."""
        if isinstance(other, Tensor):
            if other.device != self.device:
                raise DeviceError(
                    f"expected both operands on one device, found {self.device} and "
                    f"{other.device}; move one with .to(device)"
                )
            return other
        xp = xp_of(self.data)
        if isinstance(other, (bool, int, float)):
            if _is_float(self.dtype) or (isinstance(other, int) and self.dtype.kind in "iu"):
                return Tensor._make(xp.asarray(other, dtype=self.dtype))
            if isinstance(other, float):  # int/bool tensor and a Python float: the default float
                return Tensor._make(xp.asarray(other, dtype=float32))
        return Tensor._make(xp.asarray(other))

    def _pair(self, other: Any) -> tuple[Tensor, Tensor]:
        """Both operands with one dtype, or a TypeError naming the two float dtypes."""
        o = self._other(other)
        a, b = self, o
        if a.dtype != b.dtype:
            fa, fb = _is_float(a.dtype), _is_float(b.dtype)
            if fa and fb:
                raise TypeError(
                    f"mixed float dtypes {a.dtype} and {b.dtype}: minipeft does not promote "
                    "floats silently; convert one operand with .to(dtype)"
                )
            if fa:
                b = b.to(a.dtype)
            elif fb:
                a = a.to(b.dtype)
            else:
                dt = np.promote_types(a.dtype, b.dtype)
                a, b = a.to(dt), b.to(dt)
        return a, b

    # ----------------------------------------------------------------- arithmetic
    def __add__(self, o: Any) -> Tensor:
        return E.Add.apply(*self._pair(o))

    def __radd__(self, o: Any) -> Tensor:
        a, b = self._pair(o)
        return E.Add.apply(b, a)

    def __sub__(self, o: Any) -> Tensor:
        return E.Sub.apply(*self._pair(o))

    def __rsub__(self, o: Any) -> Tensor:
        a, b = self._pair(o)
        return E.Sub.apply(b, a)

    def __mul__(self, o: Any) -> Tensor:
        return E.Mul.apply(*self._pair(o))

    def __rmul__(self, o: Any) -> Tensor:
        a, b = self._pair(o)
        return E.Mul.apply(b, a)

    def _div_pair(self, other: Any) -> tuple[Tensor, Tensor]:
        a, b = self._pair(other)
        if not _is_float(a.dtype):  # true division of ints gives the default float (PyTorch)
            a, b = a.to(float32), b.to(float32)
        return a, b

    def __truediv__(self, o: Any) -> Tensor:
        return E.Div.apply(*self._div_pair(o))

    def __rtruediv__(self, o: Any) -> Tensor:
        a, b = self._div_pair(o)
        return E.Div.apply(b, a)

    def __neg__(self) -> Tensor:
        return E.Neg.apply(self)

    def __pow__(self, o: Any) -> Tensor:
        if isinstance(o, (int, float)):
            return E.PowScalar.apply(self, exponent=o)
        return E.Pow.apply(*self._pair(o))

    def __rpow__(self, o: Any) -> Tensor:
        a, b = self._pair(o)
        return E.Pow.apply(b, a)

    def __matmul__(self, o: Any) -> Tensor:
        from .ops.api import matmul  # noqa: PLC0415

        return matmul(self, o)

    def __rmatmul__(self, o: Any) -> Tensor:
        from .ops.api import matmul  # noqa: PLC0415

        return matmul(self._other(o), self)

    # comparisons give bool tensors and never carry gradients
    def _cmp(self, o: Any, op: str) -> Tensor:
        a, b = self._pair(o)
        return Tensor._make(getattr(a.data, op)(b.data))

    def __lt__(self, o: Any) -> Tensor:
        return self._cmp(o, "__lt__")

    def __le__(self, o: Any) -> Tensor:
        return self._cmp(o, "__le__")

    def __gt__(self, o: Any) -> Tensor:
        return self._cmp(o, "__gt__")

    def __ge__(self, o: Any) -> Tensor:
        return self._cmp(o, "__ge__")

    def __eq__(self, o: Any) -> Tensor:  # type: ignore[override]
        return self._cmp(o, "__eq__")

    def __ne__(self, o: Any) -> Tensor:  # type: ignore[override]
        return self._cmp(o, "__ne__")

    def __invert__(self) -> Tensor:
        return Tensor._make(~self.data)

    def __and__(self, o: Any) -> Tensor:
        return Tensor._make(self.data & self._other(o).data)

    def __or__(self, o: Any) -> Tensor:
        return Tensor._make(self.data | self._other(o).data)

    __hash__ = object.__hash__

    # ----------------------------------------------------------------- indexing
    def __getitem__(self, index: Any) -> Tensor:
        return V.GetItem.apply(self, index=_raw_index(index, self.device))

    def __setitem__(self, index: Any, value: Any) -> None:
        if self.requires_grad and autograd.is_grad_enabled():
            raise RuntimeError(
                "in-place assignment to a tensor that requires grad would corrupt the graph; "
                "wrap it in no_grad() or build a new tensor with where/masked_fill/cat"
            )
        v = value.data if isinstance(value, Tensor) else value
        self.data[_raw_index(index, self.device)] = v


def _raw_index(index: Any, device: str) -> Any:
    """Replace Tensors in an index by arrays on ``device`` (indices are never differentiated)."""
    if isinstance(index, tuple):
        return tuple(_raw_index(i, device) for i in index)
    if isinstance(index, Tensor):
        return to_device(index.data, device)
    if isinstance(index, list):
        return to_device(np.asarray(index), device)
    if isinstance(index, np.ndarray) and device != "cpu":
        return to_device(index, device)
    return index


class _ToDevice(autograd.Function):
    """Move between devices; the gradient moves back."""

    @staticmethod
    def backward(ctx: autograd.Context, g: Any) -> Any:
        return to_device(g, ctx.src)


def _device_ctx(src: str) -> autograd.Context:
    ctx = autograd.Context((True,))
    ctx.src = src
    return ctx


# Methods for reductions, shapes and math live in ops/api.py, one place for their signatures.
from .ops import api as _api  # noqa: E402

_api.install_methods(Tensor)
