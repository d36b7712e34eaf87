"""LLaMA's fused ops, SwiGLU's silu_mul and RoPE: equal to their composites, gradchecked,
the same on every device, and what the LLaMA model computes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minipeft as mp
from minipeft import functional as F
from minipeft.models.rope import (
    RotaryEmbedding,
    apply_rotary_pos_emb,
    apply_rotary_pos_emb_composite,
)

SETTINGS = settings(max_examples=15, deadline=None)


def t64(a, requires_grad=True):
    return mp.tensor(np.asarray(a, dtype=np.float64), dtype=mp.float64, requires_grad=requires_grad)


def _cos_sin(b, t, d, dtype=mp.float64, device="cpu"):
    rope = RotaryEmbedding(d).to(device)
    pos = mp.tensor(np.arange(t)[None].repeat(b, 0), device=device)
    cos, sin = rope(mp.zeros(1, device=device, dtype=dtype), pos)
    return cos, sin


@SETTINGS
@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=3).map(tuple),
       seed=st.integers(0, 2**31 - 1))  # fmt: skip
def test_silu_mul_equals_silu_times(shape, seed):
    """silu(a)·b in one Function: the composite's value and both gradients (float64)."""
    rng = np.random.default_rng(seed)
    a, b = rng.standard_normal(shape) * 4, rng.standard_normal(shape)
    g = rng.standard_normal(shape)
    fused, comp = [t64(a), t64(b)], [t64(a), t64(b)]
    y1, y2 = F.silu_mul(*fused), F.silu(comp[0]) * comp[1]
    y1.backward(g)
    y2.backward(g)
    np.testing.assert_allclose(y1.numpy(), y2.numpy(), rtol=0, atol=1e-12)
    for p, q in zip(fused, comp):
        np.testing.assert_allclose(p.grad, q.grad, rtol=0, atol=1e-12)


@SETTINGS
@given(b=st.integers(1, 2), h=st.integers(1, 3), t=st.integers(1, 5),
       half=st.integers(1, 4), seed=st.integers(0, 2**31 - 1))  # fmt: skip
def test_rope_equals_the_rotate_half_composite(b, h, t, half, seed):
    """x·cos + rotate_half(x)·sin as one Function, on q and on grouped k, values and grads."""
    d = 2 * half
    rng = np.random.default_rng(seed)
    q, k = rng.standard_normal((b, h, t, d)), rng.standard_normal((b, 1, t, d))
    cos, sin = _cos_sin(b, t, d)
    fused, comp = [t64(q), t64(k)], [t64(q), t64(k)]
    outs = [apply_rotary_pos_emb(*fused, cos, sin), apply_rotary_pos_emb_composite(*comp, cos, sin)]
    for qo, ko in outs:
        (qo * qo.detach() + ko.sum() * 3.0).sum().backward()
    for a, c in zip(outs[0], outs[1]):
        np.testing.assert_allclose(a.numpy(), c.numpy(), rtol=0, atol=1e-12)
    for p, c in zip(fused, comp):
        np.testing.assert_allclose(p.grad, c.grad, rtol=0, atol=1e-12)


def test_rope_preserves_norms_and_relative_positions():
    """A rotation: |rope(x)| = |x| per pair, and q_m·k_n depends on m - n only (RoFormer eq. 16)."""
    d, t = 8, 6
    cos, sin = _cos_sin(1, t, d)
    rng = np.random.default_rng(0)
    v = rng.standard_normal(d)
    x = t64(np.tile(v, (1, 1, t, 1)), requires_grad=False)
    r = F.rotary_embedding(x, cos, sin).numpy()[0, 0]  # (T, D): v rotated to each position
    # to float32 rounding: the angles m·θ are computed in float32, as HF computes them
    np.testing.assert_allclose(np.linalg.norm(r, axis=-1), np.linalg.norm(v), rtol=1e-6)
    dots = r @ r.T  # dots[m, n] = rope_m(v) · rope_n(v)
    for shift in range(t):
        diag = np.diagonal(dots, offset=shift)
        np.testing.assert_allclose(diag, diag[0], rtol=1e-6)


def test_gradcheck_silu_mul_and_rope():
    rng = np.random.default_rng(1)
    assert mp.gradcheck(F.silu_mul, t64(rng.standard_normal((3, 4))),
                        t64(rng.standard_normal((3, 4))))  # fmt: skip
    cos, sin = _cos_sin(2, 3, 4)
    assert mp.gradcheck(lambda x: F.rotary_embedding(x, cos, sin),
                        t64(rng.standard_normal((2, 2, 3, 4))))  # fmt: skip


def test_bad_shapes_are_refused():
    a = mp.randn(2, 3)
    with pytest.raises(ValueError, match="silu_mul: expected gate and up of one shape"):
        F.silu_mul(a, mp.randn(3, 2))
    cos, sin = _cos_sin(1, 3, 4, mp.float32)
    with pytest.raises(ValueError, match=r"rotary_embedding: expected x \(B, H, T, D\)"):
        F.rotary_embedding(mp.randn(1, 2, 3, 6), cos, sin)


@pytest.mark.parametrize("op", ["silu_mul", "rope"])
def test_fused_llama_ops_agree_across_devices(op, device):
    """On CUDA these run the kernels; they must give the CPU's values and gradients."""
    rng = np.random.default_rng(2)
    arrays = [rng.standard_normal((2, 3, 5, 8)).astype(np.float32) for _ in range(2)]
    results = []
    for dev in ("cpu", device):
        a, b = (mp.tensor(x, device=dev, requires_grad=True) for x in arrays)
        if op == "silu_mul":
            out = F.silu_mul(a, b)
        else:
            cos, sin = _cos_sin(2, 5, 8, mp.float32, dev)
            out = F.rotary_embedding(a.transpose(1, 2).transpose(1, 2), cos, sin) * b
        out.sum().backward()
        results.append([out.numpy(), mp.backend.to_numpy(a.grad), mp.backend.to_numpy(b.grad)])
    for x, y in zip(*results):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)
