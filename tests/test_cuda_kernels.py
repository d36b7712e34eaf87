"""Each fused CUDA kernel equals its array-code reference (run on the same GPU with the kernels
switched off by ``use_kernels(False)``), at sizes that take every loop in the kernels: rows longer
than the 256 threads of a block, ignored targets, fully masked rows, frozen weights, float16.

Every test here needs CuPy and a GPU and skips cleanly without them.
"""

from __future__ import annotations

import numpy as np
import pytest

import minipeft as mp
from minipeft import functional as F
from minipeft.backend import to_numpy
from minipeft.ops.cuda_kernels import use_kernels

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not mp.cuda_available(), reason="needs CuPy and an NVIDIA GPU"),
]


def _both(fn, arrays, requires_grad=None, dtype=np.float32):
    """fn's output and input gradients with the kernels on, then off (same GPU, same inputs)."""
    results = []
    for on in (True, False):
        with use_kernels(on):
            flags = requires_grad or [True] * len(arrays)
            ins = [mp.tensor(a.astype(dtype), device="cuda", requires_grad=r)
                   for a, r in zip(arrays, flags)]  # fmt: skip
            out = fn(*ins)
            g = np.random.default_rng(7).standard_normal(out.shape).astype(out.dtype)
            out.backward(mp.tensor(g, device="cuda"))
            results.append(
                [to_numpy(out.data)] + [to_numpy(i.grad) for i in ins if i.grad is not None]
            )
    return results


def _close(results, tol=1e-5):
    on, off = results
    assert len(on) == len(off)
    for a, b in zip(on, off):
        np.testing.assert_allclose(a.astype(np.float32), b.astype(np.float32), rtol=tol, atol=tol)


RNG = np.random.default_rng(0)
X = RNG.standard_normal((37, 1000)) * 3  # 1000 > 256 threads: the strided loops run


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_kernel(reduction, smoothing):
    target = RNG.integers(0, 1000, 37)
    target[::5] = -100
    fn = lambda x: F.cross_entropy(x, mp.tensor(target, device="cuda"), reduction=reduction,  # noqa: E731
                                   label_smoothing=smoothing)  # fmt: skip
    _close(_both(fn, [X]))


def test_layer_norm_and_rms_norm_kernels_with_and_without_weights():
    w, b = RNG.standard_normal(1000), RNG.standard_normal(1000)
    _close(_both(lambda x, w, b: F.layer_norm(x, 1000, w, b), [X, w, b]), 1e-4)
    _close(_both(lambda x: F.layer_norm(x, 1000), [X]), 1e-4)
    _close(_both(lambda x, w: F.rms_norm(x, 1000, w), [X, w]), 1e-4)
    # a frozen norm (PEFT): only the input gradient is computed
    _close(_both(lambda x, w, b: F.layer_norm(x, 1000, w, b), [X, w, b], [True, False, False]))


def test_norms_and_cross_entropy_take_float16():
    w = RNG.standard_normal(1000)
    _close(_both(lambda x, w: F.layer_norm(x, 1000, w, w), [X, w], dtype=np.float16), 2e-2)
    _close(_both(lambda x, w: F.rms_norm(x, 1000, w), [X, w], dtype=np.float16), 2e-2)
    t = mp.tensor(RNG.integers(0, 1000, 37), device="cuda")
    _close(_both(lambda x: F.cross_entropy(x, t), [X], dtype=np.float16), 2e-3)


def test_softmax_and_attention_kernels():
    _close(_both(lambda x: F.softmax(x, -1), [X]))
    q, k, v = (RNG.standard_normal((2, 4, 300, 16)) for _ in range(3))
    fn = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)  # noqa: E731
    _close(_both(fn, [q, k, v]), 1e-4)
    blocked = np.zeros((300, 300), bool)
    blocked[5] = True  # a fully masked row gives zeros, not NaN, on both paths
    m = mp.tensor(~blocked, device="cuda")
    fn = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=m)  # noqa: E731
    results = _both(fn, [q, k, v])
    assert np.all(results[0][0][:, :, 5] == 0)
    _close(results, 1e-4)


def test_elementwise_kernels():
    _close(_both(lambda x: F.gelu(x, "tanh"), [X]))
    _close(_both(F.silu_mul, [X, X[::-1].copy()]))
    from minipeft.models.rope import RotaryEmbedding  # noqa: PLC0415

    rope = RotaryEmbedding(64).to("cuda")
    cos, sin = rope(mp.zeros(1, device="cuda"), mp.tensor(np.arange(50)[None], device="cuda"))
    x = RNG.standard_normal((1, 3, 50, 64))
    _close(_both(lambda x: F.rotary_embedding(x, cos, sin), [x]))


def test_adamw_kernel_equals_the_array_update():
    from minipeft.optim import AdamW  # noqa: PLC0415

    finals = []
    for on in (True, False):
        with use_kernels(on):
            p = mp.tensor(RNG.standard_normal((300, 7)).astype(np.float32), device="cuda",
                          requires_grad=True)  # fmt: skip
            opt = AdamW([p], lr=1e-2, weight_decay=0.1)
            rng = np.random.default_rng(3)
            for _ in range(5):
                p.grad = mp.tensor(rng.standard_normal((300, 7)).astype(np.float32),
                                   device="cuda").data  # fmt: skip
                opt.step()
            finals.append(to_numpy(p.data))
    np.testing.assert_allclose(finals[0], finals[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("nested", [False, True])
def test_nf4_dequantization_kernel_equals_the_array_code(nested):
    from minipeft.backend import to_device  # noqa: PLC0415
    from minipeft.quant.blockwise import dequantize_4bit, quantize_4bit  # noqa: PLC0415

    w = RNG.standard_normal((130, 70)).astype(np.float32)  # 9100: not a multiple of 64
    packed, state = quantize_4bit(to_device(w, "cuda"), 64, "nf4", compress_statistics=nested)
    with use_kernels(True):
        got = dequantize_4bit(packed, state)
    with use_kernels(False):
        want = dequantize_4bit(packed, state)
    np.testing.assert_array_equal(to_numpy(got), to_numpy(want))
    cpu_packed, cpu_state = quantize_4bit(w, 64, "nf4", compress_statistics=nested)
    np.testing.assert_array_equal(to_numpy(packed), cpu_packed)  # the same bytes as on the CPU
    np.testing.assert_array_equal(to_numpy(got), dequantize_4bit(cpu_packed, cpu_state))
