"""Reverse-mode automatic differentiation: ``Function``, ``Context``, ``no_grad`` and backward.

An op is a :class:`Function` subclass with two static methods on *raw arrays*::

    class Exp(Function):
        @staticmethod
        def forward(ctx, x):            # x: array
            y = xp_of(x).exp(x)
            ctx.save_for_backward(y)
            return y

        @staticmethod
        def backward(ctx, grad):        # grad: dL/dy, same shape as y
            (y,) = ctx.saved_tensors
            return grad * y             # dL/dx, one gradient per input

``Function.apply(*tensors, **params)`` unwraps the tensors, runs ``forward`` and, when any input
requires grad, records a :class:`Node` so that :func:`backward` can walk the graph in reverse
topological order. The walk is iterative (a 10,000-op chain needs no recursion) and only visits
tensors that require grad: **frozen means free** — a branch that leads only to frozen tensors is
never entered, and ``ctx.needs_input_grad`` lets an op skip the gradients nobody asked for
(a frozen Linear computes the input gradient only).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .backend import DeviceError, device_of, xp_of

if TYPE_CHECKING:
    from .tensor import Tensor

__all__ = [
    "Context",
    "Function",
    "Node",
    "no_grad",
    "enable_grad",
    "is_grad_enabled",
    "set_grad_enabled",
    "unbroadcast",
    "backward",
    "iter_graph",
]

_state = threading.local()
_profiler: Any = None  # the active minipeft.profiler.OpProfile, or None (set by profile())


def is_grad_enabled() -> bool:
    """Whether new operations are recorded for backward (off inside ``no_grad``)."""
    return getattr(_state, "enabled", True)


class set_grad_enabled(contextlib.ContextDecorator):  # noqa: N801 — PyTorch's name
    """Context manager / decorator that turns graph recording on or off."""

    def __init__(self, mode: bool) -> None:
        self.mode = bool(mode)
        self.prev: list[bool] = []

    def __enter__(self) -> None:
        self.prev.append(is_grad_enabled())
        _state.enabled = self.mode

    def __exit__(self, *exc: object) -> None:
        _state.enabled = self.prev.pop()


def no_grad(fn: Any = None) -> Any:
    """``with no_grad():``, ``@no_grad()`` or ``@no_grad`` — run ops without recording a graph."""
    if callable(fn):  # used as a bare decorator: without this, @no_grad would silently do nothing
        return set_grad_enabled(False)(fn)
    return set_grad_enabled(False)


def enable_grad() -> set_grad_enabled:
    """Turn recording back on inside a ``no_grad`` block."""
    return set_grad_enabled(True)


def unbroadcast(grad: Any, shape: tuple[int, ...]) -> Any:
    """Reduce a broadcast gradient back to ``shape`` (the one shared helper every op uses).

    Broadcasting prepends axes and stretches size-1 axes; the chain rule sums the gradient over
    exactly those axes: first the extra leading ones, then the stretched ones (keepdims).
    """
    if grad.shape == tuple(shape):
        return grad
    extra = grad.ndim - len(shape)
    if extra > 0:
        grad = grad.sum(axis=tuple(range(extra)))
    stretched = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if stretched:
        grad = grad.sum(axis=stretched, keepdims=True)
    return grad.reshape(shape)


class Context:
    """Scratch space a Function's forward leaves for its backward.

    ``needs_input_grad[i]`` says whether input ``i`` wants a gradient; ``save_for_backward``
    keeps arrays; any other attribute (``ctx.axis = ...``) can hold non-array state.
    """

    def __init__(self, needs_input_grad: tuple[bool, ...]) -> None:
        self.needs_input_grad = needs_input_grad
        self.saved_tensors: tuple[Any, ...] = ()

    def save_for_backward(self, *arrays: Any) -> None:
        self.saved_tensors = arrays


class Node:
    """One recorded op: the Function class, its context and the input tensors."""

    __slots__ = ("fn", "ctx", "inputs")

    def __init__(self, fn: type[Function], ctx: Context, inputs: tuple[Tensor, ...]) -> None:
        self.fn = fn
        self.ctx: Context | None = ctx
        self.inputs = inputs

    def __repr__(self) -> str:
        return f"<{self.fn.__name__}Backward>"


class Function:
    """Base class of every differentiable op (see the module docstring for the contract)."""

    @staticmethod
    def forward(ctx: Context, *arrays: Any, **params: Any) -> Any:
        raise NotImplementedError("a Function subclass must define forward(ctx, *arrays)")

    @staticmethod
    def backward(ctx: Context, grad: Any) -> Any:
        raise NotImplementedError("a Function subclass must define backward(ctx, grad)")

    @classmethod
    def apply(cls, *inputs: Tensor, **params: Any) -> Tensor:
        """Run ``forward`` on the inputs' arrays and record the op when a gradient is needed."""
        from .tensor import Tensor  # noqa: PLC0415 — tensor.py imports this module

        arrays = [t.data for t in inputs]
        if len(arrays) > 1:
            devices = {device_of(a) for a in arrays}
            if len(devices) > 1:
                found = ", ".join(f"{device_of(a)}" for a in arrays)
                raise DeviceError(
                    f"{cls.__name__}: expected all inputs on one device, found [{found}]; "
                    "move them with .to(device)"
                )
        record = is_grad_enabled()
        needs = tuple(record and t.requires_grad for t in inputs)
        ctx = Context(needs)
        prof = _profiler
        if prof is None:
            out = cls.forward(ctx, *arrays, **params)
        else:
            out = prof.time(cls.__name__, "forward", cls.forward, ctx, *arrays, **params)
        if out.ndim == 0:  # NumPy reductions return scalars (np.float32); keep a 0-d array
            out = xp_of(out).asarray(out)
        # only float outputs carry gradients (x.long() of a trainable x is a constant)
        result = Tensor._make(out, requires_grad=any(needs) and out.dtype.kind == "f")
        if result.requires_grad:
            result._node = Node(cls, ctx, inputs)
        return result


