"""Scaled dot-product attention: ``F.scaled_dot_product_attention``, checked and dispatched.

This is the public entry point (re-exported by :mod:`minipeft.functional`) in front of the fused
:class:`minipeft.ops.fused_attention.Attention`: it checks shapes, heads, dtypes and masks,
turns a bool mask, ``is_causal`` and dropout into the arrays the Function takes, and picks the
scale. The causal mask is aligned to the *last* keys (PyTorch aligns it top-left), which is what
makes a KV cache and prefix tuning work; see the function's docstring.
"""

from __future__ import annotations

import math
from typing import Any

from .backend import broadcast_shapes, xp_of
from .functional_checks import const_array, float_tensor, keep_mask, same_dtype
from .ops.fused_attention import Attention, causal_allowed
from .tensor import Tensor

__all__ = ["scaled_dot_product_attention"]


def scaled_dot_product_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Any = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> Tensor:
    """O = softmax(q kᵀ · scale + mask) v, one fused Function (forward and backward).

    Shapes: query (*, H, Tq, D), key (*, Hkv, Tk, D), value (*, Hkv, Tk, Dv) → (*, H, Tq, Dv);
    the leading dims * must match. scale defaults to 1/√D.

    **is_causal aligns the mask to the last keys**: query i (0-based of Tq) may attend key j iff
    j ≤ i + (Tk - Tq). With Tk == Tq that is the usual lower triangle; with Tk > Tq the extra
    Tk - Tq keys are a past that every query sees — a KV cache, or prefix tuning's learned
    keys/values. *This differs from PyTorch*, whose ``is_causal`` aligns top-left (query i sees
    keys j ≤ i) whenever Tq != Tk. is_causal with Tk < Tq raises.

    attn_mask: bool (True = may attend) or additive float (the query's dtype), broadcastable to
    (*, H, Tq, Tk); combined with is_causal when both are given (a float mask is added, then the
    causal positions blocked). Blocked scores become -inf; **a query row with no allowed key
    gives zeros** and zero gradients (as PyTorch >= 2.5 does; older versions gave NaN). A float
    mask that requires grad gets a gradient.

    Grouped-query attention: H != Hkv requires ``enable_gqa=True`` (as in PyTorch) and
    H % Hkv == 0; query head h reads kv head h // (H/Hkv). K and V are never copied: the G
    query heads of a kv head are stacked into one matrix product.

    dropout_p > 0 drops attention probabilities (inverted dropout, seeded by the device's
    generator) whatever the module's mode — like PyTorch, pass 0.0 in evaluation.
    """
    fn = "scaled_dot_product_attention"
    q = float_tensor(query, fn, "query")
    same_dtype(fn, q, key=key, value=value)
    k, v = key, value
    if q.ndim < 2 or k.ndim != q.ndim or v.ndim != q.ndim:
        raise ValueError(
            f"{fn}: expected query, key, value with the same number (>= 2) of dims, found "
            f"{q.shape}, {k.shape}, {v.shape}"
        )
    if q.ndim == 2:  # (T, D): add a head axis and take it off again
        out = scaled_dot_product_attention(
            q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0), attn_mask, dropout_p, is_causal, scale
        )
        return out.squeeze(0)
    *lead, h, tq, d = q.shape
    hkv, tk = k.shape[-3], k.shape[-2]
    if k.shape[:-3] != tuple(lead) or v.shape[:-3] != tuple(lead):
        raise ValueError(
            f"{fn}: expected matching batch dims, found query {q.shape}, key "
            f"{k.shape}, value {v.shape}"
        )
    if k.shape[-1] != d or v.shape[:-1] != k.shape[:-1]:
        raise ValueError(
            f"{fn}: expected key (*, Hkv, Tk, {d}) and value (*, Hkv, Tk, Dv) for query "
            f"{q.shape}, found key {k.shape}, value {v.shape}"
        )
    if h != hkv and not (enable_gqa and h % hkv == 0):
        hint = "pass enable_gqa=True" if h % hkv == 0 else "H must be a multiple of Hkv"
        raise ValueError(f"{fn}: query has {h} heads but key/value have {hkv}; {hint}")
    if is_causal and tk < tq:
        raise ValueError(f"{fn}: is_causal needs Tk >= Tq, found Tq={tq}, Tk={tk}")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"{fn}: dropout_p must be in [0, 1), found {dropout_p}")
    xp, grp = xp_of(q.data), h // hkv
    full = (*lead, h, tq, tk)
    inputs, blocked, shape5 = [q, k, v], None, None
    if attn_mask is not None:
        m = const_array(attn_mask, q.device, fn, "attn_mask")
        try:
            ok = broadcast_shapes(m.shape, full) == full
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(
                f"{fn}: expected attn_mask broadcastable to {full}, found {tuple(m.shape)}"
            )
        *ml, mh, mq, mk = (1,) * (len(full) - m.ndim) + tuple(m.shape)
        shape5 = (*ml, hkv if mh == h else 1, grp if mh == h else 1, mq, mk)
        if m.dtype == bool:
            blocked, shape5 = ~m.reshape(shape5), None
        elif m.dtype != q.dtype:
            raise TypeError(
                f"{fn}: expected a bool attn_mask or one of dtype {q.dtype}, found {m.dtype}"
            )
        else:
            inputs.append(attn_mask if isinstance(attn_mask, Tensor) else Tensor._make(m))
    if is_causal:
        causal = ~causal_allowed(tq, tk, xp)  # (Tq, Tk) broadcasts over (*, Hkv, G)
        blocked = causal if blocked is None else blocked | causal
    keep = None
    if dropout_p > 0:
        keep = keep_mask(full, dropout_p, q.device, None, fn).reshape(*lead, hkv, grp * tq, tk)
    return Attention.apply(
        *inputs,
        blocked=blocked,
        scale=1.0 / math.sqrt(d) if scale is None else float(scale),
        mask_shape5=shape5,
        keep=keep,
        dropout_p=float(dropout_p),
    )
