"""Optimizers: the ``Optimizer`` base, ``SGD`` and ``AdamW`` (PyTorch's formulas exactly).

An optimizer holds ``param_groups``: a list of dicts, each with ``"params"`` (a list of
Parameters) and its hyper-parameters (``"lr"``, ``"weight_decay"``, …), so a scheduler can set
``group["lr"]`` and different groups can decay differently. ``step()`` updates each parameter's
array **in place** (``p.data -= …``): the Parameter objects, tied weights and views stay valid.

Only trainable parameters are touched: a parameter with ``requires_grad=False`` or ``grad is
None`` is skipped and gets no state (frozen means free — a LoRA run keeps AdamW state only for
the adapter).

``state_dict()`` layout (PyTorch's, with host NumPy arrays)::

    {"state": {0: {"step": 3, "exp_avg": ndarray, "exp_avg_sq": ndarray}, ...},  # by index
     "param_groups": [{"lr": 1e-3, "betas": [0.9, 0.999], ..., "params": [0, 1, 2]}]}

Parameters are numbered in group order. :func:`flatten_state_dict` turns it into flat arrays
(``"state.0.exp_avg"``) plus a JSON-able dict (scalars such as ``step`` and the groups), which
is what a safetensors checkpoint stores; :func:`unflatten_state_dict` inverts it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from ..backend import to_device, to_numpy, xp_of
from ..ops import cuda_kernels as K
from ..tensor import Tensor

__all__ = ["Optimizer", "SGD", "AdamW", "flatten_state_dict", "unflatten_state_dict"]


def _is_array(v: Any) -> bool:
    """State arrays (NumPy/CuPy, any ndim) vs JSON scalars such as ``step``."""
    return hasattr(v, "shape") and hasattr(v, "dtype") and not isinstance(v, np.generic)


class Optimizer:
    """Base class: parameter groups, ``zero_grad``, ``state_dict`` / ``load_state_dict``.

    Subclasses implement ``_update(p, grad, state, group)`` for one parameter.
    """

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any]) -> None:
        if isinstance(params, Tensor):
            raise TypeError(
                "params must be an iterable of Tensors or of dicts, found a single Tensor; "
                "pass model.parameters() or [tensor]"
            )
        self.defaults = dict(defaults)
        self.state: dict[Tensor, dict[str, Any]] = {}  # keyed by the Parameter object itself
        self.param_groups: list[dict[str, Any]] = []
        groups = list(params)
        if not groups:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for g in groups:
            self.add_param_group(g)

    def add_param_group(self, group: dict[str, Any]) -> None:
        """Add a group; missing hyper-parameters take the optimizer's defaults."""
        params = group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        for p in params:
            if not isinstance(p, Tensor):
                raise TypeError(f"optimizer params must be Tensors, found {type(p).__name__}")
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        if any(id(p) in seen for p in params) or len({id(p) for p in params}) != len(params):
            raise ValueError("a parameter appears in more than one place in the param groups")
        unknown = set(group) - set(self.defaults) - {"params", "initial_lr"}
        if unknown:
            raise ValueError(
                f"unknown option(s) {sorted(unknown)} for {type(self).__name__}; "
                f"known: {sorted(self.defaults)}"
            )
        full = {**self.defaults, **group, "params": params}
        self._validate(full)
        self.param_groups.append(full)

    def _validate(self, group: dict[str, Any]) -> None:
        for key in ("lr", "weight_decay", "eps", "momentum", "dampening"):
            if key in group and not group[key] >= 0.0:
                raise ValueError(f"{key} must be >= 0, found {group[key]}")

    # ------------------------------------------------------------------ stepping
    def _trainable(self, group: dict[str, Any]) -> Iterable[Tensor]:
        """The group's parameters that get an update this step (frozen ones are skipped)."""
        return (p for p in group["params"] if p.requires_grad and p.grad is not None)

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One update of every trainable parameter; ``closure`` (re)computes the loss."""
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in self._trainable(group):
                grad = p.grad
                if grad.shape != p.data.shape:
                    raise RuntimeError(f"grad shape {grad.shape} != parameter shape {p.shape}")
                self._update(p, grad, self.state.setdefault(p, {}), group)
        return loss

    def _update(self, p: Tensor, grad: Any, state: dict[str, Any], group: dict[str, Any]) -> None:
        raise NotImplementedError

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Forget gradients (``None``), or zero them in place with ``set_to_none=False``."""
        for group in self.param_groups:
            for p in group["params"]:
                if set_to_none:
                    p.grad = None
                elif p.grad is not None:
                    p.grad[...] = 0

    # ------------------------------------------------------------------ checkpoints
    def _indexed(self) -> list[Tensor]:
        return [p for g in self.param_groups for p in g["params"]]

    def state_dict(self) -> dict[str, Any]:
        """A copy of the state in the layout of the module docstring (host arrays, JSON scalars)."""
        state: dict[int, dict[str, Any]] = {}
        for i, p in enumerate(self._indexed()):
            if p in self.state:
                state[i] = {
                    k: (np.array(to_numpy(v), copy=True) if _is_array(v) else v)
                    for k, v in self.state[p].items()
                }
        groups, start = [], 0
        for g in self.param_groups:
            saved = {k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()}
            saved["params"] = list(range(start, start + len(g["params"])))
            start += len(g["params"])
            groups.append(saved)
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore state and hyper-parameters saved by :meth:`state_dict` (same param order).

        Everything is checked before anything changes; arrays move to each parameter's device.
        """
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups):
            raise ValueError(
                f"expected {len(self.param_groups)} param groups, found {len(groups)} in state"
            )
        for i, (saved, own) in enumerate(zip(groups, self.param_groups)):
            if len(saved["params"]) != len(own["params"]):
                raise ValueError(
                    f"param group {i}: expected {len(own['params'])} params, "
                    f"found {len(saved['params'])} in state"
                )
        params = self._indexed()
        new_state: dict[Tensor, dict[str, Any]] = {}
        for key, entry in state_dict["state"].items():
            idx = int(key)
            if not 0 <= idx < len(params):
                raise ValueError(f"state for param {idx}, but there are {len(params)} params")
            p = params[idx]
            new_entry = {}
            for name, v in entry.items():
                if isinstance(v, np.generic):
                    v = v.item()
                if _is_array(v):
                    if tuple(v.shape) != p.shape:
                        raise ValueError(
                            f"state {idx}.{name}: expected shape {p.shape}, found {tuple(v.shape)}"
                        )
                    v = to_device(v.data if isinstance(v, Tensor) else v, p.device)
                    v = v.astype(p.dtype, copy=True)
                new_entry[name] = v
            new_state[p] = new_entry
        for saved, own in zip(groups, self.param_groups):
            for k, v in saved.items():
                if k != "params":
                    own[k] = tuple(v) if isinstance(own.get(k), tuple) else v
        self.state = new_state

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for i, g in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            lines += [f"    {k}: {v}" for k, v in sorted(g.items()) if k != "params"]
        return "\n".join(lines + [")"])


class SGD(Optimizer):
    """Stochastic gradient descent with momentum (PyTorch's formulas)::

    g ← g + wd·p                                    (weight decay, L2 form)
    b ← g  (first step),  b ← μ·b + (1 − τ)·g       (momentum μ, dampening τ)
    g ← g + μ·b  (nesterov)   or   g ← b
    p ← p − lr·g
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
    ) -> None:
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("nesterov momentum needs momentum > 0 and dampening = 0")
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening,
                        weight_decay=weight_decay, nesterov=nesterov)  # fmt: skip
        super().__init__(params, defaults)

    def _update(self, p: Tensor, grad: Any, state: dict[str, Any], group: dict[str, Any]) -> None:
        lr, mu, wd = group["lr"], group["momentum"], group["weight_decay"]
        g = grad + wd * p.data if wd != 0 else grad
        if mu != 0:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = g.astype(p.dtype, copy=True)
            else:
                buf *= mu
                buf += (1 - group["dampening"]) * g
            g = g + mu * buf if group["nesterov"] else buf
        p.data -= lr * g


