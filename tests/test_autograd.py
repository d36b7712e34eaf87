"""The autograd engine: graph walking, accumulation, freeing, no_grad and *frozen means free*.

The op table in test_ops.py checks each op's gradient; this file checks the machinery around
them — what backward visits, what it stores, and what it refuses to do.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import strategies as S
from hypothesis import given
from hypothesis import strategies as st

import minipeft as mp
from minipeft.autograd import Function, iter_graph, unbroadcast
from minipeft.ops.matmul import Linear


def _all_functions(cls: type = Function) -> Iterator[type]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _all_functions(sub)


@pytest.fixture
def backward_log(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, tuple[bool, ...], Any]]:
    """Wrap every Function's backward: the log gets (op name, needs_input_grad, returned grads)."""
    log: list[tuple[str, tuple[bool, ...], Any]] = []
    for cls in set(_all_functions()):
        if "backward" not in cls.__dict__:
            continue

        def spy(ctx: Any, g: Any, _orig: Any = cls.backward, _name: str = cls.__name__) -> Any:
            out = _orig(ctx, g)
            log.append((_name, ctx.needs_input_grad, out))
            return out

        monkeypatch.setattr(cls, "backward", staticmethod(spy))
    return log


def _f64(*values: Any, requires_grad: bool = True) -> mp.Tensor:
    return mp.tensor(np.array(values, dtype=np.float64), requires_grad=requires_grad)


# ------------------------------------------------------------------------ graph walking
def test_a_10000_op_chain_backpropagates_without_recursion() -> None:
    x = mp.tensor(1.0, dtype=mp.float64, requires_grad=True)
    y = x
    for _ in range(10_000):
        y = y * 1.0001
    y.backward()
    expected = 1.0001**10_000
    assert y.item() == pytest.approx(expected, rel=1e-9)
    assert x.grad.item() == pytest.approx(expected, rel=1e-9)
    del y  # freeing a 10,000-deep graph must not overflow the stack either


def test_a_tensor_used_twice_gets_both_gradients() -> None:
    x = _f64(3.0)
    (x * x).sum().backward()
    assert x.grad.tolist() == [6.0]


def test_diamond_graph_sums_both_paths() -> None:
    x = _f64(2.0, -1.0)
    a, b = x * 2, x * 3  # y = 6x², dy/dx = 12x
    (a * b).sum().backward()
    np.testing.assert_allclose(x.grad, [24.0, -12.0])


def test_gradients_accumulate_across_backward_calls() -> None:
    x = _f64(1.0, 2.0)
    for _ in range(2):  # a fresh graph each time
        (x * 2).sum().backward()
    np.testing.assert_allclose(x.grad, [4.0, 4.0])
    x.zero_grad()
    assert x.grad is None


def test_leaf_gradients_are_private_writable_buffers() -> None:
    """Add hands one gradient array to both inputs and Sum's is a read-only broadcast view;
    each leaf must still own a writable .grad (optimizers update grads in place)."""
    a, b = _f64(1.0, 2.0), _f64(3.0, 4.0)
    (a + b).sum().backward()
    assert a.grad is not b.grad
    a.grad *= 10  # would raise on a read-only view
    np.testing.assert_allclose(b.grad, [1.0, 1.0])


def test_a_non_scalar_backward_needs_a_gradient() -> None:
    y = _f64(1.0, 2.0) * 2
    with pytest.raises(RuntimeError, match=r"scalar output.*\(2,\)"):
        y.backward()


def test_backward_with_an_explicit_gradient() -> None:
    x = _f64(1.0, 2.0, 3.0)
    (x * 2).backward(np.array([1.0, 0.5, -1.0]))
    np.testing.assert_allclose(x.grad, [2.0, 1.0, -2.0])
    x.zero_grad()
    (x * x).backward(mp.tensor([1.0, 1.0, 1.0], dtype=mp.float64))
    np.testing.assert_allclose(x.grad, [2.0, 4.0, 6.0])


def test_backward_rejects_a_gradient_of_the_wrong_shape() -> None:
    with pytest.raises(RuntimeError, match=r"\(3,\).*\(2,\)"):
        (_f64(1.0, 2.0) * 2).backward(np.ones(3))


