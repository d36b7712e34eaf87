"""The FLOP floor of a GPT-2 LoRA step: the matmul work it cannot avoid, and the time NumPy's BLAS
needs for exactly those GEMM shapes here and now.

Counted (a GEMM (M, K) @ (K, N), ``b`` times, is 2·b·M·K·N FLOPs), with tokens N = batch·seq,
width C, heads H, head size D = C/H, sequence T, vocab V:

* **forward**: every Linear — per layer c_attn C→3C, attn.c_proj C→C, mlp.c_fc C→4C,
  mlp.c_proj 4C→C, then lm_head C→V — as (N, in) @ (in, out); and attention's two batched
  matmuls per layer, scores Q·Kᵀ and P·V, (T, D) @ (D, T) and (T, T) @ (T, D), B·H times.
  For cpu-tiny: 8.59 + 0.54 = 9.1 GFLOP.
* **backward**: the input gradient of each of those matmuls — dX = dY·Wᵀ for every Linear (the
  same FLOPs as its forward) and, per attention matmul, both operands' gradients (twice its
  forward). No weight gradients: LoRA freezes every base weight. For cpu-tiny: 8.59 + 1.07 =
  9.7 GFLOP, so a step is ≈ 18.8 GFLOP. (The very first c_attn's input gradient is counted
  although nothing upstream needs it; the LoRA matrices' own work, r = 8, is ~1% and left out;
  elementwise work — softmax, GELU, layer norms, AdamW — is not matmul work and is left out.)

``floor = flops / rate``, where the rate is measured by timing this list of GEMMs once per
round (float32, ``np.matmul`` on random operands, batched ones as stacked 3-D arrays, the way
minipeft calls them); ``achieved fraction = floor / LoRA step time``: 1.0 would mean the step
spends all its time in BLAS at full speed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

Gemm = tuple[int, int, int, int]  # (batch count, M, K, N)


def lora_step_gemms(gpt2: dict[str, Any], batch: int, seq: int) -> dict[str, list[Gemm]]:
    """The forward and backward GEMMs of one LoRA step of a GPT-2 of shape ``gpt2``."""
    C, H, L, V = gpt2["n_embd"], gpt2["n_head"], gpt2["n_layer"], gpt2["vocab_size"]
    N, T, D, BH = batch * seq, seq, C // H, batch * H
    linears = [(C, 3 * C), (C, C), (C, 4 * C), (4 * C, C)] * L + [(C, V)]
    forward = [(1, N, k, n) for k, n in linears] + [(BH, T, D, T), (BH, T, T, D)] * L
    backward = [(1, N, n, k) for k, n in linears]  # dX = dY @ Wᵀ
    # scores S = Q Kᵀ: dQ = dS K, dK = dSᵀ Q; output O = P V: dP = dO Vᵀ, dV = Pᵀ dO
    backward += [(BH, T, T, D), (BH, T, T, D), (BH, T, D, T), (BH, T, T, D)] * L
    return {"forward": forward, "backward": backward}


def gflop(gemms: list[Gemm]) -> float:
    return sum(2 * b * m * k * n for b, m, k, n in gemms) / 1e9


def gemm_pass(gemms: list[Gemm], seed: int = 0) -> Callable[[], None]:
    """A callable that runs every GEMM of the list once (operands made once, up front)."""
    rng = np.random.default_rng(seed)
    made: dict[Gemm, tuple[np.ndarray, np.ndarray]] = {}
    for b, m, k, n in gemms:
        if (b, m, k, n) not in made:
            lead = (b,) if b > 1 else ()
            made[(b, m, k, n)] = (
                rng.standard_normal((*lead, m, k), dtype=np.float32),
                rng.standard_normal((*lead, k, n), dtype=np.float32),
            )
    operands = [made[g] for g in gemms]

    def run() -> None:
        for a, w in operands:
            np.matmul(a, w)

    return run
