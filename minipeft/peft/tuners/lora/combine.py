"""``add_weighted_adapter``: a new LoRA adapter made from trained ones (PEFT's semantics).

Given adapters i = 1..k with updates ΔW_i = s_i B_i A_i and weights w_i, the new adapter has
scaling 1 (r = α = its rank) and, per layer,

- ``linear`` (and ``ties``, ``dare_linear``, ``dare_ties``, ``magnitude_prune``): the factors are
  merged separately, A' = merge(±√|w_i s_i| A_i), B' = merge(√|w_i s_i| B_i) (the sign on A only),
  with :mod:`minipeft.peft.merge_utils`. Exact for one adapter (ΔW' = w·ΔW); for several it is
  a rough approximation (cross terms B_i A_j appear). All ranks must be equal.
- ``cat``: A' = [w_1 s_1 A_1; …; w_k s_k A_k], B' = [B_1 … B_k], so ΔW' = Σ w_i ΔW_i exactly, with
  rank Σ r_i.
- ``svd`` (and ``ties_svd``, ``dare_linear_svd``, ``dare_ties_svd``, ``magnitude_prune_svd``): the
  whole ΔW = merge(w_i, ΔW_i) is factored by SVD, B' = U_k Σ_k, A' = V_kᵀ: the best rank-k
  approximation (Eckart–Young), k = ``svd_rank`` or the largest rank; ``svd_clamp`` clamps both
  factors to the q-quantile of their entries.

Where PEFT is wrong (its issue #3761) this module is not: the new adapter never inherits
``use_rslora`` (PEFT's new adapter keeps it, so its scale becomes √r instead of 1), nor a data-
driven ``init_lora_weights`` (which would re-initialise it). For DoRA adapters (all or none
must be), the magnitude is combined like the direction, as task arithmetic on what each adapter
changed: m' = n + Σ_i w_i (m_i − n), n the row norms of the frozen weight (what an untrained DoRA
adapter has); PEFT keeps n, losing what the magnitudes learned. So one adapter with weight 1.0
gives back exactly that adapter, for plain LoRA, rsLoRA and DoRA alike.

Shapes: A_i (r_i, d_in), B_i (d_out, r_i), ΔW (d_out, d_in); an embedding's A (r, V), B (C, r).
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from ....backend import xp_of
from ... import merge_utils
from ...modules_to_save import ModulesToSaveWrapper
from ..base import get_base_weight
from .config import LoraConfig
from .dora import weight_norm

__all__ = ["COMBINATION_TYPES", "add_weighted_adapter"]

_FACTOR_TYPES = ("linear", "ties", "dare_linear", "dare_ties", "magnitude_prune")
_SVD_TYPES = ("svd", "ties_svd", "dare_linear_svd", "dare_ties_svd", "magnitude_prune_svd")
COMBINATION_TYPES = (*_FACTOR_TYPES, "cat", *_SVD_TYPES)
_NEEDS_DENSITY = ("ties", "dare_linear", "dare_ties", "magnitude_prune")


def _factors(layer: Any, name: str) -> tuple[Any, Any] | None:
    """(A, B) raw arrays of adapter ``name`` in ``layer`` ((r, d_in), (d_out, r)), or None."""
    if name in getattr(layer, "lora_A", {}):
        return layer.lora_A[name].weight.data, layer.lora_B[name].weight.data
    if name in getattr(layer, "lora_embedding_A", {}):
        return layer.lora_embedding_A[name].data, layer.lora_embedding_B[name].data
    return None


def _params(layer: Any, name: str) -> tuple[Any, Any]:
    """The (A, B) Parameters of adapter ``name`` (filled in place)."""
    if name in getattr(layer, "lora_A", {}):
        return layer.lora_A[name].weight, layer.lora_B[name].weight
    return layer.lora_embedding_A[name], layer.lora_embedding_B[name]


def _merge(
    kind: str,
    tensors: list[Any],
    weights: list[float],
    density: float | None,
    sign: str,
    rng: np.random.Generator,
) -> Any:
    base = kind.removesuffix("_svd")
    if base in ("linear", "svd"):
        return merge_utils.task_arithmetic(tensors, weights)
    if base == "magnitude_prune":
        return merge_utils.magnitude_prune(tensors, weights, density)
    if base == "ties":
        return merge_utils.ties(tensors, weights, density, sign)
    if base == "dare_linear":
        return merge_utils.dare_linear(tensors, weights, density, rng)
    return merge_utils.dare_ties(tensors, weights, density, sign, rng)


def _svd_factors(delta: Any, rank: int, clamp: float | None) -> tuple[Any, Any]:
    """Best rank-``rank`` factors of ``delta`` (d_out, d_in): B = U_k Σ_k, A = V_kᵀ (zero rows
    past the matrix's own rank); ``clamp``: both clamped to ±(q-quantile of their entries)."""
    xp = xp_of(delta)
    u, s, vh = xp.linalg.svd(delta.astype(np.float64), full_matrices=False)
    k = min(rank, s.shape[0])
    b = xp.zeros((delta.shape[0], rank), dtype=np.float64)
    a = xp.zeros((rank, delta.shape[1]), dtype=np.float64)
    b[:, :k] = u[:, :k] * s[:k]
    a[:k] = vh[:k]
    if clamp is not None:
        hi = xp.quantile(xp.concatenate([b.reshape(-1), a.reshape(-1)]), clamp)
        b, a = xp.clip(b, -hi, hi), xp.clip(a, -hi, hi)
    return a, b


def _combine_layer(
    layer: Any,
    present: list[tuple[str, float]],
    kind: str,
    rank: int,
    density: float | None,
    sign: str,
    clamp: float | None,
    rng: np.random.Generator,
) -> tuple[Any, Any]:
    """New (A, B) for one layer from its (adapter, weight) pairs."""
    xp = xp_of(_factors(layer, present[0][0])[0])
    if kind == "cat":
        a = xp.concatenate([w * layer.scaling[n] * _factors(layer, n)[0] for n, w in present])
        b = xp.concatenate([_factors(layer, n)[1] for n, _ in present], axis=1)
        return a, b
    if kind in _SVD_TYPES:
        deltas = [
            layer.scaling[n] * (_factors(layer, n)[1] @ _factors(layer, n)[0]) for n, _ in present
        ]
        merged = _merge(kind, deltas, [w for _, w in present], density, sign, rng)
        return _svd_factors(merged, rank, clamp)
    scaled = [w * layer.scaling[n] for n, w in present]
    w_a = [math.copysign(math.sqrt(abs(v)), v) for v in scaled]  # the sign on one side only
    w_b = [math.sqrt(abs(v)) for v in scaled]
    a = _merge(kind, [_factors(layer, n)[0] for n, _ in present], w_a, density, sign, rng)
    b = _merge(kind, [_factors(layer, n)[1] for n, _ in present], w_b, density, sign, rng)
    return a, b


def _row_norms(layer: Any) -> Any:
    """‖W‖ per output feature (the norm DoRA takes): an untrained DoRA adapter's magnitude."""
    weight = get_base_weight(layer.base_layer).astype(np.float64)
    return weight_norm(weight, 0.0, layer.weight_transposed)


def _check(
    tuner: Any,
    adapters: Sequence[str],
    weights: Sequence[float],
    adapter_name: str,
    kind: str,
    svd_rank: Any,
    svd_clamp: Any,
    density: Any,
    sign: str,
) -> None:
    where = "add_weighted_adapter"
    if not isinstance(adapters, (list, tuple)) or not adapters:
        raise ValueError(
            f"{where}: adapters: expected a non-empty list of names, found {adapters!r}"
        )
    for name in adapters:
        if name not in tuner.peft_config:
            raise ValueError(
                f"{where}: adapter {name!r} does not exist; available: {list(tuner.peft_config)}"
            )
        if type(tuner.peft_config[name]) is not LoraConfig:
            raise ValueError(
                f"{where}: adapter {name!r} is a "
                f"{type(tuner.peft_config[name]).__name__}; only LoRA adapters "
                "combine (AdaLoRA's masked ranks do not, as in PEFT)"
            )
    if adapter_name in tuner.peft_config:
        raise ValueError(f"{where}: adapter_name {adapter_name!r} already exists; pick another")
    ok = isinstance(weights, (list, tuple)) and len(weights) == len(adapters)
    if not ok or not all(isinstance(w, (int, float)) and math.isfinite(w) for w in weights):
        raise ValueError(
            f"{where}: weights: expected {len(adapters)} finite numbers (one per "
            f"adapter), found {weights!r}"
        )
    if kind not in COMBINATION_TYPES:
        raise ValueError(
            f"{where}: combination_type: expected one of {list(COMBINATION_TYPES)}, found {kind!r}"
        )
    if kind.removesuffix("_svd") in _NEEDS_DENSITY and (
        not isinstance(density, (int, float)) or not 0.0 <= density <= 1.0
    ):
        raise ValueError(
            f"{where}: density: expected a number in [0, 1] for {kind!r}, found {density!r}"
        )
    if svd_rank is not None and (not isinstance(svd_rank, int) or svd_rank <= 0):
        raise ValueError(f"{where}: svd_rank: expected a positive int or None, found {svd_rank!r}")
    if svd_clamp is not None and not (isinstance(svd_clamp, (int, float)) and 0 < svd_clamp <= 1):
        raise ValueError(f"{where}: svd_clamp: expected a quantile in (0, 1], found {svd_clamp!r}")
    if sign not in ("total", "frequency"):
        raise ValueError(
            f"{where}: majority_sign_method: expected 'total' or 'frequency', found {sign!r}"
        )
    doras = {bool(getattr(tuner.peft_config[n], "use_dora", False)) for n in adapters}
    if len(doras) > 1:
        raise ValueError(
            f"{where}: adapters mix DoRA and plain LoRA ({list(adapters)}); "
            "combine DoRA adapters only with DoRA adapters"
        )
    if any(layer.merged for layer in tuner.tuner_layers()):
        raise ValueError(f"{where}: unmerge the merged adapters first")
    kinds = {isinstance(tuner.peft_config[n].target_modules, str) for n in adapters}
    if len(kinds) > 1:
        raise ValueError(
            f"{where}: the adapters' target_modules mix a regex and a list; "
            "combine adapters whose target_modules are of one kind"
        )


def _plan(
    tuner: Any, adapters: Sequence[str], weights: Sequence[float], kind: str
) -> dict[str, list[tuple[str, float]]]:
    """{layer name: [(adapter, weight) it holds]}; the factor types need the same layers and
    ranks for every adapter."""
    plan: dict[str, list[tuple[str, float]]] = {}
    for name, layer in tuner.model.named_modules():
        present = [(a, w) for a, w in zip(adapters, weights) if _factors(layer, a) is not None]
        if present:
            plan[name] = present
    if kind in _FACTOR_TYPES and len(adapters) > 1:
        for name, present in plan.items():
            if len(present) != len(adapters):
                missing = sorted(set(adapters) - {a for a, _ in present})
                raise ValueError(
                    f"add_weighted_adapter: {kind!r} needs the adapters on the same "
                    f"layers, but {name!r} has no {missing}; use 'cat' or 'svd'"
                )
            ranks = {tuner.model.get_submodule(name).r[a] for a, _ in present}
            if len(ranks) > 1:
                raise ValueError(
                    f"add_weighted_adapter: {kind!r} needs equal ranks, but "
                    f"{name!r} has ranks {sorted(ranks)}; use 'cat' or 'svd'"
                )
    return plan


def _new_config(tuner: Any, adapters: Sequence[str], ranks: dict[str, int]) -> LoraConfig:
    """adapters[0]'s config with scale 1, a plain init and the union of the targets; modules
    whose rank differs from the most common one get a ``rank_pattern`` entry."""
    configs = [tuner.peft_config[a] for a in adapters]
    first = configs[0]
    if isinstance(first.target_modules, str):
        targets: Any = "|".join(f"({c.target_modules})" for c in configs)
    else:
        targets = sorted({t for c in configs for t in (c.target_modules or [])})
    to_save = sorted({m for c in configs for m in (c.modules_to_save or [])}) or None
    r = max(set(ranks.values()), key=list(ranks.values()).count)
    pattern = {re.escape(name): k for name, k in ranks.items() if k != r}
    config = copy.deepcopy(first)
    values = {
        "r": r,
        "lora_alpha": r,
        "use_rslora": False,
        "init_lora_weights": True,
        "target_modules": targets,
        "rank_pattern": pattern,
        "alpha_pattern": dict(pattern),
        "modules_to_save": to_save,
        "inference_mode": False,
    }
    for key, value in values.items():
        setattr(config, key, value)
    return config


def add_weighted_adapter(
    tuner: Any,
    adapters: Sequence[str],
    weights: Sequence[float],
    adapter_name: str,
    combination_type: str = "svd",
    svd_rank: int | None = None,
    svd_clamp: float | None = None,
    density: float | None = None,
    majority_sign_method: str = "total",
    seed: int = 0,
) -> None:
    """Add ``adapter_name`` to ``tuner`` (a LoraModel), combined from ``adapters`` with
    ``weights`` (see the module docstring); it starts inactive, like any added adapter.

    ``seed`` seeds DARE's random drops (PEFT uses torch's global generator)."""
    kind = "linear" if len(adapters) == 1 else combination_type  # PEFT: one adapter is linear
    _check(
        tuner,
        adapters,
        weights,
        adapter_name,
        combination_type,
        svd_rank,
        svd_clamp,
        density,
        majority_sign_method,
    )
    plan = _plan(tuner, adapters, weights, kind)
    rng = np.random.default_rng(seed)
    new: dict[str, tuple[Any, Any]] = {}
    for name, present in plan.items():
        layer = tuner.model.get_submodule(name)
        own = [layer.r[a] for a, _ in present]
        rank = (
            sum(own) if kind == "cat" else (svd_rank or max(own)) if kind in _SVD_TYPES else own[0]
        )
        new[name] = _combine_layer(
            layer, present, kind, rank, density, majority_sign_method, svd_clamp, rng
        )
    ranks = {name: a.shape[0] for name, (a, _) in new.items()}
    tuner.inject_adapter(_new_config(tuner, adapters, ranks), adapter_name)
    try:
        _fill(tuner, adapters, weights, adapter_name, plan, new)
    except BaseException:
        tuner.delete_adapter(adapter_name)
        raise


def _fill(
    tuner: Any,
    adapters: Sequence[str],
    weights: Sequence[float],
    adapter_name: str,
    plan: dict[str, list[tuple[str, float]]],
    new: dict[str, tuple[Any, Any]],
) -> None:
    for name, layer in tuner.model.named_modules():
        if _factors(layer, adapter_name) is None:
            continue
        a_param, b_param = _params(layer, adapter_name)
        if name not in new:  # targeted by the union but by none of the adapters here: ΔW = 0
            a_param.data[...] = 0
            b_param.data[...] = 0
            continue
        a, b = new.pop(name)
        a_param.data[...] = a.astype(a_param.dtype, copy=False)
        b_param.data[...] = b.astype(b_param.dtype, copy=False)
        magnitudes = getattr(layer, "lora_magnitude_vector", None)
        if magnitudes is not None and adapter_name in magnitudes:
            _fill_magnitude(layer, plan[name], adapter_name)
    if new:
        raise ValueError(
            f"add_weighted_adapter: the combined config does not reach "
            f"{sorted(new)} (the adapters' layers_to_transform differ)"
        )
    for module in tuner.model.modules():
        if isinstance(module, ModulesToSaveWrapper) and adapter_name in module.modules_to_save:
            owners = [a for a in adapters if a in module.modules_to_save]
            if len(owners) > 1:
                raise ValueError(
                    f"add_weighted_adapter: {owners} each train their own copy of "
                    "a module (modules_to_save), which cannot be combined"
                )
            if owners:  # the one trained copy carries over (PEFT would start a fresh one)
                clone = copy.deepcopy(module.modules_to_save[owners[0]])
                clone.requires_grad_(False)  # inactive until set_adapter, like the adapter
                module.modules_to_save[adapter_name] = clone


def _magnitude_param(layer: Any, name: str) -> Any:
    vector = layer.lora_magnitude_vector[name]
    return getattr(vector, "weight", vector)


def _fill_magnitude(layer: Any, present: list[tuple[str, float]], adapter_name: str) -> None:
    """DoRA: m' = n + Σ w_i (m_i − n), n = ‖W‖ per row (see the module docstring)."""
    target = _magnitude_param(layer, adapter_name)
    n = _row_norms(layer).reshape(target.shape)
    m = n + sum(w * (_magnitude_param(layer, a).data.astype(np.float64) - n) for a, w in present)
    target.data[...] = m.astype(target.dtype, copy=False)
