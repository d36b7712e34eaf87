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

from ..creation import as_array
from ..functional import cat
from ..tensor import Tensor

__all__ = [
    "BASE",
    "adapter_names_context",
    "check_adapter_names",
    "current_adapter_names",
    "mixed_batch_output",
    "route_rows",
]

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


def route_rows(names: Sequence[str], device: Any, run: Any) -> Tensor:
    """``run(name, rows)`` for each distinct name (``rows``: an index array of the batch rows
    it names), the outputs regathered in row order: B rows in, B rows out."""
    groups: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        groups.setdefault(name, []).append(i)
    pieces, order = [], []
    for name, rows in groups.items():
        pieces.append(run(name, as_array(rows, device=device)))
        order.extend(rows)
    inverse = [0] * len(order)
    for pos, row in enumerate(order):
        inverse[row] = pos
    return cat(pieces, dim=0)[as_array(inverse, device=device)]


def mixed_batch_output(layer: Any, x: Any, result: Tensor, names: Sequence[str]) -> Tensor:
    """Add each adapter's output to its own rows of ``result`` (the base output of ``x``).

    ``layer.holds(name)`` says whether the layer has the adapter (a row whose adapter does not
    target this layer keeps the base output there), ``layer.add_adapter_output(name, x, r)``
    adds it on a sub-batch; the rows are regathered in their original order."""
    if len(names) != result.shape[0]:
        raise ValueError(f"adapter_names has {len(names)} names for a batch of {result.shape[0]}")

    def run(name: str, rows: Any) -> Tensor:
        sub = result[rows]
        if name == BASE or not layer.holds(name):
            return sub
        return layer.add_adapter_output(name, x[rows], sub)

    if len(set(names)) == 1:  # one adapter for the whole batch: no gathering
        return run(names[0], slice(None))
    return route_rows(names, result.device, run)


def check_adapter_names(
    tuners: dict[str, Any], names: Any, batch_size: int, training: bool
) -> list[str]:
    """Validate ``adapter_names`` for a batch of ``batch_size`` rows (PEFT's rules): one known
    adapter name (or ``"__base__"``) per row, of a method whose layers route rows
    (``supports_mixed_batch``), no adapter merged, not training, and no adapter of another
    method active (it would apply to every row)."""
    if isinstance(names, str) or not isinstance(names, (list, tuple)):
        raise TypeError(f"adapter_names: expected a list of names, one per row, found {names!r}")
    names = list(names)
    if len(names) != batch_size:
        raise ValueError(
            f"adapter_names: expected {batch_size} names (the batch size), found {len(names)}"
        )
    if training:
        raise ValueError("adapter_names: mixed batches are for inference; call model.eval() first")
    owners: dict[str, Any] = {}
    for tuner in tuners.values():
        for name in getattr(tuner, "peft_config", {}):
            owners[name] = tuner
    for name in dict.fromkeys(names):
        if name == BASE:
            continue
        if name not in owners:
            raise ValueError(
                f"adapter_names: unknown adapter {name!r}; available: {[*owners, BASE]}"
            )
        if not getattr(owners[name], "supports_mixed_batch", False):
            raise ValueError(
                f"adapter_names: adapter {name!r} is a "
                f"{type(owners[name]).__name__} adapter; mixed batches route LoRA "
                "adapters only"
            )
    for tuner in tuners.values():
        routed = getattr(tuner, "supports_mixed_batch", False)
        if routed and any(getattr(layer, "merged", False) for layer in tuner.tuner_layers()):
            raise ValueError(
                "adapter_names: unmerge the merged adapters first (a merged "
                "adapter applies to every row)"
            )
        if hasattr(tuner, "_active_list"):
            active = tuner._active_list()
        else:  # a prompt-learning tuner
            active = [tuner.active_adapter] if tuner.active_config() is not None else []
        if not routed and active:
            raise ValueError(
                f"adapter_names: {type(tuner).__name__} adapters {active} are "
                "active and would apply to every row; deactivate them"
            )
    return names
