"""``LinearGGUF``: a frozen linear layer whose weight stays in llama.cpp's blocks (Q8_0/Q4_0/Q4_1).

    y = x Ŵᵀ + b,   Ŵ = dequantize_blocks(weight, type, (out, in))   x (..., in) → y (..., out)

``weight`` is a :class:`ParamsGGUF`: the raw blocks exactly as a GGUF file stores them, uint8
(out, in / 32 · type_size) (Q4_0: 18 bytes per 32 weights, Q4_1: 20, Q8_0: 34; see
:mod:`minipeft.quant.gguf_blocks`), with its ``type_name`` and logical ``quant_shape``. It is a
Parameter of dtype uint8 that can never require grad, so the layer meets the linear contract
(``in_features``, ``out_features``, ``weight``) and LoRA wraps it unchanged: QLoRA on the file's
own quantization, with no float copy of the base ever kept.

The forward is the fused packed-linear op that ``Linear4bit`` uses too
(:class:`minipeft.ops.linear4bit.Linear4bit`, the dequantizer passed in): it dequantizes to
the input's dtype, multiplies, and dequantizes again in backward for the input gradient only.
The base-weight protocol dequantizes (``get_base_weight``: float32 (out, in)) and requantizes
(``set_base_weight``) in the layer's own type, so merging works; requantizing rounds again, so it
warns (:data:`MERGE_WARNING`), as merging into a 4-bit layer does.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from ..backend import to_device
from ..nn import Module, Parameter
from ..tensor import Tensor
from .gguf_blocks import BLOCK_SIZE, TYPE_SIZES, check_type, dequantize_blocks, quantize_blocks
from .packed_linear import PackedLinear, PackedParameter

__all__ = ["MERGE_WARNING", "LinearGGUF", "ParamsGGUF"]

MERGE_WARNING = (
    "Merge lora module to GGUF-quantized linear may get different generations due to rounding "
    "errors."
)


def _dequantize(raw: Any, state: tuple[str, tuple[int, int]]) -> Any:
    """The op's dequantizer: state = (type name, (out, in))."""
    return dequantize_blocks(raw, *state)


class ParamsGGUF(PackedParameter):
    """The packed weight: raw blocks uint8 (out, in / 32 · type_size), ``type_name`` and
    ``quant_shape`` (out, in). Frozen for good: asking it to require grad raises."""

    what, stores, layer = "GGUF-quantized weight", "packed blocks", "LinearGGUF"
    train = "get_peft_model(model, LoraConfig(...))"

    def __init__(self, data: Any, type_name: str, shape: tuple[int, int]) -> None:
        arr = data.data if isinstance(data, Tensor) else data
        name = check_type(type_name)
        shape = tuple(int(s) for s in shape)
        if len(shape) != 2 or shape[1] % BLOCK_SIZE:
            raise ValueError(
                f"{name}: expected a 2-D (out, in) shape with in a multiple of {BLOCK_SIZE}, "
                f"found {shape}"
            )
        want = (shape[0], shape[1] // BLOCK_SIZE * TYPE_SIZES[name])
        if getattr(arr, "dtype", None) != np.uint8 or int(arr.size) != want[0] * want[1]:
            raise ValueError(
                f"{name}: expected uint8 blocks of shape {want} for a {shape} weight, found "
                f"{getattr(arr, 'dtype', type(arr).__name__)} {tuple(getattr(arr, 'shape', ()))}"
            )
        self._init(arr.reshape(want), False)
        self.type_name, self.quant_shape = name, shape

    def __repr__(self) -> str:
        return f"ParamsGGUF({self.type_name}, shape={self.quant_shape}, packed {self.shape})"


class LinearGGUF(PackedLinear):
    """y = x Ŵᵀ + b with Ŵ (out, in) kept as GGUF blocks (see the module docstring).

    Build it with :meth:`from_linear` (quantize a float Linear) or :meth:`from_blocks` (wrap a
    file's raw blocks without a float copy).
    """

    @classmethod
    def from_blocks(
        cls, raw: Any, type_name: str, shape: tuple[int, int], bias: Any = None
    ) -> LinearGGUF:
        """A layer on ``raw`` (uint8 blocks of a (out, in) weight, shared, not copied)."""
        layer = cls.__new__(cls)
        Module.__init__(layer)
        layer.weight = ParamsGGUF(raw, type_name, shape)
        layer.out_features, layer.in_features = layer.weight.quant_shape
        if bias is not None:
            b = bias.data if isinstance(bias, Tensor) else bias
            if tuple(b.shape) != (layer.out_features,) or b.dtype.kind != "f":
                raise ValueError(
                    f"LinearGGUF: expected a float bias of shape ({layer.out_features},), "
                    f"found {b.dtype} {tuple(b.shape)}"
                )
            bias = Parameter(b)
        layer.bias = bias
        return layer

    @classmethod
    def from_linear(cls, linear: Module, type_name: str = "q4_0") -> LinearGGUF:
        """Quantize a float linear layer (W (out, in), in a multiple of 32) to ``type_name``;
        the bias is copied, not shared."""
        w = getattr(linear, "weight", None)
        if isinstance(linear, LinearGGUF) or w is None or w.dtype.kind != "f":
            raise TypeError(
                f"LinearGGUF.from_linear expects a float linear layer, found "
                f"{type(linear).__name__} with {'no' if w is None else w.dtype} weight"
            )
        b = getattr(linear, "bias", None)
        raw = quantize_blocks(w.data, type_name)
        return cls.from_blocks(raw, type_name, tuple(w.shape), None if b is None else b.data.copy())

    @property
    def type_name(self) -> str:
        return self.weight.type_name

    # ------------------------------------------------------------------ base-weight protocol
    def get_base_weight(self) -> Any:
        """Ŵ (out, in) as a fresh float32 array on the layer's device (for merging)."""
        return _dequantize(self.weight.data, (self.type_name, self.weight.quant_shape))

    def set_base_weight(self, w: Any) -> None:
        """Requantize ``w`` (out, in) in this layer's type and store it in place. Rounds again,
        so it warns."""
        shape = self.weight.quant_shape
        if tuple(getattr(w, "shape", ())) != shape or w.dtype.kind != "f":
            raise ValueError(
                f"LinearGGUF.set_base_weight: expected a float array of shape {shape}, found "
                f"{getattr(w, 'dtype', type(w).__name__)} {tuple(getattr(w, 'shape', ()))}"
            )
        warnings.warn(MERGE_WARNING, UserWarning, stacklevel=3)
        w = to_device(w, self.weight.device)
        self.weight.data[...] = quantize_blocks(w, self.type_name)

    def packed(self) -> tuple[tuple[str, tuple[int, int]], Any]:
        return (self.type_name, self.weight.quant_shape), _dequantize

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, type={self.type_name}"
        )
