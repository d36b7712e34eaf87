"""Fused attention: O = softmax(q kᵀ · scale + mask) v as one Function with a hand-derived backward.

The attention member of the fused-op family (:mod:`minipeft.ops.fused`): ``Attention`` does the
score GEMM, masking, a row softmax, optional dropout and the value GEMM in one forward, handles
grouped-query heads without copying K and V, and saves only what its backward needs.
``causal_allowed`` builds the causal mask aligned to the *last* keys (a KV cache or prefix
tuning's learned keys are a past every query sees). The composite twin is
:func:`minipeft.ops.composite.scaled_dot_product_attention`; argument checks live in
:mod:`minipeft.attention`.
"""

from __future__ import annotations

from typing import Any

from ..autograd import Context, Function, unbroadcast
from ..backend import xp_of
from . import cuda_kernels as K
from .reduce import stable_max

__all__ = ["Attention", "causal_allowed"]


def causal_allowed(tq: int, tk: int, xp: Any) -> Any:
    """Bool (Tq, Tk): query i may attend key j iff j ≤ i + (Tk - Tq) (aligned to the last keys)."""
    return xp.arange(tk)[None, :] <= xp.arange(tq)[:, None] + (tk - tq)


class Attention(Function):
    """O = softmax(q kᵀ · scale + mask) v, with grouped-query heads, in one Function.

    Shapes: q (*, H, Tq, D), k and v (*, Hkv, Tk, D) with H = G · Hkv; query head h reads kv
    head h // G (PyTorch's ``repeat_interleave`` order). Instead of repeating k and v, q is
    viewed as (*, Hkv, G·Tq, D), so each kv head meets its G query heads in one GEMM and the
    backward's dK, dV are summed over the group by the same GEMM.

    ``blocked`` is a bool array broadcastable to (*, Hkv, G, Tq, Tk) (True = may NOT attend) or
    None; an additive float mask is an optional 4th input of that shape family. Blocked scores
    become -inf; a row with no allowed key gives P = 0 (so O = 0 and no gradient), not NaN.
    ``keep`` is an optional bool dropout mask (*, Hkv, G·Tq, Tk) drawn by the caller.

    Backward (per row i; FlashAttention's identity Σ_j dP_ij P_ij = dO_i · O_i):
        dV = Pᵀ dO,  dP = dO Vᵀ,  dS = P ⊙ (dP - dO·O),  dQ = dS K · scale,  dK = dSᵀ (Q · scale).
    With dropout (keep mask k, P̃ = P ⊙ k/(1-p), O = P̃ V): dV = P̃ᵀ dO, dP = (dO Vᵀ) ⊙ k/(1-p).
    """

    @staticmethod
    def forward(
        ctx: Context,
        q: Any,
        k: Any,
        v: Any,
        *mask: Any,
        blocked: Any,
        scale: float,
        mask_shape5: tuple[int, ...] | None,
        keep: Any = None,
        dropout_p: float = 0.0,
    ) -> Any:
        xp = xp_of(q)
        *lead, h, tq, d = q.shape
        hkv, tk = k.shape[-3], k.shape[-2]
        grp = h // hkv
        qs = (q * scale).reshape(*lead, hkv, grp * tq, d)  # fresh, so the reshape is a view
        s = qs @ k.swapaxes(-1, -2)  # (*, Hkv, G·Tq, Tk)
        s5 = s.reshape(*lead, hkv, grp, tq, tk)  # a view for masking per (head, query)
        if mask:
            s5 += mask[0].reshape(mask_shape5)
        if blocked is not None:
            xp.copyto(s5, -xp.inf, where=blocked)
        if K.enabled(xp) and s.dtype == "float32":  # cuBLAS GEMMs around one softmax kernel
            K.softmax_rows(s)  # in place; a fully blocked row becomes zeros
        else:
            s -= stable_max(s, -1)
            xp.exp(s, out=s)
            total = s.sum(axis=-1, keepdims=True)
            total[total == 0] = 1  # a fully blocked row: all zeros stay zeros
            s /= total  # s is now P
        pd = s
        if keep is not None:  # bool (*, Hkv, G·Tq, Tk), drawn by the caller
            pd = s * keep
            pd *= 1.0 / (1.0 - dropout_p)
        o = pd @ v  # (*, Hkv, G·Tq, D)
        ctx.meta = (scale, dropout_p, q.shape, mask[0].shape if mask else None)
        needs = ctx.needs_input_grad  # keep only what the wanted gradients read
        ctx.save_for_backward(qs if needs[1] else None, k, v, s, o, keep)
        return o.reshape(*lead, h, tq, v.shape[-1])

    @staticmethod
    def backward(ctx: Context, g: Any) -> tuple[Any, ...]:
        qs, k, v, p, o, keep = ctx.saved_tensors
        scale, dropout_p, qshape, mshape = ctx.meta
        needs = ctx.needs_input_grad
        do = g.reshape(o.shape)
        dq = dk = dv = dmask = None
        if needs[2]:
            pd = p
            if keep is not None:
                pd = p * keep
                pd *= 1.0 / (1.0 - dropout_p)
            dv = pd.swapaxes(-1, -2) @ do
        if needs[0] or needs[1] or (len(needs) > 3 and needs[3]):
            ds = do @ v.swapaxes(-1, -2)  # dP̃, then dP, then dS in place
            if keep is not None:
                ds *= keep
                ds *= 1.0 / (1.0 - dropout_p)
            ds -= (do * o).sum(axis=-1, keepdims=True)  # Σ_j dP_ij P_ij = dO_i · O_i
            ds *= p
            if needs[0]:
                dq = ds @ k
                dq *= scale
                dq = dq.reshape(qshape)
            if needs[1]:
                dk = ds.swapaxes(-1, -2) @ qs
            if mshape is not None and needs[3]:
                *lead, h, tq, _ = qshape
                dmask = unbroadcast(ds.reshape(*lead, h, tq, -1), mshape)
        if len(needs) > 3:
            return dq, dk, dv, dmask
        return dq, dk, dv
