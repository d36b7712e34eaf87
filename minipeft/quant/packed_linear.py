"""``PackedLinear``: what every frozen linear on packed (quantized) weights shares.

    y = x Ŵᵀ + b,   Ŵ = dequantize(weight, state)        x (..., in) → y (..., out)

A subclass stores its packed ``weight`` and says how to unpack it (:meth:`packed`: the state
and the dequantizer); forward (the one packed-linear op, :class:`minipeft.ops.linear4bit.
Linear4bit`, which keeps only the packed bytes between forward and backward) and the float
copy (:meth:`dequantize`) are written here once. ``Linear4bit`` (bitsandbytes' NF4/FP4) and
``LinearGGUF`` (llama.cpp's Q8_0/Q4_0/Q4_1 blocks) are the two.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..functional_checks import float_tensor
from ..nn import Linear, Module, Parameter
from ..ops.linear4bit import Linear4bit as PackedLinearFn
from ..tensor import Tensor

__all__ = ["PackedLinear", "PackedParameter"]


class PackedParameter(Parameter):
    """A packed (quantized) weight: frozen for good, since it holds codes, not floats. Asking
    it to require grad raises, naming what it stores and what to do instead; a subclass sets
    the words: ``what`` it is, what it ``stores``, how to ``train`` on it, its ``layer``."""

    what, stores, train, layer = "packed weight", "packed codes", "", "PackedLinear"

    @property
    def requires_grad(self) -> bool:
        return False

    @requires_grad.setter
    def requires_grad(self, flag: bool) -> None:
        if flag:
            raise TypeError(
                f"a {self.what} ({type(self).__name__}) cannot require grad: it stores "
                f"{self.stores}, not floats. Train an adapter on it ({self.train}), or "
                f"dequantize the layer first ({self.layer}.dequantize())"
            )

    def requires_grad_(self, flag: bool = True) -> PackedParameter:
        self.requires_grad = flag  # raises for True
        return self


class PackedLinear(Module):
    """A frozen linear layer whose weight is packed; see the module docstring."""

    fan_in_fan_out = False  # the protocol weight is (out, in), like Linear's (see weight_layout)

    def packed(self) -> tuple[Any, Callable[[Any, Any], Any]]:
        """(state, dequantize) with ``dequantize(self.weight.data, state)`` → Ŵ (out, in)."""
        raise NotImplementedError

    def dequantize(self, dtype: Any = None) -> Linear:
        """A float ``Linear`` with Ŵ (the dequantizer's dtype unless ``dtype``) and a copy of
        the bias (what ``merge_and_unload(dequantize=True)`` / transformers' ``dequantize()``
        give)."""
        state, unpack = self.packed()
        w = unpack(self.weight.data, state)
        if dtype is not None:
            w = w.astype(np.dtype(dtype))
        dense = Linear.__new__(Linear)
        Module.__init__(dense)
        dense.in_features, dense.out_features = self.in_features, self.out_features
        dense.weight = Parameter(w, requires_grad=False)
        b = self.bias
        dense.bias = None if b is None else Parameter(b.data.astype(w.dtype), b.requires_grad)
        return dense

    def forward(self, x: Tensor) -> Tensor:
        name = type(self).__name__
        x = float_tensor(x, name)
        if x.ndim == 0 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"{name}(in_features={self.in_features}, out_features={self.out_features}): "
                f"expected input (..., {self.in_features}), found shape {x.shape}"
            )
        bias = () if self.bias is None else (self.bias,)
        state, unpack = self.packed()
        return PackedLinearFn.apply(x, self.weight, *bias, state=state, dequantize=unpack)
