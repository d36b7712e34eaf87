"""The CPU fast paths against their references: the blocked kernels (GELU-tanh, LayerNorm,
RMSNorm, attention by batch element) against the ops' whole-array code, the fused
LoRA layer against the composite, the profiler's rows, and a load that skips initialisation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minipeft as mp
import minipeft.functional as F
from minipeft import nn
from minipeft.ops import blocked
from minipeft.ops import cpu_kernels as C
from minipeft.ops import lora_linear as LL
from minipeft.peft import LoraConfig, get_peft_model
from minipeft.profiler import profile

RNG = np.random.default_rng(0)


def _both(fn, *arrays, grad_of=None):
    """fn's output and input gradients with the CPU kernels on and off (the reference)."""
    out = []
    for on in (True, False):
        with C.use_kernels(on):
            ts = [mp.tensor(a, requires_grad=True) for a in arrays]
            y = fn(*ts)
            g = np.random.default_rng(1).standard_normal(y.shape)  # the same g both times
            (y * mp.tensor(g.astype(y.dtype))).sum().backward()
            out.append([y.numpy()] + [t.grad for t in ts])
    return out


def _close(got, ref, tol):
    for a, b in zip(got, ref):
        if a is None and b is None:  # an input neither path gives a gradient
            continue
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype,tol", [("float64", 1e-12), ("float32", 2e-5)])
def test_gelu_tanh_kernel_matches_the_array_code(dtype, tol):
    x = (RNG.standard_normal((300, 700)) * 4).astype(dtype)  # > BLOCK_ELEMENTS: several blocks
    x[0, :5] = [-1e4, -50, 0, 50, 1e4]  # e^(-2u) overflows to inf for the first two
    got, ref = _both(lambda t: F.gelu(t, approximate="tanh"), x)
    _close(got, ref, tol)
    assert got[0][0, 0] == 0 and got[0][0, 4] == 1e4


@pytest.mark.parametrize("kind", ["layer_norm", "layer_norm_plain", "rms_norm", "rms_norm_plain"])
def test_norm_kernels_match_the_array_code(kind):
    m, k = 700, 300
    x = RNG.standard_normal((m, k)) * 3 + 1

    def fn(z, w, b):
        if kind == "layer_norm":
            return F.layer_norm(z, (k,), w, b)
        if kind == "rms_norm":
            return F.rms_norm(z, (k,), w)
        return (F.layer_norm if kind == "layer_norm_plain" else F.rms_norm)(z, (k,)) + 0 * (w + b)

    got, ref = _both(fn, x, RNG.standard_normal(k), RNG.standard_normal(k))
    _close(got, ref, 1e-11)


@pytest.mark.parametrize("mask", [None, "bool", "additive", "dropout"])
def test_attention_by_batch_element_equals_the_whole_batch(mask):
    b, h, hkv, t, d = 3, 4, 2, 5, 4
    q, k, v = (RNG.standard_normal((b, n, t, d)) for n in (h, hkv, hkv))
    m = None
    if mask == "bool":
        m = RNG.random((b, 1, t, t)) > 0.3
    arrays = [q, k, v] + ([RNG.standard_normal((b, h, t, t))] if mask == "additive" else [])

    def fn(*ts):
        mp.manual_seed(0)  # the same dropout mask both times
        return F.scaled_dot_product_attention(
            *ts[:3], attn_mask=ts[3] if len(ts) > 3 else m, is_causal=True, enable_gqa=True,
            dropout_p=0.3 if mask == "dropout" else 0.0,
        )  # fmt: skip

    got, ref = _both(fn, *arrays)
    _close(got, ref, 0)  # the very same float operations, block by block


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 40), d_in=st.integers(1, 12), d_out=st.integers(1, 12),
    r=st.integers(1, 4), bias=st.booleans(), scale=st.floats(0.1, 4.0),
)  # fmt: skip
def test_lora_linear_is_the_composite(n, d_in, d_out, r, bias, scale):
    """y = x Wᵀ + b + s (x Aᵀ) Bᵀ and all its gradients, in both forms (merged for many rows,
    low-rank for few), equal the composite's in float64."""
    rng = np.random.default_rng(n * 1000 + d_in * 100 + d_out * 10 + r)
    x, w, a, bb = (rng.standard_normal(s) for s in ((2, n, d_in), (d_out, d_in), (r, d_in),
                                                    (d_out, r)))  # fmt: skip
    b0 = rng.standard_normal(d_out) if bias else None
    g = rng.standard_normal((2, n, d_out))
    results = []
    for fused in (True, False):
        ts = [mp.tensor(z, requires_grad=True) for z in (x, w, a, bb)]
        tb = mp.tensor(b0, requires_grad=True) if bias else None
        if fused:
            y = F.lora_linear(ts[0], ts[1], ts[2], ts[3], scale, tb)
        else:
            y = F.linear(ts[0], ts[1], tb) + F.linear(F.linear(ts[0], ts[2]), ts[3]) * scale
        (y * mp.tensor(g)).sum().backward()
        results.append([y.numpy()] + [t.grad for t in ts] + ([tb.grad] if bias else []))
    _close(results[0], results[1], 1e-10)


