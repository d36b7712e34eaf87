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

Row kernels run one block of 256 threads per row and take contiguous float32 rows (the ops
upcast float16 first, so statistics are float32). Kernels compile on first use; CuPy caches the
binaries. ``use_kernels(False)`` turns them off (the tests compare both paths on one GPU).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any

import numpy as np

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

_ON = [True]


def enabled(xp: Any) -> bool:
    """True when ``xp`` is CuPy and the kernels are switched on."""
    return xp is not np and _ON[0]


@contextlib.contextmanager
def use_kernels(on: bool) -> Iterator[None]:
    """Within the block, CuPy arrays take the fused kernels (True) or the array code (False)."""
    before, _ON[0] = _ON[0], bool(on)
    try:
        yield
    finally:
        _ON[0] = before


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


# ---------------------------------------------------------------------------- row kernels
_ROW_SOURCE = r"""
// Block-wide reductions: warp shuffles, then one value per warp through shared memory.
__device__ float block_reduce(float v, float* sh, bool is_max) {
    for (int o = 16; o > 0; o >>= 1) {
        float u = __shfl_xor_sync(0xffffffff, v, o);
        v = is_max ? fmaxf(v, u) : v + u;
    }
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < nw ? sh[lane] : (is_max ? -INFINITY : 0.0f);
        for (int o = 16; o > 0; o >>= 1) {
            float u = __shfl_xor_sync(0xffffffff, v, o);
            v = is_max ? fmaxf(v, u) : v + u;
        }
        if (lane == 0) sh[0] = v;
    }
    __syncthreads();
    float r = sh[0];
    __syncthreads();  // sh is reused by the next reduction
    return r;
}

// p = softmax(s) per row, in place; a row of all -inf (fully masked) becomes zeros.
extern "C" __global__ void softmax_rows(float* s, long long K) {
    __shared__ float sh[32];
    float* row = s + blockIdx.x * K;
    float m = -INFINITY;
    for (long long j = threadIdx.x; j < K; j += blockDim.x) m = fmaxf(m, row[j]);
    m = block_reduce(m, sh, true);
    if (m == -INFINITY) {
        for (long long j = threadIdx.x; j < K; j += blockDim.x) row[j] = 0.0f;
        return;
    }
    float t = 0.0f;
    for (long long j = threadIdx.x; j < K; j += blockDim.x) {
        float e = expf(row[j] - m);
        row[j] = e;
        t += e;
    }
    float inv = 1.0f / block_reduce(t, sh, false);
    for (long long j = threadIdx.x; j < K; j += blockDim.x) row[j] *= inv;
}

// loss_i = valid_i (lse_i - (1-eps) x_{i,t_i} - (eps/V) sum_j x_ij); keeps lse_i only.
extern "C" __global__ void ce_forward(const float* x, const long long* target, float* loss,
                                      float* lse, long long V, long long ignore, float eps) {
    __shared__ float sh[32];
    const float* row = x + blockIdx.x * V;
    float m = -INFINITY, total = 0.0f;
    for (long long j = threadIdx.x; j < V; j += blockDim.x) {
        m = fmaxf(m, row[j]);
        total += row[j];
    }
    m = block_reduce(m, sh, true);
    total = block_reduce(total, sh, false);
    float s = 0.0f;
    for (long long j = threadIdx.x; j < V; j += blockDim.x) s += expf(row[j] - m);
    s = block_reduce(s, sh, false);
    if (threadIdx.x == 0) {
        long long t = target[blockIdx.x];
        float l = m + logf(s);
        lse[blockIdx.x] = l;
        loss[blockIdx.x] = (t == ignore) ? 0.0f
                         : l - (1.0f - eps) * row[t] - (eps / (float)V) * total;
    }
}

// dx_ij = c_i (exp(x_ij - lse_i) - (1-eps) [j = t_i] - eps/V); c_i = 0 on ignored rows.
extern "C" __global__ void ce_backward(const float* x, const long long* target, const float* lse,
                                       const float* c, float* dx, long long V, float eps) {
    long long i = blockIdx.x, t = target[i];
    float ci = c[i], l = lse[i];
    for (long long j = threadIdx.x; j < V; j += blockDim.x) {
        float d = expf(x[i * V + j] - l) - eps / (float)V - (j == t ? 1.0f - eps : 0.0f);
        dx[i * V + j] = ci * d;
    }
}

// y = (x - mu) rstd * w + b per row; saves mu and rstd. w, b may be null.
extern "C" __global__ void ln_forward(const float* x, const float* w, const float* b, float* y,
                                      float* mu, float* rstd, long long K, float eps) {
    __shared__ float sh[32];
    const float* row = x + blockIdx.x * K;
    float s = 0.0f;
    for (long long j = threadIdx.x; j < K; j += blockDim.x) s += row[j];
    float mean = block_reduce(s, sh, false) / (float)K;
    float q = 0.0f;
    for (long long j = threadIdx.x; j < K; j += blockDim.x) {
        float d = row[j] - mean;
        q += d * d;
    }
    float r = rsqrtf(block_reduce(q, sh, false) / (float)K + eps);
    for (long long j = threadIdx.x; j < K; j += blockDim.x) {
        float v = (row[j] - mean) * r;
        if (w) v *= w[j];
        if (b) v += b[j];
        y[blockIdx.x * K + j] = v;
    }
    if (threadIdx.x == 0) { mu[blockIdx.x] = mean; rstd[blockIdx.x] = r; }
}

// dx = (gw - mean(gw) - xhat mean(gw xhat)) rstd with gw = g w, xhat = (x - mu) rstd.
extern "C" __global__ void ln_backward(const float* x, const float* g, const float* w,
                                       const float* mu, const float* rstd, float* dx,
                                       long long K) {
    __shared__ float sh[32];
    long long i = blockIdx.x;
    float m = mu[i], r = rstd[i], a = 0.0f, c = 0.0f;
    for (long long j = threadIdx.x; j < K; j += blockDim.x) {
        float gw = g[i * K + j] * (w ? w[j] : 1.0f), xh = (x[i * K + j] - m) * r;
        a += gw;
        c += gw * xh;
    }
    a = block_reduce(a, sh, false) / (float)K;
    c = block_reduce(c, sh, false) / (float)K;
    for (long long j = threadIdx.x; j < K; j += blockDim.x) {
        float gw = g[i * K + j] * (w ? w[j] : 1.0f), xh = (x[i * K + j] - m) * r;
        dx[i * K + j] = (gw - a - xh * c) * r;
    }
}

// y = x rrms w with rrms = 1 / sqrt(mean(x^2) + eps); saves rrms.
extern "C" __global__ void rms_forward(const float* x, const float* w, float* y, float* rrms,
                                       long long K, float eps) {
    __shared__ float sh[32];
    const float* row = x + blockIdx.x * K;
    float q = 0.0f;
    for (long long j = threadIdx.x; j < K; j += blockDim.x) q += row[j] * row[j];
    float r = rsqrtf(block_reduce(q, sh, false) / (float)K + eps);
    for (long long j = threadIdx.x; j < K; j += blockDim.x)
        y[blockIdx.x * K + j] = row[j] * r * (w ? w[j] : 1.0f);
    if (threadIdx.x == 0) rrms[blockIdx.x] = r;
}

// dx = (gw - xhat mean(gw xhat)) rrms with gw = g w, xhat = x rrms.
extern "C" __global__ void rms_backward(const float* x, const float* g, const float* w,
                                        const float* rrms, float* dx, long long K) {
    __shared__ float sh[32];
    long long i = blockIdx.x;
    float r = rrms[i], c = 0.0f;
    for (long long j = threadIdx.x; j < K; j += blockDim.x)
        c += g[i * K + j] * (w ? w[j] : 1.0f) * x[i * K + j] * r;
    c = block_reduce(c, sh, false) / (float)K;
    for (long long j = threadIdx.x; j < K; j += blockDim.x) {
        float gw = g[i * K + j] * (w ? w[j] : 1.0f);
        dx[i * K + j] = (gw - x[i * K + j] * r * c) * r;
    }
}
"""

