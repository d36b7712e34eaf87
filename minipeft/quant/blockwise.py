"""Blockwise 4-bit quantization (NF4/FP4) with double quantization, in bitsandbytes' layout.

For a weight W of any shape, flattened row-major into n values w and cut into blocks of B
(``blocksize``; the last block may be partial and gets its own scale):

    absmax_b = max_{i ∈ b} |w_i|                                    float32 (n_blocks,)
    s_i      = clip(w_i / absmax_b, -1, 1)                          scaled into the code's range
    q_i      = argmin_k |s_i - code_k|                              4-bit index (ties → lower)
    ŵ_i      = code[q_i] · absmax_b                                 (dequantize)

Two indices share a byte, the first element in the high nibble: ``byte_j = q_2j << 4 | q_2j+1``
(an odd count is padded with the code of 0.0), stored as (ceil(n / 2), 1) uint8 — bitsandbytes'
``Params4bit`` shape. Double quantization (QLoRA §3, ``compress_statistics``) stores the absmax
values in 8 bits too: their mean c (``offset``) is subtracted and the rest quantized blockwise
(blocks of 256) with the dynamic map, ``absmax_b ≈ dyn[q2_b] · absmax2_⌊b/256⌋ + c``; at B = 64
that is 4 + 8/64 + 32/(64·256) ≈ 4.127 bits per parameter instead of 4 + 32/64 = 4.5.

The arithmetic follows bitsandbytes' CPU backend (0.50) operation by operation, in float32, so
the bytes are equal (see the tests): nearest code by bucketing against float32 midpoints (a
value on a midpoint takes the lower code), w · (1 / absmax) on full blocks but w / absmax on a
partial last block, absmax clamped at 1e-38 before the reciprocal so an all-zero block stores
code(0.0) (and a partial last block's stored absmax is the clamped one); the 8-bit absmax codes
go through the 65536-bin lookup table of its C kernel (``rounding="lut"``). One difference: the
``offset`` is the float64 mean rounded once to float32, where bitsandbytes takes torch's float32
mean, whose summation order depends on the CPU's vector width — the two can differ by an ulp,
and then so can a few 8-bit absmax codes. (bitsandbytes' CUDA kernels differ from its CPU ones
in small ways — FP4's zero takes the other sign bit, an all-zero block another code, the 8-bit
codes are exact-nearest; these files match the CPU backend, the one that can be tested here.)

Every function works on NumPy or CuPy arrays alike (``xp = xp_of(array)``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..backend import DeviceError, to_numpy, xp_of
from ..ops import cuda_kernels as K
from .codebooks import QUANT_TYPES, code_4bit, dynamic_map
from .state import NestedState, QuantState

__all__ = [
    "BLOCKSIZES_4BIT",
    "NESTED_BLOCKSIZE",
    "QUANT_TYPES",
    "dequantize_4bit",
    "dequantize_absmax",
    "dequantize_blockwise",
    "pack_4bit",
    "quantize_4bit",
    "quantize_blockwise",
    "quantized_bits_per_parameter",
    "quantized_nbytes",
    "unpack_4bit",
]

BLOCKSIZES_4BIT = (32, 64, 128, 256, 512, 1024, 2048, 4096)  # what bitsandbytes accepts
NESTED_BLOCKSIZE = 256  # bitsandbytes' blocksize for the double-quantized absmax
FLOAT_DTYPES = ("float16", "float32", "float64")
ROUNDINGS = ("lut", "nearest")
_ABSMAX_FLOOR = 1e-38  # bitsandbytes clamps absmax here before 1/absmax: zero blocks give 0.0
_LUT_SIZE = 65536  # bins of [-1, 1] in bitsandbytes' CPU 8-bit quantizer
_CHUNK = 1 << 22  # values quantized per pass (bounds the float temporaries to ~16 MiB each)


# ---------------------------------------------------------------------------- validation
def _check_blocksize(blocksize: Any, allowed: tuple[int, ...] | None = BLOCKSIZES_4BIT) -> int:
    ok = isinstance(blocksize, (int, np.integer)) and not isinstance(blocksize, bool)
    if ok and allowed is None:
        ok = blocksize > 0
    elif ok:
        ok = int(blocksize) in allowed
    if not ok:
        expected = f"one of {allowed}" if allowed is not None else "a positive int"
        raise ValueError(f"blocksize: expected {expected}, found {blocksize!r}")
    return int(blocksize)


def _check_quant_type(quant_type: Any) -> str:
    if quant_type not in QUANT_TYPES:
        raise ValueError(f"quant_type: expected one of {QUANT_TYPES}, found {quant_type!r}")
    return quant_type


def _check_float(arr: Any, what: str) -> Any:
    xp = xp_of(arr)
    arr = xp.asarray(arr)
    if arr.dtype.name not in FLOAT_DTYPES:
        raise ValueError(
            f"{what}: expected a float array ({', '.join(FLOAT_DTYPES)}), found dtype {arr.dtype}"
        )
    if arr.size == 0:
        raise ValueError(f"{what}: expected at least one element, found shape {arr.shape}")
    return arr


def _check_finite(absmax: Any, what: str) -> None:
    # the absmax of a block is inf/NaN exactly when the block holds an inf/NaN: one cheap check
    if not bool(xp_of(absmax).isfinite(absmax).all()):
        raise ValueError(f"{what}: expected finite values, found inf or NaN")


# ---------------------------------------------------------------------------- packing
def pack_4bit(codes: Any) -> Any:
    """Pack 4-bit codes (uint8 < 16, any shape, n values) two per byte, row-major.

    ``packed[j] = codes[2j] << 4 | codes[2j + 1]``: the first element in the **high** nibble
    (bitsandbytes' order); an odd n is padded with a 0 nibble. Returns (ceil(n / 2), 1) uint8.
    """
    xp = xp_of(codes)
    flat = xp.asarray(codes).reshape(-1)
    if flat.dtype != xp.uint8 or (flat.size and int(flat.max()) > 15):
        raise ValueError(
            f"pack_4bit: expected uint8 codes in 0..15, found dtype {flat.dtype}"
            + (f" with max {int(flat.max())}" if flat.size else "")
        )
    if flat.size % 2:
        flat = xp.concatenate([flat, xp.zeros(1, dtype=xp.uint8)])
    pairs = flat.reshape(-1, 2)  # (ceil(n/2), 2): (high, low) per byte
    return ((pairs[:, 0] << 4) | pairs[:, 1]).astype(xp.uint8, copy=False).reshape(-1, 1)


def unpack_4bit(packed: Any, n: int) -> Any:
    """The first ``n`` 4-bit codes of ``packed`` (any shape holding ceil(n / 2) uint8): (n,) uint8.

    Inverse of :func:`pack_4bit`: ``codes[2j] = packed[j] >> 4``, ``codes[2j+1] = packed[j] & 15``.
    """
    xp = xp_of(packed)
    flat = xp.asarray(packed).reshape(-1)
    if flat.dtype != xp.uint8 or flat.size != (n + 1) // 2:
        raise ValueError(
            f"unpack_4bit: expected {(n + 1) // 2} uint8 bytes for {n} codes, "
            f"found {flat.size} of dtype {flat.dtype}"
        )
    codes = xp.empty((flat.size, 2), dtype=xp.uint8)  # (ceil(n/2), 2): (high, low) per byte
    codes[:, 0] = flat >> 4
    codes[:, 1] = flat & 15
    return codes.reshape(-1)[:n]


# ---------------------------------------------------------------------------- blocks
def _blocks(flat: Any, blocksize: int) -> Any:
    """flat float32 (n,) as (n_blocks, blocksize), zero-padded (a view when n divides evenly).

    The padding zeros change no block's max of absolute values, and scale to the code of 0.0
    — which is what bitsandbytes pads an odd count with.
    """
    xp = xp_of(flat)
    n_blocks = -(-flat.size // blocksize)
    if flat.size == n_blocks * blocksize:
        return flat.reshape(n_blocks, blocksize)
    padded = xp.zeros(n_blocks * blocksize, dtype=xp.float32)
    padded[: flat.size] = flat
    return padded.reshape(n_blocks, blocksize)  # (n_blocks, B)


def _midpoints(code: Any) -> tuple[Any, Any]:
    """float32 midpoints of the sorted code, and the order sorting it (ties: lower index first).

    bitsandbytes buckets a scaled value s into ``#{midpoints < s}`` (``torch.bucketize``,
    right=False): a value exactly on a midpoint takes the lower code.
    """
    order = np.argsort(code, kind="stable")
    srt = code[order]
    return ((srt[:-1] + srt[1:]) / np.float32(2)).astype(np.float32), order


def _lut(code: Any) -> Any:
    """bitsandbytes' CPU quantization table: bin i of [-1, 1] ↦ index of the nearest code.

    Bin i (of 65536) is the value v_i = -1 + 2i / 65535 (float32); its entry is the number of
    midpoints below v_i (the C loop ``while (mid[k] < v) ++k``). ``code`` must be sorted.
    """
    mid = (np.float32(0.5) * (code[:-1] + code[1:])).astype(np.float32)
    i = np.arange(_LUT_SIZE, dtype=np.float32)
    v = (np.float32(-1) + (np.float32(2) * i) / np.float32(_LUT_SIZE - 1)).astype(np.float32)
    return np.searchsorted(mid, v, side="left").astype(np.uint8)


_LUT_CACHE: dict[tuple[bytes, str], Any] = {}


def _lut_for(code_host: np.ndarray, xp: Any) -> Any:
    """The table for ``code`` on ``xp``'s device, built once per (code, device)."""
    key = (code_host.tobytes(), xp.__name__)
    if key not in _LUT_CACHE:
        if len(_LUT_CACHE) > 8:  # a handful of codes in practice; never grow without bound
            _LUT_CACHE.clear()
        _LUT_CACHE[key] = xp.asarray(_lut(code_host))
    return _LUT_CACHE[key]


