"""LoRA initialisations from the base weight (PiSSA, OLoRA) and their conversion to plain LoRA.

Both put the principal part of the frozen weight W (d_out, d_in) into the adapter and leave the
residual in the base, so that at initialisation W_res + s·B A = W and the model is unchanged:

- **PiSSA** (Meng et al., 2024), ``init_lora_weights="pissa"``: with the SVD W = U Σ Vᵀ,

      A = diag(√(Σ_r / s)) V_rᵀ  (r, d_in),    B = U_r diag(√(Σ_r / s))  (d_out, r)

  (the division by s makes s·B A = U_r Σ_r V_rᵀ). ``"pissa_niter_N"`` takes U_r, Σ_r, V_r from a
  randomised SVD with N subspace iterations (Halko et al., 2009, Alg. 4.4 + 5.1, as
  ``torch.svd_lowrank``); its random matrix comes from a fixed seed, so the residual is the same
  on every run (loading an adapter re-runs the initialisation, see below).
- **OLoRA** (Büyükakyüz, 2024), ``init_lora_weights="olora"``: with the QR factorisation
  W = Q R, B = Q[:, :r] (d_out, r) and A = R[:r] (r, d_in) (no division by s).

In both, W ← W − s·B A is written through the base-weight protocol (a 4-bit base is dequantized
and requantized; PiSSA refuses one, as PEFT does). Work happens in (d_out, d_in): a GPT-2 Conv1D
weight, stored (d_in, d_out) (``fan_in_fan_out``), is transposed in and back out, which PEFT's
OLoRA does not do (its issues #2103, #2991). Like PEFT, r must not exceed min(d_in, d_out).

Because the base weights change, such an adapter only applies to the residual model. Saving
with ``path_initial_model_for_weight_conversion`` (PEFT's ``subtract_mutated_init``) expresses
what training changed relative to the *original* W as a plain LoRA adapter of rank 2r:

    ΔW = s·B A − s·B₀ A₀ = s · [B | −B₀] [A ; A₀]      A' (2r, d_in), B' (d_out, 2r)

saved with ``init_lora_weights=True``, r and α doubled (α·√2 with rsLoRA, which keeps s) and
``rank_pattern`` / ``alpha_pattern`` doubled, as PEFT does.
"""

from __future__ import annotations

import copy
import math
import warnings
from typing import Any

import numpy as np

from ....backend import xp_of
from ..contract import get_base_weight, set_base_weight

__all__ = [
    "SVD_SEED",
    "check_base_weight_init",
    "check_convertible",
    "convert_to_lora",
    "init_from_base_weight",
    "is_base_weight_init",
    "olora_factors",
    "pissa_factors",
    "svd_lowrank",
]

SVD_SEED = 0  # pissa_niter_N's random test matrix: a fixed seed makes the residual reproducible


def is_base_weight_init(init: Any) -> bool:
    """Whether ``init_lora_weights`` decomposes the base weight ("pissa", "pissa_niter_N",
    "olora")."""
    return isinstance(init, str) and (init.startswith("pissa") or init.lower() == "olora")


def check_base_weight_init(name: str, module: Any, r: int, scaling: float, init: Any) -> None:
    """Raise, before anything changes, when target ``name`` cannot take this initialisation."""
    if not is_base_weight_init(init):
        return
    where = f"init_lora_weights={init!r} on {name!r}"
    if not hasattr(module, "in_features") or hasattr(module, "num_embeddings"):
        return  # an embedding takes the default init (PEFT's behaviour)
    if r > min(module.in_features, module.out_features):
        raise ValueError(
            f"{where}: r (or rank_pattern) must be at most min(d_in, d_out) = "
            f"{min(module.in_features, module.out_features)}, found r={r}"
        )
    if init.startswith("pissa") and not scaling > 0:
        raise ValueError(f"{where}: needs a positive lora_alpha (√(Σ/s)), found scaling {scaling}")
    kind = getattr(getattr(module, "weight", None), "dtype", np.dtype("float32")).kind
    if init.startswith("pissa") and kind != "f":
        raise TypeError(
            f"{where}: PiSSA needs a float base weight, found {module.weight.dtype}; initialise "
            "under float32, float16 or float64, then quantize the residual model (as PEFT says)"
        )


# ---------------------------------------------------------------------- decompositions
def svd_lowrank(a: Any, q: int, niter: int, seed: int = SVD_SEED) -> tuple[Any, Any, Any]:
    """U (m, q), S (q,), V (n, q) with a ≈ U diag(S) Vᵀ, for a (m, n): ``torch.svd_lowrank``'s
    algorithm. A basis Q of range(a Ω) (Ω (n, q) Gaussian) refined by ``niter`` power
    iterations Q ← qr(a qr(aᵀ Q)), then the SVD of the small Qᵀ a. A wide matrix is handled
    through its transpose (so Q stays m×q with m ≥ n)."""
    xp = xp_of(a)
    wide = a.shape[0] < a.shape[1]
    if wide:
        a = a.T
    omega = xp.asarray(np.random.default_rng(seed).standard_normal((a.shape[1], q)), a.dtype)
    basis = xp.linalg.qr(a @ omega)[0]  # (m, q)
    for _ in range(niter):
        basis = xp.linalg.qr(a.T @ basis)[0]  # (n, q)
        basis = xp.linalg.qr(a @ basis)[0]  # (m, q)
    u, s, vh = xp.linalg.svd(basis.T @ a, full_matrices=False)  # (q, n) = u diag(s) vh
    u, v = basis @ u, vh.T
    return (v, s, u) if wide else (u, s, v)


