"""``IA3Config``: the validated settings of one IA3 adapter (PEFT's ``IA3Config``).

IA3 (Liu et al., 2022, "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than
In-Context Learning") learns one vector per target linear layer and multiplies it in:

    attention-side target:  y = l ⊙ (x Wᵀ + b)      l (d_out,)   output scaled
    feed-forward target:    y = (l ⊙ x) Wᵀ + b      l (d_in,)    input scaled

``feedforward_modules`` says which targets are feed-forward (the paper scales the input of the
second MLP projection); it must be a subset of ``target_modules`` when both are lists. With
``feedforward_modules=None`` the architecture's default (PEFT's mapping, below) is used and
recorded in the config, like ``target_modules``.

Field names, defaults and JSON keys mirror Hugging Face PEFT 0.21.2. Importing this module
registers IA3 in :mod:`minipeft.peft.registry` (``peft_type: "IA3"``, prefix ``ia3_``, PEFT's
default targets). Pure Python: it never imports the engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from minipeft.peft.config import PeftConfig, PeftType
from minipeft.peft.registry import register_peft_method

__all__ = [
    "IA3_FEEDFORWARD_MODULES",
    "IA3_TARGET_MODULES",
    "IA3Config",
    "resolve_feedforward_modules",
]

# PEFT's TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING / ..._FEEDFORWARD_MODULES_MAPPING,
# for the architectures we build.
IA3_TARGET_MODULES: dict[str, list[str]] = {
    "gpt2": ["c_attn", "mlp.c_proj"],
    "llama": ["k_proj", "v_proj", "down_proj"],
}
IA3_FEEDFORWARD_MODULES: dict[str, list[str]] = {
    "gpt2": ["mlp.c_proj"],
    "llama": ["down_proj"],
}


@dataclass
class IA3Config(PeftConfig):
    """IA3 settings with PEFT 0.21.2's field names and defaults (``IA3Config().to_dict()`` has
    PEFT's exact key set)."""

    PEFT_TYPE: ClassVar[PeftType | None] = PeftType.IA3

    target_modules: list[str] | str | None = None  # names (equal or ".name" suffix) or a regex
    exclude_modules: list[str] | str | None = None
    feedforward_modules: list[str] | str | None = None  # targets whose *input* is scaled
    fan_in_fan_out: bool = False  # base weight stored (in, out), e.g. GPT-2's Conv1D
    modules_to_save: list[str] | None = None  # fully trained, saved copies (e.g. "score")
    init_ia3_weights: bool = True  # True: l = 1 (identity); False: l ~ N(0, 1) (for tests)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.target_modules = self._names(self.target_modules, "target_modules")
        self.exclude_modules = self._names(self.exclude_modules, "exclude_modules")
        self.feedforward_modules = self._names(self.feedforward_modules, "feedforward_modules")
        self.modules_to_save = self._module_list(self.modules_to_save, "modules_to_save")
        for name in ("fan_in_fan_out", "init_ia3_weights"):
            if not isinstance(getattr(self, name), bool):
                raise self._bad(name, "a bool", getattr(self, name))
        # PEFT's rule, checked only when both are name lists (a regex cannot be compared).
        targets, feedforward = self.target_modules, self.feedforward_modules
        if isinstance(targets, list) and isinstance(feedforward, list):
            extra = sorted(set(feedforward) - set(targets))
            if extra:
                raise self._bad(
                    "feedforward_modules", f"a subset of target_modules {targets}", feedforward,
                    f" ({extra} not in target_modules)",
                )  # fmt: skip


def resolve_feedforward_modules(config: Any, model_type: str | None) -> list[str] | str:
    """``config.feedforward_modules``, or PEFT's default for the architecture when it is None
    (PEFT raises for an architecture it has no default for; so do we)."""
    if config.feedforward_modules is not None:
        return config.feedforward_modules
    if model_type not in IA3_FEEDFORWARD_MODULES:
        known = ", ".join(sorted(IA3_FEEDFORWARD_MODULES))
        raise ValueError(
            f"IA3Config.feedforward_modules: expected a list of module names (or [] for none) "
            f"for model_type {model_type!r} (defaults exist for {known}), found None"
        )
    return list(IA3_FEEDFORWARD_MODULES[model_type])


register_peft_method(
    config_class=IA3Config,
    tuner="minipeft.peft.tuners.ia3.model:IA3Model",
    prefix="ia3_",
    default_targets=IA3_TARGET_MODULES,
    presets={"ia3": {}},
)