def test_lora_linear_gradcheck_both_forms():
    for n in (1, 64):  # low-rank form, then merged (64·(3+4) > 3·4)
        assert LL.use_merged(n, 3, 4) == (n > 1)
        ts = [mp.tensor(RNG.standard_normal(s), requires_grad=True)
              for s in ((n, 3), (4, 3), (2, 3), (4, 2), (4,))]  # fmt: skip
        assert mp.gradcheck(lambda x, w, a, b, c: F.lora_linear(x, w, a, b, 2.0, c), *ts)


def test_lora_linear_checks_its_shapes():
    x, w = mp.randn(2, 3), mp.randn(4, 3)
    with pytest.raises(ValueError, match="lora_a"):
        F.lora_linear(x, w, mp.randn(2, 5), mp.randn(4, 2), 1.0)


def _fused_and_composite(model, x):
    """(ops the profiler saw, output and adapter gradients), fused LoRA layer on, then off."""
    runs = []
    for fused in (True, False):
        with LL.use_fused(fused), profile() as prof:
            y = model(x)
            y.sum().backward()
        grads = [p.grad.copy() for p in model.parameters() if p.requires_grad]
        runs.append(({name for name, _ in prof.rows}, [y.numpy()] + grads))
        model.zero_grad()
    return runs


def test_lora_layer_takes_the_fused_path_and_matches_the_composite():
    base = nn.Sequential(nn.Linear(6, 8), nn.Linear(8, 5))
    model = get_peft_model(base, LoraConfig(r=2, lora_alpha=4, target_modules=["0", "1"],
                                            init_lora_weights=False))  # fmt: skip
    x = mp.tensor(RNG.standard_normal((300, 6)).astype("float32"))
    (ops_on, fused), (ops_off, composite) = _fused_and_composite(model, x)
    assert "LoraLinear" in ops_on and "LoraLinear" not in ops_off
    _close(fused, composite, 1e-5)


def test_profiler_rows_and_table():
    x = mp.tensor(RNG.standard_normal((4, 3)), requires_grad=True)
    with profile() as prof:
        (F.gelu(x) * 2.0).sum().backward()
    rows = {(r["op"], r["phase"]): r for r in prof.summary()}
    assert rows[("Gelu", "forward")]["calls"] == 1 and rows[("Gelu", "backward")]["calls"] == 1
    assert ("autograd", "backward") in rows
    assert abs(sum(r["share"] for r in rows.values()) - 1) < 1e-9
    assert "| Gelu | forward | 1 |" in prof.table()
    with pytest.raises(RuntimeError, match="already active"), profile(), profile():
        pass


def test_row_slices_cover_whole_rows():
    a = np.zeros((1000, 300))
    sl = blocked.row_slices(a)
    assert sl[0] == slice(0, blocked.BLOCK_ELEMENTS // 300) and sl[-1].stop == 1000
    assert sum(s.stop - s.start for s in sl) == 1000
    assert blocked.row_slices(np.zeros((3, 4))) == [slice(0, 3)]


def test_skip_init_leaves_weights_untouched_and_the_stream_unmoved():
    from minipeft.nn.init import skip_init  # noqa: PLC0415

    mp.manual_seed(0)
    with skip_init():
        layer = nn.Linear(5, 7)
    assert not layer.weight.numpy().any() and not layer.bias.numpy().any()
    after = mp.randn(3).numpy()
    mp.manual_seed(0)
    np.testing.assert_array_equal(mp.randn(3).numpy(), after)
    assert nn.Linear(5, 7).weight.numpy().any()  # outside the block: initialised as before


def test_qlora_layer_takes_the_fused_path_and_matches_the_composite():
    """A LoRA layer on a 4-bit base (QLoRA) runs LoraLinear with the packed bytes, Ŵ formed in
    forward and again in backward; the result is the composite's."""
    from minipeft.quant import quantize_model  # noqa: PLC0415

    base = quantize_model(nn.Sequential(nn.Linear(64, 128), nn.Linear(128, 64)), skip=())
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["0", "1"],
                                            init_lora_weights=False))  # fmt: skip
    x = mp.tensor(RNG.standard_normal((50, 64)).astype("float32"))
    (ops_on, fused), (ops_off, composite) = _fused_and_composite(model, x)
    assert "LoraLinear" in ops_on and "Linear4bit" not in ops_on
    assert "LoraLinear" not in ops_off and "Linear4bit" in ops_off
    _close(fused, composite, 1e-4)
