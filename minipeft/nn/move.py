"""Moving and casting a module's tensors in place: the work behind ``Module.to``.

``module.to("cuda")``, ``module.to(mp.float64)`` and ``module.to("cuda", mp.float16)`` change
each parameter's and buffer's array (and its gradient) **in place**, so the Parameter objects an
optimizer already holds keep working. Only float tensors change dtype: integer buffers (token
ids, quantized weights) keep theirs.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from ..backend import check_device, device_of, to_device
from ..tensor import Tensor

__all__ = ["move_tensors_", "parse_to_args"]


def _is_float(arr: Any) -> bool:
    return arr.dtype.kind == "f"


def parse_to_args(args: tuple[Any, ...], device: Any, dtype: Any) -> tuple[Any, Any]:
    """Sort ``module.to(...)``'s positional arguments into a device and a dtype."""
    for a in args:
        if isinstance(a, str) and a.lower().startswith(("cpu", "cuda")):
            device = a
        else:
            try:
                dtype = np.dtype(a)
            except TypeError:
                raise TypeError(
                    f"to() expected a device ('cpu'/'cuda') or a dtype, found {a!r}"
                ) from None
    device = check_device(device) if device is not None else None
    return device, (np.dtype(dtype) if dtype is not None else None)


def move_tensors_(tensors: Iterable[Tensor], device: str | None, dtype: np.dtype | None) -> None:
    """Move each tensor (and its gradient) to ``device`` and cast float ones to ``dtype``, in
    place; ``None`` leaves that property alone."""
    for t in tensors:
        if device is not None and device_of(t.data) != device:
            t.data = to_device(t.data, device)
            if t.grad is not None:
                t.grad = to_device(t.grad, device)
        if dtype is not None and _is_float(t.data) and t.data.dtype != dtype:
            if dtype.kind != "f":
                raise TypeError(f"to(dtype) casts float tensors to floats, found {dtype}")
            t.data = t.data.astype(dtype)
            if t.grad is not None:
                t.grad = t.grad.astype(dtype)
