"""The intrinsic-rank math (energy of the top r singular directions, LoRA's subspace
similarity φ) as properties, and ``minipeft rank-analysis`` end to end on the "nano" preset.

Matrices are drawn as (shape, rank, seed) and built from seeded Gaussian factors, so every
example is a generic matrix of known rank (distinct singular values with probability 1).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minipeft.cli import main
from minipeft.jobs.rank_analysis import rank_analysis
from minipeft.jobs.rank_math import (
    energy_fraction,
    low_rank_approximation,
    random_subspace_similarity,
    rank_for_energy,
    singular_values,
    subspace_similarity,
    subspace_similarity_grid,
)


@st.composite
def low_rank_matrices(draw: st.DrawFn) -> tuple[np.ndarray, int]:
    """(ΔW (m, n) of rank k, k): a product of seeded Gaussian factors (m, k) · (k, n)."""
    m, n = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    k = draw(st.integers(1, min(m, n)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = draw(st.sampled_from([1e-3, 1.0, 1e3]))
    return scale * rng.standard_normal((m, k)) @ rng.standard_normal((k, n)), k


@st.composite
def lora_a_matrices(draw: st.DrawFn) -> np.ndarray:
    """A LoRA A (r, d) with r ≤ d, Gaussian (full row rank, distinct singular values)."""
    d = draw(st.integers(2, 16))
    r = draw(st.integers(1, d))
    return np.random.default_rng(draw(st.integers(0, 2**32 - 1))).standard_normal((r, d))


RANKS = list(range(0, 14))


# ------------------------------------------------------------------------------ energy
@given(low_rank_matrices())
def test_energy_reaches_one_at_the_rank_and_is_monotone(case):
    delta, k = case
    e = energy_fraction(delta, RANKS)
    values = [e[r] for r in RANKS]
    assert e[0] == 0.0
    assert all(0.0 <= v <= 1.0 for v in values)
    assert all(a <= b + 1e-15 for a, b in zip(values, values[1:]))  # non-decreasing in r
    assert all(math.isclose(e[r], 1.0, rel_tol=0, abs_tol=1e-9) for r in RANKS if r >= k)
    assert e[k - 1] < 1.0 - 1e-12 if k > 1 else True  # rank k: k - 1 directions are not enough
    assert rank_for_energy(delta, 1.0) == k


@given(low_rank_matrices(), st.integers(0, 12))
def test_energy_is_one_minus_the_eckart_young_error(case, r):
    delta, _ = case
    approx = low_rank_approximation(delta, r)
    assert np.linalg.matrix_rank(approx) <= r
    tail = np.linalg.norm(delta - approx) ** 2 / np.linalg.norm(delta) ** 2
    assert math.isclose(energy_fraction(delta, [r])[r], 1.0 - tail, abs_tol=1e-9)
    s = singular_values(delta)  # the tail energy: Σ_{i > r} σ_i²
    assert math.isclose(tail, float((s[r:] ** 2).sum() / (s**2).sum()), abs_tol=1e-9)


@given(low_rank_matrices(), st.integers(1, 6), st.integers(0, 2**16))
def test_no_rank_r_matrix_beats_the_truncated_svd(case, r, seed):
    delta, _ = case
    rng = np.random.default_rng(seed)
    m, n = delta.shape
    other = rng.standard_normal((m, r)) @ rng.standard_normal((r, n))  # any rank-≤r matrix
    q, _ = np.linalg.qr(rng.standard_normal((m, min(r, m))))  # or projected on r directions
    best = np.linalg.norm(delta - low_rank_approximation(delta, r))
    assert best <= np.linalg.norm(delta - other) + 1e-9 * np.linalg.norm(delta)
    assert best <= np.linalg.norm(delta - q @ (q.T @ delta)) + 1e-9 * np.linalg.norm(delta)


def test_energy_of_zero_and_bad_input():
    assert energy_fraction(np.zeros((3, 4)), [0, 1, 5]) == {0: 1.0, 1: 1.0, 5: 1.0}
    with pytest.raises(ValueError, match="ranks"):
        energy_fraction(np.ones((2, 2)), [-1])
    with pytest.raises(ValueError, match="2-D"):
        energy_fraction(np.ones(3), [1])
    with pytest.raises(ValueError, match="finite"):
        energy_fraction(np.array([[np.nan]]), [1])


# ------------------------------------------------------------------------------ subspaces
@given(lora_a_matrices())
def test_subspace_similarity_of_a_matrix_with_itself_is_one(a):
    grid = subspace_similarity_grid(a, a)
    assert grid.shape == (a.shape[0], a.shape[0])
    np.testing.assert_allclose(np.diagonal(grid), 1.0, atol=1e-9)  # φ(A, A, i, i) = 1
    np.testing.assert_allclose(grid, 1.0, atol=1e-9)  # nested: U^(i) ⊂ U^(j) for i ≤ j


@given(lora_a_matrices(), st.integers(1, 16), st.integers(0, 2**16))
def test_subspace_similarity_bounds_and_symmetry(a1, r2, seed):
    d = a1.shape[1]
    a2 = np.random.default_rng(seed).standard_normal((min(r2, d), d))
    grid = subspace_similarity_grid(a1, a2)
    assert grid.shape == (a1.shape[0], a2.shape[0])
    assert np.all((grid >= 0.0) & (grid <= 1.0))
    np.testing.assert_allclose(grid, subspace_similarity_grid(a2, a1).T, atol=1e-12)
    assert subspace_similarity(a1, a2, 1, 1) == grid[0, 0]
    # Full subspaces: the smaller one inside the larger of R^d when r_1 + r_2 > d forces overlap.
    k1, k2 = grid.shape
    assert grid[k1 - 1, k2 - 1] >= max(0.0, (k1 + k2 - d) / min(k1, k2)) - 1e-9


@given(lora_a_matrices(), st.integers(0, 2**16))
def test_subspace_similarity_depends_only_on_the_row_space(a, seed):
    r = a.shape[0]
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((r, r)))  # orthogonal R: same singular vectors
    np.testing.assert_allclose(subspace_similarity_grid(a, q @ a), subspace_similarity_grid(a, a),
                               atol=1e-7)  # fmt: skip
    inv = rng.standard_normal((r, r)) + 3 * r * np.eye(r)  # invertible R: the same row space
    assert math.isclose(subspace_similarity(a, inv @ a, r, r), 1.0, abs_tol=1e-9)


def test_orthogonal_subspaces_and_the_random_expectation():
    eye = np.eye(6)
    assert subspace_similarity(eye[:2], eye[2:5], 2, 3) == 0.0
    assert subspace_similarity(eye[:2], eye[:5], 2, 5) == 1.0  # nested: φ = 1
    rng = np.random.default_rng(0)
    d, i, j = 64, 2, 8
    measured = np.mean([subspace_similarity(rng.standard_normal((i, d)),
                                            rng.standard_normal((j, d)), i, j)
                        for _ in range(400)])  # fmt: skip
    assert math.isclose(measured, random_subspace_similarity(i, j, d), rel_tol=0.1)
    with pytest.raises(ValueError, match="i: expected an integer in"):
        subspace_similarity(eye[:2], eye[:3], 3, 1)
    with pytest.raises(ValueError, match="same d_in"):
        subspace_similarity_grid(np.ones((1, 3)), np.ones((1, 4)))


# ------------------------------------------------------------------------------ the command


def test_rank_analysis_end_to_end(work: Path, base: Path, capsys):
    out = work / "ra"
    argv = ["rank-analysis", "--model", str(base), "--steps", "2", "--lora-r", "2", "4",
            "--ranks", "1", "4", "64", "--out", str(out), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "energy of ΔW" in printed and "subspace similarity" in printed
    result = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert result["ranks"] == [1, 4, 64]
    modules = result["energy"]["per_module"]
    types = {v["type"] for v in modules.values()}
    assert {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"} <= types
    for name, v in modules.items():
        fractions = [v["fraction"][str(r)] for r in result["ranks"]]
        assert all(math.isfinite(f) and 0.0 <= f <= 1.0 for f in fractions), name
        assert fractions == sorted(fractions), name
        assert fractions[-1] == pytest.approx(1.0)  # r = 64 ≥ min(m, n) = 32: everything
    for v in result["energy"]["by_type"].values():
        assert v["fraction"]["1"] > v["random"]["1"]  # even 2 steps are far from Gaussian
    sub = result["subspace"]
    assert sub["ranks"] == [2, 4] and sub["seeds"] == [0, 1]
    for grid in sub["per_module"].values():
        g = np.asarray(grid)
        assert g.shape == (2, 4) and np.all((g >= 0) & (g <= 1))
    assert (out / "full" / "config.json").is_file()
    assert (out / "lora-r4-seed1" / "adapter_model.safetensors").is_file()
    # An --out that holds files is refused without --overwrite, and replaced with it.
    assert main(argv) == 2
    assert "already holds files; pass --overwrite" in capsys.readouterr().err
    assert main([*argv[:-1], "--overwrite", "--quiet"]) == 0


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--steps", "0"], "steps: expected an integer >= 1, found 0"),
        (["--ranks", "0"], "ranks: expected integers >= 1, found 0"),
        (["--lora-r", "0", "4"], "lora_r: expected integers >= 1"),
    ],
)
def test_bad_numbers_are_refused(work: Path, base: Path, capsys, extra, message):
    out = work / "bad"
    assert main(["rank-analysis", "--model", str(base), "--out", str(out), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()  # refused before anything was written


def test_bad_model_and_out_inside_the_model(work: Path, base: Path, capsys):
    assert main(["rank-analysis", "--model", str(work / "nothing"), "--out",
                 str(work / "x")]) == 2  # fmt: skip
    assert "is not a folder" in capsys.readouterr().err
    inside = base / "analysis"
    assert main(["rank-analysis", "--model", str(base), "--out", str(inside)]) == 2
    assert "is inside the base model" in capsys.readouterr().err
    assert not inside.exists()
    with pytest.raises(ValueError, match="model: .* is not a model"):
        rank_analysis(work, out=work / "y")  # a folder without config.json
    with pytest.raises(ValueError, match="steps: expected an integer >= 1, found 0"):
        rank_analysis(base, steps=0, out=work / "y")