class AdamW(Optimizer):
    """Adam with decoupled weight decay (Loshchilov & Hutter 2019), PyTorch's ``AdamW``::

        t ← t + 1
        p ← p − lr·wd·p                                  (decoupled decay, before the step)
        m ← β1·m + (1 − β1)·g          v ← β2·v + (1 − β2)·g²
        m̂ = m / (1 − β1ᵗ)              v̂ = v / (1 − β2ᵗ)
        p ← p − lr·m̂ / (√v̂ + eps)

    computed as PyTorch does: ``step_size = lr / (1 − β1ᵗ)`` and
    ``denom = √v / √(1 − β2ᵗ) + eps``, in place with one scratch array per parameter.
    State per parameter: ``step`` (int), ``exp_avg`` (m), ``exp_avg_sq`` (v).
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.01,
    ) -> None:
        betas = tuple(float(b) for b in betas)
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        super().__init__(params, defaults)

    def _validate(self, group: dict[str, Any]) -> None:
        super()._validate(group)
        b1, b2 = group["betas"]
        if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
            raise ValueError(f"betas must be in [0, 1), found {group['betas']}")

    def _update(self, p: Tensor, grad: Any, state: dict[str, Any], group: dict[str, Any]) -> None:
        xp = xp_of(p.data)
        lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
        beta1, beta2 = group["betas"]
        if not state:
            state["step"] = 0
            state["exp_avg"] = xp.zeros_like(p.data)
            state["exp_avg_sq"] = xp.zeros_like(p.data)
        state["step"] += 1
        t = state["step"]
        m, v = state["exp_avg"], state["exp_avg_sq"]
        if K.enabled(xp) and p.data.dtype == grad.dtype == m.dtype == "float32":
            K.adamw_update_(p.data, grad, m, v, lr, (beta1, beta2), eps, wd, t)  # one pass
            return

        if wd != 0:
            p.data *= 1 - lr * wd
        # m ← β1·m + (1 − β1)·g, written as PyTorch's lerp (same rounding): with w = 1 − β1,
        # m + w(g − m) when w < 0.5, else g − (1 − w)(g − m).
        tmp = grad - m
        if 1 - beta1 < 0.5:
            tmp *= 1 - beta1
            m += tmp
        else:
            tmp *= beta1
            xp.subtract(grad, tmp, out=m)
        xp.multiply(grad, grad, out=tmp)  # v ← β2·v + (1 − β2)·g²
        tmp *= 1 - beta2
        v *= beta2
        v += tmp

        step_size = lr / (1 - beta1**t)
        xp.sqrt(v, out=tmp)  # denom = √v / √(1 − β2ᵗ) + eps
        tmp /= math.sqrt(1 - beta2**t)
        tmp += eps
        xp.divide(m, tmp, out=tmp)
        tmp *= step_size
        p.data -= tmp


def flatten_state_dict(state_dict: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split an optimizer state dict into ``arrays`` (``"state.{i}.{name}"`` -> ndarray, for
    safetensors) and ``meta`` (JSON-able: the groups and the scalar state, e.g. ``step``)."""
    arrays: dict[str, Any] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, entry in state_dict["state"].items():
        for name, v in entry.items():
            if _is_array(v):
                arrays[f"state.{idx}.{name}"] = np.ascontiguousarray(to_numpy(v))
            else:
                scalars.setdefault(str(idx), {})[name] = v.item() if hasattr(v, "item") else v
    return arrays, {"scalars": scalars, "param_groups": state_dict["param_groups"]}


def unflatten_state_dict(arrays: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`flatten_state_dict`."""
    state: dict[int, dict[str, Any]] = {}
    for idx, entry in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(entry)
    for key, arr in arrays.items():
        prefix, idx, name = key.split(".", 2)
        if prefix != "state":
            raise ValueError(f"expected keys 'state.<index>.<name>', found {key!r}")
        state.setdefault(int(idx), {})[name] = arr
    return {"state": state, "param_groups": meta["param_groups"]}
