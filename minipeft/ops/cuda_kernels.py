"""Fused CUDA kernels (CuPy) for the ops whose array form makes several passes over memory.

The NumPy code of each op (:mod:`minipeft.ops.fused`, :mod:`minipeft.optim.optimizers`,
:mod:`minipeft.quant.blockwise`) is the readable reference and what the CPU runs; on a CuPy
array the op calls the kernel here instead, one pass where the array form makes several. Each
kernel is checked against its reference in ``tests/test_cuda_kernels.py`` (on a GPU).

=================  ============================  =========================================
kernel             replaces                      passes over the big array (fwd / bwd)
=================  ============================  =========================================
gelu_tanh          9 elementwise array ops       1 / 1, saves only x
silu_mul           σ(a), a·σ, ·b (SwiGLU)        1 / 1, saves only the inputs
rope               x·cos + rotate_half(x)·sin    1 / 1 (rotate_half's slices and concat gone)
softmax_rows       max, −, exp, sum, ÷           1 read + 1 write per row
cross_entropy      max, −, exp, sum, log, gather forward keeps only lse (N,): no (N, V)
                                                 temporary; backward writes dx in one pass
layer_norm         mean, −, ², mean, ÷, ·w, +b   1 / 1, saves mean and 1/σ per row
rms_norm           ², mean, ÷, ·w                1 / 1, saves 1/rms per row
adamw              12 array ops per parameter    1 (p, m, v updated in place)
nf4_dequantize     unpack, gather, ·absmax       1 (reads ½ byte, writes one value)
=================  ============================  =========================================

Attention uses cuBLAS batched matmuls (``q @ kᵀ``, ``P @ v``: tensor cores, no code of ours)
and ``softmax_rows`` in place on the scores: a FlashAttention-style kernel would also avoid
the (B, H, T, T) scores, but written here it would be slower than cuBLAS on the GEMMs.

Row kernels (:mod:`minipeft.ops.cuda_row_kernels`) run one block of 256 threads per row on
contiguous float32 rows (the ops upcast float16 first, so statistics are float32). Kernels
compile on first use; CuPy caches the
binaries. ``use_kernels(False)`` turns them off (the tests compare both paths on one GPU).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from .cuda_row_kernels import (
    cross_entropy_backward,
    cross_entropy_forward,
    layer_norm_backward,
    layer_norm_forward,
    rms_norm_backward,
    rms_norm_forward,
    softmax_rows,
)
from .switch import Switch

__all__ = [
    "enabled",
    "use_kernels",
    "gelu_tanh",
    "gelu_tanh_backward",
    "silu_mul",
    "silu_mul_backward",
    "rope",
    "softmax_rows",
    "cross_entropy_forward",
    "cross_entropy_backward",
    "layer_norm_forward",
    "layer_norm_backward",
    "rms_norm_forward",
    "rms_norm_backward",
    "adamw_update_",
    "nf4_dequantize",
]

use_kernels = Switch()  # with use_kernels(False): CuPy arrays take the ops' array code


def enabled(xp: Any) -> bool:
    """True when ``xp`` is CuPy and the kernels are switched on."""
    return xp is not np and use_kernels.on


# ---------------------------------------------------------------------------- elementwise
_GELU = "const float c = 0.7978845608028654f, k = 0.044715f; float xf = (float)x;"


@functools.cache
def _elementwise(xp: Any, name: str) -> Any:
    """The ElementwiseKernel ``name``, built once per array module. Math in float32."""
    specs = {
        "gelu_tanh": ("T x", "T y", _GELU + """
            float t = tanhf(c * (xf + k * xf * xf * xf));
            y = (T)(0.5f * xf * (1.0f + t));"""),
        "gelu_tanh_bwd": ("T x, T g", "T dx", _GELU + """
            float t = tanhf(c * (xf + k * xf * xf * xf));
            float d = 0.5f * (1.0f + t)
                    + 0.5f * xf * (1.0f - t * t) * c * (1.0f + 3.0f * k * xf * xf);
            dx = (T)(d * (float)g);"""),
        "silu_mul": ("T a, T b", "T y", """
            float af = (float)a; y = (T)(af / (1.0f + expf(-af)) * (float)b);"""),
        "silu_mul_bwd": ("T a, T b, T g", "T da, T db", """
            float af = (float)a, s = 1.0f / (1.0f + expf(-af)), gf = (float)g;
            da = (T)(gf * (float)b * s * (1.0f + af * (1.0f - s)));
            db = (T)(gf * af * s);"""),
        # y_j = x_j cos_j - x_{j+h} sin_j (j < h),  x_j cos_j + x_{j-h} sin_j (j ≥ h); the
        # backward is the same map with sin → -sin (the rotation's transpose). cos/sin are
        # (rows, D) with rows = B·T, broadcast over the H heads: x is (B, H, T, D).
        "rope": ("raw T x, raw T cos, raw T sin, int64 H, int64 T_, int64 D, float32 sign",
                 "T y", """
            long long d = i % D, row = i / D, t = row % T_, b = row / T_ / H;
            long long h2 = D / 2, cs = (b * T_ + t) * D + d;
            float other = (d < h2) ? -(float)x[i + h2] : (float)x[i - h2];
            y = (T)((float)x[i] * (float)cos[cs] + sign * other * (float)sin[cs]);"""),
        # p ← (1 - lr·wd) p; m ← m + (1 - β1)(g - m); v ← β2 v + (1 - β2) g²;
        # p ← p - lr/(1 - β1ᵗ) · m / (√v / √(1 - β2ᵗ) + eps)   (torch.optim.AdamW)
        "adamw": ("T g, float32 lr, float32 beta1, float32 beta2, float32 eps, float32 wd, "
                  "float32 bc1, float32 bc2_sqrt", "T p, T m, T v", """
            float gf = g, mf = m + (1.0f - beta1) * (gf - m);
            float vf = beta2 * v + (1.0f - beta2) * gf * gf;
            m = mf; v = vf;
            p = p * (1.0f - lr * wd) - (lr / bc1) * mf / (sqrtf(vf) / bc2_sqrt + eps);"""),
        # ŵ_i = code[q_i] · absmax[⌊i/B⌋], q_{2j} = byte_j >> 4, q_{2j+1} = byte_j & 15
        "nf4": ("raw uint8 packed, raw float32 absmax, raw float32 code, int64 blocksize",
                "T out", """
            unsigned char byte = packed[i >> 1];
            int q = (i & 1) ? (byte & 15) : (byte >> 4);
            out = (T)(code[q] * absmax[i / blocksize]);"""),
    }  # fmt: skip
    inputs, outputs, body = specs[name]
    return xp.ElementwiseKernel(inputs, outputs, body, f"minipeft_{name}")


def gelu_tanh(x: Any) -> Any:
    """GPT-2's gelu_new, y = ½x(1 + tanh(√(2/π)(x + 0.044715x³)))."""
    return _elementwise(_xp(x), "gelu_tanh")(x)


