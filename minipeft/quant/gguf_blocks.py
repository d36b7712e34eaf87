"""llama.cpp's block quantization formats Q8_0, Q4_0 and Q4_1, on NumPy or CuPy arrays.

A row of n weights (n a multiple of 32) is stored as n / 32 blocks, one after the other; each
block holds 32 weights (``ggml-common.h``, ``block_q8_0`` / ``block_q4_0`` / ``block_q4_1``)::

    Q8_0  34 bytes: f16 d, 32 × int8 q                          w_i = d · q_i
    Q4_0  18 bytes: f16 d, 16 bytes of nibbles                  w_i = d · (q_i − 8)
    Q4_1  20 bytes: f16 d, f16 m, 16 bytes of nibbles           w_i = d · q_i + m

In the nibble bytes, byte j holds element j in its low nibble and element j + 16 in its high
nibble. So a (out, in) weight is a uint8 array (out, in / 32 · type_size) — the layout GGUF files
and ``gguf.quants`` use — and ``dequantize_blocks`` gives float32 (out, in).

Dequantization does the same float32 operations in the same order as ``gguf.quants`` (f16 → f32
scale, integer codes → f32, one multiply, for Q4_1 then one add), so it equals it bit for bit.
Quantization mirrors ``gguf.quants`` (itself bit-exact with ``ggml-quants.c``'s reference):

    Q8_0: d = max|w| / 127,        q = round_half_away(w / d)
    Q4_0: d = w_{argmax|w|} / −8,  q = min(trunc(w / d + 8.5), 15)
    Q4_1: d = (max − min) / 15,    m = min,  q = min(trunc((w − m) / d + 0.5), 15)

(the divisions are multiplications by 1/d in float32, and d = 0 gives q from 1/d = 0).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backend import xp_of

__all__ = [
    "BLOCK_SIZE",
    "GGML_TYPES",
    "TYPE_SIZES",
    "blocks_nbytes",
    "check_type",
    "dequantize_blocks",
    "quantize_blocks",
]

BLOCK_SIZE = 32  # weights per block, for all three formats
TYPE_SIZES = {"q8_0": 34, "q4_0": 18, "q4_1": 20}  # bytes per block
GGML_TYPES = {"q4_0": 2, "q4_1": 3, "q8_0": 8}  # GGMLQuantizationType values (constants.py)


def check_type(type_name: Any) -> str:
    """The lower-case type name, or a ValueError naming the supported ones."""
    name = str(type_name.name if hasattr(type_name, "name") else type_name).lower()
    if name not in TYPE_SIZES:
        raise ValueError(
            f"GGUF block type: expected one of {', '.join(sorted(TYPE_SIZES))}, found {type_name!r}"
        )
    return name


def blocks_nbytes(n: int, type_name: str) -> int:
    """Bytes of n weights (n a multiple of 32) stored in ``type_name`` blocks: n / 32 · size."""
    return n // BLOCK_SIZE * TYPE_SIZES[check_type(type_name)]


def _f16(xp: Any, raw: Any) -> Any:
    """Two bytes per row (nb, 2) read as a float16, widened to float32 (nb, 1)."""
    return xp.ascontiguousarray(raw).view(xp.float16).astype(xp.float32)


def _nibbles(xp: Any, qs: Any) -> Any:
    """(nb, 16) bytes → (nb, 32) codes 0..15: low nibbles are elements 0..15, high 16..31."""
    return xp.concatenate([qs & 0x0F, qs >> 4], axis=1)


def dequantize_blocks(raw: Any, type_name: str, shape: tuple[int, ...]) -> Any:
    """float32 weights of ``shape`` from the uint8 blocks ``raw`` (any shape with the right
    number of bytes), on raw's device. Raises for a size that does not match."""
    name = check_type(type_name)
    xp = xp_of(raw)
    n = int(np.prod(shape, dtype=np.int64))
    size = TYPE_SIZES[name]
    if raw.dtype != np.uint8 or int(raw.size) != blocks_nbytes(n, name) or n % BLOCK_SIZE:
        raise ValueError(
            f"{name}: expected {blocks_nbytes(n, name)} uint8 bytes for a {tuple(shape)} weight "
            f"(a multiple of {BLOCK_SIZE} weights, {size} bytes per block of {BLOCK_SIZE}), "
            f"found {raw.dtype} of {raw.size} elements"
        )
    b = raw.reshape(-1, size)  # (nb, size): one block per row
    if name == "q8_0":
        q = xp.ascontiguousarray(b[:, 2:]).view(xp.int8).astype(xp.float32)
        w = q * _f16(xp, b[:, :2])
    elif name == "q4_0":
        q = (_nibbles(xp, b[:, 2:]).astype(xp.int8) - xp.int8(8)).astype(xp.float32)
        w = _f16(xp, b[:, :2]) * q
    else:  # q4_1
        q = _nibbles(xp, b[:, 4:]).astype(xp.float32)
        w = _f16(xp, b[:, :2]) * q + _f16(xp, b[:, 2:4])
    return w.reshape(shape)


