"""Training precision: ``fp32``, ``tf32``, ``fp16`` or ``bf16``, with fp32 master weights.

* ``fp32`` — everything in float32 (the reference).
* ``tf32`` — float32 arrays; on the GPU, float32 matmuls run on TF32 tensor cores (10-bit
  mantissa products, float32 accumulation) through CuPy's cuBLAS compute-type setting. NumPy has
  no TF32, so on the CPU it equals ``fp32``.
* ``fp16`` — the forward and backward run in float16; the trainable parameters keep **fp32
  master weights** that the optimizer updates, and the loss is scaled dynamically
  (:class:`~minipeft.optim.LossScaler`) so small gradients do not flush to zero; a step whose
  gradients overflow is skipped.
* ``bf16`` — bfloat16 *values*: float32 arrays rounded to bfloat16's 8-bit mantissa
  (round-to-nearest-even) at the same points float16 casts. bfloat16 has float32's exponent
  range, so no loss scaling. NumPy has no bfloat16 dtype, so this is an emulation: it has
  bfloat16's numerics, not its memory or speed.

How :class:`MixedPrecision` runs a step (the "O2" recipe of Micikevicius et al. 2018, §3.1):

1. once, at the start: frozen float parameters and float buffers are cast to the compute dtype
   (and stay there, as a base loaded with ``dtype=float16`` would); trainable ones keep float32;
2. ``cast()`` before the forward: each trainable parameter's array is swapped for a compute-
   dtype copy (its fp32 master is kept aside);
3. forward, ``backward(S · loss)``: gradients arrive in the compute dtype;
4. ``restore()`` after the backward: masters go back, gradients become fp32 ``g / S``; it
   returns False when any of them is inf/NaN (the step must be skipped).

Between steps the parameters hold their fp32 masters, so the optimizer, gradient clipping,
checkpoints and callbacks (AdaLoRA's allocation) see plain float32 training.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from .backend import device_of, xp_of
from .optim.loss_scaler import LossScaler

__all__ = [
    "PRECISIONS",
    "check_precision",
    "round_to_bf16",
    "set_matmul_precision",
    "MixedPrecision",
]

PRECISIONS = ("fp32", "tf32", "fp16", "bf16")

# cuBLAS compute types as CuPy numbers them (cupy/_core/_routines_linalg.pyx)
_COMPUTE_TYPE_DEFAULT, _COMPUTE_TYPE_TF32 = 1, 7


def check_precision(precision: Any) -> str:
    """``precision`` if it is one of :data:`PRECISIONS`, else a ValueError naming them."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {', '.join(PRECISIONS)}, found {precision!r}")
    return precision


def round_to_bf16(x: Any) -> Any:
    """float32 ``x`` rounded to the nearest bfloat16 value (ties to even), still float32.

    bfloat16 is float32's top 16 bits: adding 0x7FFF plus the lowest kept bit, then clearing the
    low 16 bits, rounds to nearest with ties to even (the rounding of ``torch.bfloat16``
    casts). Inf stays inf; NaN stays NaN; a value past bfloat16's largest rounds to inf.
    """
    xp = xp_of(x)
    if x.dtype != np.float32:
        raise TypeError(f"round_to_bf16 takes float32, found {x.dtype}")
    bits = xp.ascontiguousarray(x).view(np.uint32)
    lsb = (bits >> np.uint32(16)) & np.uint32(1)
    rounded = (bits + np.uint32(0x7FFF) + lsb) & np.uint32(0xFFFF0000)
    out = rounded.view(np.float32)
    return xp.where(xp.isnan(x), x, out)