def backward(root: Tensor, grad: Any, retain_graph: bool = False) -> None:
    """Accumulate d(root)/d(leaf) · grad into every leaf that requires grad.

    1. Collect the subgraph of tensors that require grad, in topological order, with an explicit
       stack (no recursion, so a 10,000-op chain is fine).
    2. Walk it in reverse: each node's backward gets the summed gradient of its output and returns
       one gradient per input; frozen inputs are skipped.
    3. Free each node's saved arrays unless ``retain_graph`` (a second backward then raises).
    """
    prof = _profiler
    if prof is not None:
        start, ops_before = time.perf_counter(), _backward_seconds(prof)
    order: list[Tensor] = []
    seen: set[int] = set()
    stack: list[tuple[Tensor, bool]] = [(root, False)]
    while stack:
        t, expanded = stack.pop()
        if expanded:
            order.append(t)
            continue
        if id(t) in seen:
            continue
        seen.add(id(t))
        stack.append((t, True))
        if t._node is not None:
            for parent in t._node.inputs:
                if parent.requires_grad and id(parent) not in seen:
                    stack.append((parent, False))

    grads: dict[int, Any] = {id(root): grad}
    for t in reversed(order):
        g = grads.pop(id(t), None)
        if g is None:
            continue
        node = t._node
        if node is None or t._retains_grad:
            _accumulate(t, g)
        if node is None:
            continue
        ctx = node.ctx
        if ctx is None:
            raise RuntimeError(
                f"trying to backward through {node} a second time: its saved arrays were freed "
                "by the first backward; pass retain_graph=True to the first call if you need this"
            )
        if prof is None:
            in_grads = node.fn.backward(ctx, g)
        else:
            in_grads = prof.time(node.fn.__name__, "backward", node.fn.backward, ctx, g)
        if not isinstance(in_grads, tuple):
            in_grads = (in_grads,)
        if len(in_grads) != len(node.inputs):
            raise RuntimeError(
                f"{node.fn.__name__}.backward returned {len(in_grads)} gradients, "
                f"expected {len(node.inputs)} (one per input)"
            )
        for parent, pg, needed in zip(node.inputs, in_grads, ctx.needs_input_grad):
            if not needed or pg is None:
                continue
            if pg.dtype != parent.dtype:  # a gradient has its tensor's dtype (as in PyTorch):
                pg = pg.astype(parent.dtype)  # float16 ops may compute it in float32
            key = id(parent)
            prev = grads.get(key)
            grads[key] = pg if prev is None else prev + pg
        if not retain_graph:
            node.ctx = None
    if prof is not None:  # the walk's own bookkeeping: its time outside the ops' backwards
        ops = _backward_seconds(prof) - ops_before
        prof.add("autograd", "backward", time.perf_counter() - start - ops)


def _backward_seconds(prof: Any) -> float:
    return sum(s for (name, phase), (_, s) in prof.rows.items()
               if phase == "backward" and name != "autograd")  # fmt: skip


def _accumulate(t: Tensor, g: Any) -> None:
    """Add ``g`` into ``t.grad`` (gradients accumulate across uses and backward calls)."""
    if g.shape != t.shape:
        raise RuntimeError(f"gradient shape {g.shape} does not match tensor shape {t.shape}")
    if t.grad is None:
        # own the buffer: g may be a read-only broadcast view, or the very array handed to
        # another input (Add passes g to both sides), and optimizers update grads in place
        t.grad = xp_of(g).array(g, dtype=t.dtype, copy=True)
    else:
        t.grad = t.grad + g.astype(t.dtype, copy=False)


def iter_graph(root: Tensor) -> Iterator[Node]:
    """Yield the recorded nodes reachable from ``root`` (for inspection and lessons)."""
    stack, seen = [root], set()
    while stack:
        t = stack.pop()
        if t._node is None or id(t) in seen:
            continue
        seen.add(id(t))
        yield t._node
        stack.extend(t._node.inputs)