# ---------------------------------------------------------------------------- 8-bit blockwise
def quantize_blockwise(
    x: Any, code: Any = None, blocksize: int = NESTED_BLOCKSIZE, rounding: str = "lut"
) -> tuple[Any, Any]:
    """8-bit blockwise quantization (what double quantization applies to the absmax values).

    x: float, any shape (n values, blocks taken row-major) → (q uint8 of x's shape, absmax
    float32 (n_blocks,)).
    With a = absmax_b and code the sorted 256-value map (default: the dynamic map):

        s_i = clip(x_i · (1 / a), -1, 1)     (a block of zeros stores q = 0, absmax 0)
        rounding="lut"      q_i = LUT[⌊(s_i + 1) / 2 · 65535 + ½⌋]   (bitsandbytes' CPU kernel)
        rounding="nearest"  q_i = #{midpoints < s_i}    (the exact nearest, as its CUDA kernel)

    The lookup table (see ``_lut``) snaps s to one of 65536 bins first, so near 0, where the
    dynamic map is finer than a bin (2/65535), it can pick a code up to half a bin from the
    nearest; |s - code[q]| ≤ ½·gap + 1/65535 either way.
    """
    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding: expected one of {ROUNDINGS}, found {rounding!r}")
    blocksize = _check_blocksize(blocksize, allowed=None)
    x = _check_float(x, "quantize_blockwise")
    xp = xp_of(x)
    code_host = dynamic_map() if code is None else np.asarray(to_numpy(code), dtype=np.float32)
    if code_host.shape != (256,) or not bool(np.all(np.diff(code_host) >= 0)):
        raise ValueError(
            f"code: expected a sorted float32 (256,) map, found shape "
            f"{code_host.shape}" + ("" if code_host.shape != (256,) else " unsorted")
        )
    n = x.size
    blocks = _blocks(x.reshape(-1).astype(xp.float32, copy=False), blocksize)
    absmax = xp.abs(blocks).max(axis=1)
    _check_finite(absmax, "quantize_blockwise")
    nonzero = absmax > 0
    inv = xp.float32(1) / xp.where(nonzero, absmax, xp.float32(1))  # the C kernel's 1/absmax
    s = xp.clip(blocks * inv[:, None], xp.float32(-1), xp.float32(1))  # (n_blocks, bs)
    if rounding == "lut":
        half = xp.float32(0.5)
        idx = ((s + xp.float32(1)) * half * xp.float32(_LUT_SIZE - 1) + half).astype(xp.int32)
        q = _lut_for(code_host, xp)[idx]
    else:
        mid, _ = _midpoints(code_host)
        q = xp.searchsorted(xp.asarray(mid), s.reshape(-1), side="left").astype(xp.uint8)
        q = q.reshape(s.shape)
    q = xp.where(nonzero[:, None], q, xp.uint8(0))
    return q.reshape(-1)[:n].reshape(x.shape), absmax