def pissa_factors(w: Any, r: int, scaling: float, niter: int | None = None) -> tuple[Any, Any]:
    """PiSSA's (A (r, d_in), B (d_out, r)) for w (d_out, d_in): s·B A = U_r Σ_r V_rᵀ."""
    xp = xp_of(w)
    if niter is None:
        u, s, vh = xp.linalg.svd(w, full_matrices=False)
        u, s, vh = u[:, :r], s[:r], vh[:r]
    else:
        u, s, v = svd_lowrank(w, r, niter)
        vh = v.T
    root = xp.sqrt(s / scaling)  # (r,)
    return root[:, None] * vh, u * root[None, :]


def olora_factors(w: Any, r: int) -> tuple[Any, Any]:
    """OLoRA's (A (r, d_in), B (d_out, r)) for w (d_out, d_in): B = Q[:, :r], A = R[:r]."""
    q, rr = xp_of(w).linalg.qr(w)
    return rr[:r], q[:, :r]


def init_from_base_weight(layer: Any, name: str, init: str) -> None:
    """Fill A and B of adapter ``name`` from the base weight and store W − s·B A in the base.

    Computed in float32 (PEFT's precision), or float64 for a float64 base; the residual uses
    the A and B as stored, so W_res + s·B A reproduces W up to one rounding."""
    base = layer.base_layer
    r, s = layer.r[name], layer.scaling[name]
    check_base_weight_init(type(base).__name__, base, r, s, init)  # (the tuner checked first)
    stored = get_base_weight(base)  # base layout; dequantized for a 4-bit layer
    work = np.float64 if stored.dtype == np.float64 else np.float32
    w = stored.astype(work)
    w = w.T if layer.fan_in_fan_out else w  # (d_out, d_in)
    if init.lower() == "olora":
        a, b = olora_factors(w, r)
    elif init == "pissa":
        a, b = pissa_factors(w, r, s)
    else:
        a, b = pissa_factors(w, r, s, niter=int(init.removeprefix("pissa_niter_")))
    a_param, b_param = layer.lora_A[name].weight, layer.lora_B[name].weight
    a_param.data[...] = a.astype(a_param.dtype)
    b_param.data[...] = b.astype(b_param.dtype)
    residual = w - s * (b_param.data.astype(work) @ a_param.data.astype(work))
    residual = residual.T if layer.fan_in_fan_out else residual
    with warnings.catch_warnings():  # a 4-bit base requantizes: an initialisation, no merge
        warnings.filterwarnings("ignore", message="Merge lora module to 4-bit")
        set_base_weight(base, residual.astype(stored.dtype))


# ---------------------------------------------------------------------- conversion
def _part(key: str) -> str:
    """The adapter container a saved key belongs to (``lora_A``, ``lora_embedding_B``, ...)."""
    parts = key.split(".")
    return parts[-1] if parts[-1].startswith("lora_") else parts[-2]


def check_convertible(config: Any) -> None:
    """Raise when the adapter cannot be expressed as plain LoRA on the original base."""
    if config.use_rslora and (config.rank_pattern or config.alpha_pattern):
        raise ValueError(
            "path_initial_model_for_weight_conversion: not supported with rank_pattern or "
            "alpha_pattern together with use_rslora=True (PEFT refuses it too)"
        )
    if config.use_dora:
        raise ValueError(
            "path_initial_model_for_weight_conversion: a DoRA adapter (use_dora=True) is not a "
            "difference of low-rank products, so it cannot be converted to plain LoRA"
        )


def convert_to_lora(config: Any, tensors: dict[str, Any], initial: dict[str, Any],
                    source: str) -> tuple[Any, dict[str, Any]]:  # fmt: skip
    """(config, tensors) of a plain LoRA adapter for the original base: A' = [A; A₀],
    B' = [B, −B₀] per layer, from the trained on-disk ``tensors`` and the ``initial`` ones
    (read from ``source``); other tensors (biases, modules_to_save) pass through."""
    check_convertible(config)
    init = config.init_lora_weights
    if not (init is True or is_base_weight_init(init)):
        warnings.warn("`path_initial_model_for_weight_conversion` only works for converting a "
                      "PiSSA/OLoRA adapter to a LoRA adapter", stacklevel=3)  # fmt: skip
    out: dict[str, Any] = {}
    for key, value in tensors.items():
        part = _part(key)
        if part not in ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B"):
            out[key] = value
            continue
        start = initial.get(key)
        axis = 0 if part.endswith("A") else 1  # A (r, d_in): stack rows; B (d_out, r): columns
        if start is None or start.shape != value.shape:
            found = "nothing" if start is None else f"shape {tuple(start.shape)}"
            raise ValueError(
                f"path_initial_model_for_weight_conversion: {source!r} holds {found} for "
                f"{key!r}, expected shape {tuple(value.shape)}: save the initial adapter of "
                "this same model and config, before training"
            )
        sign = 1 if axis == 0 else -1
        out[key] = np.concatenate([value, sign * start.astype(value.dtype)], axis=axis)
    config = copy.deepcopy(config)
    config.init_lora_weights = True
    config.r *= 2
    config.lora_alpha *= math.sqrt(2) if config.use_rslora else 2  # keeps s = α/r (α/√r)
    config.rank_pattern = {k: 2 * v for k, v in config.rank_pattern.items()}
    config.alpha_pattern = {k: 2 * v for k, v in config.alpha_pattern.items()}
    return config, out