def set_matmul_precision(precision: str, device: str) -> bool:
    """Let float32 matmuls on the GPU use TF32 tensor cores when ``precision == "tf32"`` (and
    switch them back otherwise). Returns whether TF32 is now on; on the CPU it is always False."""
    check_precision(precision)
    if device != "cuda":
        return False
    import cupy  # noqa: PLC0415 — only reached with device "cuda", where backend loaded it

    linalg = cupy._core._routines_linalg  # CuPy's only switch for cuBLAS's compute type
    tf32 = precision == "tf32"
    linalg.set_compute_type(np.float32, _COMPUTE_TYPE_TF32 if tf32 else _COMPUTE_TYPE_DEFAULT)
    return tf32


class MixedPrecision:
    """fp16/bf16 compute for ``params`` (the trainable parameters) with fp32 masters.

    ``MixedPrecision(model, params, "fp32")`` (or ``"tf32"``) does nothing in ``cast``/``restore``
    except return whether the gradients are finite, so the training loop has one code path.
    """

    def __init__(self, model: Any, params: Iterable[Any], precision: str = "fp32",
                 device: str = "cpu", scaler: LossScaler | None = None) -> None:  # fmt: skip
        self.precision = check_precision(precision)
        self.params = list(params)
        self.half = precision in ("fp16", "bf16")
        self.scaler = (scaler or LossScaler()) if precision == "fp16" else None
        self.tf32 = set_matmul_precision(precision, device)
        self._masters: list[Any] = []
        if self.half:
            trainable = {id(p) for p in self.params}
            for t in [*model.parameters(), *model.buffers()]:
                if id(t) not in trainable and t.data.dtype.kind == "f":
                    t.data = self.to_compute(t.data)

    @property
    def loss_scale(self) -> float:
        """S, the factor the loss is multiplied by before backward (1 without fp16)."""
        return self.scaler.scale if self.scaler is not None else 1.0

    def to_compute(self, arr: Any) -> Any:
        """An array in the compute precision: float16, or float32 holding bfloat16 values."""
        if self.precision == "fp16":
            return arr.astype(np.float16)
        if self.precision == "bf16":
            return round_to_bf16(arr.astype(np.float32, copy=False))
        return arr

    def quiet_overflow(self) -> Any:
        """A context in which float16 overflow is not warned about: with loss scaling it is
        expected now and then, detected by :meth:`restore` and handled by skipping the step."""
        if self.scaler is None:
            return contextlib.nullcontext()
        return np.errstate(over="ignore", invalid="ignore")

    def cast(self) -> None:
        """Before the forward: trainable parameters hold compute copies; masters kept aside."""
        if not self.half:
            return
        self._masters = [p.data for p in self.params]
        for p in self.params:
            p.data = self.to_compute(p.data)

    def restore(self) -> bool:
        """After the backward: masters back, gradients fp32 and unscaled. True if all finite."""
        if self._masters:
            inv = 1.0 / self.loss_scale
            for p, master in zip(self.params, self._masters):
                p.data = master
                if p.grad is not None:
                    g = p.grad.astype(np.float32)
                    if inv != 1.0:
                        g *= inv
                    p.grad = g
            self._masters = []
        with self.quiet_overflow():
            return self.grads_finite()

    def grads_finite(self) -> bool:
        """True when every gradient is finite; one host sync (a sum is inf/NaN iff one term is,
        short of float32 overflow, which is an overflow too)."""
        grads = [p.grad for p in self.params if p.grad is not None]
        if not grads:
            return True
        xp = xp_of(grads[0])
        total = xp.stack([g.sum(dtype=np.float32) for g in grads]).sum()
        return math.isfinite(float(total))

    def update(self, finite: bool) -> None:
        """After the step (taken or skipped): let the loss scale react."""
        if self.scaler is not None:
            self.scaler.update(not finite)

    def state_dict(self) -> dict[str, Any]:
        return {"precision": self.precision,
                "scaler": self.scaler.state_dict() if self.scaler else None}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])

    def __repr__(self) -> str:
        device = device_of(self.params[0].data) if self.params else "cpu"
        return f"MixedPrecision({self.precision!r}, device={device!r}, scale={self.loss_scale:g})"
