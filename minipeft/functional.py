"""``minipeft.functional`` (import as ``F``): activations, norms, losses, attention — and the
Tensor ops (``add``, ``sum``, ``reshape``, ...) as functions, as ``torch`` has them.

Names and signatures follow ``torch.nn.functional``. Each function validates its arguments
(errors name what was expected and what was found; the shared checks are in
:mod:`minipeft.functional_checks`) and then calls one *fused* Function from
:mod:`minipeft.ops.fused` — a single forward with a hand-derived backward. The same math built
from primitives lives in :mod:`minipeft.ops.composite`; the tests check one against the other.
``scaled_dot_product_attention`` is defined in :mod:`minipeft.attention` and re-exported here,
so ``F`` stays the one import for all of them.

=====================================  ===================================================
softmax, log_softmax, logsumexp        max-subtracted, finite for logits of ±1e4
cross_entropy                          logits (..., V), integer targets (...)
layer_norm, rms_norm                   over the last ``len(normalized_shape)`` dims
gelu ("none" | "tanh"), silu, relu,    gelu "tanh" is GPT-2's ``gelu_new``
sigmoid, tanh
silu_mul, rotary_embedding             LLaMA's SwiGLU product and RoPE, one Function each
linear, embedding                      W (out, in) as PyTorch stores it; ids checked in [0, V)
lora_linear                            x Wᵀ + b + s (x Aᵀ) Bᵀ, LoRA's layer in one Function
dropout                                inverted dropout, seeded per device or by ``generator``
scaled_dot_product_attention           causal mask aligned to the *last* keys (see there)
add, sub, mul, truediv/div, neg, pow,  the Tensor operators and methods as functions,
exp, log, sum, mean, max, reshape,     re-exported from :mod:`minipeft.ops.api`:
transpose, cat, split, where, ...      ``F.add(x, 1.0)`` is ``x + 1.0``, ``F.sum(x, 1)``
                                       is ``x.sum(1)`` (see ``__all__`` for the full list)
=====================================  ===================================================

Importing this module also installs ``Tensor.softmax(dim)``, ``Tensor.log_softmax(dim)`` and
``Tensor.logsumexp(dim, keepdim)``, as PyTorch has them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from .attention import scaled_dot_product_attention
from .backend import xp_of
from .functional_checks import const_array, float_tensor, keep_mask, same_dtype
from .ops import fused as FU
from .ops import fused_llama as FL
from .ops.api import (
    abs,
    add,
    amax,
    broadcast_to,
    cat,
    chunk,
    clip,
    div,
    exp,
    expand,
    flatten,
    log,
    masked_fill,
    matmul,
    max,
    maximum,
    mean,
    minimum,
    mul,
    neg,
    permute,
    pow,
    relu,
    reshape,
    sigmoid,
    silu,
    split,
    sqrt,
    squeeze,
    stack,
    sub,
    sum,
    swapaxes,
    tanh,
    transpose,
    truediv,
    unsqueeze,
    var,
    where,
)
from .ops.lora_linear import LoraLinear
from .ops.matmul import Linear
from .ops.movement import Embedding
from .ops.reduce import normalize_axes
from .tensor import Tensor

__all__ = [
    # activations, norms, losses and attention: defined below (fused ops)
    "softmax", "log_softmax", "logsumexp", "cross_entropy", "layer_norm", "rms_norm", "gelu",
    "silu", "relu", "sigmoid", "tanh", "linear", "lora_linear", "embedding", "dropout",
    "scaled_dot_product_attention", "silu_mul", "rotary_embedding",
    # the Tensor operators and methods as functions (one definition, in ops/api.py)
    "add", "sub", "mul", "truediv", "div", "neg", "pow", "exp", "log", "sqrt", "abs", "maximum",
    "minimum", "where", "masked_fill", "clip", "clamp", "sum", "mean", "max", "amax", "var",
    "matmul", "reshape", "transpose", "permute", "swapaxes", "broadcast_to", "expand",
    "unsqueeze", "squeeze", "flatten", "cat", "stack", "split", "chunk",
]  # fmt: skip

clamp = clip  # PyTorch has both names


def _dim(dim: int, x: Tensor) -> int:
    (axis,) = normalize_axes(dim, x.ndim)
    return axis


# ------------------------------------------------------------------------ softmax family
def softmax(input: Tensor, dim: int = -1) -> Tensor:
    """softmax(x)_i = e^(x_i - m) / Σ_j e^(x_j - m) along ``dim`` (m = max, for stability)."""
    x = float_tensor(input, "softmax")
    if x.ndim == 0:
        return softmax(x.reshape(1), 0).reshape(())
    return FU.Softmax.apply(x, axis=_dim(dim, x))


def log_softmax(input: Tensor, dim: int = -1) -> Tensor:
    """log softmax(x) = x - m - log Σ_j e^(x_j - m) along ``dim`` (never log of 0)."""
    x = float_tensor(input, "log_softmax")
    if x.ndim == 0:
        return log_softmax(x.reshape(1), 0).reshape(())
    return FU.LogSoftmax.apply(x, axis=_dim(dim, x))


def logsumexp(input: Tensor, dim: int | Sequence[int], keepdim: bool = False) -> Tensor:
    """log Σ e^x over ``dim`` (an int or a tuple), computed as m + log Σ e^(x - m)."""
    x = float_tensor(input, "logsumexp")
    if x.ndim == 0:
        return x * 1.0
    return FU.LogSumExp.apply(x, axis=normalize_axes(dim, x.ndim), keepdims=keepdim)


# ------------------------------------------------------------------------ loss
def cross_entropy(
    input: Tensor,
    target: Any,
    weight: Any = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> Tensor:
    """Softmax cross-entropy: ℓ_i = -log softmax(x_i)[t_i] (with label smoothing ε:
    ℓ_i = -(1-ε) log p_{i,t_i} - (ε/V) Σ_j log p_ij, as PyTorch defines it).

    input: logits (N, V), or (..., V) such as (B, T, V) — **the class axis is the last one**
    (the language-model layout; PyTorch's (N, C, d1, ...) layout is not supported). Leading
    axes are flattened. target: integer class ids with shape ``input.shape[:-1]``; entries
    equal to ``ignore_index`` contribute 0 loss and 0 gradient.
    reduction: "mean" (Σ ℓ over non-ignored targets / their count — NaN with zero gradients
    when every target is ignored, as in PyTorch), "sum", or "none" (shape of target, 0 where
    ignored). ``weight`` (per-class weights) is not supported and must be None.
    """
    fn = "cross_entropy"
    x = float_tensor(input, fn)
    if weight is not None:
        raise NotImplementedError(f"{fn}: per-class weight is not supported; expected None")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"{fn}: reduction must be 'mean', 'sum' or 'none', found {reduction!r}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"{fn}: label_smoothing must be in [0, 1], found {label_smoothing}")
    t = const_array(target, x.device, fn, "target")
    if t.dtype.kind not in "iu":
        raise TypeError(
            f"{fn}: expected integer class ids as target, found dtype {t.dtype} "
            "(probability targets are not supported)"
        )
    if x.ndim == 0 or tuple(t.shape) != x.shape[:-1]:
        raise ValueError(
            f"{fn}: expected target of shape {x.shape[:-1]} (input {x.shape} minus its last, "
            f"class axis), found {tuple(t.shape)}"
        )
    v = x.shape[-1]
    bad = (t != ignore_index) & ((t < 0) | (t >= v))
    if bool(bad.any()):
        found = t[bad]
        raise IndexError(
            f"{fn}: target ids must be in [0, {v}) or equal ignore_index={ignore_index}, "
            f"found {int(found.min())}..{int(found.max())} ({int(bad.sum())} bad entries)"
        )
    x2 = x.reshape(-1, v) if x.ndim != 2 else x
    loss = FU.CrossEntropy.apply(
        x2,
        target=t.reshape(-1),
        ignore_index=ignore_index,
        reduction=reduction,
        smoothing=float(label_smoothing),
    )
    return loss.reshape(*t.shape) if reduction == "none" and x.ndim != 2 else loss


# ------------------------------------------------------------------------ norms
def _norm_shape(fn: str, x: Tensor, normalized_shape: Any) -> tuple[int, ...]:
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    if not shape or x.shape[x.ndim - len(shape) :] != shape or len(shape) > x.ndim:
        raise ValueError(
            f"{fn}: expected input whose trailing dims are normalized_shape {shape}, "
            f"found input shape {x.shape}"
        )
    return shape


def _param(fn: str, name: str, p: Tensor | None, shape: tuple[int, ...], x: Tensor) -> Any:
    if p is None:
        return None
    same_dtype(fn, x, **{name: p})
    if p.shape != shape:
        raise ValueError(f"{fn}: expected {name} of shape {shape}, found {p.shape}")
    return p.reshape(-1) if len(shape) != 1 else p


def layer_norm(
    input: Tensor,
    normalized_shape: int | Sequence[int],
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """y = (x - μ) / √(σ² + eps) · weight + bias, μ and σ² (biased) over the trailing dims."""
    x = float_tensor(input, "layer_norm")
    shape = _norm_shape("layer_norm", x, normalized_shape)
    w = _param("layer_norm", "weight", weight, shape, x)
    b = _param("layer_norm", "bias", bias, shape, x)
    x2 = x.reshape(-1, math.prod(shape))  # (M, K)
    params = [p for p in (w, b) if p is not None]
    y = FU.LayerNorm.apply(x2, *params, eps=float(eps), has_weight=w is not None)
    return y.reshape(*x.shape)


def rms_norm(
    input: Tensor,
    normalized_shape: int | Sequence[int],
    weight: Tensor | None = None,
    eps: float | None = None,
) -> Tensor:
    """y = x / √(mean(x²) + eps) · weight over the trailing dims (LLaMA's RMSNorm).

    ``eps=None`` uses the dtype's machine epsilon (PyTorch's default). Computed in the input
    dtype; Hugging Face LLaMA upcasts to float32 first, which is the same for float32 inputs.
    """
    x = float_tensor(input, "rms_norm")
    shape = _norm_shape("rms_norm", x, normalized_shape)
    w = _param("rms_norm", "weight", weight, shape, x)
    eps = float(xp_of(x.data).finfo(x.dtype).eps) if eps is None else float(eps)
    x2 = x.reshape(-1, math.prod(shape))  # (M, K)
    y = FU.RMSNorm.apply(x2, *([w] if w is not None else []), eps=eps)
    return y.reshape(*x.shape)


# ------------------------------------------------------------------------ activations
def gelu(input: Tensor, approximate: str = "none") -> Tensor:
    """GELU: x Φ(x) ("none", exact, via erf) or GPT-2's tanh approximation ("tanh")."""
    x = float_tensor(input, "gelu")
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gelu: approximate must be 'none' or 'tanh', found {approximate!r}")
    return FU.Gelu.apply(x, approximate=approximate)


def silu_mul(gate: Tensor, up: Tensor) -> Tensor:
    """SwiGLU's silu(gate) ⊙ up (LLaMA's MLP) in one Function: y = g σ(g) u, same shapes."""
    a, b = float_tensor(gate, "silu_mul"), float_tensor(up, "silu_mul")
    same_dtype("silu_mul", a, up=b)
    if a.shape != b.shape:
        raise ValueError(f"silu_mul: expected gate and up of one shape, found {a.shape}, {b.shape}")
    return FL.SiluMul.apply(a, b)


def rotary_embedding(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """RoPE in HF's half-split layout: x ⊙ cos + rotate_half(x) ⊙ sin in one Function.

    x (B, H, T, D); cos, sin (B or 1, T, D), broadcast over the H heads, no gradient."""
    x = float_tensor(x, "rotary_embedding")
    if x.ndim != 4 or cos.shape != sin.shape or cos.ndim != 3 or cos.shape[1:] != x.shape[2:]:
        raise ValueError(f"rotary_embedding: expected x (B, H, T, D) and cos, sin (B, T, D), "
                         f"found {x.shape}, {cos.shape}, {sin.shape}")  # fmt: skip
    return FL.Rope.apply(x, cos.detach(), sin.detach())


# ------------------------------------------------------------------------ layers
def linear(input: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """y = x Wᵀ + b.  x (..., in), weight (out, in), bias (out,) → y (..., out)."""
    x = float_tensor(input, "linear")
    same_dtype("linear", x, weight=weight, bias=bias)
    if weight.ndim != 2 or x.ndim == 0 or x.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"linear: expected weight (out, {x.shape[-1] if x.ndim else '?'}) for input "
            f"{x.shape}, found weight {weight.shape}"
        )
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"linear: expected bias of shape ({weight.shape[0]},), found {bias.shape}")
    return Linear.apply(x, weight) if bias is None else Linear.apply(x, weight, bias)


def lora_linear(input: Tensor, weight: Tensor, lora_a: Tensor, lora_b: Tensor, scale: float,
                bias: Tensor | None = None, dequantize: Any = None,
                state: Any = None) -> Tensor:  # fmt: skip
    """y = x Wᵀ + b + s · (x Aᵀ) Bᵀ in one Function (:mod:`minipeft.ops.lora_linear`).

    x (..., in), weight (out, in), lora_a (r, in), lora_b (out, r), bias (out,) → (..., out).
    With ``dequantize`` (and its ``state``), ``weight`` holds packed bytes and
    W = dequantize(weight.data, state) has shape (out, in): QLoRA's layer."""
    x = float_tensor(input, "lora_linear")
    same_dtype("lora_linear", x, lora_a=lora_a, lora_b=lora_b, bias=bias)
    if dequantize is None:
        same_dtype("lora_linear", x, weight=weight)
    r, d_in = lora_a.shape if lora_a.ndim == 2 else (None, None)
    out = lora_b.shape[0] if lora_b.ndim == 2 else None
    bad = bias is not None and bias.shape != (out,)
    if x.ndim == 0 or d_in != x.shape[-1] or lora_b.shape != (out, r):
        bad = True
    if dequantize is None and weight.shape != (out, d_in):
        bad = True
    if bad:
        raise ValueError(
            f"lora_linear: expected x (..., in), weight (out, in), lora_a (r, in), lora_b "
            f"(out, r), bias (out,); found x {x.shape}, weight {weight.shape}, lora_a "
            f"{lora_a.shape}, lora_b {lora_b.shape}, bias {None if bias is None else bias.shape}"
        )
    inputs = (x, weight, lora_a, lora_b) + (() if bias is None else (bias,))
    return LoraLinear.apply(*inputs, scale=float(scale), dequantize=dequantize, state=state)


def embedding(input: Any, weight: Tensor) -> Tensor:
    """out[..., :] = weight[input[...], :].  input: int ids (...), weight (V, C) → (..., C)."""
    w = float_tensor(weight, "embedding", "weight")
    if w.ndim != 2:
        raise ValueError(f"embedding: expected weight of shape (V, C), found {w.shape}")
    ids = const_array(input, w.device, "embedding", "input")
    if ids.dtype.kind not in "iu":
        raise TypeError(f"embedding: expected integer ids, found dtype {ids.dtype}")
    if ids.size:
        lo, hi, v = int(ids.min()), int(ids.max()), w.shape[0]
        if lo < 0 or hi >= v:
            raise IndexError(
                f"embedding: ids must be in [0, {v}) for a weight with V={v} rows, found "
                f"ids in [{lo}, {hi}] (max id {hi})"
            )
    return Embedding.apply(w, ids=ids)


def dropout(
    input: Tensor, p: float = 0.5, training: bool = True, *, generator: Any = None
) -> Tensor:
    """Inverted dropout: y = x ⊙ keep / (1 - p), keep ~ Bernoulli(1 - p); identity when
    ``training`` is False or p == 0, so evaluation needs no rescaling.

    Randomness comes from ``generator`` (e.g. ``minipeft.backend.get_rng(device, seed)``) or
    the device's global generator (:func:`minipeft.manual_seed`). p must be in [0, 1]; p == 1
    drops everything: zeros with a zero gradient (no 1/(1 - p) scale), as in PyTorch.
    """
    x = float_tensor(input, "dropout")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout: p must be in [0, 1], found {p}")
    if not training or p == 0:
        return x
    if p == 1:
        return x * 0.0  # PyTorch's p == 1 path: input * 0 (draws no random numbers)
    keep = keep_mask(x.shape, p, x.device, generator, "dropout")
    return FU.Dropout.apply(x, keep=keep, p=float(p))


# ------------------------------------------------------------------------ Tensor methods
def _tensor_softmax(self: Tensor, dim: int = -1) -> Tensor:
    return softmax(self, dim)


def _tensor_log_softmax(self: Tensor, dim: int = -1) -> Tensor:
    return log_softmax(self, dim)


def _tensor_logsumexp(self: Tensor, dim: int | Sequence[int], keepdim: bool = False) -> Tensor:
    return logsumexp(self, dim, keepdim)


Tensor.softmax = _tensor_softmax  # type: ignore[attr-defined]
Tensor.log_softmax = _tensor_log_softmax  # type: ignore[attr-defined]
Tensor.logsumexp = _tensor_logsumexp  # type: ignore[attr-defined]