def gelu_tanh_backward(x: Any, g: Any) -> Any:
    return _elementwise(_xp(x), "gelu_tanh_bwd")(x, g)


def silu_mul(a: Any, b: Any) -> Any:
    """SwiGLU's silu(a) · b (a: the gate projection, b: the up projection)."""
    return _elementwise(_xp(a), "silu_mul")(a, b)


def silu_mul_backward(a: Any, b: Any, g: Any) -> tuple[Any, Any]:
    return _elementwise(_xp(a), "silu_mul_bwd")(a, b, g)


def rope(x: Any, cos: Any, sin: Any, inverse: bool = False) -> Any:
    """x (B, H, T, D) rotated by cos/sin (B, T, D); ``inverse`` rotates back (the backward)."""
    xp = _xp(x)
    b, h, t, d = x.shape
    x = xp.ascontiguousarray(x)
    cos = xp.ascontiguousarray(xp.broadcast_to(cos, (b, t, d)), dtype=x.dtype)
    sin = xp.ascontiguousarray(xp.broadcast_to(sin, (b, t, d)), dtype=x.dtype)
    out = xp.empty_like(x)
    sign = np.float32(-1.0 if inverse else 1.0)
    return _elementwise(xp, "rope")(x, cos, sin, h, t, d, sign, out)


def adamw_update_(p: Any, g: Any, m: Any, v: Any, lr: float, betas: tuple[float, float],
                  eps: float, wd: float, step: int) -> None:  # fmt: skip
    """One AdamW step on p, m, v in place (float32 arrays of one shape)."""
    beta1, beta2 = betas
    f = np.float32
    bias1, bias2_sqrt = f(1 - beta1**step), f((1 - beta2**step) ** 0.5)
    kernel = _elementwise(_xp(p), "adamw")
    kernel(g, f(lr), f(beta1), f(beta2), f(eps), f(wd), bias1, bias2_sqrt, p, m, v)


def nf4_dequantize(packed: Any, absmax: Any, code: Any, blocksize: int, n: int,
                   dtype: Any) -> Any:  # fmt: skip
    """The (n,) weights ``code[q_i] · absmax[i // blocksize]`` in ``dtype`` from 4-bit codes."""
    xp = _xp(packed)
    out = xp.empty(n, dtype=dtype)
    f32 = xp.float32
    _elementwise(xp, "nf4")(packed, absmax.astype(f32, copy=False), code.astype(f32, copy=False),
                            blocksize, out)  # fmt: skip
    return out


def _xp(a: Any) -> Any:
    from ..backend import xp_of  # noqa: PLC0415 — keeps this module free of import cycles

    return xp_of(a)
