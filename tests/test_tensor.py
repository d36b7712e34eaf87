"""The Tensor surface: the dtype rule, device and shape errors, conversions and factories.

The dtype rule (minipeft/tensor.py's module docstring): Python scalars take the tensor's dtype
(a Python float meeting an int/bool tensor is float32); an int or bool tensor meeting a float
tensor is cast to that float dtype; two different float dtypes never mix silently.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np
import pytest

import minipeft as mp
from minipeft.ops import elementwise as E

FLOATS = [mp.float16, mp.float32, mp.float64]


# ------------------------------------------------------------------------ dtype rule
@pytest.mark.parametrize("scalar", [2, 1.5, True], ids=type)
@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_python_scalars_take_the_tensor_dtype(dtype: Any, scalar: Any, device: str) -> None:
    x = mp.ones(3, dtype=dtype, device=device)
    results = [x + scalar, scalar + x, x - scalar, scalar - x, x * scalar, scalar * x,
               x / scalar, scalar / x, x**scalar, scalar**x, mp.maximum(x, scalar),
               mp.where(x > 0, scalar, x), x.masked_fill(x > 0, scalar)]  # fmt: skip
    assert [r.dtype for r in results] == [dtype] * len(results)
    assert (x < scalar).dtype == mp.bool_


def test_python_scalars_and_integer_tensors() -> None:
    assert (mp.tensor([1, 2]) + 1).dtype == mp.int64
    assert (mp.tensor([1, 2]) / 2).dtype == mp.float32  # true division: the default float
    assert (1 / mp.tensor([1, 2], dtype=mp.int32)).dtype == mp.float32
    assert (mp.tensor([1, 2]) / mp.tensor([2, 4])).tolist() == [0.5, 0.5]
    assert (mp.tensor([1, 2], dtype=mp.int32) * 3).dtype == mp.int32
    assert (mp.tensor([1, 2]) * 0.5).dtype == mp.float32  # a float scalar: the default float
    assert (mp.tensor([True, False]) * 2.5).dtype == mp.float32
    np.testing.assert_allclose((mp.tensor([1, 2]) * 0.5).numpy(), [0.5, 1.0])


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("other", [mp.int64, mp.int32, mp.bool_], ids=str)
def test_int_and_bool_tensors_are_cast_to_the_float_dtype(dtype: Any, other: Any) -> None:
    x = mp.tensor([1.0, 2.0], dtype=dtype, requires_grad=True)
    m = mp.tensor([1, 0], dtype=other)
    for y in (x * m, m * x, x + m, m - x, mp.where(m > 0, m, x), mp.cat([m, x])):
        assert y.dtype == dtype
    (x * m).sum().backward()  # the float side still gets its gradient
    assert x.grad.dtype == dtype and x.grad.tolist() == [1.0, 0.0]


OPS_ON_TWO = {
    "add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b, "pow": lambda a, b: a**b, "matmul": lambda a, b: a @ b,
    "lt": lambda a, b: a < b, "maximum": mp.maximum, "minimum": mp.minimum,
    "where": lambda a, b: mp.where(a > 0, a, b), "cat": lambda a, b: mp.cat([a, b]),
    "stack": lambda a, b: mp.stack([a, b]),
}  # fmt: skip


@pytest.mark.parametrize("op", OPS_ON_TWO, ids=str)
def test_mixed_float_dtypes_raise_naming_both(op: str) -> None:
    a, b = mp.ones(2, dtype=mp.float32), mp.ones(2, dtype=mp.float64)
    for x, y in ((a, b), (b, a)):
        with pytest.raises(TypeError, match=r"float(32|64) and float(64|32)"):
            OPS_ON_TWO[op](x, y)


def test_float16_storage_works_for_basic_ops_and_to() -> None:
    x = mp.tensor([[0.5, -1.0], [2.0, 0.25]], dtype=mp.float16, requires_grad=True)
    for y in (x + x, x * 2, -x, x.exp(), x.tanh(), x.relu(), x.sigmoid(), x.sum(0), x.mean(),
              x @ x, x.T, x[0], x.reshape(4), x.amax(1)):  # fmt: skip
        assert y.dtype == mp.float16
    assert x.float().dtype == mp.float32 and x.to(mp.float64).half().dtype == mp.float16
    np.testing.assert_allclose(x.float().numpy(), [[0.5, -1.0], [2.0, 0.25]])
    (x * x).sum().backward()
    assert x.grad.dtype == mp.float16
    np.testing.assert_allclose(x.grad.astype(np.float32), [[1.0, -2.0], [4.0, 0.5]])


# ------------------------------------------------------------------------ devices
def test_cuda_without_cupy_raises_with_an_install_hint() -> None:
    if mp.cuda_available():
        pytest.skip("CUDA is available here")
    for spec in ("cuda", "cuda:0"):
        with pytest.raises(mp.DeviceError, match=r"not available.*pip install"):
            mp.check_device(spec)
    with pytest.raises(mp.DeviceError, match="cuda"):
        mp.zeros(2, device="cuda")


def test_unknown_devices_raise_naming_the_valid_ones() -> None:
    with pytest.raises(mp.DeviceError, match=r"'tpu'.*'cpu', 'cuda'"):
        mp.check_device("tpu")
    with pytest.raises(mp.DeviceError, match="cuda:1"):
        mp.check_device("cuda:1")
    with pytest.raises(mp.DeviceError, match="tpu"):
        mp.tensor([1.0]).to("tpu")
    with pytest.raises(mp.DeviceError, match="tpu"):
        mp.tensor([1.0], device="tpu")


class FakeCudaArray(np.ndarray):
    """A host array that the patched ``device_of`` reports as living on ``"cuda"``."""


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> Any:
    def device_of(arr: Any) -> str:
        return "cuda" if isinstance(arr, FakeCudaArray) else "cpu"

    for module in ("minipeft.tensor", "minipeft.autograd"):
        monkeypatch.setattr(importlib.import_module(module), "device_of", device_of)
    return lambda t: mp.Tensor(np.asarray(t.data).view(FakeCudaArray))


@pytest.mark.parametrize("op", ["add", "mul", "matmul", "maximum", "cat", "where"])
def test_mixing_devices_raises_naming_both(fake_cuda: Any, op: str) -> None:
    a, b = mp.ones(2), fake_cuda(mp.ones(2))
    assert b.device == "cuda" and a.device == "cpu"
    with pytest.raises(mp.DeviceError, match=r"(cpu.*cuda|cuda.*cpu).*\.to\(device\)"):
        OPS_ON_TWO[op](a, b)


def test_a_function_refuses_inputs_on_two_devices(fake_cuda: Any) -> None:
    a, b = mp.ones(2), fake_cuda(mp.ones(2))
    with pytest.raises(mp.DeviceError, match=r"Add: expected all inputs on one device.*cpu, cuda"):
        E.Add.apply(a, b)


# ------------------------------------------------------------------------ shape errors
def test_matmul_shape_mismatch_names_both_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(2, 3\) @ \(4, 5\)"):
        mp.ones(2, 3) @ mp.ones(4, 5)
    with pytest.raises(ValueError, match=r"batch.*\(2, 3, 4\) @ \(5, 4, 2\)"):
        mp.ones(2, 3, 4) @ mp.ones(5, 4, 2)
    with pytest.raises(ValueError, match=r"\(3,\) @ \(2,\)"):
        mp.ones(3) @ mp.ones(2)
    with pytest.raises(ValueError, match="at least 1-D"):
        mp.ones(()) @ mp.ones(2)


@pytest.mark.parametrize("op", ["add", "sub", "mul", "div", "maximum", "where"])
def test_broadcast_mismatch_names_both_shapes(op: str) -> None:
    with pytest.raises(ValueError, match=r"\(2, ?3\).*\(4,\)"):
        OPS_ON_TWO[op](mp.ones(2, 3), mp.ones(4))


def test_shape_errors_name_what_was_expected_and_found() -> None:
    with pytest.raises(ValueError, match=r"\(2, 3\).*6 elements.*\(4, 2\)"):
        mp.ones(2, 3).reshape(4, 2)
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(2, 4\)"):
        mp.cat([mp.ones(2, 3), mp.ones(2, 4)], dim=0)
    with pytest.raises(ValueError, match="equal shapes"):
        mp.stack([mp.ones(2), mp.ones(3)])
    with pytest.raises(ValueError, match=r"\(2, 3\) to \(4, 3\)"):
        mp.ones(2, 3).broadcast_to(4, 3)
    with pytest.raises(ValueError, match=r"sizes \[1, 1\].*size 3"):
        mp.ones(3).split([1, 1])
    with pytest.raises(IndexError, match="dimension 2 is out of range"):
        mp.ones(2, 3).sum(2)
    with pytest.raises(ValueError, match="-1 is not allowed"):
        mp.ones(3).expand(-1, 3)
    with pytest.raises(ValueError, match="0-d"):
        mp.cat([mp.tensor(1.0), mp.tensor(2.0)])


def test_split_and_chunk_reject_non_positive_sizes_by_value() -> None:
    x = mp.ones(3, 4)
    for bad in (0, -2):
        with pytest.raises(ValueError, match=rf"split_size >= 1, found {bad} \(dim 1 has size 4"):
            mp.split(x, bad, dim=1)
        with pytest.raises(ValueError, match=rf"chunks >= 1, found {bad}"):
            x.chunk(bad)
    with pytest.raises(ValueError, match=r"sizes \[4, -1\] must be >= 0"):
        x.split([4, -1], dim=1)
    with pytest.raises(IndexError, match="dimension 2 is out of range"):
        x.split(1, dim=2)
    # an empty dim splits into one empty piece, as in PyTorch (split_size 0 is allowed there)
    empty = mp.ones(0, 2)
    assert [p.shape for p in empty.split(0)] == [(0, 2)] == [p.shape for p in empty.chunk(2)]
    assert [p.shape for p in x.chunk(3, dim=1)] == [(3, 2), (3, 2)]


@pytest.mark.parametrize(
    "call",
    [
        lambda x: x.unsqueeze(3),
        lambda x: x.unsqueeze(-4),
        lambda x: x.squeeze(2),
        lambda x: x.permute(0, 2),
        lambda x: x.transpose(0, 2),
        lambda x: x.flatten(0, 2),
        lambda x: mp.cat([x, x], dim=2),
        lambda x: mp.stack([x, x], dim=3),
    ],
)
def test_out_of_range_dims_raise_instead_of_wrapping(call: Any) -> None:
    with pytest.raises(IndexError, match=r"dimension -?\d is out of range: expected one in \["):
        call(mp.ones(2, 1))


# ------------------------------------------------------------------------ conversions
def test_shape_and_conversion_accessors() -> None:
    data = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
    t = mp.tensor(data)
    assert t.shape == (2, 3) and t.ndim == 2 and t.numel() == 6 and len(t) == 2
    assert t.size() == (2, 3) and t.size(1) == 3
    assert t.tolist() == data and isinstance(t.numpy(), np.ndarray)
    assert t.T.shape == (3, 2) and t.T.tolist() == [[1.0, 4.0], [2.0, 5.0], [3.0, 6.0]]
    assert mp.ones(3).T.shape == (3,) and mp.ones(()).T.shape == ()
    s = t[1, 2]
    assert s.item() == 6.0 and isinstance(s.item(), float) and float(s) == 6.0
    assert int(mp.tensor(7)) == 7 and bool(mp.tensor(True))
    assert mp.tensor([[5.0]]).item() == 5.0
    with pytest.raises(ValueError, match=r"one element.*\(2, 3\)"):
        t.item()
    with pytest.raises(TypeError, match="0-d"):
        len(mp.tensor(1.0))


def test_repr_shows_dtype_and_grad_fn() -> None:
    x = mp.tensor([1.0, 2.0], requires_grad=True)
    assert "float32" in repr(x) and "requires_grad=True" in repr(x)
    assert "grad_fn=<MulBackward>" in repr(x * 2)


def test_to_the_same_dtype_or_device_is_a_no_op() -> None:
    x = mp.tensor([1.0])
    assert x.to(mp.float32) is x and x.to("cpu") is x


def test_clone_copies_and_keeps_the_graph() -> None:
    x = mp.tensor([1.0, 2.0], requires_grad=True)
    c = x.clone()
    c.sum().backward()
    assert x.grad.tolist() == [1.0, 1.0]
    f = mp.tensor([1.0])
    g = f.clone()
    g[0] = 5.0
    assert f.item() == 1.0


def test_setitem_on_a_tensor_that_requires_grad_raises() -> None:
    x = mp.tensor([1.0, 2.0], requires_grad=True)
    with pytest.raises(RuntimeError, match="in-place.*no_grad"):
        x[0] = 5.0
    with mp.no_grad():
        x[0] = 5.0
    assert x.tolist() == [5.0, 2.0]
    y = mp.zeros(2, 2)
    y[1] = mp.tensor([3.0, 4.0])
    y[np.array([True, False])] = 1.0
    assert y.tolist() == [[1.0, 1.0], [3.0, 4.0]]


def test_comparisons_and_logic_give_bool_tensors_without_grad() -> None:
    x = mp.tensor([1.0, 2.0, 3.0], requires_grad=True)
    m = (x > 1.5) & ~(x == 3.0) | (x <= 1.0)
    assert m.dtype == mp.bool_ and not m.requires_grad
    assert m.tolist() == [True, True, False]


def test_indices_may_be_tensors_lists_or_arrays() -> None:
    x = mp.tensor([10.0, 20.0, 30.0], requires_grad=True)
    for idx in (mp.tensor([2, 0, 2]), [2, 0, 2], np.array([2, 0, 2])):
        assert x[idx].tolist() == [30.0, 10.0, 30.0]
    assert x[mp.tensor([True, False, True])].tolist() == [10.0, 30.0]
    x[mp.tensor([2, 2])].sum().backward()
    assert x.grad.tolist() == [0.0, 0.0, 2.0]


def test_where_and_masked_fill_accept_numpy_masks() -> None:
    x = mp.tensor([1.0, 2.0, 3.0])
    mask = np.array([True, False, True])
    assert mp.where(mask, x, 0.0).tolist() == [1.0, 0.0, 3.0]
    assert x.masked_fill(mask, -1.0).tolist() == [-1.0, 2.0, -1.0]


# ------------------------------------------------------------------------ factories
def test_tensor_infers_pytorch_default_dtypes() -> None:
    assert mp.tensor([1.0, 2.0]).dtype == mp.float32
    assert mp.tensor(3.5).dtype == mp.float32 and mp.tensor(3.5).shape == ()
    assert mp.tensor([1, 2]).dtype == mp.int64
    assert mp.tensor([True]).dtype == mp.bool_
    assert mp.tensor([1, 2], dtype=mp.float64).dtype == mp.float64


@pytest.mark.parametrize("dtype", ["float64", "float32", "float16", "int32", "uint8"])
def test_tensor_from_numpy_keeps_the_dtype(dtype: str) -> None:
    arr = np.arange(3).astype(dtype)
    assert mp.tensor(arr).dtype == np.dtype(dtype)
    assert mp.tensor(arr[0]).dtype == np.dtype(dtype)  # a NumPy scalar too


def test_tensor_copies_its_data_but_tensor_class_wraps() -> None:
    arr = np.zeros(3)
    t = mp.tensor(arr)
    arr[0] = 1.0
    assert t.tolist() == [0.0, 0.0, 0.0]
    assert mp.Tensor(arr).data is arr  # the constructor wraps without copying


def test_zeros_ones_full_arange() -> None:
    assert mp.zeros(2, 3).shape == (2, 3) and mp.zeros(2, 3).dtype == mp.float32
    assert mp.zeros((2, 3)).shape == (2, 3) and mp.zeros().shape == ()
    assert mp.ones(2, dtype=mp.float64).tolist() == [1.0, 1.0]
    assert mp.ones(2, dtype=mp.float64).dtype == mp.float64
    assert mp.full((2,), 7.0).tolist() == [7.0, 7.0] and mp.full(3, 1).shape == (3,)
    assert mp.zeros(2, requires_grad=True).requires_grad
    assert mp.arange(4).tolist() == [0, 1, 2, 3] and mp.arange(4).dtype == mp.int64
    assert mp.arange(1, 7, 2).tolist() == [1, 3, 5]
    assert mp.arange(0, 1, 0.25).dtype == mp.float32
    assert mp.arange(3, dtype=mp.float64).dtype == mp.float64
    like = mp.zeros_like(mp.ones(2, 2, dtype=mp.float16))
    assert like.shape == (2, 2) and like.dtype == mp.float16
    assert mp.ones_like(mp.zeros(3)).tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="non-negative"):
        mp.zeros(-1)


def test_random_factories_are_reproducible_with_manual_seed(device: str) -> None:
    mp.manual_seed(123)
    a = mp.randn(3, 4, device=device)
    r = mp.rand(5, device=device)
    mp.manual_seed(123)
    b = mp.randn(3, 4, device=device)
    assert a.dtype == mp.float32 and a.shape == (3, 4) and a.device == device
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert 0.0 <= float(r.numpy().min()) and float(r.numpy().max()) < 1.0
    mp.manual_seed(124)
    assert not np.array_equal(mp.randn(3, 4, device=device).numpy(), a.numpy())
    assert mp.randn(2, dtype=mp.float64, device=device).dtype == mp.float64
    i = mp.randint(0, 5, (100,), device=device)
    assert i.dtype == mp.int64 and 0 <= i.numpy().min() and i.numpy().max() < 5


def test_an_explicit_generator_does_not_touch_the_global_one() -> None:
    from minipeft.backend import get_rng

    mp.manual_seed(0)
    expected = mp.randn(4).numpy()
    mp.manual_seed(0)
    g1 = mp.randn(3, generator=get_rng(seed=7)).numpy()
    assert np.array_equal(mp.randn(4).numpy(), expected)
    assert np.array_equal(mp.randn(3, generator=get_rng(seed=7)).numpy(), g1)
