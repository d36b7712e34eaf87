"""DoRA (Liu et al., 2024): weight-decomposed LoRA, exactly as Hugging Face PEFT 0.21.2 computes it.

DoRA splits the adapted weight into a magnitude and a direction. With W the frozen base weight
as (d_out, d_in), ΔW = s·B A the LoRA update and m (d_out,) a trainable magnitude,

    W' = m / ‖W + ΔW‖ ⊙ (W + ΔW)          ‖·‖: the L2 norm of each row (per output feature)

m starts at ‖W + ΔW‖ (= ‖W‖ while B = 0), so at initialisation W' = W. The norm is *detached*
(paper §4.3): it is a constant in backward, so gradients reach m, A and B only through
``mag_norm_scale = m / ‖W + ΔW‖`` and the LoRA term. Without materialising W', the layer adds
to the base output ``result = W x + b`` (PEFT's ``DoraLinearLayer.forward``):

    result + (mag_norm_scale − 1) ⊙ (result − b) + mag_norm_scale ⊙ s · B A dropout(x)

When dropout is active (training, p > 0), the base term is recomputed on the same dropout(x),
``(mag_norm_scale − 1) ⊙ W dropout(x)``, as PEFT does. ``result`` is the output accumulated so
far, so an adapter applied before this one is scaled too, as in PEFT.

On an embedding (PEFT's ``DoraEmbeddingLayer``) the table E (V, C) plays W with d_in = V and
d_out = C: the norm is taken per embedding feature over the vocabulary, and

    z = mag_norm_scale ⊙ (E[ids] + s · Aᵀ[ids] Bᵀ)          (no dropout, as in LoRA's embedding)

Merging writes W' into the base weight (the norm from the base weight *without* other merged
adapters, PEFT's ``_unmerged_base_weight``) and remembers the norm; unmerging inverts it,
W = W' / (m / ‖W + ΔW‖) − ΔW. ``fan_in_fan_out`` (GPT-2's Conv1D, W stored (d_in, d_out)) and
the table layout only change which axis the norm runs over.

Shapes: x (..., d_in), result (..., d_out), m and the norm (d_out,).
"""

from __future__ import annotations

from typing import Any

from ....backend import xp_of
from ....nn import Identity, Module, Parameter
from ....tensor import Tensor
from ..contract import get_base_weight

__all__ = [
    "DoraMagnitude",
    "embedding_output",
    "init_magnitude",
    "linear_output",
    "merge_weight",
    "unmerge_weight",
    "weight_norm",
]


class DoraMagnitude(Module):
    """Holds m (d_out,) as ``weight``, like PEFT's ``DoraLinearLayer``: the state-dict key is
    ``...lora_magnitude_vector.<adapter>.weight`` in memory (PEFT saves it without the adapter
    name and the ``.weight``)."""

    def __init__(self, magnitude: Any) -> None:
        super().__init__()
        self.weight = Parameter(Tensor._make(magnitude))

    def extra_repr(self) -> str:
        return f"features={self.weight.shape[0]}"


# ---------------------------------------------------------------------- the norm (no gradient)
def weight_norm(weight: Any, delta: Any, transposed: bool) -> Any:
    """‖W + ΔW‖ per output feature, a raw array (d_out,). ``weight`` and ``delta`` are laid out
    like the base weight: (d_out, d_in), or (d_in, d_out) when ``transposed``."""
    return xp_of(weight).linalg.norm(weight + delta, axis=0 if transposed else 1)


def _delta(layer: Any, name: str) -> Any:
    """ΔW = s · B A in the adapter's dtype, laid out like the base weight (raw array)."""
    a, b = layer.lora_factors(name)
    delta = (b.data @ a.data) * layer.scaling[name]  # (d_out, d_in)
    return delta.T if layer.weight_transposed else delta


def _current_norm(layer: Any, name: str) -> Tensor:
    """The detached ‖W + ΔW‖ (d_out,) for the forward, computed in the adapter's dtype."""
    delta = _delta(layer, name)
    weight = get_base_weight(layer.base_layer).astype(delta.dtype, copy=False)
    return Tensor._make(weight_norm(weight, delta, layer.weight_transposed))


