"""Tests for minipeft.functional: fused == composite, gradchecks, references, PyTorch parity."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minipeft as mp
import minipeft.functional as F
from minipeft.backend import get_rng
from minipeft.ops import composite as C

SETTINGS = settings(max_examples=15, deadline=None)


def t64(a, requires_grad=True):
    return mp.tensor(np.asarray(a, dtype=np.float64), dtype=mp.float64, requires_grad=requires_grad)


def grads_of(fn, arrays, upstream_seed=0):
    """Value and gradients of fn at float64 copies of ``arrays`` (a random upstream gradient)."""
    ins = [t64(a) for a in arrays]
    out = fn(*ins)
    g = np.random.default_rng(upstream_seed).standard_normal(out.shape)
    out.backward(g)
    return out.numpy(), [i.grad for i in ins]


def assert_twins(fused, composite, arrays, atol=1e-10):
    v1, g1 = grads_of(fused, arrays)
    v2, g2 = grads_of(composite, arrays)
    np.testing.assert_allclose(v1, v2, atol=atol, rtol=0)
    for a, b in zip(g1, g2):
        np.testing.assert_allclose(a, b, atol=atol, rtol=0)


shapes = st.lists(st.integers(1, 5), min_size=1, max_size=3).map(tuple)
seeds = st.integers(0, 2**31 - 1)


def randn(seed, *shape):
    return np.random.default_rng(seed).standard_normal(shape) * 3


# ----------------------------------------------------------------- fused == composite
@SETTINGS
@given(shape=shapes, seed=seeds, data=st.data())
def test_softmax_family_fused_equals_composite(shape, seed, data):
    x = randn(seed, *shape)
    dim = data.draw(st.integers(-len(shape), len(shape) - 1))
    assert_twins(lambda a: F.softmax(a, dim), lambda a: C.softmax(a, dim), [x])
    assert_twins(lambda a: F.log_softmax(a, dim), lambda a: C.log_softmax(a, dim), [x])
    keep = data.draw(st.booleans())
    assert_twins(lambda a: F.logsumexp(a, dim, keep), lambda a: C.logsumexp(a, dim, keep), [x])


@SETTINGS
@given(
    n=st.integers(1, 6),
    v=st.integers(1, 7),
    seed=seeds,
    reduction=st.sampled_from(["mean", "sum", "none"]),
    smooth=st.sampled_from([0.0, 0.1]),
)
def test_cross_entropy_fused_equals_composite(n, v, seed, reduction, smooth):
    rng = np.random.default_rng(seed)
    x, t = rng.standard_normal((n, v)) * 3, rng.integers(0, v, n)
    t[rng.random(n) < 0.3] = -100
    t[0] = rng.integers(0, v)  # at least one valid target, so "mean" is finite
    kw = dict(reduction=reduction, label_smoothing=smooth)
    assert_twins(lambda a: F.cross_entropy(a, t, **kw), lambda a: C.cross_entropy(a, t, **kw), [x])


@SETTINGS
@given(shape=shapes, seed=seeds, affine=st.sampled_from(["none", "w", "wb"]))
def test_norms_fused_equal_composite(shape, seed, affine):
    rng = np.random.default_rng(seed)
    x, w, b = (
        rng.standard_normal(shape),
        rng.standard_normal(shape[-1:]),
        rng.standard_normal(shape[-1:]),
    )
    k = shape[-1]
    arrays = [x] + ([w] if affine != "none" else []) + ([b] if affine == "wb" else [])

    def ln(fn):
        return lambda a, *p: fn(a, *(p + (None,) * (2 - len(p))), 1e-5)

    assert_twins(lambda *a: F.layer_norm(a[0], k, *a[1:]), ln(C.layer_norm), arrays)
    arrays = arrays[:2]
    assert_twins(
        lambda a, *p: F.rms_norm(a, (k,), *p, eps=1e-6),
        lambda a, *p: C.rms_norm(a, p[0] if p else None, 1e-6),
        arrays,
    )


@SETTINGS
@given(shape=shapes, seed=seeds, approximate=st.sampled_from(["none", "tanh"]))
def test_gelu_fused_equals_composite(shape, seed, approximate):
    x = randn(seed, *shape)
    assert_twins(lambda a: F.gelu(a, approximate), lambda a: C.gelu(a, approximate), [x])


attn_dims = st.fixed_dictionaries(
    {
        "b": st.integers(1, 2),
        "hkv": st.integers(1, 2),
        "g": st.integers(1, 3),
        "tq": st.integers(1, 4),
        "extra": st.integers(0, 3),
        "d": st.integers(1, 4),
        "dv": st.integers(1, 3),
        "causal": st.booleans(),
        "mask": st.sampled_from(["none", "bool", "float"]),
        "seed": seeds,
    }
)


@SETTINGS
@given(p=attn_dims)
def test_sdpa_fused_equals_composite(p):
    rng = np.random.default_rng(p["seed"])
    b, hkv, h, tq, d = p["b"], p["hkv"], p["hkv"] * p["g"], p["tq"], p["d"]
    tk = tq + p["extra"]
    q, k, v = (
        rng.standard_normal((b, h, tq, d)),
        rng.standard_normal((b, hkv, tk, d)),
        rng.standard_normal((b, hkv, tk, p["dv"])),
    )
    mask = None
    if p["mask"] == "bool":
        mask = mp.tensor(rng.random((b, 1, tq, tk)) < 0.7)  # some rows may be fully blocked
    elif p["mask"] == "float":
        mask = t64(rng.standard_normal((h, 1, tk)), requires_grad=False)
    kw = dict(attn_mask=mask, is_causal=p["causal"])
    assert_twins(
        lambda *a: F.scaled_dot_product_attention(*a, **kw, enable_gqa=True),
        lambda *a: C.scaled_dot_product_attention(*a, **kw),
        [q, k, v],
    )


def test_sdpa_float_mask_gradient_and_dropout_twins():
    rng = np.random.default_rng(1)
    q, k, v = (
        rng.standard_normal((2, 4, 3, 5)),
        rng.standard_normal((2, 2, 6, 5)),
        rng.standard_normal((2, 2, 6, 5)),
    )
    m = rng.standard_normal((4, 3, 6))
    assert_twins(
        lambda a, b, c, mm: F.scaled_dot_product_attention(a, b, c, mm, enable_gqa=True),
        lambda a, b, c, mm: C.scaled_dot_product_attention(a, b, c, mm),
        [q, k, v, m],
    )
    mp.manual_seed(7)
    keep = get_rng("cpu").random((2, 4, 3, 6), dtype=np.float32) >= 0.3
    mp.manual_seed(7)
    assert_twins(
        lambda *a: F.scaled_dot_product_attention(
            *a, dropout_p=0.3, is_causal=True, enable_gqa=True
        ),
        lambda *a: C.scaled_dot_product_attention(*a, is_causal=True, keep=keep, dropout_p=0.3),
        [q, k, v],
    )


# ----------------------------------------------------------------- gradcheck
rng0 = np.random.default_rng(0)
GRADCHECK_CASES = {
    "softmax": (lambda x: F.softmax(x, 0), [(3, 4)]),
    "log_softmax": (lambda x: F.log_softmax(x, -1), [(3, 4)]),
    "logsumexp": (lambda x: F.logsumexp(x, (0, 1)), [(3, 4)]),
    "cross_entropy": (lambda x: F.cross_entropy(x, [1, -100, 3], label_smoothing=0.1), [(3, 4)]),
    "layer_norm": (lambda x, w, b: F.layer_norm(x, (2, 3), w, b), [(2, 2, 3), (2, 3), (2, 3)]),
    "rms_norm": (lambda x, w: F.rms_norm(x, 3, w, 1e-6), [(4, 3), (3,)]),
    "gelu": (lambda x: F.gelu(x), [(5,)]),
    "gelu_tanh": (lambda x: F.gelu(x, "tanh"), [(5,)]),
    "dropout": (lambda x: F.dropout(x, 0.4, generator=get_rng("cpu", 3)), [(6,)]),
    "linear": (lambda x, w, b: F.linear(x, w, b), [(2, 3), (4, 3), (4,)]),
    "embedding": (lambda w: F.embedding([[0, 2], [2, 1]], w), [(3, 2)]),
    "sdpa": (
        lambda q, k, v, m: F.scaled_dot_product_attention(
            q, k, v, m, is_causal=True, enable_gqa=True
        ),
        [(1, 2, 2, 3), (1, 1, 3, 3), (1, 1, 3, 2), (2, 1, 3)],
    ),
}


@pytest.mark.parametrize("name", list(GRADCHECK_CASES))
def test_gradcheck(name):
    fn, in_shapes = GRADCHECK_CASES[name]
    assert mp.gradcheck(fn, *[t64(rng0.standard_normal(s)) for s in in_shapes])


# ----------------------------------------------------------------- numerics
def test_softmax_family_finite_for_huge_logits():
    x = np.array([[1e4, -1e4, 0.0, 1e4], [-1e4, -1e4, -1e4, 5.0]], dtype=np.float32)
    for fn in (
        lambda a: F.softmax(a),
        lambda a: F.log_softmax(a),
        lambda a: F.logsumexp(a, -1),
        lambda a: F.cross_entropy(a, [1, 2]),
    ):
        a = mp.tensor(x, requires_grad=True)
        out = fn(a)
        out.sum().backward()
        assert out.dtype == np.float32 and a.grad.dtype == np.float32
        assert np.isfinite(out.numpy()).all() and np.isfinite(a.grad).all()
    expected = (2e4 + math.log(2) + 1e4 + 5) / 2
    np.testing.assert_allclose(F.cross_entropy(mp.tensor(x), [1, 2]).item(), expected, rtol=1e-6)


def test_float32_stays_float32():
    x = mp.randn(3, 4, requires_grad=True)
    w = mp.randn(4, requires_grad=True)
    outs = [
        F.gelu(x),
        F.gelu(x, "tanh"),
        F.layer_norm(x, 4, w, w),
        F.rms_norm(x, 4, w),
        F.scaled_dot_product_attention(x[None], x[None], x[None], is_causal=True),
    ]
    for out in outs:
        assert out.dtype == np.float32
        out.sum().backward()
    assert x.grad.dtype == np.float32 and w.grad.dtype == np.float32


# ----------------------------------------------------------------- cross_entropy reference
def ce_reference(x, t, ignore_index, reduction, eps):
    logp = x - x.max(1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(1, keepdims=True))
    valid = t != ignore_index
    nll = -logp[np.arange(len(t)), np.where(valid, t, 0)]
    loss = ((1 - eps) * nll - eps * logp.mean(1)) * valid
    if reduction == "none":
        return loss
    return loss.sum() if reduction == "sum" else loss.sum() / valid.sum()


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_cross_entropy_matches_numpy(reduction, eps):
    rng = np.random.default_rng(2)
    x, t = rng.standard_normal((2, 5, 7)), rng.integers(0, 7, (2, 5))
    t[0, 1] = t[1, 4] = 3  # ignore_index=3 hides these (and any other 3s)
    out = F.cross_entropy(
        t64(x), mp.tensor(t), ignore_index=3, reduction=reduction, label_smoothing=eps
    )
    ref = ce_reference(x.reshape(-1, 7), t.reshape(-1), 3, reduction, eps)
    np.testing.assert_allclose(
        out.numpy(), ref.reshape(t.shape) if reduction == "none" else ref, atol=1e-12
    )


def test_cross_entropy_all_ignored_mean_is_nan_with_zero_grad():
    x = t64(np.ones((3, 4)))
    loss = F.cross_entropy(x, [-100, -100, -100])
    assert math.isnan(loss.item())
    loss.backward()
    assert (x.grad == 0).all()


def test_cross_entropy_errors():
    x = mp.randn(3, 4)
    with pytest.raises(ValueError, match=r"expected target of shape \(3,\).*found \(2,\)"):
        F.cross_entropy(x, [0, 1])
    with pytest.raises(IndexError, match=r"\[0, 4\).*found 4\.\.4"):
        F.cross_entropy(x, [0, 4, -100])
    with pytest.raises(IndexError, match="found -2"):
        F.cross_entropy(x, [0, -2, 1])
    with pytest.raises(TypeError, match="integer class ids.*float"):
        F.cross_entropy(x, mp.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="reduction"):
        F.cross_entropy(x, [0, 1, 2], reduction="avg")


# ----------------------------------------------------------------- attention reference
def sdpa_reference(q, k, v, allowed=None, additive=None):
    g = q.shape[1] // k.shape[1]
    k, v = np.repeat(k, g, axis=1), np.repeat(v, g, axis=1)
    s = q @ k.swapaxes(-1, -2) / math.sqrt(q.shape[-1])
    if additive is not None:
        s = s + additive
    if allowed is not None:
        s = np.where(allowed, s, -np.inf)
    m = s.max(-1, keepdims=True)
    e = np.exp(s - np.where(np.isfinite(m), m, 0))
    tot = e.sum(-1, keepdims=True)
    return (e / np.where(tot == 0, 1, tot)) @ v


def test_sdpa_causal_is_aligned_to_the_last_keys():
    rng = np.random.default_rng(3)
    tq, tk = 3, 7
    q, k, v = (
        rng.standard_normal((2, 2, tq, 4)),
        rng.standard_normal((2, 2, tk, 4)),
        rng.standard_normal((2, 2, tk, 4)),
    )
    out = F.scaled_dot_product_attention(t64(q), t64(k), t64(v), is_causal=True).numpy()
    allowed = np.arange(tk)[None, :] <= np.arange(tq)[:, None] + (tk - tq)
    assert allowed[-1].all() and allowed[0].sum() == tk - tq + 1
    np.testing.assert_allclose(out, sdpa_reference(q, k, v, allowed), atol=1e-12)
    # the last query sees every key: plain attention for that row
    np.testing.assert_allclose(out[:, :, -1], sdpa_reference(q, k, v)[:, :, -1], atol=1e-12)
    # the first query sees only the first Tk - Tq + 1 keys
    first = sdpa_reference(q[:, :, :1], k[:, :, : tk - tq + 1], v[:, :, : tk - tq + 1])
    np.testing.assert_allclose(out[:, :, :1], first, atol=1e-12)


def test_sdpa_masks_and_gqa_match_numpy():
    rng = np.random.default_rng(4)
    q, k, v = (
        rng.standard_normal((2, 6, 3, 4)),
        rng.standard_normal((2, 2, 5, 4)),
        rng.standard_normal((2, 2, 5, 4)),
    )
    allowed = rng.random((2, 1, 3, 5)) < 0.6
    allowed[0, 0, 1] = False  # a fully blocked row gives zeros, not NaN
    causal = np.arange(5)[None, :] <= np.arange(3)[:, None] + 2
    additive = rng.standard_normal((6, 3, 5))
    cases = [
        (dict(attn_mask=mp.tensor(allowed)), dict(allowed=allowed)),
        (dict(attn_mask=allowed, is_causal=True), dict(allowed=allowed & causal)),
        (dict(attn_mask=t64(additive, False)), dict(additive=additive)),
        (
            dict(attn_mask=t64(additive, False), is_causal=True),
            dict(additive=additive, allowed=causal),
        ),
    ]
    for kw, ref_kw in cases:
        out = F.scaled_dot_product_attention(t64(q), t64(k), t64(v), enable_gqa=True, **kw)
        np.testing.assert_allclose(out.numpy(), sdpa_reference(q, k, v, **ref_kw), atol=1e-12)
    out = F.scaled_dot_product_attention(
        t64(q), t64(k), t64(v), mp.tensor(allowed), enable_gqa=True
    )
    assert (out.numpy()[0, :, 1] == 0).all()


def test_sdpa_frozen_inputs_get_no_gradient_and_errors():
    q, k, v = mp.randn(1, 2, 3, 4, requires_grad=True), mp.randn(1, 2, 3, 4), mp.randn(1, 2, 3, 4)
    F.scaled_dot_product_attention(q, k, v, is_causal=True).sum().backward()
    assert q.grad is not None and k.grad is None and v.grad is None
    with pytest.raises(ValueError, match="enable_gqa=True"):
        F.scaled_dot_product_attention(
            mp.randn(1, 4, 2, 3), mp.randn(1, 2, 2, 3), mp.randn(1, 2, 2, 3)
        )
    with pytest.raises(ValueError, match="Tk >= Tq"):
        F.scaled_dot_product_attention(
            mp.randn(1, 1, 3, 2), mp.randn(1, 1, 2, 2), mp.randn(1, 1, 2, 2), is_causal=True
        )
    with pytest.raises(ValueError, match=r"broadcastable to \(1, 2, 3, 3\)"):
        F.scaled_dot_product_attention(q, k[:, :1], v[:, :1], mp.ones(2, 3), enable_gqa=True)


# ----------------------------------------------------------------- dropout and layers
def test_dropout_seeded_scaled_and_identity_in_eval():
    x = mp.ones(1000)
    a = F.dropout(x, 0.25, generator=get_rng("cpu", 5)).numpy()
    b = F.dropout(x, 0.25, generator=get_rng("cpu", 5)).numpy()
    np.testing.assert_array_equal(a, b)
    assert set(np.unique(a)) <= {0.0, np.float32(1 / 0.75)}
    assert 0.15 < (a == 0).mean() < 0.35
    mp.manual_seed(11)
    c = F.dropout(x, 0.25).numpy()
    mp.manual_seed(11)
    np.testing.assert_array_equal(c, F.dropout(x, 0.25).numpy())
    assert F.dropout(x, 0.5, training=False) is x and F.dropout(x, 0.0) is x
    for p in (-0.1, 1.5):
        with pytest.raises(ValueError, match=rf"\[0, 1\], found {p}"):
            F.dropout(x, p)
    w = mp.ones(6, requires_grad=True)
    y = F.dropout(w, 0.5, generator=get_rng("cpu", 1))
    y.sum().backward()
    np.testing.assert_array_equal(w.grad, y.numpy())


def test_dropout_with_p_one_gives_zeros_and_zero_gradient():
    w = mp.tensor([[1.5, -2.0], [3.0, 0.25]], requires_grad=True)
    y = F.dropout(w, 1.0)
    assert y.shape == w.shape and y.dtype == w.dtype and not y.numpy().any()
    (y * 3.0).sum().backward()
    np.testing.assert_array_equal(w.grad, np.zeros((2, 2), np.float32))
    assert F.dropout(w, 1.0, training=False) is w


# ----------------------------------------------------------------- Tensor ops as functions
TENSOR_OPS = """add sub mul truediv div neg pow exp log sqrt maximum minimum where masked_fill clip
clamp sum mean max amax var reshape transpose permute swapaxes broadcast_to expand unsqueeze
squeeze flatten cat stack split chunk matmul abs""".split()


def test_every_tensor_op_is_in_functional():
    missing = [name for name in TENSOR_OPS if not callable(getattr(F, name, None))]
    assert not missing, f"minipeft.functional lacks {missing}"
    assert set(TENSOR_OPS) <= set(F.__all__)


def test_functional_ops_compute_what_the_tensor_operators_and_methods_do():
    rng = np.random.default_rng(8)
    a, b = t64(rng.random((2, 3)) + 0.5), t64(rng.standard_normal((2, 3)))
    pairs = [
        (F.add(a, b), a + b), (F.sub(a, b), a - b), (F.mul(a, b), a * b),
        (F.truediv(a, b), a / b), (F.div(a, b), a / b), (F.neg(a), -a), (F.pow(a, b), a**b),
        (F.add(a, 1.0), a + 1.0), (F.sub(1.0, a), 1.0 - a), (F.truediv(2.0, a), 2.0 / a),
        (F.pow(2.0, a), 2.0**a), (F.pow(a, 2), a**2), (F.clamp(b, -0.5, 0.5), b.clip(-0.5, 0.5)),
        (F.sum(a, 1, keepdim=True), a.sum(1, keepdim=True)), (F.var(a, 0), a.var(0)),
        (F.max(a), a.max()), (F.transpose(a, 0, 1), a.transpose(0, 1)), (F.abs(b), abs(b)),
        (F.matmul(a, b.T), a @ b.T), (F.masked_fill(a, b > 0, 0.0), a.masked_fill(b > 0, 0.0)),
    ]  # fmt: skip
    for got, want in pairs:
        assert got.shape == want.shape and got.dtype == want.dtype
        np.testing.assert_array_equal(got.numpy(), want.numpy())
    assert [t.shape for t in F.chunk(a, 3, 1)] == [t.shape for t in a.chunk(3, 1)]
    assert F.add(mp.tensor([1, 2]), 0.5).dtype == np.float32  # int tensor + float: default float
    x = t64(rng.standard_normal(3)).requires_grad_()
    F.mul(F.pow(x, 2), 3.0).sum().backward()  # d/dx Σ 3x² = 6x
    np.testing.assert_allclose(x.grad, 6 * x.numpy())


def test_linear_embedding_and_tensor_methods():
    rng = np.random.default_rng(6)
    x, w, b = rng.standard_normal((2, 3, 4)), rng.standard_normal((5, 4)), rng.standard_normal(5)
    np.testing.assert_allclose(F.linear(t64(x), t64(w), t64(b)).numpy(), x @ w.T + b, atol=1e-12)
    with pytest.raises(ValueError, match=r"expected weight \(out, 4\).*found weight \(5, 3\)"):
        F.linear(t64(x), t64(w[:, :3]))
    with pytest.raises(TypeError, match="float64.*float32"):
        F.linear(t64(x), mp.tensor(w.astype(np.float32)))
    emb = t64(w)
    out = F.embedding(mp.tensor([[4, 0], [4, 4]]), emb)
    np.testing.assert_allclose(out.numpy(), w[[[4, 0], [4, 4]]])
    out.sum().backward()
    np.testing.assert_allclose(emb.grad.sum(1), np.array([1, 0, 0, 0, 3]) * 4)
    with pytest.raises(IndexError, match=r"V=5.*max id 5"):
        F.embedding([1, 5], emb)
    y = t64(rng.standard_normal((2, 3)))
    np.testing.assert_allclose(y.softmax(-1).numpy(), F.softmax(y, -1).numpy())
    np.testing.assert_allclose(y.log_softmax(0).numpy(), F.log_softmax(y, 0).numpy())


# ----------------------------------------------------------------- PyTorch parity (float64)
TORCH_CASES = {
    "softmax": (lambda f, x: f.softmax(x, 1), [(3, 5)]),
    "log_softmax": (lambda f, x: f.log_softmax(x, -1), [(3, 5)]),
    "cross_entropy": (lambda f, x: f.cross_entropy(x, _targets(f), label_smoothing=0.1), [(4, 5)]),
    "layer_norm": (lambda f, x, w, b: f.layer_norm(x, (5,), w, b), [(2, 3, 5), (5,), (5,)]),
    "rms_norm": (lambda f, x, w: f.rms_norm(x, (5,), w, 1e-6), [(2, 3, 5), (5,)]),
    "gelu": (lambda f, x: f.gelu(x), [(4, 5)]),
    "gelu_tanh": (lambda f, x: f.gelu(x, approximate="tanh"), [(4, 5)]),
    "sdpa_causal": (
        lambda f, q, k, v: f.scaled_dot_product_attention(q, k, v, is_causal=True),
        [(2, 3, 4, 5), (2, 3, 4, 5), (2, 3, 4, 5)],
    ),
    "sdpa_masked": (
        lambda f, q, k, v: f.scaled_dot_product_attention(q, k, v, _mask(f)),
        [(1, 2, 3, 4), (1, 2, 5, 4), (1, 2, 5, 4)],
    ),
}


def _mask(f):
    m = np.array([[1, 1, 0, 0, 1], [0, 0, 0, 0, 0], [1, 0, 1, 1, 1]], dtype=bool)  # row 1: none
    return mp.tensor(m) if f is F else __import__("torch").tensor(m)


def _targets(f):
    t = [1, -100, 4, 0]
    return mp.tensor(t) if f is F else __import__("torch").tensor(t)


@pytest.mark.parametrize("name", list(TORCH_CASES))
def test_matches_torch(name):
    torch = pytest.importorskip("torch")
    fn, in_shapes = TORCH_CASES[name]
    rng = np.random.default_rng(8)
    arrays = [rng.standard_normal(s) for s in in_shapes]
    ours = [t64(a) for a in arrays]
    theirs = [torch.tensor(a, requires_grad=True) for a in arrays]
    y1, y2 = fn(F, *ours), fn(torch.nn.functional, *theirs)
    g = rng.standard_normal(y1.shape)
    y1.backward(g)
    y2.backward(torch.tensor(g))
    np.testing.assert_allclose(y1.numpy(), y2.detach().numpy(), atol=1e-12)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a.grad, b.grad.numpy(), atol=1e-12)


# ----------------------------------------------------------------- devices
DEVICE_CASES = {
    "softmax": lambda x, w, t: F.softmax(x, -1),
    "log_softmax": lambda x, w, t: F.log_softmax(x, 0),
    "logsumexp": lambda x, w, t: F.logsumexp(x, -1),
    "cross_entropy": lambda x, w, t: F.cross_entropy(x, t, label_smoothing=0.1),
    "layer_norm": lambda x, w, t: F.layer_norm(x, 5, w, w),
    "rms_norm": lambda x, w, t: F.rms_norm(x, 5, w),
    "gelu": lambda x, w, t: F.gelu(x),
    "gelu_tanh": lambda x, w, t: F.gelu(x, "tanh"),
    "sdpa": lambda x, w, t: F.scaled_dot_product_attention(
        x[None, None, :2], x[None, None], x[None, None], is_causal=True
    ),
}


@pytest.mark.parametrize("name", list(DEVICE_CASES))
def test_fused_ops_agree_across_devices(name, device):
    """Each fused op on ``device`` gives the CPU's values and gradients (float32)."""
    rng = np.random.default_rng(9)
    arrays = (
        rng.standard_normal((4, 5)).astype(np.float32),
        rng.standard_normal(5).astype(np.float32),
    )
    results = []
    for dev in ("cpu", device):
        x, w = (mp.tensor(a, device=dev, requires_grad=True) for a in arrays)
        t = mp.tensor([1, -100, 4, 0], device=dev)
        out = DEVICE_CASES[name](x, w, t)
        out.sum().backward()
        assert out.device == dev and out.dtype == np.float32
        results.append([out.numpy(), mp.backend.to_numpy(x.grad)])
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
