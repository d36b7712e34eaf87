"""The codebooks of 4-bit and 8-bit quantization, built in code, exactly as bitsandbytes has them.

A codebook ("quant map") is a sorted-or-not list of values in [-1, 1]; a weight block scaled by
its absmax is stored as the index of the nearest value. Three are needed:

* ``nf4_code()``  — NormalFloat4 (QLoRA, Dettmers et al. 2023, §3 "4-bit NormalFloat"): 16
  quantiles of N(0, 1), so each code is used equally often by normally distributed weights,
  with an exact zero and the ends at ±1.
* ``fp4_code()``  — bitsandbytes' FP4: 1 sign, 2 exponent, 1 mantissa bit (E2M1), indexed by its
  bit pattern.
* ``dynamic_map()`` — bitsandbytes' signed 8-bit dynamic map (Dettmers 2015, "8-Bit
  Approximations for Parallelism in Deep Learning"), used to double-quantize the absmax values.

Each is a pure function returning a cached, read-only float32 NumPy array (copy it to change
it, or move it to a device with ``xp.asarray``); the tests assert each equals bitsandbytes'.
"""

from __future__ import annotations

from functools import cache
from statistics import NormalDist

import numpy as np

__all__ = ["NF4_OFFSET", "QUANT_TYPES", "code_4bit", "dynamic_map", "fp4_code", "nf4_code"]

QUANT_TYPES = ("nf4", "fp4")

# QLoRA's offset δ: the outermost quantile is 1 - δ with δ = ½(1/30 + 1/32) (half-way between the
# 1/(2·15) and 1/(2·16) edge bins of 15 and 16 equal-mass bins), so the largest code is a finite
# quantile instead of +∞. bitsandbytes uses it rounded to 7 digits (0.96770833… → 0.9677083); with
# the unrounded value the codes move by up to 3e-7, so the rounded one is what makes them equal.
NF4_OFFSET = 0.9677083


def _linspace_f32(start: float, end: float, steps: int) -> np.ndarray:
    """``torch.linspace(start, end, steps)`` in float32, bit for bit.

    torch computes ``step = (end - start) / (steps - 1)`` in float32 and fills the first half
    as ``fma(i, step, start)`` and the second as ``end - (steps - 1 - i)·step`` (one rounding
    each; both ends exact). The float64 expression below is that fused product-sum exactly
    (i·step needs ≤ 31 bits), so rounding it once to float32 is torch's value; NumPy's own
    linspace, or two float32 roundings, differ by an ulp (e.g. the 4th of 9 points in [0.1, 1]).
    """
    a, b = np.float32(start), np.float32(end)
    step = np.float64((b - a) / np.float32(steps - 1))
    i = np.arange(steps, dtype=np.float64)
    head = np.float64(a) + step * i
    tail = np.float64(b) - step * (steps - 1 - i)
    return np.where(i < steps // 2, head, tail).astype(np.float32)


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a, dtype=np.float32)
    a.setflags(write=False)  # cached: a caller must not change everyone's codebook
    return a


@cache
def nf4_code() -> np.ndarray:
    """The 16 NF4 values, sorted, float32 (16,): index k ↦ value (the 4-bit code is k).

    With Φ⁻¹ the standard normal quantile function and δ = ``NF4_OFFSET`` (1 - δ′, see above):

        positive  q_i = Φ⁻¹(p_i),   p = linspace(1 - δ′, ½, 9)[:-1]   (8 values, p_0 = 1 - δ′)
        negative  r_j = -Φ⁻¹(p_j),  p = linspace(1 - δ′, ½, 8)[:-1]   (7 values)
        zero      0                                                   (exact, 1 value)
        NF4       sort(q ∪ r ∪ {0}) / max(q)                          → ends exactly -1 and +1

    The asymmetry (8 positive, 7 negative) gives the code an exact zero while using all 16
    codes (QLoRA §3). The probabilities and the division are float32 as in bitsandbytes'
    ``create_normal_map`` (torch), Φ⁻¹ is float64 (``statistics.NormalDist``, the same
    algorithm, AS241, as SciPy's ``norm.ppf``).
    """
    ppf = NormalDist().inv_cdf
    pos = [ppf(float(p)) for p in _linspace_f32(NF4_OFFSET, 0.5, 9)[:-1]]
    neg = [-ppf(float(p)) for p in _linspace_f32(NF4_OFFSET, 0.5, 8)[:-1]]
    values = np.sort(np.array(pos + [0.0] + neg, dtype=np.float32))
    return _frozen(values / values.max())