_THREADS = 256


@functools.cache
def _rows(xp: Any) -> Any:
    return xp.RawModule(code=_ROW_SOURCE)


def _launch(xp: Any, name: str, rows: int, *args: Any) -> None:
    if rows:
        _rows(xp).get_function(name)((rows,), (_THREADS,), args)


def _f32(xp: Any, a: Any) -> Any:
    """``a`` as a C-contiguous float32 array (the row kernels' layout)."""
    return xp.ascontiguousarray(a, dtype=xp.float32)


def _null(xp: Any, a: Any) -> Any:
    """A float32 pointer argument, or a null pointer (0) for an absent weight/bias."""
    return 0 if a is None else _f32(xp, a)


def softmax_rows(s: Any) -> Any:
    """softmax over the last axis of a contiguous float32 array, in place; returns ``s``."""
    xp = _xp(s)
    if s.dtype != np.float32 or not s.flags.c_contiguous:
        raise TypeError("softmax_rows takes a C-contiguous float32 array")
    k = s.shape[-1]
    _launch(xp, "softmax_rows", s.size // k if k else 0, s, np.int64(k))
    return s


def cross_entropy_forward(x: Any, target: Any, ignore_index: int,
                          smoothing: float) -> tuple[Any, Any]:  # fmt: skip
    """Per-row losses (N,) and log-sum-exps (N,) of logits x (N, V)."""
    xp = _xp(x)
    x = _f32(xp, x)
    n, v = x.shape
    loss, lse = xp.empty(n, xp.float32), xp.empty(n, xp.float32)
    target = xp.ascontiguousarray(target, dtype=xp.int64)
    _launch(xp, "ce_forward", n, x, target, loss, lse, np.int64(v), np.int64(ignore_index),
            np.float32(smoothing))  # fmt: skip
    return loss, lse


def cross_entropy_backward(x: Any, target: Any, lse: Any, c: Any, smoothing: float) -> Any:
    """dx (N, V) = c_i (softmax(x_i) - (1-ε) onehot(t_i) - ε/V)."""
    xp = _xp(x)
    x = _f32(xp, x)
    dx = xp.empty_like(x)
    target = xp.ascontiguousarray(target, dtype=xp.int64)
    _launch(xp, "ce_backward", x.shape[0], x, target, _f32(xp, lse), _f32(xp, c), dx,
            np.int64(x.shape[1]), np.float32(smoothing))  # fmt: skip
    return dx


def layer_norm_forward(x: Any, w: Any, b: Any, eps: float) -> tuple[Any, Any, Any]:
    """y (M, K), mean (M,), 1/σ (M,) of float32 rows x (M, K)."""
    xp = _xp(x)
    x = _f32(xp, x)
    m, k = x.shape
    y, mu, rstd = xp.empty_like(x), xp.empty(m, xp.float32), xp.empty(m, xp.float32)
    _launch(xp, "ln_forward", m, x, _null(xp, w), _null(xp, b), y, mu, rstd, np.int64(k),
            np.float32(eps))  # fmt: skip
    return y, mu, rstd


def layer_norm_backward(x: Any, g: Any, w: Any, mu: Any, rstd: Any) -> Any:
    """dx (M, K) of layer_norm (the weight and bias gradients are array sums, done by the op)."""
    xp = _xp(x)
    x, g = _f32(xp, x), _f32(xp, g)
    dx = xp.empty_like(x)
    _launch(xp, "ln_backward", x.shape[0], x, g, _null(xp, w), mu, rstd, dx, np.int64(x.shape[1]))
    return dx


def rms_norm_forward(x: Any, w: Any, eps: float) -> tuple[Any, Any]:
    """y (M, K) and 1/rms (M,) of float32 rows x (M, K)."""
    xp = _xp(x)
    x = _f32(xp, x)
    y, rrms = xp.empty_like(x), xp.empty(x.shape[0], xp.float32)
    _launch(xp, "rms_forward", x.shape[0], x, _null(xp, w), y, rrms, np.int64(x.shape[1]),
            np.float32(eps))  # fmt: skip
    return y, rrms


def rms_norm_backward(x: Any, g: Any, w: Any, rrms: Any) -> Any:
    xp = _xp(x)
    x, g = _f32(xp, x), _f32(xp, g)
    dx = xp.empty_like(x)
    _launch(xp, "rms_backward", x.shape[0], x, g, _null(xp, w), rrms, dx, np.int64(x.shape[1]))
    return dx


def _xp(a: Any) -> Any:
    from ..backend import xp_of  # noqa: PLC0415 — keeps this module free of import cycles

    return xp_of(a)
