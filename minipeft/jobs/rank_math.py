"""The math of ``minipeft rank-analysis``: how low-rank a weight update is (NumPy, float64).

**Energy in the top r directions.** Write an update ΔW (m, n) by its singular values
σ_1 ≥ σ_2 ≥ ... ≥ σ_k ≥ 0 (k = min(m, n)). The fraction of its energy that the top r directions
hold is

    E(r) = Σ_{i ≤ r} σ_i² / Σ_i σ_i²      ∈ [0, 1], non-decreasing in r, 1 for r ≥ rank(ΔW).

By Eckart–Young, the best rank-r approximation ΔW_r (the SVD truncated to r terms) leaves the
tail energy: ‖ΔW − ΔW_r‖_F² = Σ_{i > r} σ_i², so E(r) = 1 − ‖ΔW − ΔW_r‖_F² / ‖ΔW‖_F². LoRA
(Hu et al., 2021) is built on the observation that a fine-tune's ΔW has a low "intrinsic
rank": E(r) is close to 1 for small r, where for a Gaussian matrix of the same shape it is
about r/k.

**Subspace similarity** (LoRA paper, section 7). For two LoRA ``A`` matrices A_1 (r_1, d) and
A_2 (r_2, d), let U_1 (d, r_1) and U_2 (d, r_2) be their right-singular vectors (the columns
of V in A = U Σ Vᵀ), ordered by singular value, and U^{(i)} the first i columns. Then

    φ(A_1, A_2, i, j) = ‖U_1^{(i)ᵀ} U_2^{(j)}‖_F² / min(i, j)      ∈ [0, 1]

(a normalized Grassmann-type similarity): 1 when the smaller subspace lies in the larger one,
0 when they are orthogonal. For random i- and j-dimensional subspaces of R^d its expectation is
i·j/d / min(i, j) = max(i, j)/d (:func:`random_subspace_similarity`).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

__all__ = [
    "energy_fraction",
    "low_rank_approximation",
    "random_energy_fraction",
    "random_subspace_similarity",
    "rank_for_energy",
    "right_singular_vectors",
    "singular_values",
    "subspace_similarity",
    "subspace_similarity_grid",
]


def _matrix(a: np.ndarray, what: str) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"{what}: expected a 2-D matrix, found shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{what}: expected finite values, found NaN or inf")
    return a


def _ranks(ranks: Iterable[int]) -> list[int]:
    out = []
    for r in ranks:
        if not isinstance(r, (int, np.integer)) or isinstance(r, bool) or r < 0:
            raise ValueError(f"ranks: expected integers >= 0, found {r!r}")
        out.append(int(r))
    return out


def singular_values(delta: np.ndarray) -> np.ndarray:
    """σ (min(m, n),) of ``delta`` (m, n), descending, computed in float64."""
    return np.linalg.svd(_matrix(delta, "delta"), compute_uv=False)


def energy_fraction(delta: np.ndarray, ranks: Iterable[int]) -> dict[int, float]:
    """``{r: Σ_{i<r} σ_i² / Σ σ_i²}`` for each r in ``ranks`` (r ≥ min(m, n) gives 1).

    A zero matrix has rank 0, and its rank-0 approximation is already exact: every r gives 1.
    """
    ranks = _ranks(ranks)
    s2 = singular_values(delta) ** 2
    total = float(s2.sum())
    cum = np.concatenate([[0.0], np.cumsum(s2)])  # cum[r] = energy of the top r
    if total == 0.0:
        return {r: 1.0 for r in ranks}
    return {r: float(min(1.0, cum[min(r, len(s2))] / total)) for r in ranks}


def rank_for_energy(delta: np.ndarray, fraction: float = 0.9) -> int:
    """The smallest r whose top-r directions hold at least ``fraction`` of the energy."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction: expected a number in (0, 1], found {fraction!r}")
    s2 = singular_values(delta) ** 2
    if s2.sum() == 0.0:
        return 0
    cum = np.cumsum(s2) / s2.sum()
    return int(min(len(s2), np.searchsorted(cum, fraction - 1e-12) + 1))


def low_rank_approximation(delta: np.ndarray, r: int) -> np.ndarray:
    """ΔW_r = U[:, :r] · diag(σ[:r]) · Vᵀ[:r]: the best rank-r approximation (Eckart–Young)."""
    u, s, vt = np.linalg.svd(_matrix(delta, "delta"), full_matrices=False)
    r = _ranks([r])[0]
    return (u[:, :r] * s[:r]) @ vt[:r]  # (m, r) · (r, n)


def random_energy_fraction(shape: tuple[int, int], ranks: Iterable[int], seed: int = 0
                           ) -> dict[int, float]:  # fmt: skip
    """:func:`energy_fraction` of one N(0, 1) matrix of ``shape``: the no-structure baseline."""
    rng = np.random.default_rng(seed)
    return energy_fraction(rng.standard_normal(shape), ranks)


def right_singular_vectors(a: np.ndarray) -> np.ndarray:
    """U (d, min(r, d)) for a LoRA A (r, d): the right-singular vectors, by singular value."""
    _, _, vt = np.linalg.svd(_matrix(a, "A"), full_matrices=False)
    return vt.T


def subspace_similarity_grid(a1: np.ndarray, a2: np.ndarray) -> np.ndarray:
    """φ(A_1, A_2, i, j) for every i ≤ k_1, j ≤ k_2 (k = min(r, d)) as a (k_1, k_2) array;
    entry [i-1, j-1] is φ at (i, j).

    With M = U_1ᵀ U_2 (k_1, k_2), ‖U_1^{(i)ᵀ} U_2^{(j)}‖_F² is the sum of M² over its top-left
    i×j block: a 2-D cumulative sum gives all of them at once.
    """
    u1, u2 = right_singular_vectors(a1), right_singular_vectors(a2)
    if u1.shape[0] != u2.shape[0]:
        raise ValueError(f"A: expected the same d_in, found {a1.shape} and {a2.shape}")
    block = np.cumsum(np.cumsum((u1.T @ u2) ** 2, axis=0), axis=1)  # (k_1, k_2)
    i = np.arange(1, block.shape[0] + 1)[:, None]
    j = np.arange(1, block.shape[1] + 1)[None, :]
    return np.clip(block / np.minimum(i, j), 0.0, 1.0)  # clip: rounding only (≤ 1 exactly)


def subspace_similarity(a1: np.ndarray, a2: np.ndarray, i: int, j: int) -> float:
    """φ(A_1, A_2, i, j) = ‖U_1^{(i)ᵀ} U_2^{(j)}‖_F² / min(i, j) (LoRA paper, eq. in §7)."""
    grid = subspace_similarity_grid(a1, a2)
    for name, v, k in (("i", i, grid.shape[0]), ("j", j, grid.shape[1])):
        if not isinstance(v, (int, np.integer)) or not 1 <= v <= k:
            raise ValueError(f"{name}: expected an integer in [1, {k}], found {v!r}")
    return float(grid[i - 1, j - 1])


def random_subspace_similarity(i: int, j: int, d: int) -> float:
    """E φ for independent uniformly random i- and j-dimensional subspaces of R^d: max(i, j)/d.

    E ‖U_iᵀ U_j‖_F² = Σ over the j columns of U_j of the expected squared norm of a random
    unit vector's projection on an i-dimensional subspace, i/d each: i·j/d.
    """
    return min(1.0, max(i, j) / d)
