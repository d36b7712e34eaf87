"""Making tensors: ``tensor``, ``zeros``, ``ones``, ``full``, ``arange``, ``randn``, ``rand``.

Float data defaults to float32 (PyTorch's default), integer data to int64, on ``"cpu"`` unless a
device is given. Random tensors come from the device's seeded generator
(:func:`minipeft.manual_seed`) or an explicit ``generator``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .backend import check_device, get_rng, get_xp, to_device
from .tensor import Tensor, float32

__all__ = [
    "as_array", "tensor", "zeros", "ones", "full", "arange", "randn", "rand", "randint",
    "zeros_like", "ones_like", "empty",
]  # fmt: skip


def as_array(data: Any, dtype: Any = None, device: Any = None) -> Any:
    """Convert lists, scalars, NumPy/CuPy arrays or Tensors to an array on ``device``."""
    if isinstance(data, Tensor):
        data = data.data
    if isinstance(data, np.generic):  # a NumPy scalar keeps its dtype, like an array
        data = np.asarray(data)
    dev = check_device(device) if device is not None else None
    # NumPy and CuPy arrays keep their dtype; only Python data gets the defaults below
    is_array = isinstance(data, np.ndarray) or hasattr(data, "__cuda_array_interface__")
    if is_array:
        arr = to_device(data, dev) if dev else data
    else:
        arr = get_xp(dev or "cpu").asarray(np.asarray(data))
    if dtype is not None:
        arr = arr.astype(np.dtype(dtype), copy=False)
    elif not is_array and arr.dtype.kind == "f" and arr.dtype != np.float16:
        arr = arr.astype(float32, copy=False)  # Python floats become float32, not float64
    elif not is_array and arr.dtype.kind in "iu" and arr.dtype != np.int64:
        arr = arr.astype(np.int64, copy=False)
    return arr


def tensor(
    data: Any, dtype: Any = None, device: Any = "cpu", requires_grad: bool = False
) -> Tensor:
    """A new tensor holding a *copy* of data (a list, scalar, array or Tensor), as torch.tensor
    does, so later writes to the source never show through; float lists become float32.
    (``Tensor(array)`` wraps an array without copying.)"""
    arr = as_array(data, dtype=dtype, device=device)
    return Tensor._make(arr.copy(), requires_grad)


def _shape(shape: tuple[Any, ...]) -> tuple[int, ...]:
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    if any(not isinstance(s, (int, np.integer)) or s < 0 for s in shape):
        raise ValueError(f"a shape needs non-negative ints, found {shape}")
    return tuple(int(s) for s in shape)


def full(shape: Any, fill_value: float, dtype: Any = None, device: Any = "cpu",
         requires_grad: bool = False) -> Tensor:  # fmt: skip
    xp = get_xp(device)
    arr = xp.full(_shape((shape,) if isinstance(shape, int) else tuple(shape)), fill_value,
                  dtype=np.dtype(dtype or float32))  # fmt: skip
    return Tensor._make(arr, requires_grad)


def zeros(
    *shape: Any, dtype: Any = None, device: Any = "cpu", requires_grad: bool = False
) -> Tensor:
    return full(_shape(shape), 0, dtype, device, requires_grad)


def ones(
    *shape: Any, dtype: Any = None, device: Any = "cpu", requires_grad: bool = False
) -> Tensor:
    return full(_shape(shape), 1, dtype, device, requires_grad)


empty = zeros


def zeros_like(t: Tensor, dtype: Any = None, requires_grad: bool = False) -> Tensor:
    return zeros(t.shape, dtype=dtype or t.dtype, device=t.device, requires_grad=requires_grad)


def ones_like(t: Tensor, dtype: Any = None, requires_grad: bool = False) -> Tensor:
    return ones(t.shape, dtype=dtype or t.dtype, device=t.device, requires_grad=requires_grad)


def arange(start: int, end: int | None = None, step: int = 1, dtype: Any = None,
           device: Any = "cpu") -> Tensor:  # fmt: skip
    if end is None:
        start, end = 0, start
    xp = get_xp(device)
    is_float = any(isinstance(v, float) for v in (start, end, step))
    arr = xp.arange(start, end, step, dtype=np.dtype(dtype or (float32 if is_float else np.int64)))
    return Tensor._make(arr)


def randn(*shape: Any, dtype: Any = None, device: Any = "cpu", generator: Any = None,
          requires_grad: bool = False) -> Tensor:  # fmt: skip
    """Standard normal samples N(0, 1)."""
    rng = generator or get_rng(device)
    arr = rng.standard_normal(_shape(shape)).astype(np.dtype(dtype or float32))
    return Tensor._make(arr, requires_grad)


def rand(*shape: Any, dtype: Any = None, device: Any = "cpu", generator: Any = None,
         requires_grad: bool = False) -> Tensor:  # fmt: skip
    """Uniform samples in [0, 1)."""
    rng = generator or get_rng(device)
    arr = rng.random(_shape(shape)).astype(np.dtype(dtype or float32))
    return Tensor._make(arr, requires_grad)


def randint(low: int, high: int, shape: Any, device: Any = "cpu", generator: Any = None) -> Tensor:
    """Integers uniformly drawn from [low, high), int64."""
    rng = generator or get_rng(device)
    shp = _shape((shape,) if isinstance(shape, int) else tuple(shape))
    return Tensor._make(rng.integers(low, high, size=shp).astype(np.int64))
