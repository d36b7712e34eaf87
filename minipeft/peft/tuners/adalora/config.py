"""``AdaLoraConfig``: the validated settings of one AdaLoRA adapter (PEFT's ``AdaLoraConfig``).

AdaLoRA (Zhang et al., 2023, "Adaptive Budget Allocation for Parameter-Efficient Fine-Tuning")
writes each update in SVD form, ΔW = B diag(E) A · α / r with A (r, d_in), E (r, 1),
B (d_out, r), starts every target at rank ``init_r`` and prunes the least important singular
triplets during training until the budget averages ``target_r`` per module. The schedule has three
phases over ``total_step`` steps:

    t ≤ tinit                 warm-up: budget b₀ = init_r · n (n targets), no pruning
    tinit < t ≤ T − tfinal    b(t) = int((b₀ − b_T) (1 − (t − tinit) / (T − tfinal − tinit))³ + b_T)
                              (cubic, Eq. 8), pruning every ``deltaT`` steps
    t > T − tfinal            final fine-tuning at b_T = target_r · n, ranks fixed

(T = ``total_step``)
with importance smoothed by ``beta1`` (sensitivity) and ``beta2`` (uncertainty), and an
orthogonality penalty ``orth_reg_weight`` keeping A and B near-orthonormal (Eq. 4).
``rank_pattern`` is written by training ({"<module>.lora_E": [kept?] * init_r}) and saved, so a
loaded adapter has the pruned shapes. ``r`` is LoRA's and unused (PEFT warns when it is set).

Field names, defaults and JSON keys mirror Hugging Face PEFT 0.21.2 (a subclass of
:class:`~minipeft.peft.tuners.lora.config.LoraConfig`, as there). Importing this module registers
AdaLoRA (``peft_type: "ADALORA"``, prefix ``lora_``, PEFT's default targets). Pure Python.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import ClassVar

from minipeft.peft.config import PeftType, is_finite, is_int
from minipeft.peft.registry import register_peft_method
from minipeft.peft.tuners.lora.config import LoraConfig

__all__ = ["ADALORA_TARGET_MODULES", "AdaLoraConfig"]

# PEFT's TRANSFORMERS_MODELS_TO_ADALORA_TARGET_MODULES_MAPPING, for the architectures we build.
ADALORA_TARGET_MODULES: dict[str, list[str]] = {"gpt2": ["c_attn"], "llama": ["q_proj", "v_proj"]}


@dataclass
class AdaLoraConfig(LoraConfig):
    """AdaLoRA settings with PEFT 0.21.2's field names and defaults (``to_dict()`` has PEFT's
    exact key set). ``total_step`` has no default: the schedule needs it (the finetune job
    fills in its ``--steps``)."""

    PEFT_TYPE: ClassVar[PeftType | None] = PeftType.ADALORA

    target_r: int = 8  # average rank per module at the end
    init_r: int = 12  # rank of every module at the start
    tinit: int = 0  # warm-up steps before pruning
    tfinal: int = 0  # final steps with the ranks fixed
    deltaT: int = 1  # noqa: N815 (PEFT's name): steps between two allocations
    beta1: float = 0.85  # EMA of the sensitivity |θ ∇θ|
    beta2: float = 0.85  # EMA of its uncertainty
    orth_reg_weight: float = 0.5
    total_step: int | None = None
    rank_pattern: dict[str, list[bool]] | None = None  # written by the rank allocator

    def __post_init__(self) -> None:
        # Checked before LoraConfig's: AdaLoRA refuses these itself (PEFT raises for both).
        if self.use_dora is not False:
            raise self._bad("use_dora", "False", self.use_dora, " (AdaLoRA does not support DoRA)")
        if self.loftq_config:
            raise self._bad("loftq_config", "{}", self.loftq_config,
                            " (AdaLoRA does not support LoftQ)")  # fmt: skip
        super().__post_init__()
        if self.r != 8:  # PEFT's warning: the rank here is init_r
            warnings.warn(
                "AdaLoraConfig: `r` is not used by AdaLoRA and is ignored; set the initial rank "
                "with `init_r`",
                stacklevel=3,
            )
        self._check_schedule()

    def _check_schedule(self) -> None:
        for name in ("init_r", "target_r", "tinit", "tfinal", "deltaT"):
            value, low = getattr(self, name), 1 if name in ("init_r", "deltaT") else 0
            if not is_int(value) or value < low:
                raise self._bad(name, f"an integer >= {low}", value)
        if self.target_r > self.init_r:
            raise self._bad("target_r", f"at most init_r={self.init_r} (ranks only shrink)",
                            self.target_r)  # fmt: skip
        for name in ("beta1", "beta2"):
            value = getattr(self, name)
            if not is_finite(value) or not 0.0 <= value < 1.0:
                raise self._bad(name, "a number in [0, 1)", value)
        if not is_finite(self.orth_reg_weight) or self.orth_reg_weight < 0:
            raise self._bad("orth_reg_weight", "a number >= 0", self.orth_reg_weight)
        total = self.total_step
        if not is_int(total) or total <= 0:
            raise self._bad("total_step", "a positive integer (the number of training steps; "
                            "AdaLoRA's budget schedule needs it)", total)  # fmt: skip
        if self.tinit >= total - self.tfinal:  # PEFT's check: there must be a budgeting phase
            raise self._bad(
                "tinit", f"less than total_step - tfinal = {total} - {self.tfinal}", self.tinit,
                " (the schedule leaves no budgeting phase; lower tinit/tfinal or raise total_step)",
            )  # fmt: skip

    def _check_patterns(self) -> None:
        """LoRA's check for ``alpha_pattern``; ``rank_pattern`` is AdaLoRA's own: None or
        {parameter name: a list of bools, one per singular triplet (kept or not)}."""
        pattern, self.rank_pattern = self.rank_pattern, {}
        super()._check_patterns()
        self.rank_pattern = pattern
        if pattern is None:
            return
        if not isinstance(pattern, dict):
            raise self._bad("rank_pattern", "None or a dict {name: [bool, ...]}", pattern)
        for key, value in pattern.items():
            ok = isinstance(value, (list, tuple)) and all(isinstance(v, bool) for v in value)
            if not isinstance(key, str) or not ok:
                raise self._bad(f"rank_pattern[{key!r}]", "a list of bools", value)
        self.rank_pattern = {k: list(v) for k, v in pattern.items()}

    def scaling_for(self, module_name: str) -> float:
        """PEFT's scaling: ``lora_alpha`` itself (or ``init_r`` when α ≤ 0); the layer divides
        by its rank count in forward."""
        return self.lora_alpha if self.lora_alpha > 0 else float(self.init_r)


register_peft_method(
    config_class=AdaLoraConfig,
    tuner="minipeft.peft.tuners.adalora.model:AdaLoraModel",
    prefix="lora_",
    default_targets=ADALORA_TARGET_MODULES,
    presets={"adalora": {}},
)
