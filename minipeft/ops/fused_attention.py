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
from . import cpu_kernels as C
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
        add = mask[0].reshape(mask_shape5) if mask else None
        s = xp.empty((*lead, hkv, grp * tq, tk), dtype=xp.result_type(qs, k))
        o = xp.empty((*lead, hkv, grp * tq, v.shape[-1]), dtype=xp.result_type(s, v))
        for b in _batch_slices(q):  # one batch element at a time on the CPU: S stays in cache
            _forward_block(xp, _at(qs, b), _at(k, b), _at(v, b), _at(add, b), _at(blocked, b),
                           _at(keep, b), dropout_p, s[b], o[b], grp, tq)  # fmt: skip
        ctx.meta = (scale, dropout_p, q.shape, mask[0].shape if mask else None)
        needs = ctx.needs_input_grad  # keep only what the wanted gradients read
        ctx.save_for_backward(qs if needs[1] else None, k, v, s, o, keep)
        return o.reshape(*lead, h, tq, v.shape[-1])

    @staticmethod
    def backward(ctx: Context, g: Any) -> tuple[Any, ...]:
        qs, k, v, p, o, keep = ctx.saved_tensors
        scale, dropout_p, qshape, mshape = ctx.meta
        needs = ctx.needs_input_grad
        xp = xp_of(g)
        do = g.reshape(o.shape)
        need_ds = needs[0] or needs[1] or (len(needs) > 3 and needs[3])
        dq = xp.empty(o.shape[:-1] + (k.shape[-1],), p.dtype) if needs[0] else None
        dk = xp.empty(p.shape[:-2] + k.shape[-2:], p.dtype) if needs[1] else None
        dv = xp.empty(p.shape[:-2] + v.shape[-2:], p.dtype) if needs[2] else None
        ds_all = xp.empty_like(p) if mshape is not None and needs[3] else None
        for b in _batch_slices(p):
            kb, vb, keepb, dob = _at(k, b), _at(v, b), _at(keep, b), do[b]
            if needs[2]:
                pd = p[b]
                if keepb is not None:
                    pd = pd * keepb
                    pd *= 1.0 / (1.0 - dropout_p)
                xp.matmul(pd.swapaxes(-1, -2), dob, out=dv[b])
            if not need_ds:
                continue
            ds = dob @ vb.swapaxes(-1, -2)  # dP̃, then dP, then dS in place
            if keepb is not None:
                ds *= keepb
                ds *= 1.0 / (1.0 - dropout_p)
            ds -= (dob * o[b]).sum(axis=-1, keepdims=True)  # Σ_j dP_ij P_ij = dO_i · O_i
            ds *= p[b]
            if needs[0]:
                xp.matmul(ds, kb, out=dq[b])
            if needs[1]:
                xp.matmul(ds.swapaxes(-1, -2), qs[b], out=dk[b])
            if ds_all is not None:
                ds_all[b] = ds
        if dq is not None:
            dq *= scale
            dq = dq.reshape(qshape)
        dk, dv = _unbatch(dk, k.shape), _unbatch(dv, v.shape)
        dmask = None
        if ds_all is not None:
            *lead, h, tq, _ = qshape
            dmask = unbroadcast(ds_all.reshape(*lead, h, tq, -1), mshape)
        if len(needs) > 3:
            return dq, dk, dv, dmask
        return dq, dk, dv


def _forward_block(xp: Any, qs: Any, k: Any, v: Any, add: Any, blocked: Any, keep: Any,
                   dropout_p: float, s: Any, o: Any, grp: int, tq: int) -> None:  # fmt: skip
    """S = qs kᵀ (+ mask), P = softmax(S) in place of S, O = P̃ v, for one block of the batch."""
    xp.matmul(qs, k.swapaxes(-1, -2), out=s)  # (*, Hkv, G·Tq, Tk)
    s5 = s.reshape(*s.shape[:-2], grp, tq, s.shape[-1])  # a view for masking per (head, query)
    if add is not None:
        s5 += add
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
    xp.matmul(pd, v, out=o)  # (*, Hkv, G·Tq, D)


def _batch_slices(a: Any) -> list[Any]:
    """Index objects over the batch: one per batch element on the CPU with the CPU kernels on
    (a (Hkv, G·Tq, Tk) score block of a few hundred KiB stays in cache through the softmax's
    passes), else one for everything (the GPU, or ``cpu_kernels.use_kernels(False)``)."""
    if a.ndim == 4 and C.enabled(xp_of(a)) and a.shape[0] > 1:
        return [slice(i, i + 1) for i in range(a.shape[0])]
    return [slice(None)]


def _at(a: Any, b: Any) -> Any:
    """``a``'s part for batch block ``b``: sliced along the batch axis when ``a`` has one (a
    mask or k/v of batch size 1, or with fewer axes, broadcasts whole)."""
    if a is None or b == slice(None) or a.ndim < 4 or a.shape[0] == 1:
        return a
    return a[b]


def _unbatch(grad: Any, shape: tuple[int, ...]) -> Any:
    """A per-batch gradient summed back to its input's shape (k or v broadcast over the batch)."""
    return None if grad is None else unbroadcast(grad, shape)
