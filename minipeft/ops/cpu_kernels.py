"""The CPU's fused passes: GELU-tanh and the norms as cache-blocked NumPy (see
:mod:`minipeft.ops.blocked`), the CPU twins of :mod:`minipeft.ops.cuda_kernels`.

GELU-tanh, written with one exponential instead of tanh (the same function:
½(1 + tanh u) = σ(2u) = 1 / (1 + e^(-2u))), with u = c(x + k x³), c = √(2/π), k = 0.044715:

    y  = x / (1 + e^(-2u))                                         (6 passes instead of 9)
    dy/dx = σ + x · σ(1 - σ) · 2c(1 + 3k x²),   σ = σ(2u)

The forward saves only x; the backward recomputes σ (one exp per value) instead of keeping two
more activation-sized arrays alive from forward to backward. For very negative x, e^(-2u)
overflows to inf and y = x / inf = -0, the limit (the overflow warning is silenced).

Cross-entropy stays the op's array code on the CPU: recomputing e^(x - lse) in backward (to keep
only lse, as the CUDA kernel does) measured 8.1 ms against 2 ms for reading the kept e^(x - m)
on (1024, 4096) logits — NumPy's broadcast subtract costs as much as the exp — so the CPU keeps
the array and its speed.

LayerNorm and RMSNorm over rows x (M, K), with ĝ = g ⊙ w and means over K:

    layer_norm  x̂ = (x - μ) ρ, ρ = 1/√(σ² + eps), y = x̂ w + b;  dx = ρ (ĝ - mean ĝ - x̂ mean(ĝ x̂))
    rms_norm    x̂ = x ρ, ρ = 1/√(mean x² + eps),   y = x̂ w;      dx = ρ (ĝ - x̂ mean(ĝ x̂))

keeping μ and ρ (M,) for backward, which recomputes x̂ from x (held by the graph) block by
block, and sums dw = Σ_rows g x̂ in the same pass when it is wanted (db = Σ_rows g is the op's).

The ops take these on NumPy arrays; ``use_kernels(False)`` switches them back to their
whole-array code, the readable reference the tests compare against.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .blocked import row_slices
from .switch import Switch

__all__ = [
    "enabled", "use_kernels", "gelu_tanh", "gelu_tanh_backward", "layer_norm_forward",
    "layer_norm_backward", "rms_norm_forward", "rms_norm_backward",
]  # fmt: skip

_C = math.sqrt(2.0 / math.pi)
_K = 0.044715
use_kernels = Switch()  # with use_kernels(False): NumPy arrays take the ops' array code


def enabled(xp: Any) -> bool:
    """True when ``xp`` is NumPy and the CPU kernels are switched on."""
    return xp is np and use_kernels.on


def _sigma_2u(x: Any) -> tuple[Any, Any]:
    """(x², σ(2u)) for a block x: σ(2u) = 1 / (1 + e^(-2u)), -2u = x(-2c - 2ck x²)."""
    x2 = x * x
    e = x2 * (-2.0 * _C * _K)
    e -= 2.0 * _C
    e *= x
    np.exp(e, out=e)
    e += 1.0
    np.reciprocal(e, out=e)
    return x2, e


def gelu_tanh(x: Any) -> Any:
    """y = x σ(2u), GPT-2's tanh GELU, block by block (x any shape, C-contiguous or not)."""
    x = np.ascontiguousarray(x).reshape(-1)
    y = np.empty_like(x)
    with np.errstate(over="ignore"):
        for s in row_slices(x, 1):
            xb = x[s]
            _, sig = _sigma_2u(xb)
            np.multiply(xb, sig, out=y[s])
    return y