def test_backward_on_a_tensor_without_grad_raises() -> None:
    with pytest.raises(RuntimeError, match="does not require grad"):
        (_f64(1.0, requires_grad=False) * 2).sum().backward()


def test_second_backward_through_a_freed_graph_raises() -> None:
    x = _f64(1.0, 2.0)
    y = (x.exp() * 2).sum()
    y.backward()
    with pytest.raises(RuntimeError, match="second time.*retain_graph=True"):
        y.backward()


def test_retain_graph_allows_a_second_backward() -> None:
    x = _f64(1.0, 2.0)
    y = (x * x).sum()
    y.backward(retain_graph=True)
    y.backward()
    np.testing.assert_allclose(x.grad, [4.0, 8.0])


def test_a_function_returning_the_wrong_number_of_gradients_is_reported() -> None:
    class Bad(Function):
        @staticmethod
        def forward(ctx: Any, a: Any, b: Any) -> Any:
            return a + b

        @staticmethod
        def backward(ctx: Any, g: Any) -> Any:
            return g  # one gradient for two inputs

    with pytest.raises(RuntimeError, match="returned 1 gradients, expected 2"):
        Bad.apply(_f64(1.0), _f64(2.0)).sum().backward()


def test_iter_graph_lists_the_recorded_nodes() -> None:
    x = _f64(1.0)
    y = (x.exp() * 2).sum()
    assert sorted(n.fn.__name__ for n in iter_graph(y)) == ["Exp", "Mul", "Sum"]


# ------------------------------------------------------------------------ what gets recorded
def test_no_grad_context_records_nothing() -> None:
    x = _f64(1.0, 2.0)
    with mp.no_grad():
        y = x * 2
        assert not mp.is_grad_enabled()
    assert mp.is_grad_enabled()
    assert not y.requires_grad and y.is_leaf


def test_no_grad_as_a_decorator_with_and_without_parentheses() -> None:
    x = _f64(1.0)

    @mp.no_grad()
    def f(t: mp.Tensor) -> mp.Tensor:
        return t * 2

    @mp.no_grad
    def g(t: mp.Tensor) -> mp.Tensor:
        return t * 3

    assert not f(x).requires_grad
    assert not g(x).requires_grad and g(x).item() == 3.0
    assert (x * 2).requires_grad


def test_no_grad_restores_the_mode_after_an_exception() -> None:
    with pytest.raises(ValueError), mp.no_grad():
        raise ValueError
    assert mp.is_grad_enabled()


def test_enable_grad_inside_no_grad() -> None:
    x = _f64(1.0)
    with mp.no_grad():
        with mp.enable_grad():
            assert (x * 2).requires_grad
        assert not (x * 2).requires_grad


def test_only_float_tensors_can_require_grad() -> None:
    with pytest.raises(TypeError, match="int64"):
        mp.tensor([1, 2], requires_grad=True)
    with pytest.raises(TypeError, match="only float"):
        mp.tensor([1, 2]).requires_grad_()
    x = mp.tensor([1.5, 2.5], requires_grad=True)
    ints = x.long()  # a cast to int is a constant, not an error
    assert ints.dtype == mp.int64 and not ints.requires_grad


def test_detach_cuts_the_graph_and_shares_data() -> None:
    x = _f64(1.0, 2.0)
    d = x.detach()
    assert not d.requires_grad and d.is_leaf and d.data is x.data
    y = (d * x).sum()  # only the x path carries gradient
    y.backward()
    np.testing.assert_allclose(x.grad, [1.0, 2.0])


def test_retain_grad_keeps_a_non_leaf_gradient() -> None:
    x = _f64(1.0, 2.0)
    h = x * 3
    h.retain_grad()
    k = h * 1  # not retained
    (k * h).sum().backward()
    np.testing.assert_allclose(h.grad, [6.0, 12.0])  # d(h²)/dh = 2h
    assert k.grad is None and not h.is_leaf


def test_op_outputs_are_arrays_even_for_full_reductions() -> None:
    y = _f64(1.0, 2.0).sum()
    assert isinstance(y.data, np.ndarray) and y.shape == ()


