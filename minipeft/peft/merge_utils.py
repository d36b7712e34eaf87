"""Merging task vectors: task arithmetic, TIES, DARE and magnitude pruning (PEFT's ``merge_utils``).

A *task tensor* t_i is what adapter i changes (a LoRA factor, or a whole ΔW); merging k of them
with weights w_i (Ilharco et al. 2023; Yadav et al. 2023, TIES; Yu et al. 2024, DARE):

- task arithmetic:     Σ_i w_i t_i
- magnitude prune:     Σ_i w_i · top_density(t_i)            (keep the largest |entries|)
- TIES:                disjoint_merge(w_i · top_density(t_i))
- DARE linear:         Σ_i w_i · bernoulli_density(t_i) / density
- DARE TIES:           disjoint_merge(w_i · bernoulli_density(t_i) / density)

where ``disjoint_merge`` elects a sign per entry (``"total"``: the sign of Σ_i t_i;
``"frequency"``: the sign most tensors have, ties going to +) and averages only the entries that
agree with it: Σ_i [sign t_i = s] t_i / max(1, #agreeing). Pruning keeps
``int(density · numel)`` entries (``density ≥ 1``: nothing is pruned, as in PEFT, with a warning).

Every function works on NumPy or CuPy arrays (stacked on axis 0); the random masks of DARE come
from ``rng`` (a seeded generator, so a combination is reproducible).

Shapes: each task tensor any shape S, all equal; ``weights`` (k,); the result S.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from ..backend import xp_of

__all__ = [
    "calculate_majority_sign_mask",
    "dare_linear",
    "dare_ties",
    "disjoint_merge",
    "magnitude_prune",
    "prune",
    "task_arithmetic",
    "ties",
]

SignMethod = Literal["total", "frequency"]


def _weighted(tensors: Sequence[Any], weights: Sequence[float]) -> Any:
    """Stack (k, *S) and multiply tensor i by w_i."""
    xp = xp_of(tensors[0])
    stacked = xp.stack(list(tensors), axis=0)
    w = xp.asarray(list(weights), dtype=stacked.dtype).reshape((-1,) + (1,) * (stacked.ndim - 1))
    return stacked, stacked * w


def prune(
    tensor: Any,
    density: float,
    method: Literal["magnitude", "random"],
    rescale: bool = False,
    rng: np.random.Generator | None = None,
) -> Any:
    """Keep a ``density`` fraction of the entries: the largest in magnitude, or random ones
    (``rescale``: divided by ``density``, so the expectation is unchanged)."""
    if density >= 1:
        warnings.warn(f"density {density} >= 1: nothing is pruned", stacklevel=3)
        return tensor
    if density < 0:
        raise ValueError(f"density: expected a number in [0, 1], found {density}")
    xp = xp_of(tensor)
    if method == "magnitude":
        k = int(density * tensor.size)
        flat = xp.abs(tensor).reshape(-1)
        mask = xp.zeros(tensor.size, dtype=tensor.dtype)
        if k > 0:
            mask[xp.argsort(-flat, kind="stable")[:k]] = 1
        return tensor * mask.reshape(tensor.shape)
    if method == "random":
        rng = rng if rng is not None else np.random.default_rng(0)
        keep = xp.asarray(rng.random(tensor.shape) < density).astype(tensor.dtype)
        pruned = tensor * keep
        return pruned / density if rescale else pruned
    raise ValueError(f"prune method: expected 'magnitude' or 'random', found {method!r}")


def calculate_majority_sign_mask(stacked: Any, method: SignMethod = "total") -> Any:
    """(k, *S) → bool (k, *S): where tensor i's sign agrees with the elected sign (+ on ties)."""
    xp = xp_of(stacked)
    sign = xp.sign(stacked)
    if method == "total":
        magnitude = stacked.sum(axis=0)
    elif method == "frequency":
        magnitude = sign.sum(axis=0)
    else:
        raise ValueError(f"majority_sign_method: expected 'total' or 'frequency', found {method!r}")
    majority = xp.where(magnitude >= 0, 1, -1).astype(stacked.dtype)
    return sign == majority


def disjoint_merge(weighted: Any, mask: Any) -> Any:
    """Mean over axis 0 of the entries that agree with the elected sign."""
    xp = xp_of(weighted)
    kept = (weighted * mask).sum(axis=0)
    return kept / xp.maximum(mask.sum(axis=0), 1).astype(weighted.dtype)


def task_arithmetic(tensors: Sequence[Any], weights: Sequence[float]) -> Any:
    """Σ_i w_i t_i."""
    return _weighted(tensors, weights)[1].sum(axis=0)


def magnitude_prune(tensors: Sequence[Any], weights: Sequence[float], density: float) -> Any:
    """Σ_i w_i · top_density(t_i)."""
    return task_arithmetic([prune(t, density, "magnitude") for t in tensors], weights)


def ties(
    tensors: Sequence[Any],
    weights: Sequence[float],
    density: float,
    majority_sign_method: SignMethod = "total",
) -> Any:
    """TIES: trim to the top ``density``, elect signs, average the agreeing entries."""
    stacked, weighted = _weighted([prune(t, density, "magnitude") for t in tensors], weights)
    return disjoint_merge(weighted, calculate_majority_sign_mask(stacked, majority_sign_method))


def dare_linear(
    tensors: Sequence[Any],
    weights: Sequence[float],
    density: float,
    rng: np.random.Generator | None = None,
) -> Any:
    """DARE: drop entries at random (keep with probability ``density``), rescale, add up."""
    rng = rng if rng is not None else np.random.default_rng(0)
    dropped = [prune(t, density, "random", rescale=True, rng=rng) for t in tensors]
    return task_arithmetic(dropped, weights)


def dare_ties(
    tensors: Sequence[Any],
    weights: Sequence[float],
    density: float,
    majority_sign_method: SignMethod = "total",
    rng: np.random.Generator | None = None,
) -> Any:
    """DARE's random drop and rescale, then TIES' sign election and disjoint mean."""
    rng = rng if rng is not None else np.random.default_rng(0)
    dropped = [prune(t, density, "random", rescale=True, rng=rng) for t in tensors]
    stacked, weighted = _weighted(dropped, weights)
    return disjoint_merge(weighted, calculate_majority_sign_mask(stacked, majority_sign_method))
