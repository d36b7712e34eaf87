"""The row kernels of :mod:`minipeft.ops.cuda_kernels`: one CUDA block of 256 threads per row.

softmax, cross-entropy, layer norm and RMS norm each reduce along a row (max, sum, mean) and
then write the row: one block reads its row from global memory and reduces it with warp
shuffles and a little shared memory, so the row is read once or twice and written once. The
rows are C-contiguous float32 (the ops upcast float16 first, so statistics are float32).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

__all__ = [
    "softmax_rows",
    "cross_entropy_forward",
    "cross_entropy_backward",
    "layer_norm_forward",
    "layer_norm_backward",
    "rms_norm_forward",
    "rms_norm_backward",
]

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


def layer_norm_backward(x: Any, g: Any, w: Any, mu: Any, rstd: Any, need_dx: bool = True,
                        need_dw: bool = False) -> tuple[Any, Any]:  # fmt: skip
    """(dx (M, K) from the kernel or None, dw = Σ_rows g x̂ (K,) as an array sum or None)."""
    xp = _xp(x)
    x, g = _f32(xp, x), _f32(xp, g)
    dx = None
    if need_dx:
        dx = xp.empty_like(x)
        _launch(xp, "ln_backward", x.shape[0], x, g, _null(xp, w), mu, rstd, dx,
                np.int64(x.shape[1]))  # fmt: skip
    dw = ((x - mu[:, None]) * rstd[:, None] * g).sum(axis=0) if need_dw else None
    return dx, dw


def rms_norm_forward(x: Any, w: Any, eps: float) -> tuple[Any, Any]:
    """y (M, K) and 1/rms (M,) of float32 rows x (M, K)."""
    xp = _xp(x)
    x = _f32(xp, x)
    y, rrms = xp.empty_like(x), xp.empty(x.shape[0], xp.float32)
    _launch(xp, "rms_forward", x.shape[0], x, _null(xp, w), y, rrms, np.int64(x.shape[1]),
            np.float32(eps))  # fmt: skip
    return y, rrms


def rms_norm_backward(x: Any, g: Any, w: Any, rrms: Any, need_dx: bool = True,
                      need_dw: bool = False) -> tuple[Any, Any]:  # fmt: skip
    """(dx (M, K) from the kernel or None, dw = Σ_rows g x̂ (K,) as an array sum or None)."""
    xp = _xp(x)
    x, g = _f32(xp, x), _f32(xp, g)
    dx = None
    if need_dx:
        dx = xp.empty_like(x)
        _launch(xp, "rms_backward", x.shape[0], x, g, _null(xp, w), rrms, dx,
                np.int64(x.shape[1]))  # fmt: skip
    dw = ((x * rrms[:, None]) * g).sum(axis=0) if need_dw else None
    return dx, dw


def _xp(a: Any) -> Any:
    from ..backend import xp_of  # noqa: PLC0415 — keeps this module free of import cycles

    return xp_of(a)