def dequantize_blockwise(
    q: Any, absmax: Any, code: Any = None, blocksize: int = NESTED_BLOCKSIZE
) -> Any:
    """Inverse of :func:`quantize_blockwise`: ``x_i = code[q_i] · absmax_⌊i/B⌋`` (float32)."""
    xp = xp_of(q)
    blocksize = _check_blocksize(blocksize, allowed=None)
    q = xp.asarray(q)
    shape = q.shape
    q = q.reshape(-1)
    code = xp.asarray(dynamic_map() if code is None else code, dtype=xp.float32)
    absmax = xp.asarray(absmax, dtype=xp.float32).reshape(-1)
    if q.dtype != xp.uint8 or absmax.size != -(-q.size // blocksize) or code.shape != (256,):
        raise ValueError(
            f"dequantize_blockwise: expected uint8 codes, {-(-q.size // blocksize)} absmax values "
            f"and a (256,) code, found dtype {q.dtype}, {absmax.size} absmax, code {code.shape}"
        )
    return (code[q] * xp.repeat(absmax, blocksize)[: q.size]).reshape(shape)


# ---------------------------------------------------------------------------- 4-bit
def quantize_4bit(
    w: Any, blocksize: int = 64, quant_type: str = "nf4", compress_statistics: bool = True
) -> tuple[Any, QuantState]:
    """Quantize a weight to 4 bits: ``bitsandbytes.functional.quantize_4bit``, same bytes.

    w: float16/32/64, any shape (n values), NumPy or CuPy → (packed (ceil(n/2), 1) uint8,
    QuantState). The state's ``absmax`` is float32 (n_blocks,) — or, with
    ``compress_statistics`` (double quantization), uint8 (n_blocks,) with ``offset`` (their
    mean, float32 as a Python float) and ``nested`` (absmax2 (ceil(n_blocks/256),), the
    dynamic map). Computed in float32 whatever w's dtype; ``state.dtype`` remembers it.
    See the module docstring for the formulas.
    """
    blocksize = _check_blocksize(blocksize)
    quant_type = _check_quant_type(quant_type)
    if not isinstance(compress_statistics, (bool, np.bool_)):
        raise ValueError(f"compress_statistics: expected a bool, found {compress_statistics!r}")
    w = _check_float(w, "quantize_4bit")
    xp = xp_of(w)
    n = w.size
    blocks = _blocks(w.reshape(-1).astype(xp.float32, copy=False), blocksize)  # (n_blocks, B)
    n_blocks = blocks.shape[0]
    code = code_4bit(quant_type)
    mid, order = _midpoints(code)
    mid, order = xp.asarray(mid), xp.asarray(order.astype(np.uint8))
    absmax = xp.empty(n_blocks, dtype=xp.float32)
    codes = xp.empty((n_blocks, blocksize), dtype=xp.uint8)
    step = max(1, _CHUNK // blocksize)  # blocks per pass: temporaries stay ~_CHUNK values
    for b0 in range(0, n_blocks, step):
        chunk = blocks[b0 : b0 + step]
        am = xp.abs(chunk).max(axis=1)
        _check_finite(am, "quantize_4bit")
        # s = clip(w · (1 / absmax)); bitsandbytes divides on a partial last block instead
        # and stores that block's absmax clamped (an all-zero partial block keeps 1e-38, not 0)
        floor = xp.maximum(am, xp.float32(_ABSMAX_FLOOR))
        s = chunk * (xp.float32(1) / floor)[:, None]
        if n % blocksize and b0 + step >= n_blocks:
            s[-1] = chunk[-1] / floor[-1]
            am[-1] = floor[-1]
        s = xp.clip(s, xp.float32(-1), xp.float32(1))
        q = xp.searchsorted(mid, s.reshape(-1), side="left")  # position in the sorted code
        codes[b0 : b0 + step] = order[q].reshape(s.shape)  # → the code's index (FP4: unsorted)
        absmax[b0 : b0 + step] = am
    packed = pack_4bit(codes.reshape(-1)[: n + n % 2])  # an odd n: padded with code(0.0)

    state = QuantState(
        absmax=absmax,
        shape=tuple(int(d) for d in w.shape),
        code=xp.array(code),
        blocksize=blocksize,
        quant_type=quant_type,
        dtype=w.dtype.name,
    )
    if compress_statistics:
        # the float64 mean rounded once: torch's float32 sum may differ from it by an ulp
        offset = np.float32(float(absmax.astype(xp.float64).mean()))
        q2, absmax2 = quantize_blockwise(absmax - offset, blocksize=NESTED_BLOCKSIZE)
        state.absmax = q2
        state.offset = float(offset)
        state.nested = NestedState(
            absmax=absmax2, code=xp.array(dynamic_map()), blocksize=NESTED_BLOCKSIZE
        )
    return packed, state


def dequantize_absmax(state: QuantState) -> Any:
    """The float32 (n_blocks,) absmax values: ``dyn[q2] · absmax2 + offset`` when nested."""
    if state.nested is None:
        return state.absmax
    xp = xp_of(state.absmax)
    absmax = dequantize_blockwise(
        state.absmax, state.nested.absmax, state.nested.code, state.nested.blocksize
    )
    return absmax + xp.float32(state.offset)


def _check_state(packed: Any, state: QuantState) -> None:
    """Fail loudly when a state cannot belong to ``packed`` (a mismatched file, a bad field)."""
    if not isinstance(state, QuantState):
        raise ValueError(f"state: expected a QuantState, found {type(state).__name__}")
    _check_blocksize(state.blocksize)
    _check_quant_type(state.quant_type)
    if str(state.dtype) not in FLOAT_DTYPES:
        raise ValueError(f"state.dtype: expected one of {FLOAT_DTYPES}, found {state.dtype!r}")
    n = math.prod(state.shape)
    arrays = {"packed": packed, "state.absmax": state.absmax, "state.code": state.code}
    if state.nested is not None:
        arrays.update(
            {"state.nested.absmax": state.nested.absmax, "state.nested.code": state.nested.code}
        )
    devices = {name: xp_of(a).__name__ for name, a in arrays.items()}
    if len(set(devices.values())) > 1:
        raise DeviceError(f"dequantize_4bit: expected all arrays on one device, found {devices}")
    problems = []
    if packed.dtype.name != "uint8" or packed.size != (n + 1) // 2:
        problems.append(
            f"packed: expected {(n + 1) // 2} uint8 bytes for shape {state.shape}, "
            f"found {packed.size} of dtype {packed.dtype}"
        )
    if tuple(state.code.shape) != (16,):
        problems.append(f"state.code: expected shape (16,), found {tuple(state.code.shape)}")
    if state.absmax.size != state.n_blocks:
        problems.append(
            f"state.absmax: expected {state.n_blocks} values (one per block of "
            f"{state.blocksize}), found {state.absmax.size}"
        )
    if state.nested is None:
        if state.absmax.dtype.name != "float32" or state.offset is not None:
            problems.append(
                f"state.absmax: expected float32 and no offset without nested "
                f"statistics, found {state.absmax.dtype}, offset={state.offset!r}"
            )
    else:
        nb2 = -(-state.n_blocks // state.nested.blocksize)
        if state.absmax.dtype.name != "uint8" or state.offset is None:
            problems.append(
                f"state.absmax: expected uint8 codes and an offset with nested "
                f"statistics, found {state.absmax.dtype}, offset={state.offset!r}"
            )
        if state.nested.absmax.size != nb2 or tuple(state.nested.code.shape) != (256,):
            found = f"{state.nested.absmax.size} and {tuple(state.nested.code.shape)}"
            problems.append(
                f"state.nested: expected {nb2} absmax values and a (256,) code, found {found}"
            )
    if problems:
        raise ValueError("dequantize_4bit: " + "; ".join(problems))


def dequantize_4bit(packed: Any, state: QuantState) -> Any:
    """Inverse of :func:`quantize_4bit`: ``ŵ_i = code[q_i] · absmax_⌊i/B⌋`` in ``state.dtype``.

    packed: ceil(n/2) uint8 (any shape) → array of ``state.shape``. The product is float32 (as
    in bitsandbytes), then cast to the weight's dtype.
    """
    xp = xp_of(packed)
    packed = xp.asarray(packed)
    _check_state(packed, state)
    n = math.prod(state.shape)
    bs, n_blocks = state.blocksize, state.n_blocks
    if K.enabled(xp) and str(state.dtype) in ("float32", "float16"):  # one pass on the GPU
        absmax = dequantize_absmax(state)
        flat = K.nf4_dequantize(packed.reshape(-1), absmax, state.code, bs, n, str(state.dtype))
        return flat.reshape(state.shape)
    codes = unpack_4bit(packed, n)
    if n % bs:  # pad to whole blocks so the scale broadcasts per row
        codes = xp.concatenate([codes, xp.zeros(n_blocks * bs - n, dtype=xp.uint8)])
    absmax = dequantize_absmax(state).astype(xp.float32, copy=False)
    out = state.code.astype(xp.float32, copy=False)[codes].reshape(n_blocks, bs)  # (n_blocks, B)
    out *= absmax[:, None]  # float32 product, as bitsandbytes
    return out.reshape(-1)[:n].reshape(state.shape).astype(str(state.dtype), copy=False)


# ---------------------------------------------------------------------------- storage
def quantized_nbytes(packed: Any, state: QuantState) -> int:
    """Bytes one quantized weight takes: packed codes + absmax (+ absmax2 and the offset).

    The codebooks (16 and 256 float32) are constants shared by every weight and not counted,
    as in QLoRA's 4 + 8/64 + 32/(64·256) ≈ 4.127 bits per parameter.
    """
    total = int(packed.nbytes) + int(state.absmax.nbytes)
    if state.nested is not None:
        total += int(state.nested.absmax.nbytes) + 4  # + the offset, one float32
    return total


def quantized_bits_per_parameter(packed: Any, state: QuantState) -> float:
    """``8 · quantized_nbytes / n``: → 4.5 at blocksize 64, ≈ 4.127 with double quantization."""
    return 8.0 * quantized_nbytes(packed, state) / math.prod(state.shape)