@cache
def fp4_code() -> np.ndarray:
    """bitsandbytes' FP4 (E2M1) values in bit-pattern order, float32 (16,), max |value| = 1.

    Bits ``s e1 e0 m`` (index = the 4-bit code): sign s = bit 3, exponent e = bits 2..1,
    mantissa m = bit 0, with bitsandbytes' bias (exponent field read downwards):

        e = 0      v = m · 2⁻⁴                  (subnormal: 0, 0.0625)
        e = 1..3   v = 2^(4 - e) · (1 + m/2)    (8, 12 | 4, 6 | 2, 3)
        value      (-1)^s · v / 12              (12 = the largest magnitude)

    i.e. [0, .0625, 8, 12, 4, 6, 2, 3] / 12 and their negatives. Index 8 (sign bit, zero) is
    +0.0, as in bitsandbytes (its table writes ``-0``, the integer, which is 0). Not sorted.
    """
    mags = []
    for bits in range(8):
        e, m = bits >> 1, bits & 1
        mags.append(m * 2.0**-4 if e == 0 else 2.0 ** (4 - e) * (1 + m / 2))
    values = np.array(mags + [-v if v else 0.0 for v in mags], dtype=np.float32)
    return _frozen(values / np.float32(np.abs(values).max()))


def code_4bit(quant_type: str) -> np.ndarray:
    """The codebook of a 4-bit ``quant_type`` ("nf4" or "fp4"); ValueError otherwise."""
    if quant_type == "nf4":
        return nf4_code()
    if quant_type == "fp4":
        return fp4_code()
    raise ValueError(f"quant_type: expected one of {QUANT_TYPES}, found {quant_type!r}")


@cache
def dynamic_map(signed: bool = True, max_exponent_bits: int = 7, total_bits: int = 8) -> np.ndarray:
    """bitsandbytes' dynamic quantization map (``create_dynamic_map``), sorted, float32 (256,).

    A dynamic exponent with a linear fraction: for decade i = 0 … E-1 (E = ``max_exponent_bits``)
    there are F_i = 2^(i + b - E) fraction values (b = total_bits - 1 non-sign bits; one more bit
    when unsigned), the midpoints of F_i equal steps of [0.1, 1], times 10^(i - (E - 1)):

        bounds_i = linspace(0.1, 1, F_i + 1),  means_i = (bounds_i[:-1] + bounds_i[1:]) / 2
        values   = ∪_i 10^(i - E + 1) · means_i  (and their negatives when signed)  ∪ {0, 1}

    For the default signed 8-bit map: 1 + 2 + … + 64 = 127 positive and 127 negative values, 0
    and 1.0 — 256 codes, finest near 0 (10⁻⁶ scale), coarsest near ±1 (gap 0.9/64). The
    smallest is -0.99296875 (the map has +1 but not -1). float32 throughout, as torch does it
    (the decade scale is rounded to float32 before the product).
    """
    data: list[float] = []
    non_sign_bits = total_bits - 1
    additional_items = 2 ** (non_sign_bits - max_exponent_bits) - 1
    for i in range(max_exponent_bits):
        extra = 0 if signed else 1
        fraction_items = int(2 ** (i + non_sign_bits - max_exponent_bits + extra) + 1)
        bounds = _linspace_f32(0.1, 1.0, fraction_items)
        means = (bounds[:-1] + bounds[1:]) / np.float32(2.0)
        scaled = np.float32(10.0 ** (-(max_exponent_bits - 1) + i)) * means
        data += scaled.tolist() + ((-scaled).tolist() if signed else [])
    if additional_items > 0:  # the all-zero-exponent case (only when E < b); not the 8-bit default
        bounds = _linspace_f32(0.1, 1.0, additional_items + 1)
        means = (bounds[:-1] + bounds[1:]) / np.float32(2.0)
        scaled = np.float32(1.0) * means  # bitsandbytes reuses the last decade's i: 10^0
        data += scaled.tolist() + ((-scaled).tolist() if signed else [])
    data += [0.0, 1.0]
    if len(data) != 2**total_bits:
        raise ValueError(
            f"dynamic_map: expected {2**total_bits} codes for total_bits={total_bits}, "
            f"found {len(data)} (signed={signed}, max_exponent_bits={max_exponent_bits})"
        )
    data += [0.0] * (256 - len(data))  # fewer than 8 bits: padded with zeros, as bitsandbytes
    return _frozen(np.sort(np.array(data, dtype=np.float32)))
