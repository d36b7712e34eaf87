"""Central-difference gradient checking in float64.

For a function f of tensors with output y, the check contracts y with a fixed random weight R
(so every output element matters) and compares, for every input element xᵢ,

    analytic  ∂(Σ R⊙y)/∂xᵢ      from backward, with
    numeric   [L(xᵢ + ε) − L(xᵢ − ε)] / 2ε,   error O(ε²).

It passes when |analytic − numeric| ≤ atol + rtol·|numeric| everywhere; otherwise it names the
worst element. Inputs must be float64: float32 rounding (~1e-7) divided by 2ε would swamp it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .autograd import no_grad
from .backend import get_rng, to_numpy, xp_of
from .tensor import Tensor

__all__ = ["gradcheck", "GradcheckError"]


class GradcheckError(AssertionError):
    """Analytic and numeric gradients disagree; the message names the worst element."""


def _loss(fn: Callable[..., Any], inputs: tuple[Any, ...], weight: Any) -> float:
    with no_grad():
        out = fn(*inputs)
    return float((out.data * weight).sum())


def gradcheck(
    fn: Callable[..., Tensor],
    *inputs: Any,
    eps: float = 1e-6,
    atol: float = 1e-5,
    rtol: float = 1e-3,
    raise_exception: bool = True,
    seed: int = 0,
) -> bool:
    """Check ``fn``'s backward against central differences for every float64 input.

    Returns True when all gradients agree. Otherwise raises :class:`GradcheckError` naming the
    input, the element, both values and the error (or returns False if ``raise_exception``
    is False). Inputs that are not Tensors requiring grad are passed through unchecked.
    """
    checked = [i for i, t in enumerate(inputs) if isinstance(t, Tensor) and t.requires_grad]
    if not checked:
        raise ValueError("gradcheck needs at least one Tensor input with requires_grad=True")
    for i in checked:
        if inputs[i].dtype.name != "float64":
            raise TypeError(f"gradcheck needs float64 inputs, input {i} is {inputs[i].dtype}")
    for i in checked:
        t = inputs[i]
        t.grad = None
        # a private C-contiguous copy, so reshape(-1) below is a view (not ascontiguousarray:
        # it turns a 0-d input into shape (1,)); the caller's array is never written to
        t.data = t.data.copy()
    out = fn(*inputs)
    xp = xp_of(out.data)
    weight = get_rng(out.device, seed=seed).standard_normal(out.shape).astype(out.dtype)
    weight = xp.asarray(weight)
    (out * Tensor._make(weight)).sum().backward()

    worst = (0.0, "")
    for i in checked:
        t = inputs[i]
        analytic = to_numpy(t.grad) if t.grad is not None else 0 * to_numpy(t.data)
        flat = t.data.reshape(-1)  # a view: perturbing it perturbs the input in place
        for j in range(flat.size):
            orig = float(flat[j])
            flat[j] = orig + eps
            plus = _loss(fn, inputs, weight)
            flat[j] = orig - eps
            minus = _loss(fn, inputs, weight)
            flat[j] = orig
            numeric = (plus - minus) / (2 * eps)
            a = float(analytic.reshape(-1)[j])
            excess = abs(a - numeric) - (atol + rtol * abs(numeric))
            if excess > worst[0]:
                idx = tuple(int(k) for k in divmod_index(j, t.shape))
                worst = (
                    excess,
                    f"input {i} (shape {t.shape}) element {idx}: analytic {a:.8g}, "
                    f"numeric {numeric:.8g}, |diff| {abs(a - numeric):.3g} > "
                    f"atol {atol:g} + rtol {rtol:g}·|numeric|",
                )
    if worst[1]:
        if raise_exception:
            raise GradcheckError(f"gradcheck failed at the worst element: {worst[1]}")
        return False
    return True


def divmod_index(flat: int, shape: tuple[int, ...]) -> list[int]:
    """Row-major multi-index of a flat position (shape () gives [])."""
    idx = []
    for n in reversed(shape):
        flat, r = divmod(flat, n)
        idx.append(r)
    return idx[::-1]
