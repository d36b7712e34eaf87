"""The contracts a tuner relies on: what counts as a linear or an embedding layer, how a base
weight is read and written for merging (the base-weight protocol), and the small rules every
method shares (weight layout, adapter dtype, the safe-merge check).

The base-weight protocol: :func:`get_base_weight` / :func:`set_base_weight` give a layer's
weight as a float array in the layout the layer stores, and take a new one. A layer that keeps
its weight another way (:class:`~minipeft.quant.Linear4bit`) implements ``get_base_weight()`` /
``set_base_weight(w)`` itself, dequantizing and requantizing.
"""

from __future__ import annotations

import warnings
from typing import Any

from ...backend import xp_of
from ...nn import Linear, Module

__all__ = [
    "adapter_factory",
    "check_finite",
    "get_base_weight",
    "has_sizes_and_weight",
    "is_embedding",
    "is_linear",
    "model_type_of",
    "set_base_weight",
    "weight_layout",
]


# ---------------------------------------------------------------------- the linear contract
def has_sizes_and_weight(module: Any, *sizes: str) -> bool:
    """A Module with these integer size attributes and a ``weight``: the duck type a tuner
    wraps (linear: in/out features; embedding: num_embeddings, embedding_dim)."""
    return (
        isinstance(module, Module)
        and all(isinstance(getattr(module, s, None), int) for s in sizes)
        and getattr(module, "weight", None) is not None
    )


def is_linear(module: Any) -> bool:
    """The linear contract: anything with in/out features, a weight and forward is a linear."""
    return has_sizes_and_weight(module, "in_features", "out_features")


def is_embedding(module: Any) -> bool:
    """An embedding table: ``num_embeddings``, ``embedding_dim`` and a (V, C) ``weight``."""
    return has_sizes_and_weight(module, "num_embeddings", "embedding_dim")


def weight_layout(base_layer: Module, fan_in_fan_out: bool) -> bool:
    """Whether the base weight is stored (d_in, d_out) (HF's Conv1D), decided by the layer
    type or the weight shape, else by the flag (warning when they disagree)."""
    w_shape = tuple(base_layer.weight.shape)
    d_in, d_out = base_layer.in_features, base_layer.out_features
    declared = getattr(base_layer, "fan_in_fan_out", None)  # e.g. Linear4bit: packed codes
    if isinstance(base_layer, Linear):
        layout = False  # a Linear stores W as (d_out, d_in), even when it is square
    elif isinstance(declared, bool):
        layout = declared  # the layer says how get_base_weight lays its weight out
    elif d_in != d_out and w_shape in ((d_in, d_out), (d_out, d_in)):
        layout = w_shape == (d_in, d_out)
    else:
        layout = fan_in_fan_out  # square or packed weight: only the flag can tell
    if layout != fan_in_fan_out:  # PEFT warns and fixes the same mistake
        warnings.warn(
            f"fan_in_fan_out={fan_in_fan_out} does not match the base layer "
            f"{type(base_layer).__name__} with weight shape {w_shape}; "
            f"setting fan_in_fan_out={layout}",
            stacklevel=4,
        )
    return layout


def model_type_of(model: Module) -> str | None:
    """``config.model_type`` of a model with an HF-style config ("gpt2", "llama"), else None."""
    return getattr(getattr(model, "config", None), "model_type", None)


# ---------------------------------------------------------------------- base-weight protocol
def get_base_weight(layer: Module) -> Any:
    """The layer's weight as a float array (a raw array, not a Tensor), for merging."""
    if hasattr(layer, "get_base_weight"):
        return layer.get_base_weight()
    weight = getattr(layer, "weight", None)
    kind = getattr(getattr(weight, "dtype", None), "kind", None)
    if weight is None or kind != "f":
        found = "no weight" if weight is None else f"a {weight.dtype} weight"
        raise TypeError(
            f"cannot merge into {type(layer).__name__}: merging needs a float weight array "
            f"(or get_base_weight/set_base_weight methods), found {found}"
        )
    return weight.data


def set_base_weight(layer: Module, value: Any) -> None:
    """Store ``value`` (shaped like :func:`get_base_weight`'s array) as the layer's weight, in
    place, so a weight shared with another module (a tied lm_head) stays shared."""
    if hasattr(layer, "set_base_weight"):
        layer.set_base_weight(value)
        return
    weight = layer.weight.data
    if tuple(value.shape) != tuple(weight.shape):
        raise ValueError(
            f"set_base_weight on {type(layer).__name__}: expected shape {tuple(weight.shape)}, "
            f"found {tuple(value.shape)}"
        )
    weight[...] = value


def check_finite(weight: Any, bias: Any, adapter_names: list[str]) -> None:
    """The safe-merge check: a merged weight (and bias) with a NaN or inf means a broken
    adapter; raise before anything is written."""
    arrays = [weight] if bias is None else [weight, bias]
    if not all(bool(xp_of(a).isfinite(a).all()) for a in arrays):
        raise ValueError(
            f"NaNs or infs detected in the merged weights of adapter "
            f"{', '.join(map(repr, adapter_names))}: the adapter seems broken; nothing was merged"
        )


def adapter_factory(weight: Any) -> dict[str, Any]:
    """``device=`` / ``dtype=`` for adapter weights beside a base ``weight``: its device, its
    dtype when a float of at least 32 bits, else float32."""
    kind, size = weight.dtype.kind, weight.dtype.itemsize
    return {"device": weight.device, "dtype": weight.dtype if kind == "f" and size >= 4
            else "float32"}  # fmt: skip