def init_magnitude(layer: Any, name: str) -> None:
    """m ← ‖W + s·B A‖ (PEFT's ``DoraLinearLayer.update_layer``); equals ‖W‖ while B A = 0."""
    layer.lora_magnitude_vector[name] = DoraMagnitude(_current_norm(layer, name).data)


# ---------------------------------------------------------------------- forward
def _as(t: Tensor, dtype: Any) -> Tensor:
    return t if t.dtype == dtype else t.to(dtype)


def linear_output(layer: Any, name: str, x: Tensor, result: Tensor) -> Tensor:
    """``result + (k − 1) ⊙ base + k ⊙ s · B A h`` with k = m / ‖W + ΔW‖ (detached), where
    h = x and base = result − b, or, with dropout active, h = dropout(x) and base = W h."""
    a, b = layer.lora_A[name], layer.lora_B[name]
    dtype = a.weight.dtype  # a float16 base keeps float32 adapters: compute in theirs
    h = _as(x, dtype)
    scale = layer.lora_magnitude_vector[name].weight / _current_norm(layer, name)  # (d_out,)
    dropout = layer.lora_dropout[name]
    if isinstance(dropout, Identity) or not layer.training:
        bias = getattr(layer.base_layer, "bias", None)
        base = result if bias is None else result - bias  # (..., d_out), without the bias
    else:
        h = dropout(h)
        w = Tensor._make(get_base_weight(layer.base_layer).astype(dtype, copy=False))
        base = h @ (w if layer.weight_transposed else w.T)  # W h without the bias
    update = (scale - 1) * _as(base, dtype) + scale * (b(a(h)) * layer.scaling[name])
    return result + _as(update, result.dtype)


def embedding_output(layer: Any, name: str, ids: Any, result: Tensor) -> Tensor:
    """``k ⊙ (result + s · Aᵀ[ids] Bᵀ)`` with k = m / ‖E + ΔE‖ over the vocabulary (C,)."""
    a, b = layer.lora_embedding_A[name], layer.lora_embedding_B[name]
    scale = layer.lora_magnitude_vector[name].weight / _current_norm(layer, name)  # (C,)
    after_a = layer._embed(ids, a.T)  # (..., r)
    update = (after_a @ b.T) * layer.scaling[name]  # (..., C)
    return _as(scale * _as(result, a.dtype) + scale * update, result.dtype)


# ---------------------------------------------------------------------- merging
def _unmerged_base_weight(layer: Any) -> Any:
    """The base weight with the adapters merged so far taken out (PEFT's
    ``_unmerged_base_weight``): the norm of a merge must be the one the forward used."""
    weight = get_base_weight(layer.base_layer)
    for merged in reversed(layer.merged_adapters):
        weight = layer.unmerge_weight(weight, merged)
    return weight


def _factor(layer: Any, name: str, norm: Any) -> Any:
    """m / ‖W + ΔW‖ shaped to scale the base layout's output axis."""
    factor = layer.lora_magnitude_vector[name].weight.data / norm
    return factor[None, :] if layer.weight_transposed else factor[:, None]


def merge_weight(layer: Any, weight: Any, name: str) -> Any:
    """W' = m / ‖W₀ + ΔW‖ ⊙ (weight + ΔW), W₀ the unmerged base weight; remembers the norm."""
    delta = layer.get_delta_weight(name)
    norm = weight_norm(_unmerged_base_weight(layer), delta, layer.weight_transposed)
    layer.dora_merged_norm[name] = norm
    return (_factor(layer, name, norm) * (weight + delta)).astype(weight.dtype, copy=False)


def unmerge_weight(layer: Any, weight: Any, name: str) -> Any:
    """The inverse of :func:`merge_weight`: weight / (m / ‖W₀ + ΔW‖) − ΔW, with the norm of
    the merge (it cannot be recomputed from W')."""
    if name not in layer.dora_merged_norm:
        raise ValueError(f"DoRA adapter {name!r} was not merged into this layer")
    delta = layer.get_delta_weight(name)
    factor = _factor(layer, name, layer.dora_merged_norm[name])
    return (weight / factor - delta).astype(weight.dtype, copy=False)
