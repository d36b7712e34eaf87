"""Argument checks shared by the functional API: :mod:`minipeft.functional` and its attention.

Every function in ``F`` validates its inputs before it calls a fused Function, so a bad call
raises an error that names what was expected and what was found instead of failing deep inside
NumPy/CuPy. This module holds those checks, plus the two kinds of *constant* (never
differentiated) inputs they prepare: arrays given as a Tensor, array or list (targets, ids,
masks) put on the input's device, and dropout keep-masks drawn from the right generator.
(:mod:`minipeft.attention` uses them too, which is why they are not private to ``functional``.)
"""

from __future__ import annotations

from typing import Any

from .backend import DeviceError, device_of, get_rng
from .creation import as_array
from .tensor import Tensor, float32

__all__ = ["const_array", "float_tensor", "keep_mask", "same_dtype"]


def float_tensor(x: Any, fn: str, name: str = "input") -> Tensor:
    """``x`` itself, after checking it is a float Tensor (errors name ``fn`` and ``name``)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{fn}: expected {name} to be a Tensor, found {type(x).__name__}")
    if x.dtype.kind != "f":
        raise TypeError(f"{fn}: expected a float {name}, found dtype {x.dtype}")
    return x


def same_dtype(fn: str, x: Tensor, **others: Tensor | None) -> None:
    """Check every given (not None) keyword tensor is a float Tensor with ``x``'s dtype."""
    for name, t in others.items():
        if t is not None and float_tensor(t, fn, name).dtype != x.dtype:
            raise TypeError(
                f"{fn}: expected {name} with the input's dtype {x.dtype}, found {t.dtype}; "
                "convert it with .to(dtype)"
            )


def const_array(obj: Any, device: str, fn: str, name: str) -> Any:
    """A constant (non-differentiable) array on ``device`` from a Tensor, array or list."""
    if isinstance(obj, Tensor):
        if obj.device != device:
            raise DeviceError(
                f"{fn}: expected {name} on {device} like the input, found {obj.device}"
            )
        return obj.data
    return as_array(obj, device=device)


def keep_mask(shape: tuple[int, ...], p: float, device: str, generator: Any, fn: str) -> Any:
    """Bool mask, True with probability 1 - p, from ``generator`` or the device's generator."""
    rng = generator if generator is not None else get_rng(device)
    keep = rng.random(shape, dtype=float32) >= p
    if device_of(keep) != device:
        raise DeviceError(
            f"{fn}: expected a generator for {device}, found one for {device_of(keep)}"
        )
    return keep
