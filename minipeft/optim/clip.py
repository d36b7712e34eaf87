"""Gradient clipping by global norm (PyTorch's ``clip_grad_norm_``).

For the gradients g₁ … gₖ of the parameters (those whose grad is not None),

    total = ‖(‖g₁‖ₚ, …, ‖gₖ‖ₚ)‖ₚ   (= (Σᵢ Σⱼ |gᵢⱼ|ᵖ)^(1/p); p = inf: the largest |gᵢⱼ|)
    gᵢ ← gᵢ · min(1, max_norm / (total + 1e-6))

so the update keeps its direction and its norm is at most ``max_norm``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from ..backend import xp_of
from ..tensor import Tensor

__all__ = ["clip_grad_norm_"]


def clip_grad_norm_(
    parameters: Tensor | Iterable[Tensor],
    max_norm: float,
    norm_type: float | str = 2.0,
    error_if_nonfinite: bool = False,
) -> Tensor:
    """Scale all gradients together so their global ``norm_type``-norm is ≤ ``max_norm``.

    Returns the total norm *before* clipping as a 0-d Tensor (``float(...)`` / ``.item()``).
    The grads are scaled in place (always, by a factor of at most 1, as PyTorch does); each
    leaf owns its gradient array (backward copies on first accumulation), so none is scaled
    twice.
    """
    params = [parameters] if isinstance(parameters, Tensor) else list(parameters)
    grads = [p.grad for p in params if p.grad is not None]
    p = float("inf") if norm_type in ("inf", math.inf) else float(norm_type)
    if not grads:
        return Tensor(0.0)
    xp = xp_of(grads[0])
    if p == math.inf:
        norms = xp.stack([xp.abs(g).max() if g.size else xp.zeros((), g.dtype) for g in grads])
        total = norms.max()
    else:
        # float16 gradients are measured in float32 (their squares overflow fp16 easily)
        flat = [g.reshape(-1).astype("float32") if g.itemsize < 4 else g.reshape(-1) for g in grads]
        norms = xp.stack([xp.linalg.norm(g, ord=p) for g in flat])
        total = xp.linalg.norm(norms, ord=p)
    total_f = float(total)
    if error_if_nonfinite and not math.isfinite(total_f):
        raise RuntimeError(
            f"the total norm of order {norm_type} of the gradients is {total_f}; "
            "set error_if_nonfinite=False to clip anyway"
        )
    coef = min(1.0, float(max_norm) / (total_f + 1e-6))
    for q in params:
        if q.grad is not None:
            q.grad *= q.grad.dtype.type(coef)
    return Tensor._make(xp.asarray(total))
