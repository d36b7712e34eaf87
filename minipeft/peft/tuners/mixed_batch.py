"""Mixed-adapter batches: a different adapter (or the base model) for each row of one batch.

PEFT's mixed-batch inference (``model(input_ids, adapter_names=[...])``): row i of the batch
goes through adapter ``adapter_names[i]``, or through the base model alone when it is
``"__base__"``. Each tuner layer computes its base output once for the whole batch, then adds
each adapter's output on that adapter's rows only:

    y[rows(a)] = base(x)[rows(a)] + Δ_a(x[rows(a)])        for every adapter a named

so the cost is one base pass plus one adapter pass per row, and row i equals running that row
alone with its adapter active. :class:`~minipeft.peft.peft_model.PeftModel` sets the names for
the duration of one forward (:func:`adapter_names_context`); layers read them with
:func:`current_adapter_names`.

Shapes: x (B, ..., d_in), result (B, ..., d_out), ``adapter_names`` a list of B names.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Sequence
from typing import Any

from ...creation import as_array
from ...functional import cat
from ...tensor import Tensor

__all__ = ["BASE", "adapter_names_context", "current_adapter_names", "mixed_batch_output"]

BASE = "__base__"  # PEFT's name for "no adapter on this row"
_NAMES: contextvars.ContextVar[tuple[str, ...] | None] = contextvars.ContextVar(
    "minipeft_adapter_names", default=None
)


@contextlib.contextmanager
def adapter_names_context(names: Sequence[str] | None) -> Iterator[None]:
    """Within the block, tuner layers route row i through adapter ``names[i]``."""
    token = _NAMES.set(None if names is None else tuple(names))
    try:
        yield
    finally:
        _NAMES.reset(token)


def current_adapter_names() -> tuple[str, ...] | None:
    """The per-row adapter names of the forward in progress, or None (the active adapters)."""
    return _NAMES.get()


def mixed_batch_output(layer: Any, x: Any, result: Tensor, names: Sequence[str]) -> Tensor:
    """Add each adapter's output to its own rows of ``result`` (the base output of ``x``).

    ``layer.holds(name)`` says whether the layer has the adapter (a row whose adapter does not
    target this layer keeps the base output there), ``layer.add_adapter_output(name, x, r)``
    adds it on a sub-batch. The rows are regathered in their original order."""
    if len(names) != result.shape[0]:
        raise ValueError(f"adapter_names has {len(names)} names for a batch of {result.shape[0]}")
    groups: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        groups.setdefault(name, []).append(i)
    if len(groups) == 1:  # one adapter for the whole batch: no gathering
        (name,) = groups
        return result if name == BASE or not layer.holds(name) else layer.add_adapter_output(
            name, x, result)  # fmt: skip
    pieces, order = [], []
    for name, rows in groups.items():
        sub = result[as_array(rows, device=result.device)]
        if name != BASE and layer.holds(name):
            xs = x[as_array(rows, device=result.device)] if isinstance(x, Tensor) else x[rows]
            sub = layer.add_adapter_output(name, xs, sub)
        pieces.append(sub)
        order.extend(rows)
    out = cat(pieces, dim=0)
    inverse = [0] * len(order)
    for pos, row in enumerate(order):
        inverse[row] = pos
    return out[as_array(inverse, device=result.device)]
