"""Loading a state dict into a Module: check everything first, then copy in place.

``load_state_dict`` (PyTorch semantics) compares the checkpoint with the model's own
``state_dict(keep_vars=True)``: keys the model has but the checkpoint lacks are *missing*, keys
only the checkpoint has are *unexpected*, and a key whose shape differs is a *mismatch*. All
problems are collected into one ``RuntimeError`` before any tensor is touched, so a failed load
leaves the model exactly as it was — never half-applied.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..backend import to_device
from ..tensor import Tensor

if TYPE_CHECKING:
    from .module import Module

__all__ = ["IncompatibleKeys", "load_state_dict_into"]

IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])


def load_state_dict_into(
    module: Module, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
) -> IncompatibleKeys:
    """Copy ``state_dict``'s values into ``module``'s tensors (see ``Module.load_state_dict``).

    Each value (Tensor or NumPy/CuPy array) is moved to the target's device and cast to its
    dtype while staging; only when nothing is wrong are the staged arrays written.
    """
    own = module.state_dict(keep_vars=True)
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    problems: list[str] = []
    staged: list[tuple[Tensor, Any]] = []
    for key, target in own.items():
        if key not in state_dict:
            continue
        value = state_dict[key]
        arr = value.data if isinstance(value, Tensor) else value
        if not (hasattr(arr, "shape") and hasattr(arr, "dtype")):
            problems.append(f"{key}: expected a Tensor or array, found {type(value).__name__}")
            continue
        if tuple(arr.shape) != target.shape:
            problems.append(
                f"{key}: shape mismatch, expected {target.shape} (model), "
                f"found {tuple(arr.shape)} (checkpoint)"
            )
            continue
        arr = to_device(arr, target.device).astype(target.dtype, copy=False)
        staged.append((target, arr))
    if strict and missing:
        problems.insert(0, "missing keys: " + ", ".join(repr(k) for k in missing))
    if strict and unexpected:
        problems.insert(0, "unexpected keys: " + ", ".join(repr(k) for k in unexpected))
    if problems:
        raise RuntimeError(
            f"error(s) in load_state_dict for {type(module).__name__} "
            "(nothing was loaded):\n  " + "\n  ".join(problems)
        )
    for target, arr in staged:
        writable = getattr(target.data.flags, "writeable", True)
        if assign or not writable:
            target.data = arr if (assign and arr is not target.data) else arr.copy()
        else:
            target.data[...] = arr  # in place: views and optimizer references stay valid
    return IncompatibleKeys(missing, unexpected)
