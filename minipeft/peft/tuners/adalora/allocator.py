"""``RankAllocator``: AdaLoRA's importance scores, budget schedule and triplet pruning (PEFT's).

After each optimizer step (gradients still present), for every entry θ of A, E and B:

    I(θ)  = |θ · ∇θ|                                       sensitivity (Eq. 6)
    Ī     ← β₁ Ī + (1 − β₁) I                               smoothed sensitivity (Eq. 9)
    Ū     ← β₂ Ū + (1 − β₂) |I − Ī|                         uncertainty (Eq. 10)
    s(θ)  = Ī · Ū                                           element score (Eq. 11)

and the score of triplet i of a module (Eq. 7, PEFT's means) is

    S_i = s(E_i) + mean_j s(A_ij) + mean_k s(B_ki)          A (r, d_in), E (r, 1), B (d_out, r)

The budget b(t) (total number of kept triplets) follows the cubic schedule of
:mod:`.config`; on an allocation step the k = b₀ − b(t) lowest-scoring triplets of all modules
together are pruned: the k-th smallest score τ is found (``kthvalue``) and every E_i with
S_i ≤ τ is set to 0. The result is a rank pattern ``{"<module>.lora_E.<adapter>": [S_i > τ]}``.

Everything runs on raw arrays (NumPy or CuPy) under no gradient; names follow PEFT's parameter
names relative to the base model, so the patterns equal PEFT's.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ....autograd import no_grad
from ....backend import to_numpy, xp_of
from ....nn import Module
from .layer import AdaLoraLayer

__all__ = ["RankAllocator", "budget_schedule", "pattern_key"]

FACTORS = ("lora_A", "lora_E", "lora_B")


def budget_schedule(step: int, init_bgt: int, target_bgt: int, tinit: int, tfinal: int,
                    total_step: int, delta_t: int) -> tuple[int, bool]:  # fmt: skip
    """(budget, whether to prune at this step): b₀ while step ≤ tinit; the cubic decay
    ``int((b₀ − b_T)(1 − (t − tinit)/(T − tfinal − tinit))³ + b_T)`` inside the schedule,
    pruning every ``delta_t`` steps; b_T, pruning every step, after ``total_step − tfinal``."""
    if step <= tinit:
        return init_bgt, False
    if step > total_step - tfinal:
        return target_bgt, True
    mul_coeff = 1 - (step - tinit) / (total_step - tfinal - tinit)
    budget = int((init_bgt - target_bgt) * (mul_coeff**3) + target_bgt)
    return budget, step % delta_t == 0


def pattern_key(module_name: str, adapter_name: str) -> str:
    """The rank-pattern key of a module: its ``lora_E`` parameter name (PEFT's)."""
    return f"{module_name}.lora_E.{adapter_name}"


def lookup(rank_pattern: dict[str, Any], module_name: str, adapter_name: str) -> Any:
    """The pattern entry of a module, keyed with the adapter name (in memory) or without it (as
    saved); None when absent."""
    full = pattern_key(module_name, adapter_name)
    return rank_pattern.get(full, rank_pattern.get(f"{module_name}.lora_E"))


class RankAllocator:
    """The state of one trainable AdaLoRA adapter's allocation (PEFT's ``RankAllocator``).

    ``init_bgt`` is the number of triplets when it was made (Σ ranks), ``target_bgt`` is
    ``target_r`` × the number of modules; ``ipt`` / ``exp_avg_ipt`` / ``exp_avg_unc`` map
    parameter names to I, Ī and Ū.
    """

    def __init__(self, model: Module, config: Any, adapter_name: str) -> None:
        self.config = config
        self.adapter_name = adapter_name
        self.beta1, self.beta2 = config.beta1, config.beta2
        self.reset_ipt()
        layers = list(self.layers(model))
        self.init_bgt = sum(layer.r[adapter_name] for _, layer in layers)
        self.target_bgt = config.target_r * len(layers)

    def reset_ipt(self) -> None:
        self.ipt: dict[str, Any] = {}
        self.exp_avg_ipt: dict[str, Any] = {}
        self.exp_avg_unc: dict[str, Any] = {}

    def layers(self, model: Module) -> Iterator[tuple[str, AdaLoraLayer]]:
        """(module name, layer) of every AdaLoRA layer holding the adapter, in model order."""
        for name, module in model.named_modules():
            if isinstance(module, AdaLoraLayer) and module.holds(self.adapter_name):
                yield name, module

    def budget_schedule(self, step: int) -> tuple[int, bool]:
        c = self.config
        return budget_schedule(step, self.init_bgt, self.target_bgt, c.tinit, c.tfinal,
                               c.total_step, c.deltaT)  # fmt: skip

    # ------------------------------------------------------------------ scores
    def update_ipt(self, model: Module) -> None:
        """Update I, Ī and Ū of every A, E and B entry from its value and gradient (a parameter
        without a gradient counts as ∇θ = 0)."""
        b1, b2 = self.beta1, self.beta2
        for module_name, layer in self.layers(model):
            for factor in FACTORS:
                p = getattr(layer, factor)[self.adapter_name]
                key = f"{module_name}.{factor}.{self.adapter_name}"
                xp = xp_of(p.data)
                if key not in self.ipt:
                    for store in (self.ipt, self.exp_avg_ipt, self.exp_avg_unc):
                        store[key] = xp.zeros_like(p.data)
                grad = p.grad if p.grad is not None else xp.zeros_like(p.data)
                ipt = xp.abs(p.data * grad)
                self.ipt[key] = ipt
                self.exp_avg_ipt[key] = b1 * self.exp_avg_ipt[key] + (1 - b1) * ipt
                self.exp_avg_unc[key] = b2 * self.exp_avg_unc[key] + (1 - b2) * xp.abs(
                    ipt - self.exp_avg_ipt[key]
                )

    def _element_score(self, key: str) -> Any:
        return self.exp_avg_ipt[key] * self.exp_avg_unc[key]

    def triplet_scores(self, model: Module) -> dict[str, Any]:
        """{module name: S (r,)}: s(E_i) + mean of row i of s(A) + mean of column i of s(B)."""
        out = {}
        for module_name, _ in self.layers(model):
            key = f"{module_name}.%s.{self.adapter_name}"
            s_a = self._element_score(key % "lora_A").mean(axis=1)  # (r, d_in) → (r,)
            s_b = self._element_score(key % "lora_B").mean(axis=0)  # (d_out, r) → (r,)
            s_e = self._element_score(key % "lora_E").reshape(-1)  # (r, 1) → (r,)
            out[module_name] = s_e + (s_a + s_b)  # PEFT's order of the additions
        return out

    # ------------------------------------------------------------------ pruning
    def mask_to_budget(self, model: Module, budget: int) -> dict[str, list[bool]]:
        """Prune the ``init_bgt − budget`` lowest-scoring triplets (E_i ← 0 where S_i ≤ τ, the
        k-th smallest score); return the rank pattern. With k = 0 nothing is pruned (PEFT's
        ``kthvalue`` raises there)."""
        scores = self.triplet_scores(model)
        k = self.init_bgt - budget
        threshold = -float("inf")
        if k > 0 and scores:
            every = xp_of(next(iter(scores.values()))).concatenate(list(scores.values()))
            threshold = float(xp_of(every).partition(every, k - 1)[k - 1])  # kthvalue(every, k)
        pattern = {}
        with no_grad():
            for module_name, layer in self.layers(model):
                keep = scores[module_name] > threshold  # PEFT masks S_i <= threshold
                _mask_e(layer, self.adapter_name, keep)
                pattern[pattern_key(module_name, self.adapter_name)] = to_numpy(keep).tolist()
        return pattern

    def mask_using_rank_pattern(self, model: Module, rank_pattern: dict[str, Any]) -> None:
        """E_i ← 0 for every triplet the pattern does not keep (keys with or without the
        adapter name, as in memory or as saved)."""
        with no_grad():
            for module_name, layer in self.layers(model):
                keep = lookup(rank_pattern, module_name, self.adapter_name)
                if keep is None:
                    key = pattern_key(module_name, self.adapter_name)
                    raise ValueError(f"rank_pattern has no entry for {key!r}")
                xp = xp_of(layer.lora_E[self.adapter_name].data)
                _mask_e(layer, self.adapter_name, xp.asarray(list(keep), dtype=bool))

    def update_and_allocate(
        self, model: Module, global_step: int, force_mask: bool = False
    ) -> tuple[int, dict[str, list[bool]] | None]:
        """Update the scores (before ``total_step − tfinal``), then prune to the step's budget
        when the schedule (or ``force_mask``) says so: (budget, rank pattern or None)."""
        if global_step < self.config.total_step - self.config.tfinal:
            self.update_ipt(model)
        budget, mask_ind = self.budget_schedule(global_step)
        pattern = self.mask_to_budget(model, budget) if mask_ind or force_mask else None
        return budget, pattern


def _mask_e(layer: AdaLoraLayer, adapter_name: str, keep: Any) -> None:
    e = layer.lora_E[adapter_name].data  # (r, 1)
    e[...] = xp_of(e).where(keep.reshape(-1, 1), e, 0)