# ------------------------------------------------------------------------ frozen means free
def test_a_frozen_branch_does_no_backward_work(backward_log: list) -> None:
    frozen = _f64(0.5, 1.5, requires_grad=False)
    w = _f64(1.0, -2.0)
    y = frozen.exp().sigmoid().sum() + (w.tanh() * 3).sum()
    y.backward()
    ran = collections.Counter(name for name, _, _ in backward_log)
    assert ran == {"Add": 1, "Sum": 1, "Mul": 1, "Tanh": 1}  # no Exp, no Sigmoid, one Sum
    add_needs = next(needs for name, needs, _ in backward_log if name == "Add")
    assert add_needs == (False, True)
    assert frozen.grad is None and w.grad is not None


def test_an_op_mixing_frozen_and_trainable_inputs_skips_the_frozen_gradient(
    backward_log: list,
) -> None:
    frozen = _f64(1.0, 2.0, requires_grad=False)
    x = _f64(3.0, 4.0)
    (frozen * x + frozen).sum().backward()
    seen = {name: (needs, grads) for name, needs, grads in backward_log}
    assert seen["Mul"][0] == (False, True) and seen["Mul"][1][0] is None
    assert seen["Add"][0] == (True, False) and seen["Add"][1][1] is None
    assert frozen.grad is None
    np.testing.assert_allclose(x.grad, [1.0, 2.0])


@pytest.mark.parametrize("bias", [False, True])
def test_linear_with_a_frozen_weight_computes_only_the_input_gradient(
    backward_log: list, bias: bool
) -> None:
    rng = np.random.default_rng(0)
    x = mp.tensor(rng.standard_normal((2, 5, 4)), requires_grad=True)
    w = mp.tensor(rng.standard_normal((3, 4)))  # frozen base weight
    b = [mp.tensor(rng.standard_normal(3))] if bias else []
    Linear.apply(x, w, *b).sum().backward()
    (entry,) = [e for e in backward_log if e[0] == "Linear"]
    _, needs, grads = entry
    assert needs == (True, False, False)[: len(needs)]
    assert grads[0] is not None and all(g is None for g in grads[1:])  # no dW, no db computed
    assert w.grad is None and x.grad.shape == (2, 5, 4)


def test_linear_with_a_frozen_input_computes_only_the_weight_gradients(backward_log: list) -> None:
    x = mp.tensor(np.ones((2, 4)))
    w, b = (
        mp.tensor(np.ones((3, 4)), requires_grad=True),
        mp.tensor(np.zeros(3), requires_grad=True),
    )
    Linear.apply(x, w, b).sum().backward()
    (entry,) = [e for e in backward_log if e[0] == "Linear"]
    assert entry[2][0] is None and x.grad is None
    np.testing.assert_allclose(w.grad, np.full((3, 4), 2.0))
    np.testing.assert_allclose(b.grad, [2.0, 2.0, 2.0])


def test_a_frozen_tensor_used_many_times_never_gets_a_grad() -> None:
    frozen = _f64(1.0, 2.0, requires_grad=False)
    x = _f64(1.0, 1.0)
    ((frozen * x) @ frozen + (frozen.exp() * x).sum()).backward()
    assert frozen.grad is None and x.grad is not None


# ------------------------------------------------------------------------ unbroadcast
@given(data=st.data())
def test_unbroadcast_sums_every_element_that_came_from_one_source(data: st.DataObject) -> None:
    small, big = data.draw(S.broadcast_shapes(2))
    target = np.broadcast_shapes(small, big)
    g = data.draw(S.arrays(target))
    # reference: each position of the broadcast result remembers which source element it copies
    source = np.broadcast_to(np.arange(int(np.prod(small))).reshape(small), target)
    expected = np.bincount(source.ravel(), weights=g.ravel(), minlength=int(np.prod(small)))
    got = unbroadcast(g, small)
    assert got.shape == small
    np.testing.assert_allclose(got, expected.reshape(small), rtol=1e-12, atol=1e-12)


@given(data=st.data())
def test_unbroadcast_of_a_broadcast_multiplies_by_the_copy_count(data: st.DataObject) -> None:
    small, big = data.draw(S.broadcast_shapes(2))
    target = np.broadcast_shapes(small, big)
    x = data.draw(S.arrays(small))
    copies = int(np.prod(target)) // int(np.prod(small))
    got = unbroadcast(np.broadcast_to(x, target), small)
    np.testing.assert_allclose(got, x * copies, rtol=1e-12, atol=1e-12)
