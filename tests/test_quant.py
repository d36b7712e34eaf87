"""The quantization core: codebooks, blockwise 4-bit NF4/FP4, double quantization, packing.

Property tests (hypothesis over shapes, blocksizes, quant types, dtypes; CPU and CUDA) prove the
round-trip bound and exactness; the interop tests prove the bytes are bitsandbytes' (its CPU
backend, 0.50+), skipping cleanly where it does not import.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import minipeft
from minipeft.backend import DeviceError, to_device, to_numpy
from minipeft.quant import (
    BLOCKSIZES_4BIT,
    NF4_OFFSET,
    QUANT_TYPES,
    NestedState,
    QuantState,
    code_4bit,
    dequantize_4bit,
    dequantize_absmax,
    dequantize_blockwise,
    dynamic_map,
    fp4_code,
    nf4_code,
    pack_4bit,
    quantize_4bit,
    quantize_blockwise,
    quantized_bits_per_parameter,
    quantized_nbytes,
    unpack_4bit,
)

# bitsandbytes' published NF4 table (functional.get_4bit_type("nf4"), QLoRA appendix E)
NF4_PUBLISHED = [
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
]  # fmt: skip
# bitsandbytes' FP4 table before normalisation, in bit-pattern order (sign = bit 3)
FP4_PUBLISHED = [0, 0.0625, 8, 12, 4, 6, 2, 3, 0, -0.0625, -8, -12, -4, -6, -2, -3]
U32 = 2.0**-24  # float32 unit roundoff
U_OUT = {"float16": 2.0**-11, "float32": U32, "float64": 0.0}


# ---------------------------------------------------------------------------- strategies
@st.composite
def quant_setups(draw: st.DrawFn) -> dict[str, Any]:
    """A weight and a quantization config: any rank 0..3, partial blocks, zero blocks, outliers.

    Sides up to 24 give up to 13824 values: up to 432 blocks of 32, i.e. several nested blocks
    of 256. Values are Gaussian (seeded) at a drawn scale, optionally with a block of zeros and
    one outlier, in float16/32/64.
    """
    return {
        "shape": draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=24)),
        "blocksize": draw(st.sampled_from(BLOCKSIZES_4BIT)),
        "quant_type": draw(st.sampled_from(QUANT_TYPES)),
        "compress_statistics": draw(st.booleans()),
        "dtype": draw(st.sampled_from(["float16", "float32", "float64"])),
        "scale": draw(st.sampled_from([1e-3, 0.02, 1.0, 30.0])),
        "zeros": draw(st.booleans()),
        "outlier": draw(st.booleans()),
        "seed": draw(st.integers(0, 2**32 - 1)),
    }


def make_weight(setup: dict[str, Any]) -> np.ndarray:
    rng = np.random.default_rng(setup["seed"])
    w = rng.standard_normal(setup["shape"]) * setup["scale"]
    flat = w.reshape(-1)
    if setup["outlier"]:
        flat[rng.integers(flat.size)] *= 20.0
    if setup["zeros"]:
        start = setup["blocksize"] * int(rng.integers(-(-flat.size // setup["blocksize"])))
        flat[start : start + setup["blocksize"]] = 0.0  # one whole block (or the partial one)
    return w.astype(setup["dtype"])


def quantize(w: np.ndarray, setup: dict[str, Any], device: str = "cpu") -> tuple[Any, QuantState]:
    return quantize_4bit(to_device(w, device), setup["blocksize"], setup["quant_type"],
                         setup["compress_statistics"])  # fmt: skip


def max_gap(code: np.ndarray) -> float:
    return float(np.diff(np.sort(code.astype(np.float64))).max())


# ---------------------------------------------------------------------------- codebooks
def test_nf4_codebook_from_normal_quantiles() -> None:
    code = nf4_code()
    assert code.dtype == np.float32 and code.shape == (16,)
    assert np.all(np.diff(code) > 0)  # 16 distinct, sorted: the 4-bit code is the index
    assert code[7] == 0.0 and code[0] == -1.0 and code[15] == 1.0  # exact zero, ±1 ends
    assert (code < 0).sum() == 7 and (code > 0).sum() == 8  # the asymmetric type (QLoRA §3)
    np.testing.assert_allclose(code, NF4_PUBLISHED, rtol=0, atol=1e-7)
    # equal-mass bins: the positive codes are N(0,1) quantiles at equal steps of probability
    # (the code scaled back by Φ⁻¹(1 - δ) lands on them)
    from statistics import NormalDist

    top = NormalDist().inv_cdf(NF4_OFFSET)
    p = [NormalDist().cdf(float(c) * top) for c in code[8:]]
    np.testing.assert_allclose(np.diff(p), np.diff(p)[0], rtol=1e-5)


def test_fp4_codebook_is_bitsandbytes_e2m1() -> None:
    code = fp4_code()
    assert code.dtype == np.float32 and code.shape == (16,)
    np.testing.assert_array_equal(code, np.float32(FP4_PUBLISHED) / np.float32(12))
    np.testing.assert_array_equal(code[8:], -code[:8])  # bit 3 is the sign
    assert code[3] == 1.0 and code[11] == -1.0 and code[0] == 0.0 and code[8] == 0.0
    assert code_4bit("nf4") is nf4_code() and code_4bit("fp4") is fp4_code()


def test_dynamic_map() -> None:
    code = dynamic_map()
    assert code.dtype == np.float32 and code.shape == (256,)
    assert np.all(np.diff(code) > 0)  # 256 distinct values, sorted
    assert code[127] == 0.0 and code[255] == 1.0 and code[0] == np.float32(-0.99296875)
    np.testing.assert_array_equal(code[:127], -code[128:255][::-1])  # symmetric but for +1
    assert max_gap(code) == pytest.approx(0.9 / 64, rel=1e-5)  # the coarsest decade, near ±1
    unsigned = dynamic_map(signed=False)
    assert unsigned.shape == (256,) and unsigned.min() == 0.0 and unsigned.max() == 1.0


def test_codebooks_are_cached_and_read_only() -> None:
    assert nf4_code() is nf4_code() and dynamic_map() is dynamic_map()
    with pytest.raises(ValueError):
        nf4_code()[0] = 2.0
    with pytest.raises(ValueError, match=r"quant_type: expected one of \('nf4', 'fp4'\)"):
        code_4bit("int4")


# ---------------------------------------------------------------------------- packing
@given(codes=hnp.arrays(np.uint8, st.integers(1, 65), elements=st.integers(0, 15)))
def test_pack_unpack_lossless_first_element_high_nibble(device: str, codes: np.ndarray) -> None:
    packed = pack_4bit(to_device(codes, device))
    n = codes.size
    assert packed.shape == ((n + 1) // 2, 1) and packed.dtype == np.uint8
    host = to_numpy(packed)[:, 0].astype(int)
    padded = np.concatenate([codes, [0] * (n % 2)]).astype(int)
    # the documented order: byte j = codes[2j] << 4 | codes[2j+1] (first element, high nibble)
    np.testing.assert_array_equal(host, padded[0::2] * 16 + padded[1::2])
    np.testing.assert_array_equal(to_numpy(unpack_4bit(packed, n)), codes)


def test_pack_order_example() -> None:
    np.testing.assert_array_equal(pack_4bit(np.uint8([1, 2, 3])), [[0x12], [0x30]])
    np.testing.assert_array_equal(unpack_4bit(np.uint8([[0xAB]]), 2), [0xA, 0xB])
    with pytest.raises(ValueError, match="expected uint8 codes in 0..15"):
        pack_4bit(np.uint8([16]))
    with pytest.raises(ValueError, match="expected 2 uint8 bytes for 3 codes, found 1"):
        unpack_4bit(np.uint8([1]), 3)


# ---------------------------------------------------------------------------- round trip
@given(setup=quant_setups())
def test_round_trip_error_bound(device: str, setup: dict[str, Any]) -> None:
    """Each |w - ŵ| ≤ ½·gap·absmax_b (+ the double-quant scale error), elementwise.

    Derivation (u = 2⁻²⁴, float32 unit roundoff; A_b the block's stored absmax; g the largest
    gap between adjacent codes — NF4 1 - 0.6962, FP4 1/3):
      * s = fl(w · fl(1/A_b)) is within 2u of w / A_b (and clipping to [-1, 1] only helps);
        the nearest code (float32 midpoints) is within g/2 + u of s, so |w - c·A_b| ≤
        A_b·(g/2 + 3u); a float64 input first rounded to float32 adds u·A_b.
      * dequantizing rounds c·A′ once (u·A′) and then to the output dtype (u_out·A′).
      * double quantization replaces A_b by A′_b; with A2 the absmax of (A - offset) over the
        block's group of 256 and g2 the dynamic map's largest gap (0.9/64): the 8-bit code is
        within g2/2 of the scaled value for a nearest search, plus ≤ 1/65535 because
        bitsandbytes' CPU kernel snaps to a 65536-bin table first, so
        |A′_b - A_b| ≤ A2·(g2/2 + 1/65535) + a few u·(A2 + |offset| + A_b); since |c| ≤ 1 this
        adds to the element error as is.
    The bound is checked with the rounding terms rounded up (16u, 2·u_out) — never loosely.
    """
    w = make_weight(setup)
    packed, state = quantize(w, setup, device)
    w_hat = dequantize_4bit(packed, state)
    assert w_hat.shape == w.shape and w_hat.dtype == w.dtype
    w64, w_hat64 = w.astype(np.float64).reshape(-1), to_numpy(w_hat).astype(np.float64).reshape(-1)

    # the exact per-block absmax, from the weight itself
    bs, n = setup["blocksize"], w.size
    blocks = np.zeros(-(-n // bs) * bs)
    blocks[:n] = np.abs(w.astype(np.float32).astype(np.float64).reshape(-1))
    a = blocks.reshape(-1, bs).max(axis=1)
    if n % bs:  # bitsandbytes stores a partial block's absmax clamped to 1e-38
        a[-1] = max(a[-1], float(np.float32(1e-38)))
    g = max_gap(code_4bit(setup["quant_type"]))
    err_scale = np.zeros_like(a)
    if state.nested is not None:
        a2 = np.repeat(to_numpy(state.nested.absmax).astype(np.float64), 256)[: a.size]
        err_scale = a2 * (max_gap(dynamic_map()) / 2 + 1 / 65535)
        err_scale += 16 * U32 * (a2 + abs(state.offset) + a)
        a_hat = to_numpy(dequantize_absmax(state)).astype(np.float64)
        assert np.all(np.abs(a_hat - a) <= err_scale)  # the scale bound itself
    bound = a * (g / 2 + 16 * U32) + err_scale + 2 * U_OUT[setup["dtype"]] * (a + err_scale)
    bound = np.repeat(bound, bs)[:n]
    assert np.all(np.abs(w64 - w_hat64) <= bound), float(np.max(np.abs(w64 - w_hat64) - bound))

    if device != "cpu":  # one code path: the device gives the CPU's bytes and values
        packed_cpu, state_cpu = quantize(w, setup)
        np.testing.assert_array_equal(to_numpy(packed), packed_cpu)
        np.testing.assert_array_equal(to_numpy(state.absmax), state_cpu.absmax)
        np.testing.assert_array_equal(to_numpy(w_hat), dequantize_4bit(packed_cpu, state_cpu))


@given(
    quant_type=st.sampled_from(QUANT_TYPES),
    blocksize=st.sampled_from(BLOCKSIZES_4BIT[:4]),
    n_blocks=st.integers(1, 4),
    tail=st.integers(0, 31),
    dtype=st.sampled_from(["float32", "float64"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_representable_values_round_trip_exactly(
    device: str, quant_type: str, blocksize: int, n_blocks: int, tail: int, dtype: str, seed: int
) -> None:
    """w = fl32(code[k] · A_b), with each block holding ±A_b (so A_b is its absmax), comes back
    bit for bit (no double quantization: the scale is then stored exactly)."""
    rng = np.random.default_rng(seed)
    code = code_4bit(quant_type)
    n = (n_blocks - 1) * blocksize + (tail or blocksize)  # the last block partial when tail > 0
    a = rng.uniform(1e-3, 1e3, size=n_blocks).astype(np.float32)
    k = rng.integers(0, 16, size=n)
    ends = np.flatnonzero(np.abs(code) == 1.0)
    k[::blocksize] = rng.choice(ends, size=k[::blocksize].size)
    w = (code[k] * np.repeat(a, blocksize)[:n]).astype(np.float32)  # float32 products
    packed, state = quantize_4bit(to_device(w.astype(dtype), device), blocksize, quant_type,
                                  compress_statistics=False)  # fmt: skip
    np.testing.assert_array_equal(to_numpy(state.absmax), a)
    got = to_numpy(dequantize_4bit(packed, state))
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, w)
    np.testing.assert_array_equal(code[to_numpy(unpack_4bit(packed, n))], code[k])


def test_zero_blocks_and_scalars() -> None:
    w = np.zeros(130, np.float32)
    w[64:128] = np.linspace(-1, 1, 64)
    for compress in (False, True):
        packed, state = quantize_4bit(w, 64, "nf4", compress)
        out = dequantize_4bit(packed, state)
        assert np.all(np.isfinite(out)) and np.all(out[:64] == 0) and np.all(out[128:] == 0)
    packed, state = quantize_4bit(w, 64, "nf4", False)
    # bitsandbytes stores 0 for a full zero block but clamps a partial one to 1e-38
    np.testing.assert_array_equal(state.absmax, [0.0, 1.0, np.float32(1e-38)])
    assert to_numpy(unpack_4bit(packed, 130))[0] == 7  # zero scales to the code of 0.0
    packed, state = quantize_4bit(np.float64(-2.5), 32, "fp4")  # a 0-d weight: one value
    assert state.shape == () and packed.shape == (1, 1) and packed[0, 0] == 0xB0
    assert dequantize_4bit(packed, state) == -2.5


@pytest.mark.parametrize("chunk", [32, 96, 1000])
def test_chunked_passes_and_memory_layout(monkeypatch: pytest.MonkeyPatch, chunk: int) -> None:
    """Quantizing in passes of a few blocks gives the one-pass bytes; any memory layout
    (transposed, strided) is flattened row-major, like ``w.reshape(-1)``."""
    from minipeft.quant import blockwise

    w = np.random.default_rng(1).standard_normal((37, 29)).astype(np.float32)  # 1073: partial
    for compress in (False, True):
        packed, state = quantize_4bit(w, 32, "fp4", compress)
        with monkeypatch.context() as m:
            m.setattr(blockwise, "_CHUNK", chunk)
            packed_c, state_c = quantize_4bit(w, 32, "fp4", compress)
        np.testing.assert_array_equal(packed_c, packed)
        np.testing.assert_array_equal(state_c.absmax, state.absmax)
    t = np.asfortranarray(w).T[:, ::2]  # (15, 37), neither C- nor F-contiguous
    packed, state = quantize_4bit(t, 32, "nf4")
    np.testing.assert_array_equal(packed, quantize_4bit(np.ascontiguousarray(t), 32, "nf4")[0])


def test_mse_on_gaussian_weights_nf4_lowest() -> None:
    """On N(0, 1) weights in blocks of 64: NF4 < symmetric int4 < FP4 in mean squared error.

    int4 here is absmax-scaled round-to-nearest over the 15 levels -7..7: q = rint(7 w / A),
    ŵ = q A / 7. NF4 is best (the information-theoretically motivated type, QLoRA §3). The
    issue expected FP4 < int4 (QLoRA's Table 2 ordering, which is perplexity, not MSE): with
    bitsandbytes' FP4 — levels 0, 0.0052, 1/6, 1/4, 1/3, 1/2, 2/3, 1 — MSE is worse than
    uniform int4 (≈ 0.0149 vs 0.0117; NF4 ≈ 0.0085), because two of its 16 codes are spent
    on ±0.0052 and its top gap is 1/3.
    """
    w = np.random.default_rng(0).standard_normal(64 * 2048).astype(np.float32)
    mse = {}
    for qt in QUANT_TYPES:
        packed, state = quantize_4bit(w, 64, qt, compress_statistics=False)
        mse[qt] = float(np.mean((dequantize_4bit(packed, state) - w) ** 2))
    blocks = w.reshape(-1, 64)
    a = np.abs(blocks).max(axis=1, keepdims=True)
    mse["int4"] = float(np.mean((np.clip(np.rint(blocks / a * 7), -7, 7) * a / 7 - blocks) ** 2))
    assert mse["nf4"] < mse["int4"] < mse["fp4"], mse
    assert mse["nf4"] == pytest.approx(0.0085, abs=5e-4)


@pytest.mark.parametrize("blocksize", [32, 64, 256])
def test_bits_per_parameter(blocksize: int) -> None:
    """4 + 32/B bits without double quantization (4.5 at B = 64); 4 + 8/B + 32/(256 B) with
    it (4.127 at B = 64, QLoRA §3), plus the one float32 offset per tensor."""
    n = 256 * 64 * 64  # a 1024 × 1024 weight: a whole number of nested blocks at every B ≤ 64
    w = np.random.default_rng(0).standard_normal((1024, 1024)).astype(np.float32)
    for compress, expected in ((False, 4 + 32 / blocksize),
                               (True, 4 + 8 / blocksize + 32 * math.ceil(n / blocksize / 256) / n
                                + 32 / n)):  # fmt: skip
        packed, state = quantize_4bit(w, blocksize, "nf4", compress)
        assert quantized_bits_per_parameter(packed, state) == pytest.approx(expected, rel=1e-12)
        assert quantized_nbytes(packed, state) * 8 == pytest.approx(expected * n)
    if blocksize == 64:
        assert quantized_bits_per_parameter(packed, state) == pytest.approx(4.127, abs=5e-4)


# ---------------------------------------------------------------------------- 8-bit blockwise
@given(x=hnp.arrays(np.float32, st.integers(1, 600), elements=st.floats(-8, 8, width=32)),
       blocksize=st.sampled_from([64, 256]))  # fmt: skip
def test_quantize_blockwise_nearest_and_lut(device: str, x: np.ndarray, blocksize: int) -> None:
    """ "nearest" is the brute-force nearest code (ties to the lower one); "lut" is within
    1/65535 (half a table bin) of it in scaled units; both dequantize within their bound."""
    code = dynamic_map().astype(np.float64)
    xd = to_device(x, device)
    q_near, a_near = quantize_blockwise(xd, blocksize=blocksize, rounding="nearest")
    q_lut, a_lut = quantize_blockwise(xd, blocksize=blocksize)
    np.testing.assert_array_equal(to_numpy(a_near), to_numpy(a_lut))
    a = np.repeat(to_numpy(a_lut).astype(np.float64), blocksize)[: x.size]
    s = np.divide(x, a, out=np.zeros(x.size), where=a > 0)
    dist = np.abs(s[:, None] - code[None, :])
    best = dist.min(axis=1)
    near, lut = to_numpy(q_near).astype(int), to_numpy(q_lut).astype(int)
    live = a > 0  # an all-zero block stores code 0 (× absmax 0)
    rows = np.arange(x.size)[live]
    assert np.all(dist[rows, near[live]] <= best[live] + 4 * U32)
    assert np.all(dist[rows, lut[live]] <= best[live] + 2 / 65535 + 4 * U32)
    assert np.all(near[~live] == 0) and np.all(lut[~live] == 0)
    back = to_numpy(dequantize_blockwise(q_lut, a_lut, blocksize=blocksize)).astype(np.float64)
    assert np.all(np.abs(back - x) <= a * (max_gap(dynamic_map()) / 2 + 1 / 65535 + 8 * U32))


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("blocksize", [16, 48, 8192, 64.0, True, "64", None])
def test_bad_blocksize(blocksize: Any) -> None:
    with pytest.raises(
        ValueError, match=rf"blocksize: expected one of \(32, 64.*found {blocksize!r}"
    ):
        quantize_4bit(np.ones(64, np.float32), blocksize)


@pytest.mark.parametrize("quant_type", ["int4", "NF4", "af4", None])
def test_bad_quant_type(quant_type: Any) -> None:
    with pytest.raises(ValueError, match=rf"quant_type: expected one of .* found {quant_type!r}"):
        quantize_4bit(np.ones(64, np.float32), 64, quant_type)


@pytest.mark.parametrize("w, found", [
    (np.ones(4, np.int64), "int64"), (np.ones(4, bool), "bool"),
    (np.ones(4, np.complex64), "complex64"), (np.ones(4, np.uint8), "uint8"),
    (np.zeros((3, 0), np.float32), r"at least one element, found shape \(3, 0\)"),
    (np.float32([1.0, np.nan]), "finite values, found inf or NaN"),
    (np.float32([1.0, -np.inf]), "finite values, found inf or NaN"),
])  # fmt: skip
def test_bad_weights(w: np.ndarray, found: str) -> None:
    with pytest.raises(ValueError, match=rf"quantize_4bit: expected .*{found}"):
        quantize_4bit(w)


def test_bad_states() -> None:
    w = np.random.default_rng(0).standard_normal((5, 70)).astype(np.float32)
    packed, state = quantize_4bit(w, 64, "nf4", compress_statistics=True)

    def check(match: str, packed: Any = packed, **changes: Any) -> None:
        bad = QuantState(**{**state.__dict__, **changes})
        with pytest.raises(ValueError, match=match):
            dequantize_4bit(packed, bad)

    check(r"expected 175 uint8 bytes for shape \(5, 70\), found 174", packed=packed[:-1])
    check(r"expected 175 uint8 bytes .* of dtype int8", packed=packed.view(np.int8))
    check(r"expected 12 uint8 bytes for shape \(4, 6\)", shape=(4, 6))  # a file's wrong shape
    check(r"state.absmax: expected 6 values \(one per block of 64\), found 5",
          absmax=state.absmax[:-1])  # fmt: skip
    check("expected uint8 codes and an offset", offset=None)
    check("expected float32 and no offset without nested", nested=None)
    check(r"state.nested: expected 1 absmax values", nested=NestedState(
        np.ones(2, np.float32), dynamic_map().copy()))  # fmt: skip
    check(r"state.code: expected shape \(16,\)", code=np.zeros(15, np.float32))
    check(r"blocksize: expected one of", blocksize=100)
    check(r"quant_type: expected one of", quant_type="int4")
    check(r"state.dtype: expected one of .* found 'bfloat16'", dtype="bfloat16")
    with pytest.raises(ValueError, match="rounding: expected one of"):
        quantize_blockwise(np.ones(4, np.float32), rounding="stochastic")
    with pytest.raises(ValueError, match="compress_statistics: expected a bool"):
        quantize_4bit(w, compress_statistics="yes")


@pytest.mark.cuda
def test_mixed_devices_fail_loudly() -> None:
    if not minipeft.cuda_available():
        pytest.skip("CUDA is not available here (needs CuPy and an NVIDIA GPU)")
    packed, state = quantize_4bit(np.ones(64, np.float32))
    with pytest.raises(DeviceError, match="expected all arrays on one device"):
        dequantize_4bit(to_device(packed, "cuda"), state)


# ---------------------------------------------------------------------------- interop
@pytest.fixture(scope="module")
def bnb() -> Any:
    """bitsandbytes.functional on the CPU, torch.compile off (its fallback compiles per shape)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("bitsandbytes", minversion="0.50")
    import bitsandbytes.functional as F

    disable = torch._dynamo.config.disable
    torch._dynamo.config.disable = True
    yield F
    torch._dynamo.config.disable = disable


def test_interop_codebooks(bnb: Any) -> None:
    for qt in QUANT_TYPES:
        ref = bnb.get_4bit_type(qt, device="cpu").numpy()
        np.testing.assert_array_equal(code_4bit(qt).view(np.int32), ref.view(np.int32))
    for signed in (True, False):
        ref = bnb.create_dynamic_map(signed=signed).numpy()
        np.testing.assert_array_equal(dynamic_map(signed).view(np.int32), ref.view(np.int32))


def _bnb_state(bnb: Any, state: QuantState) -> Any:
    """Our QuantState as bitsandbytes' (what loading our file into transformers amounts to)."""
    import torch

    t = lambda a: torch.from_numpy(np.ascontiguousarray(to_numpy(a)))  # noqa: E731
    dtype = getattr(torch, state.dtype)
    if state.nested is None:
        return bnb.QuantState(t(state.absmax), torch.Size(state.shape), t(state.code),
                              state.blocksize, state.quant_type, dtype)  # fmt: skip
    state2 = bnb.QuantState(t(state.nested.absmax), code=t(state.nested.code),
                            blocksize=state.nested.blocksize, dtype=torch.float32)  # fmt: skip
    return bnb.QuantState(t(state.absmax), torch.Size(state.shape), t(state.code),
                          state.blocksize, state.quant_type, dtype,
                          offset=torch.tensor(np.float32(state.offset)), state2=state2)  # fmt: skip


def _bnb_dequantize(bnb: Any, packed: Any, qs: Any) -> np.ndarray:
    """bitsandbytes' dequantize_4bit, asked for the flat weight and reshaped.

    0.50's AVX-512 CPU kernel indexes absmax per row, which is wrong when a row of a 2-D+
    weight is not a whole number of blocks (e.g. (8, 48) at blocksize 64: errors of 2× the
    quantization error); on the flat (n,) shape its indexing is right. It also returns a 1-D
    weight as (1, n). Both are bitsandbytes' quirks, not the layout.
    """
    import copy

    import torch

    flat = copy.copy(qs)
    flat.shape = torch.Size([math.prod(qs.shape)])
    return bnb.dequantize_4bit(torch.from_numpy(to_numpy(packed)), flat).numpy().reshape(qs.shape)


INTEROP_SHAPES = [(64,), (7,), (1, 129), (33, 70), (3, 5, 130), (257, 129)]


@pytest.mark.parametrize("quant_type", QUANT_TYPES)
@pytest.mark.parametrize("compress", [False, True], ids=["plain", "double-quant"])
@pytest.mark.parametrize("blocksize", [32, 64, 256, 4096])
def test_interop_quantize_4bit(bnb: Any, quant_type: str, compress: bool, blocksize: int) -> None:
    """Same bytes as bitsandbytes.functional.quantize_4bit; dequantize agrees both ways."""
    import torch

    rng = np.random.default_rng(blocksize)
    for shape in INTEROP_SHAPES:
        for dtype in ("float32", "float16"):
            w = (rng.standard_normal(shape) * 0.05).astype(dtype)
            w.reshape(-1)[:5] = [0.0, 1e-9, -1e-9, 0.0, 0.0]  # FP4's two zeros; zero ties
            packed, state = quantize_4bit(w, blocksize, quant_type, compress)
            tp, ts = bnb.quantize_4bit(
                torch.from_numpy(w),
                blocksize=blocksize,
                quant_type=quant_type,
                compress_statistics=compress,
            )
            assert packed.shape == tuple(tp.shape) and packed.dtype == np.uint8
            np.testing.assert_array_equal(packed, tp.numpy())
            np.testing.assert_array_equal(state.code, ts.code.numpy())
            assert state.shape == tuple(ts.shape) and state.blocksize == ts.blocksize
            ref = _bnb_dequantize(bnb, tp, ts)
            ours = dequantize_4bit(packed, state)
            assert ours.dtype == ref.dtype
            # files both ways: we read bitsandbytes' state and bytes, it reads ours — exactly
            np.testing.assert_array_equal(dequantize_4bit(tp.numpy(), _our_state(ts)), ref)
            np.testing.assert_array_equal(
                _bnb_dequantize(bnb, packed, _bnb_state(bnb, state)), ours
            )
            if not compress:
                np.testing.assert_array_equal(state.absmax, ts.absmax.numpy())
                np.testing.assert_array_equal(ours, ref)
                continue
            _check_nested(bnb, w, blocksize, quant_type, state, ts)
            # equal where the offsets are; otherwise the difference is the absmax's alone
            a, a_ref = dequantize_absmax(state), dequantize_absmax(_our_state(ts))
            if np.float32(state.offset) == np.float32(ts.offset.item()):
                np.testing.assert_array_equal(a, a_ref)
                np.testing.assert_array_equal(ours, ref)
            c = np.abs(state.code[unpack_4bit(packed, w.size)]).reshape(shape)
            da = np.repeat(np.abs(a.astype(np.float64) - a_ref), blocksize)[: w.size]
            am = np.repeat(a, blocksize)[: w.size].reshape(shape)
            tol = c * da.reshape(shape) + (2 * U_OUT[dtype] + 4 * U32) * am
            assert np.all(np.abs(ours.astype(np.float64) - ref) <= tol)


def _our_state(ts: Any) -> QuantState:
    """bitsandbytes' QuantState as ours (what loading a transformers 4-bit file amounts to)."""
    nested = None
    if ts.nested:
        nested = NestedState(ts.state2.absmax.numpy(), ts.state2.code.numpy(),
                             ts.state2.blocksize)  # fmt: skip
    return QuantState(absmax=ts.absmax.numpy(), shape=tuple(ts.shape), code=ts.code.numpy(),
                      blocksize=ts.blocksize, quant_type=ts.quant_type,
                      dtype=str(ts.dtype).removeprefix("torch."),
                      offset=float(ts.offset) if ts.nested else None, nested=nested)  # fmt: skip


def _check_nested(bnb: Any, w: np.ndarray, blocksize: int, quant_type: str, state: QuantState,
                  ts: Any) -> None:  # fmt: skip
    """Double quantization as bitsandbytes does it.

    The offset is the mean of the absmax values: ours is the float64 mean rounded once to
    float32, bitsandbytes' is torch's float32 sum / n, whose summation order depends on the
    CPU's vector width — they agree to float32 summation rounding (an ulp or two). Where they
    agree bit for bit so do the 8-bit codes and absmax2; the 8-bit quantizer itself is checked
    exactly against bitsandbytes'
    ``quantize_blockwise`` on the same input (absmax - offset).
    """
    import torch

    offset, ref_offset = np.float32(state.offset), np.float32(ts.offset.item())
    assert abs(float(offset) - float(ref_offset)) <= 1e-6 * abs(float(offset))
    np.testing.assert_array_equal(state.nested.code, ts.state2.code.numpy())
    assert state.nested.blocksize == ts.state2.blocksize == 256
    raw = quantize_4bit(w, blocksize, quant_type, compress_statistics=False)[1].absmax
    q2, a2 = bnb.quantize_blockwise(torch.from_numpy(raw - offset), blocksize=256)
    np.testing.assert_array_equal(state.absmax, q2.numpy())
    np.testing.assert_array_equal(state.nested.absmax, a2.absmax.numpy())
    if offset == ref_offset:
        np.testing.assert_array_equal(state.absmax, ts.absmax.numpy())
        np.testing.assert_array_equal(state.nested.absmax, ts.state2.absmax.numpy())


def test_interop_many_nested_blocks(bnb: Any) -> None:
    """Several (and a partial) nested blocks of 256: 32 × 600 values at blocksize 32."""
    import torch

    w = np.random.default_rng(3).standard_normal((600, 32)).astype(np.float32)
    w[17] *= 40  # an outlier block: absmax - offset spans a wide range
    packed, state = quantize_4bit(w, 32, "nf4")
    tp, ts = bnb.quantize_4bit(torch.from_numpy(w), blocksize=32, quant_type="nf4",
                               compress_statistics=True)  # fmt: skip
    np.testing.assert_array_equal(packed, tp.numpy())
    assert state.nested.absmax.shape == (3,)
    _check_nested(bnb, w, 32, "nf4", state, ts)
    np.testing.assert_array_equal(_bnb_dequantize(bnb, packed, _bnb_state(bnb, state)),
                                  dequantize_4bit(packed, state))  # fmt: skip


@pytest.mark.parametrize("quant_type", QUANT_TYPES)
@pytest.mark.parametrize("n", [64, 50], ids=["full-block", "partial-block"])
def test_interop_ties_take_the_lower_code(bnb: Any, quant_type: str, n: int) -> None:
    """A value exactly on a midpoint between two codes takes the lower one, as in bitsandbytes."""
    import torch

    code = code_4bit(quant_type)
    srt = np.sort(code)
    mid = ((srt[:-1] + srt[1:]) / np.float32(2)).astype(np.float32)
    w = np.zeros(n, np.float32)
    w[0] = 1.0  # absmax 1: the scaled values are the weights themselves
    w[1 : 1 + mid.size] = mid
    w[20 : 20 + mid.size] = np.nextafter(mid, np.float32(2))  # just above: the upper code
    packed, _ = quantize_4bit(w, 64, quant_type, compress_statistics=False)
    got = code[to_numpy(unpack_4bit(packed, n))]
    np.testing.assert_array_equal(got[1 : 1 + mid.size], srt[:-1])
    np.testing.assert_array_equal(got[20 : 20 + mid.size], srt[1:])
    tp, _ = bnb.quantize_4bit(torch.from_numpy(w), blocksize=64, quant_type=quant_type,
                              compress_statistics=False)  # fmt: skip
    np.testing.assert_array_equal(packed, tp.numpy())


def test_interop_blockwise_8bit(bnb: Any) -> None:
    """The 8-bit quantizer (bitsandbytes' CPU lookup table) on awkward values: exact."""
    import torch

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(1000), rng.standard_normal(300) * 1e-4,
                        np.zeros(256), [1e-30, -1e-30, 3.0]]).astype(np.float32)  # fmt: skip
    for bs in (64, 256, 4096):
        q, a = quantize_blockwise(x, blocksize=bs)
        tq, tstate = bnb.quantize_blockwise(torch.from_numpy(x), blocksize=bs)
        np.testing.assert_array_equal(q, tq.numpy())
        np.testing.assert_array_equal(a, tstate.absmax.numpy())
        np.testing.assert_array_equal(dequantize_blockwise(q, a, blocksize=bs),
                                      bnb.dequantize_blockwise(tq, tstate).numpy())  # fmt: skip
