"""``Linear4bit``: a frozen linear layer whose weight is stored in 4 bits (bitsandbytes' layout).

    y = x Ŵᵀ + b,   Ŵ = dequantize_4bit(weight, weight.quant_state)   x (..., in) → y (..., out)

``weight`` is a :class:`Params4bit`: the packed codes, uint8 (ceil(out·in / 2), 1), two per byte,
plus the :class:`~minipeft.quant.state.QuantState` that turns them back into Ŵ (out, in) — the
same object bitsandbytes calls ``Params4bit``. It is a Parameter, so the layer meets the linear
contract (``in_features``, ``out_features``, ``weight``) and LoRA wraps it unchanged: that is
QLoRA. Its dtype is uint8, never a float, so nothing mistakes the codes for a float weight, and it
can never require grad. ``bias`` stays a float Parameter.

The base-weight protocol gives merging a float view: :meth:`Linear4bit.get_base_weight`
dequantizes to float32 and :meth:`Linear4bit.set_base_weight` requantizes with the layer's own
settings (quant type, blocksize, double quantization, original dtype). Requantizing rounds again,
so a merged 4-bit model computes slightly differently from the unmerged one; like PEFT, it warns.

The forward is one fused op (:class:`minipeft.ops.linear4bit.Linear4bit`) that dequantizes to the
input's dtype, multiplies, and in backward dequantizes again for the input gradient only, instead
of keeping the float weight alive between the two.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any

import numpy as np

from ..backend import device_of, to_device
from ..nn import Linear, Module, Parameter
from ..tensor import Tensor
from .blockwise import dequantize_4bit, quantize_4bit
from .packed_linear import PackedLinear, PackedParameter
from .state import QuantState

__all__ = ["Linear4bit", "Params4bit", "check_quant_state", "MERGE_WARNING"]

# PEFT's words (peft/tuners/lora/bnb.py, Linear4bit.merge), so filters written for PEFT match.
MERGE_WARNING = (
    "Merge lora module to 4-bit linear may get different generations due to rounding errors."
)


def _numel(shape: tuple[int, ...]) -> int:
    return math.prod(int(s) for s in shape)


def check_quant_state(packed: Any, state: QuantState, where: str = "4-bit weight") -> None:
    """Raise ``ValueError`` (naming ``where``) unless ``packed`` and ``state`` describe one weight:
    uint8 codes (ceil(n/2), 1), one absmax per block of ``blocksize`` (uint8 with double
    quantization, float otherwise), a 16-entry codebook, and with double quantization one nested
    absmax per ``nested.blocksize`` blocks, a 256-entry map and an offset."""
    problems = []
    shape = tuple(int(s) for s in state.shape)
    if state.quant_type not in ("nf4", "fp4"):
        problems.append(f"quant_type: expected 'nf4' or 'fp4', found {state.quant_type!r}")
    if len(shape) != 2:
        problems.append(f"shape: expected a 2-D (out, in) weight shape, found {shape}")
    n = _numel(shape)
    if not isinstance(state.blocksize, int) or state.blocksize <= 0:
        problems.append(f"blocksize: expected a positive int, found {state.blocksize!r}")
        n_blocks = None
    else:
        n_blocks = -(-n // state.blocksize)
    want = ((n + 1) // 2, 1)
    if getattr(packed, "dtype", None) != np.uint8 or tuple(packed.shape) != want:
        problems.append(
            f"weight: expected uint8 codes of shape {want} for a {shape} weight "
            f"(two 4-bit codes per byte), found {getattr(packed, 'dtype', type(packed).__name__)} "
            f"{tuple(getattr(packed, 'shape', ()))}"
        )
    absmax_kind = "u" if state.nested is not None else "f"
    if n_blocks is not None and (
        tuple(state.absmax.shape) != (n_blocks,) or state.absmax.dtype.kind != absmax_kind
    ):
        problems.append(
            f"absmax: expected {'uint8' if absmax_kind == 'u' else 'float'} of shape "
            f"({n_blocks},) (one per block of {state.blocksize}), found {state.absmax.dtype} "
            f"{tuple(state.absmax.shape)}"
        )
    if tuple(state.code.shape) != (16,):
        problems.append(f"quant_map: expected 16 codes, found shape {tuple(state.code.shape)}")
    nested = state.nested
    if nested is not None and n_blocks is not None:
        m = -(-n_blocks // nested.blocksize) if nested.blocksize > 0 else -1
        if tuple(nested.absmax.shape) != (m,):
            problems.append(
                f"nested_absmax: expected shape ({m},) (one per {nested.blocksize} blocks), "
                f"found {tuple(nested.absmax.shape)}"
            )
        if tuple(nested.code.shape) != (256,):
            problems.append(
                f"nested_quant_map: expected 256 codes, found shape {tuple(nested.code.shape)}"
            )
        if state.offset is None:
            problems.append("nested_offset: missing (double quantization needs it)")
    if problems:
        raise ValueError(
            f"{where}: the 4-bit state does not match its weight:\n  " + "\n  ".join(problems)
        )


def _state_on(state: QuantState, device: str) -> QuantState:
    """``state`` with its arrays on ``device`` (the same object when they already are)."""
    if device_of(state.absmax) == device:
        return state
    nested = state.nested
    if nested is not None:
        nested = dataclasses.replace(
            nested, absmax=to_device(nested.absmax, device), code=to_device(nested.code, device)
        )
    return dataclasses.replace(
        state,
        absmax=to_device(state.absmax, device),
        code=to_device(state.code, device),
        nested=nested,
    )


class Params4bit(PackedParameter):
    """The 4-bit weight: packed codes uint8 (ceil(n/2), 1) and their ``quant_state``.

    bitsandbytes' ``Params4bit``. Frozen for good: asking it to require grad raises. PEFT counts
    its parameters as ``numel() × 2`` (two codes per byte); ``params_per_element`` says so.
    """

    params_per_element = 2
    what, stores, layer = "4-bit weight", "4-bit codes", "Linear4bit"
    train = "get_peft_model(model, LoraConfig(...)): QLoRA"

    def __init__(self, data: Any, quant_state: QuantState) -> None:
        arr = data.data if isinstance(data, Tensor) else data
        check_quant_state(arr, quant_state)
        self._init(arr, False)
        self.quant_state = quant_state

    @property
    def quant_type(self) -> str:
        return self.quant_state.quant_type

    @property
    def blocksize(self) -> int:
        return self.quant_state.blocksize

    @property
    def compress_statistics(self) -> bool:
        return self.quant_state.nested is not None

    def __repr__(self) -> str:
        s = self.quant_state
        return (
            f"Params4bit({s.quant_type}, shape={tuple(s.shape)}, blocksize={s.blocksize}, "
            f"compress_statistics={self.compress_statistics}, packed {self.shape})"
        )


class Linear4bit(PackedLinear):
    """y = x Ŵᵀ + b with Ŵ (out, in) stored in 4 bits (see the module docstring).

    ``Linear4bit(in, out, bias, quant_type, blocksize, compress_statistics)`` quantizes a freshly
    initialised Linear (PyTorch's init); :meth:`from_linear` quantizes an existing one and
    :meth:`from_quantized` wraps codes and state read from a file.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        quant_type: str = "nf4",
        blocksize: int = 64,
        compress_statistics: bool = True,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        dense = Linear(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self._setup(dense, quant_type, blocksize, compress_statistics)

    # ------------------------------------------------------------------ construction
    def _setup(self, linear: Any, quant_type: str, blocksize: int, compress: bool) -> None:
        w = linear.weight
        packed, state = quantize_4bit(
            w.data, blocksize=blocksize, quant_type=quant_type, compress_statistics=compress
        )
        self.in_features = int(linear.in_features)
        self.out_features = int(linear.out_features)
        self.weight = Params4bit(packed, state)
        bias = getattr(linear, "bias", None)
        # A copy: merging writes the bias in place, and must not change the float layer's.
        self.bias = None if bias is None else Parameter(bias.data.copy(), bias.requires_grad)

    @classmethod
    def from_linear(
        cls,
        linear: Module,
        quant_type: str = "nf4",
        blocksize: int = 64,
        compress_statistics: bool = True,
    ) -> Linear4bit:
        """Quantize a float linear layer (W (out, in), optional bias) into a new Linear4bit.

        The bias is copied, not shared. Raises for a layer that is already quantized or whose
        weight is not a float (out, in) array.
        """
        if isinstance(linear, Linear4bit) or isinstance(
            getattr(linear, "weight", None), Params4bit
        ):
            raise ValueError(
                f"{type(linear).__name__} is already quantized to 4 bits; quantizing it again "
                "would round already rounded weights (dequantize() it first if you mean to)"
            )
        w = getattr(linear, "weight", None)
        sizes = (getattr(linear, "in_features", None), getattr(linear, "out_features", None))
        if (
            not isinstance(linear, Module)
            or not all(isinstance(s, int) for s in sizes)
            or w is None
        ):
            raise TypeError(
                f"Linear4bit.from_linear expects a linear layer (in_features, out_features, "
                f"weight), found {type(linear).__name__}"
            )
        if w.dtype.kind != "f" or tuple(w.shape) != (sizes[1], sizes[0]):
            raise TypeError(
                f"Linear4bit.from_linear expects a float weight of shape (out_features, "
                f"in_features) = {(sizes[1], sizes[0])}, found {w.dtype} {tuple(w.shape)}"
            )
        layer = cls.__new__(cls)
        Module.__init__(layer)
        layer._setup(linear, quant_type, blocksize, compress_statistics)
        return layer

    @classmethod
    def from_quantized(
        cls, packed: Any, state: QuantState, bias: Any = None, where: str = "4-bit weight"
    ) -> Linear4bit:
        """A layer from codes and state as stored (e.g. read from a bitsandbytes file); raises
        naming ``where`` when they do not describe one (out, in) weight."""
        check_quant_state(packed, state, where)
        layer = cls.__new__(cls)
        Module.__init__(layer)
        layer.out_features, layer.in_features = (int(s) for s in state.shape)
        layer.weight = Params4bit(packed, state)
        if bias is not None:
            b = bias.data if isinstance(bias, Tensor) else bias
            if tuple(b.shape) != (layer.out_features,) or b.dtype.kind != "f":
                raise ValueError(
                    f"{where}: expected a float bias of shape "
                    f"({layer.out_features},), found {b.dtype} {tuple(b.shape)}"
                )
            layer.bias = Parameter(b)
        else:
            layer.bias = None
        return layer

    # ------------------------------------------------------------------ state
    @property
    def quant_state(self) -> QuantState:
        """The weight's QuantState, on the weight's device (moved along after ``to(device)``)."""
        state = _state_on(self.weight.quant_state, self.weight.device)
        self.weight.quant_state = state
        return state

    @property
    def quant_type(self) -> str:
        return self.weight.quant_type

    @property
    def blocksize(self) -> int:
        return self.weight.blocksize

    @property
    def compress_statistics(self) -> bool:
        return self.weight.compress_statistics

    # ------------------------------------------------------------------ base-weight protocol
    def get_base_weight(self) -> Any:
        """Ŵ (out, in) as a fresh float32 array on the layer's device (for merging)."""
        return dequantize_4bit(self.weight.data, self.quant_state).astype(np.float32)

    def set_base_weight(self, w: Any) -> None:
        """Requantize ``w`` (out, in) with this layer's settings and store it (the Params4bit
        object stays the same). Rounds again, so it warns as PEFT does."""
        shape = (self.out_features, self.in_features)
        if tuple(getattr(w, "shape", ())) != shape or w.dtype.kind != "f":
            raise ValueError(
                f"Linear4bit.set_base_weight: expected a float array of shape {shape}, found "
                f"{getattr(w, 'dtype', type(w).__name__)} {tuple(getattr(w, 'shape', ()))}"
            )
        warnings.warn(MERGE_WARNING, UserWarning, stacklevel=3)
        old = self.quant_state
        w = to_device(w, self.weight.device).astype(old.dtype, copy=False)
        packed, state = quantize_4bit(
            w,
            blocksize=old.blocksize,
            quant_type=old.quant_type,
            compress_statistics=old.nested is not None,
        )
        self.weight.data[...] = packed
        self.weight.quant_state = state

    def packed(self) -> tuple[QuantState, Any]:
        return self.quant_state, dequantize_4bit

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, quant_type={self.quant_type}, "
            f"blocksize={self.blocksize}, compress_statistics={self.compress_statistics}"
        )
