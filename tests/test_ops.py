"""The op table: one list of cases drives value tests against NumPy and float64 gradchecks.

Each :class:`OpCase` names a minipeft callable, a NumPy reference, the value domain of each tensor
input and a strategy for ``(input shapes, params)``. Two tests consume the table:

* ``test_values`` — for float32 and float64 inputs, the op returns the reference's values in the
  input's dtype (no silent promotion), on every device;
* ``test_gradcheck`` — the backward agrees with central differences (``minipeft.gradcheck``) in
  float64, for hypothesis-drawn shapes with broadcasting, size-1 axes and 0-d tensors.

Adding an op to the engine means adding one row here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import strategies as S
from hypothesis import given
from hypothesis import strategies as st

import minipeft as mp
from minipeft.backend import to_device
from minipeft.ops.matmul import Linear
from minipeft.ops.movement import Embedding


@dataclass(frozen=True)
class OpCase:
    name: str
    fn: Callable[..., Any]  # minipeft: fn(*tensors, **params) -> Tensor or tuple of Tensors
    ref: Callable[..., Any]  # NumPy on float64: ref(*arrays, **params) -> array or tuple
    domains: tuple[str, ...]  # value domain of each tensor input (strategies.DOMAINS)
    example: st.SearchStrategy  # draws (input shapes, params)
    gradcheck: bool = True
    out_dtype: Callable[[np.dtype], np.dtype] = lambda dt: dt  # output dtype for an input dtype

    def __repr__(self) -> str:
        return self.name


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def _squeeze(a: np.ndarray, dim: int | None) -> np.ndarray:
    if dim is not None and a.shape[dim] != 1:
        return a  # PyTorch: squeezing a dim that is not 1 is a no-op (NumPy raises)
    return np.squeeze(a, axis=dim)


def _expand(a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    pad = len(shape) - a.ndim
    return np.broadcast_to(a, [a.shape[i - pad] if s == -1 else s for i, s in enumerate(shape)])


def _split(a: np.ndarray, split_size_or_sections: Any, dim: int) -> tuple[np.ndarray, ...]:
    n, s = a.shape[dim], split_size_or_sections
    sizes = [min(s, n - i) for i in range(0, n, s)] if isinstance(s, int) else s
    return tuple(np.split(a, np.cumsum(sizes)[:-1], axis=dim))


def _chunk(a: np.ndarray, chunks: int, dim: int) -> tuple[np.ndarray, ...]:
    return _split(a, -(-a.shape[dim] // chunks), dim)  # PyTorch: chunks of ceil(n / chunks)


def _flatten(a: np.ndarray, start_dim: int, end_dim: int) -> np.ndarray:
    return a.reshape(*a.shape[:start_dim], -1, *a.shape[end_dim + 1 :])


def _other_float(dt: np.dtype) -> np.dtype:
    return mp.float64 if dt == mp.float32 else mp.float32


def _on(device_of: mp.Tensor, arr: np.ndarray) -> Any:
    return to_device(arr, device_of.device)


U, B = S.unary_example, S.binary_example
POW_INT, POW_FRAC = st.sampled_from([0, 1, 2, 3]), st.sampled_from([0.5, -1.5, 2.5, -2.0])
LO, HI = st.sampled_from([-0.5, None]), st.sampled_from([0.5, 1.0])

# fmt: off
CASES = [
    # ------------------------------------------------------------- elementwise arithmetic
    OpCase("add", lambda a, b: a + b, np.add, ("real", "real"), B()),
    OpCase("sub", lambda a, b: a - b, np.subtract, ("real", "real"), B()),
    OpCase("mul", lambda a, b: a * b, np.multiply, ("real", "real"), B()),
    OpCase("truediv", lambda a, b: a / b, np.divide, ("real", "nonzero"), B()),
    OpCase("add_scalar", lambda a: a + 1.5, lambda a: a + 1.5, ("real",), U()),
    OpCase("rsub_scalar", lambda a: 2 - a, lambda a: 2 - a, ("real",), U()),
    OpCase("rmul_scalar", lambda a: 3 * a, lambda a: 3 * a, ("real",), U()),
    OpCase("rtruediv_scalar", lambda a: 1.5 / a, lambda a: 1.5 / a, ("nonzero",), U()),
    OpCase("neg", lambda a: -a, np.negative, ("real",), U()),
    OpCase("pow_int", lambda a, p: a**p, lambda a, p: a**p, ("real",), S.param_example(p=POW_INT)),
    OpCase("pow_frac", lambda a, p: a**p, lambda a, p: a**p, ("positive",),
           S.param_example(p=POW_FRAC)),
    OpCase("pow_tensor", lambda a, b: a**b, np.power, ("positive", "small"), B()),
    OpCase("rpow_scalar", lambda a: 2.0**a, lambda a: 2.0**a, ("small",), U()),
    # ------------------------------------------------------------- unary math, activations
    OpCase("exp", mp.exp, np.exp, ("small",), U()),
    OpCase("log", mp.log, np.log, ("positive",), U()),
    OpCase("sqrt", lambda a: a.sqrt(), np.sqrt, ("positive",), U()),
    OpCase("tanh", lambda a: a.tanh(), np.tanh, ("real",), U()),
    OpCase("sigmoid", lambda a: a.sigmoid(), _sigmoid, ("real",), U()),
    OpCase("relu", lambda a: a.relu(), lambda a: np.maximum(a, 0), ("offgrid",), U()),
    OpCase("silu", lambda a: a.silu(), lambda a: a * _sigmoid(a), ("real",), U()),
    OpCase("abs", abs, np.abs, ("offgrid",), U()),
    OpCase("maximum", mp.maximum, np.maximum, ("offgrid", "grid"), B()),
    OpCase("minimum", mp.minimum, np.minimum, ("grid", "offgrid"), B()),
    OpCase("clip", lambda a, lo, hi: a.clip(lo, hi), lambda a, lo, hi: np.clip(a, lo, hi),
           ("offgrid",), S.param_example(lo=LO, hi=HI)),
    OpCase("clip_min_only", lambda a, lo: mp.clip(a, min=lo), lambda a, lo: np.maximum(a, lo),
           ("offgrid",), S.param_example(lo=st.just(-0.5))),
    OpCase("where", lambda a, b, cond: mp.where(cond, a, b),
           lambda a, b, cond: np.where(cond, a, b), ("real", "real"), S.where_example()),
    OpCase("masked_fill", lambda a, mask, value: a.masked_fill(mp.tensor(mask), value),
           lambda a, mask, value: np.where(mask, value, a), ("real",),
           S.where_example(masked_fill=True)),
    OpCase("to_dtype", lambda a: a.to(_other_float(a.dtype)), lambda a: a, ("real",), U(),
           gradcheck=False, out_dtype=_other_float),  # float64 → float32 can't be gradchecked
    # ------------------------------------------------------------- reductions
    OpCase("sum", lambda a, dim, keepdim: a.sum(dim, keepdim),
           lambda a, dim, keepdim: np.sum(a, axis=dim, keepdims=keepdim), ("real",),
           S.reduce_example()),
    OpCase("mean", lambda a, dim, keepdim: a.mean(dim=dim, keepdim=keepdim),
           lambda a, dim, keepdim: np.mean(a, axis=dim, keepdims=keepdim), ("real",),
           S.reduce_example()),
    OpCase("amax", lambda a, dim, keepdim: a.amax(dim, keepdim),
           lambda a, dim, keepdim: np.max(a, axis=dim, keepdims=keepdim), ("distinct",),
           S.reduce_example()),
    OpCase("var", lambda a, dim, keepdim, correction: a.var(dim, keepdim, correction=correction),
           lambda a, dim, keepdim, correction: np.var(a, axis=dim, keepdims=keepdim,
                                                       ddof=correction),
           ("real",), S.reduce_example(var=True)),
    OpCase("max_all", lambda a: a.max(), np.max, ("distinct",), U()),
    OpCase("max_dim", lambda a, dim, keepdim: tuple(a.max(dim, keepdim)),
           lambda a, dim, keepdim: (np.max(a, axis=dim, keepdims=keepdim),
                                    np.argmax(a, axis=dim, keepdims=keepdim)),
           ("distinct",), S.max_dim_example()),
    # ------------------------------------------------------------- movement
    OpCase("reshape", lambda a, shape: a.reshape(shape), lambda a, shape: a.reshape(shape),
           ("real",), S.reshape_example()),
    OpCase("view_varargs", lambda a, shape: a.view(*shape), lambda a, shape: a.reshape(shape),
           ("real",), S.reshape_example()),
    OpCase("permute", lambda a, dims: a.permute(*dims), lambda a, dims: a.transpose(dims),
           ("real",), S.axis_example("permute")),
    OpCase("transpose", lambda a, dim0, dim1: a.transpose(dim0, dim1),
           lambda a, dim0, dim1: np.swapaxes(a, dim0, dim1), ("real",),
           S.axis_example("transpose")),
    OpCase("swapaxes", lambda a, dim0, dim1: a.swapaxes(dim0, dim1),
           lambda a, dim0, dim1: np.swapaxes(a, dim0, dim1), ("real",),
           S.axis_example("transpose")),
    OpCase("T", lambda a: a.T, lambda a: a.T, ("real",), U()),
    OpCase("broadcast_to", lambda a, shape: a.broadcast_to(shape), np.broadcast_to, ("real",),
           S.broadcast_to_example()),
    OpCase("expand", lambda a, shape: a.expand(*shape), _expand, ("real",),
           S.broadcast_to_example(expand=True)),
    OpCase("unsqueeze", lambda a, dim: a.unsqueeze(dim), lambda a, dim: np.expand_dims(a, dim),
           ("real",),
           S.axis_example("unsqueeze")),
    OpCase("squeeze", lambda a, dim: a.squeeze(dim), _squeeze, ("real",),
           S.axis_example("squeeze")),
    OpCase("flatten", lambda a, start_dim, end_dim: a.flatten(start_dim, end_dim), _flatten,
           ("real",), S.axis_example("flatten")),
    OpCase("getitem_basic", lambda a, index: a[index], lambda a, index: a[index], ("real",),
           S.getitem_example("basic")),
    OpCase("getitem_int_array", lambda a, index: a[index], lambda a, index: a[index], ("real",),
           S.getitem_example("int_array")),  # repeats: the backward must scatter-add
    OpCase("getitem_bool_mask", lambda a, index: a[index], lambda a, index: a[index], ("real",),
           S.getitem_example("bool_mask")),
    OpCase("cat", lambda *ts, dim: mp.cat(ts, dim), lambda *arrs, dim: np.concatenate(arrs, dim),
           ("real",) * 3, S.cat_example()),
    OpCase("stack", lambda *ts, dim: mp.stack(ts, dim), lambda *arrs, dim: np.stack(arrs, dim),
           ("real",) * 3, S.cat_example(stack=True)),
    OpCase("split", lambda a, **p: a.split(**p), _split, ("real",), S.split_example()),
    OpCase("chunk", lambda a, **p: a.chunk(**p), _chunk, ("real",), S.split_example(chunk=True)),
    # ------------------------------------------------------------- products and lookups
    OpCase("matmul", lambda a, b: a @ b, np.matmul, ("real", "real"),
           S.matmul_shapes().map(lambda ab: (ab, {}))),
    OpCase("linear", Linear.apply, lambda x, w, b: x @ w.T + b, ("real",) * 3,
           S.linear_example(bias=True)),
    OpCase("linear_no_bias", Linear.apply, lambda x, w: x @ w.T, ("real",) * 2,
           S.linear_example(bias=False)),
    OpCase("embedding", lambda w, ids: Embedding.apply(w, ids=_on(w, ids)),
           lambda w, ids: w[ids], ("real",), S.embedding_example()),  # repeated ids add up
]
# fmt: on
GRAD_CASES = [c for c in CASES if c.gradcheck]
TOLERANCE = {np.dtype("float32"): (1e-5, 1e-5), np.dtype("float64"): (1e-12, 1e-12)}


def _draw_inputs(case: OpCase, data: st.DataObject) -> tuple[list[np.ndarray], dict[str, Any]]:
    shapes, params = data.draw(case.example, label="shapes, params")
    domains = case.domains if len(case.domains) >= len(shapes) else case.domains[:1] * len(shapes)
    arrays = [data.draw(S.arrays(s, d), label=f"input {i}") for i, (s, d) in
              enumerate(zip(shapes, domains))]  # fmt: skip
    return arrays, params


def _as_tuple(x: Any) -> tuple[Any, ...]:
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


@pytest.mark.parametrize("dtype", [mp.float32, mp.float64], ids=str)
@pytest.mark.parametrize("case", CASES, ids=repr)
@given(data=st.data())
def test_values(case: OpCase, dtype: np.dtype, device: str, data: st.DataObject) -> None:
    arrays, params = _draw_inputs(case, data)
    arrays = [a.astype(dtype) for a in arrays]  # the reference sees the same rounded inputs
    out = _as_tuple(case.fn(*[mp.tensor(a, device=device) for a in arrays], **params))
    with np.errstate(all="ignore"):
        expected = _as_tuple(case.ref(*[a.astype(np.float64) for a in arrays], **params))
    assert len(out) == len(expected), f"{case.name}: {len(out)} outputs, expected {len(expected)}"
    for got, want in zip(out, expected):
        want = np.asarray(want)
        assert got.device == device
        assert got.shape == want.shape, f"{case.name}: shape {got.shape}, expected {want.shape}"
        if want.dtype.kind != "f":  # indices
            assert got.dtype.kind == "i"
            np.testing.assert_array_equal(got.numpy(), want)
            continue
        assert got.dtype == case.out_dtype(dtype), f"{case.name}: dtype {got.dtype} from {dtype}"
        rtol, atol = TOLERANCE[got.dtype]
        np.testing.assert_allclose(got.numpy(), want, rtol=rtol, atol=atol)


def _single(out: Any) -> mp.Tensor:
    """Gradcheck one tensor: several outputs (split, max's values) are flattened and joined."""
    parts = [o for o in _as_tuple(out) if o.dtype.kind == "f"]
    return parts[0] if len(parts) == 1 else mp.cat([p.reshape(-1) for p in parts])


@pytest.mark.parametrize("case", GRAD_CASES, ids=repr)
@given(data=st.data())
def test_gradcheck(case: OpCase, device: str, data: st.DataObject) -> None:
    arrays, params = _draw_inputs(case, data)
    inputs = [mp.tensor(a, device=device, requires_grad=True) for a in arrays]
    assert mp.gradcheck(lambda *ts: _single(case.fn(*ts, **params)), *inputs)


def test_every_case_has_a_unique_name() -> None:
    names = [c.name for c in CASES]
    assert len(names) == len(set(names))


# ------------------------------------------------------------------------ targeted checks
def test_integer_index_repeats_scatter_add(device: str) -> None:
    x = mp.tensor(np.arange(4.0), device=device, requires_grad=True)
    x[np.array([0, 0, 3, 0])].sum().backward()
    np.testing.assert_array_equal(mp.tensor(x.grad).numpy(), [3.0, 0.0, 0.0, 1.0])


def test_embedding_repeated_ids_add_up(device: str) -> None:
    w = mp.tensor(np.ones((3, 2)), device=device, requires_grad=True)
    ids = to_device(np.array([[2, 2], [0, 2]]), device)
    Embedding.apply(w, ids=ids).sum().backward()
    np.testing.assert_array_equal(mp.tensor(w.grad).numpy(), [[1, 1], [0, 0], [3, 3]])


def test_cast_gradient_returns_in_source_dtype(device: str) -> None:
    x = mp.tensor([1.0, 2.0], device=device, requires_grad=True)  # float32
    y = x.to(mp.float64) * mp.tensor([3.0, 4.0], dtype=mp.float64, device=device)
    y.sum().backward()
    assert x.grad.dtype == mp.float32
    np.testing.assert_array_equal(mp.tensor(x.grad).numpy(), [3.0, 4.0])


def test_max_ties_split_the_gradient(device: str) -> None:
    x = mp.tensor([1.0, 3.0, 3.0], device=device, requires_grad=True)
    x.amax().backward()
    np.testing.assert_array_equal(mp.tensor(x.grad).numpy(), [0.0, 0.5, 0.5])
    a = mp.tensor([2.0, 1.0], device=device, requires_grad=True)
    mp.maximum(a, mp.tensor([2.0, 0.0], device=device)).sum().backward()
    np.testing.assert_array_equal(mp.tensor(a.grad).numpy(), [0.5, 1.0])


def test_reductions_accept_dim_0_on_a_0d_tensor(device: str) -> None:
    x = mp.tensor(2.0, device=device, requires_grad=True)
    for y in (x.sum(0), x.mean(-1), x.amax(0, keepdim=True), x.sum(dim=(0,))):
        assert y.shape == () and y.item() == 2.0
    x.sum(0).backward()
    assert mp.tensor(x.grad).item() == 1.0


def test_relu_of_minus_infinity_is_zero(device: str) -> None:
    x = mp.tensor([-np.inf, -1.0, 2.0, np.inf], device=device)
    np.testing.assert_array_equal(x.relu().numpy(), [0.0, 0.0, 2.0, np.inf])


def test_pow_zero_has_zero_gradient_at_zero(device: str) -> None:
    x = mp.tensor([0.0, 2.0], device=device, requires_grad=True)
    (x**0).sum().backward()
    np.testing.assert_array_equal(mp.tensor(x.grad).numpy(), [0.0, 0.0])


@pytest.mark.parametrize("name", ["maximum", "amax"])
def test_gradients_keep_the_float32_dtype_through_ties_ops(name: str) -> None:
    """Regression: tie-splitting weights were float64 and promoted float32 gradients."""
    seen = []

    class Probe(mp.Function):  # identity that records the dtype of the gradient reaching it
        @staticmethod
        def forward(ctx: Any, x: Any) -> Any:
            return x

        @staticmethod
        def backward(ctx: Any, g: Any) -> Any:
            seen.append(g.dtype)
            return g

    x = mp.tensor([1.0, 2.0], requires_grad=True)
    y = Probe.apply(x)
    out = mp.maximum(y, mp.tensor([1.0, 0.0])) if name == "maximum" else y.amax()
    out.sum().backward()
    assert seen == [mp.float32]
