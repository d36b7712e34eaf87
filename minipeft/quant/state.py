"""``QuantState``: everything needed to dequantize a 4-bit weight (bitsandbytes' fields).

A weight W of ``shape`` is flattened row-major into n values and cut into blocks of
``blocksize``; each block keeps its absolute maximum (``absmax``, (ceil(n / blocksize),)) and
each value the index of its nearest code in ``code`` (the 16-value NF4 or FP4 codebook, scaled
to [-1, 1]): W ≈ code[index] · absmax[block]. With double quantization (``nested`` set) the
absmax values themselves are stored in 8 bits: ``absmax`` then holds uint8 indices into
``nested.code`` (bitsandbytes' dynamic map), scaled per block of ``nested.blocksize`` (256) by
``nested.absmax``, with ``offset`` (their mean) added back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["NestedState", "QuantState"]


@dataclass
class NestedState:
    """The 8-bit quantization of the absmax values (double quantization)."""

    absmax: Any  # float32 (ceil(n_blocks / blocksize),)
    code: Any  # float32 (256,): bitsandbytes' dynamic map
    blocksize: int = 256


@dataclass
class QuantState:
    """bitsandbytes' ``QuantState`` for one 4-bit weight (raw arrays, NumPy or CuPy)."""

    absmax: Any  # float32 (n_blocks,), or uint8 (n_blocks,) when ``nested`` is set
    shape: tuple[int, ...]  # the original weight's shape
    code: Any  # float32 (16,): the codebook (``quant_map`` in files)
    blocksize: int = 64
    quant_type: str = "nf4"  # "nf4" | "fp4"
    dtype: str = "float32"  # the dtype dequantize returns (the original weight's)
    offset: float | None = None  # mean of the absmax values (double quantization)
    nested: NestedState | None = None

    @property
    def n_blocks(self) -> int:
        n = 1
        for s in self.shape:
            n *= int(s)
        return -(-n // self.blocksize)