def _round_half_away(xp: Any, x: Any) -> Any:
    """Round to nearest, halves away from zero (C's roundf; gguf's ``np_roundf``)."""
    a = xp.abs(x)
    floored = xp.floor(a)
    return xp.sign(x) * (floored + xp.floor(2 * (a - floored)))


def _inverse(xp: Any, d: Any) -> Any:
    with np.errstate(divide="ignore"):
        return xp.where(d == 0, xp.float32(0), xp.float32(1) / xp.where(d == 0, 1, d))


def _pack_nibbles(xp: Any, q: Any) -> Any:
    """(nb, 32) codes 0..15 → (nb, 16) bytes, element j low and j + 16 high."""
    q = q.astype(xp.uint8)
    return q[:, :16] | (q[:, 16:] << 4)


def _f16_bytes(xp: Any, x: Any) -> Any:
    return xp.ascontiguousarray(x.astype(xp.float16)).view(xp.uint8)  # (nb, 2)


def quantize_blocks(w: Any, type_name: str) -> Any:
    """uint8 blocks (..., last / 32 · type_size) of float weights ``w`` (..., last), last a
    multiple of 32, on w's device; the formulas are in the module docstring."""
    name = check_type(type_name)
    xp = xp_of(w)
    if w.ndim == 0 or w.shape[-1] % BLOCK_SIZE:
        raise ValueError(
            f"{name}: the last axis must be a multiple of {BLOCK_SIZE} weights, found shape "
            f"{tuple(w.shape)}"
        )
    blocks = w.astype(xp.float32).reshape(-1, BLOCK_SIZE)  # (nb, 32)
    if name == "q8_0":
        d = xp.abs(blocks).max(axis=1, keepdims=True) / xp.float32(127)
        q = _round_half_away(xp, blocks * _inverse(xp, d)).astype(xp.int8).view(xp.uint8)
        out = xp.concatenate([_f16_bytes(xp, d), q], axis=1)
    elif name == "q4_0":
        imax = xp.abs(blocks).argmax(axis=-1)[:, None]
        d = xp.take_along_axis(blocks, imax, axis=-1) / xp.float32(-8)
        q = xp.trunc(blocks * _inverse(xp, d) + xp.float32(8.5)).astype(xp.uint8)
        out = xp.concatenate([_f16_bytes(xp, d), _pack_nibbles(xp, xp.minimum(q, 15))], axis=1)
    else:  # q4_1
        lo = blocks.min(axis=-1, keepdims=True)
        d = (blocks.max(axis=-1, keepdims=True) - lo) / xp.float32(15)
        q = xp.trunc((blocks - lo) * _inverse(xp, d) + xp.float32(0.5)).astype(xp.uint8)
        parts = [_f16_bytes(xp, d), _f16_bytes(xp, lo), _pack_nibbles(xp, xp.minimum(q, 15))]
        out = xp.concatenate(parts, axis=1)
    return out.reshape(*w.shape[:-1], w.shape[-1] // BLOCK_SIZE * TYPE_SIZES[name])