def gelu_tanh_backward(x: Any, g: Any) -> Any:
    """dx = g · (σ + x σ(1 - σ) 2c(1 + 3k x²)), block by block; x, g of one shape."""
    shape = x.shape
    x = np.ascontiguousarray(x).reshape(-1)
    g = np.ascontiguousarray(g).reshape(-1)
    dx = np.empty_like(x)
    with np.errstate(over="ignore"):
        for s in row_slices(x, 1):
            xb = x[s]
            x2, sig = _sigma_2u(xb)
            d = np.multiply(x2, 3.0 * _K * 2.0 * _C, out=x2)
            d += 2.0 * _C  # 2c(1 + 3k x²)
            d *= xb
            d *= sig
            d *= 1.0 - sig
            d += sig
            np.multiply(d, g[s], out=dx[s])
    return dx.reshape(shape)


def layer_norm_forward(x: Any, w: Any, b: Any, eps: float) -> tuple[Any, Any, Any]:
    """y (M, K), μ (M,) and ρ = 1/σ (M,) of rows x (M, K); w, b (K,) or None."""
    y = np.empty_like(x)
    mu = np.empty(x.shape[0], x.dtype)
    rstd = np.empty(x.shape[0], x.dtype)
    for s in row_slices(x, x.shape[1]):
        xb, yb = x[s], y[s]
        m = xb.mean(axis=1, keepdims=True)
        np.subtract(xb, m, out=yb)
        sq = yb * yb
        r = sq.mean(axis=1, keepdims=True)
        r += eps
        np.sqrt(r, out=r)
        np.reciprocal(r, out=r)
        yb *= r
        if w is not None:
            yb *= w
        if b is not None:
            yb += b
        mu[s], rstd[s] = m[:, 0], r[:, 0]
    return y, mu, rstd


def layer_norm_backward(x: Any, g: Any, w: Any, mu: Any, rstd: Any, need_dx: bool = True,
                        need_dw: bool = False) -> tuple[Any, Any]:  # fmt: skip
    """(dx (M, K) or None, dw = Σ_rows g x̂ (K,) or None) of layer_norm."""
    return _norm_backward(x, g, w, mu, rstd, need_dx, need_dw)


def rms_norm_forward(x: Any, w: Any, eps: float) -> tuple[Any, Any]:
    """y (M, K) and ρ = 1/rms (M,) of rows x (M, K); w (K,) or None."""
    y = np.empty_like(x)
    rrms = np.empty(x.shape[0], x.dtype)
    for s in row_slices(x, x.shape[1]):
        xb, yb = x[s], y[s]
        np.multiply(xb, xb, out=yb)
        r = yb.mean(axis=1, keepdims=True)
        r += eps
        np.sqrt(r, out=r)
        np.reciprocal(r, out=r)
        np.multiply(xb, r, out=yb)
        if w is not None:
            yb *= w
        rrms[s] = r[:, 0]
    return y, rrms


def rms_norm_backward(x: Any, g: Any, w: Any, rrms: Any, need_dx: bool = True,
                      need_dw: bool = False) -> tuple[Any, Any]:  # fmt: skip
    """(dx (M, K) or None, dw = Σ_rows g x̂ (K,) or None) of rms_norm."""
    return _norm_backward(x, g, w, None, rrms, need_dx, need_dw)


def _norm_backward(x: Any, g: Any, w: Any, mu: Any, rstd: Any, need_dx: bool,
                   need_dw: bool) -> tuple[Any, Any]:  # fmt: skip
    """Both norms' backward; ``mu`` None means RMSNorm (no centring, no mean(ĝ) term)."""
    dx = np.empty_like(x) if need_dx else None
    dw = np.zeros(x.shape[1], x.dtype) if need_dw else None
    k = x.shape[1]
    for s in row_slices(x, k):
        r = rstd[s, None]
        xhat = x[s] - mu[s, None] if mu is not None else x[s] * 1.0
        xhat *= r
        gb = g[s]
        if need_dw:
            dw += np.einsum("ij,ij->j", gb, xhat)
        if not need_dx:
            continue
        gh = gb * w if w is not None else gb.copy()
        c = np.einsum("ij,ij->i", gh, xhat)[:, None]
        c *= 1.0 / k
        xhat *= c
        if mu is not None:
            gh -= gh.mean(axis=1, keepdims=True)
        gh -= xhat
        np.multiply(gh, r, out=dx[s])
    return dx, dw
