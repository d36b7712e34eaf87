"""``LoraConfig``: the validated settings of one LoRA adapter (PEFT's ``LoraConfig``).

LoRA (Hu et al., 2021) replaces ``y = x W^T`` by ``y = x W^T + s * (dropout(x) A^T) B^T`` with
A (r, in), B (out, r) and the scaling ``s = lora_alpha / r`` (or ``lora_alpha / sqrt(r)`` with
rank-stabilised LoRA, Kalajdzievski 2023). ``rank_pattern`` / ``alpha_pattern`` override r and
alpha per module (see :func:`minipeft.peft.config.get_pattern_key`). ``use_dora`` adds DoRA's
trained magnitude (:mod:`.dora`); ``init_lora_weights="pissa"`` / ``"pissa_niter_N"`` /
``"olora"`` start A and B from the base weight, which keeps the residual (:mod:`.init`).

Field names, defaults and JSON keys mirror Hugging Face PEFT 0.21.2. Importing this module
registers LoRA in :mod:`minipeft.peft.registry` (``peft_type: "LORA"``, prefix ``lora_``,
PEFT's default targets), so ``PeftConfig.from_dict`` builds it. Like
:mod:`minipeft.peft.config`, this module is pure Python and never imports the engine.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, ClassVar

from minipeft.peft.config import PeftConfig, PeftType, get_pattern_key, is_finite, is_int
from minipeft.peft.registry import register_peft_method

__all__ = ["LoraConfig"]

# PEFT initialisations that need data, an SVD or a quantiser; named so the error can say so.
_UNSUPPORTED_INITS = ("eva", "corda", "loftq", "orthogonal", "mica", "lora_ga")
# Initialisations from the base weight (besides "pissa_niter_<N>", N >= 0 subspace iterations).
_BASE_WEIGHT_INITS = ("pissa", "olora")
# Fields that switch on a LoRA variant we do not implement: (value meaning "off", what it enables).
_UNSUPPORTED_FEATURES: dict[str, tuple[Any, str]] = {
    "lora_bias": (False, "a bias on lora_B"),
    "use_qalora": (False, "QA-LoRA"),
    "target_parameters": (None, "LoRA on bare nn.Parameters"),
    "trainable_token_indices": (None, "trainable tokens"),
    "layer_replication": (None, "layer replication"),
    "megatron_config": (None, "Megatron parallel layers"),
    "velora_config": (None, "VeLoRA"),
    "alora_invocation_tokens": (None, "activated LoRA (aLoRA)"),
    "monteclora_config": (None, "MonteCLoRA"),
    "use_bdlora": (None, "block-diagonal LoRA"),
    "arrow_config": (None, "Arrow routing"),
    "kasa_config": (None, "KaSA"),
    "ensure_weight_tying": (False, "tied adapters"),
}
# Sub-configs that only matter for an initialisation we reject: ignored with a warning, like PEFT.
_INIT_ONLY_CONFIGS = ("eva_config", "corda_config", "lora_ga_config")


@dataclass
class LoraConfig(PeftConfig):
    """LoRA settings with PEFT 0.21.2's field names and defaults (``LoraConfig().to_dict()`` has
    PEFT's exact key set). Fields for LoRA variants minipeft does not implement exist so files
    round-trip, and setting them raises a ValueError naming the feature.
    """

    PEFT_TYPE: ClassVar[PeftType | None] = PeftType.LORA

    r: int = 8
    target_modules: list[str] | str | None = None  # names (equal or ".name" suffix) or a regex
    exclude_modules: list[str] | str | None = None
    lora_alpha: float = 8
    lora_dropout: float = 0.0
    fan_in_fan_out: bool = False  # base weight stored (in, out), e.g. GPT-2's Conv1D
    bias: str = "none"  # "none" | "all" | "lora_only": which biases train and are saved
    use_rslora: bool = False  # scaling alpha / sqrt(r) instead of alpha / r
    modules_to_save: list[str] | None = None  # fully trained, saved copies (e.g. "score")
    init_lora_weights: bool | str = True  # True: B = 0; False: random A, B; "gaussian"
    layers_to_transform: list[int] | int | None = None
    layers_pattern: list[str] | str | None = None
    rank_pattern: dict[str, int] = field(default_factory=dict)
    alpha_pattern: dict[str, float] = field(default_factory=dict)
    megatron_config: dict | None = None
    megatron_core: str | None = "megatron.core"
    trainable_token_indices: list[int] | dict | None = None
    loftq_config: dict = field(default_factory=dict)
    eva_config: dict | None = None
    corda_config: dict | None = None
    lora_ga_config: dict | None = None
    use_dora: bool = False
    velora_config: dict | None = None
    alora_invocation_tokens: list[int] | None = None
    use_qalora: bool = False
    qalora_group_size: int = 16
    monteclora_config: dict | None = None
    layer_replication: list | None = None
    lora_bias: bool = False
    target_parameters: list[str] | None = None
    use_bdlora: dict | None = None
    arrow_config: dict | None = None
    kasa_config: dict | None = None
    ensure_weight_tying: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_unsupported()
        self._check_sizes()
        self.target_modules = self._names(self.target_modules, "target_modules")
        self.exclude_modules = self._names(self.exclude_modules, "exclude_modules")
        self.modules_to_save = self._module_list(self.modules_to_save, "modules_to_save")
        self._check_layers()
        self._check_patterns()

    def _check_unsupported(self) -> None:
        for name, (off, feature) in _UNSUPPORTED_FEATURES.items():
            if getattr(self, name) != off:
                note = f" (minipeft does not implement {feature})"
                raise self._bad(name, repr(off), getattr(self, name), note)
        init = self.init_lora_weights
        niter = isinstance(init, str) and init.startswith("pissa_niter_")
        if niter and not init.removeprefix("pissa_niter_").isdigit():
            raise self._bad("init_lora_weights", "'pissa_niter_<number of iterations>'", init)
        if not (isinstance(init, bool) or init in ("gaussian", *_BASE_WEIGHT_INITS) or niter):
            known = isinstance(init, str) and (
                init in _UNSUPPORTED_INITS or init.startswith("corda")
            )
            note = ", a PEFT initialisation minipeft does not implement" if known else ""
            raise self._bad("init_lora_weights", "True, False, 'gaussian', 'pissa', "
                            "'pissa_niter_<N>' or 'olora'", init, note)  # fmt: skip
        if (
            self.use_rslora
            and (self.rank_pattern or self.alpha_pattern)
            and (init in _BASE_WEIGHT_INITS or niter)
        ):
            warnings.warn(
                "LoraConfig: rsLoRA with rank_pattern/alpha_pattern and init_lora_weights="
                f"{init!r} cannot be saved with path_initial_model_for_weight_conversion "
                "(as in PEFT)",
                stacklevel=3,
            )
        if self.loftq_config:
            warnings.warn("LoraConfig: `loftq_config` is ignored (no LoftQ here)", stacklevel=3)
            self.loftq_config = {}
        for name in _INIT_ONLY_CONFIGS:
            if getattr(self, name) is not None:
                warnings.warn(f"LoraConfig: `{name}` is ignored by init={init!r}", stacklevel=3)

    def _check_sizes(self) -> None:
        if not is_int(self.r) or self.r <= 0:
            raise self._bad("r", "a positive integer", self.r)
        if not is_finite(self.lora_alpha):
            raise self._bad("lora_alpha", "a finite number", self.lora_alpha)
        if not is_finite(self.lora_dropout) or not 0.0 <= self.lora_dropout < 1.0:
            raise self._bad("lora_dropout", "a number in [0, 1)", self.lora_dropout)
        if self.bias not in ("none", "all", "lora_only"):
            raise self._bad("bias", "'none', 'all' or 'lora_only'", self.bias)
        for name in ("fan_in_fan_out", "use_rslora", "use_dora"):
            if not isinstance(getattr(self, name), bool):
                raise self._bad(name, "a bool", getattr(self, name))

    def _check_layers(self) -> None:
        layers, pattern = self.layers_to_transform, self.layers_pattern
        if layers is not None:
            items = list(layers) if isinstance(layers, (list, tuple)) else [layers]
            if not all(is_int(i) and i >= 0 for i in items):
                raise self._bad(
                    "layers_to_transform", "a layer index >= 0 or a list of them", layers
                )
            self.layers_to_transform = layers if is_int(layers) else items
        if pattern is not None:
            items = [pattern] if isinstance(pattern, str) else pattern
            if not isinstance(items, (list, tuple)) or not all(isinstance(p, str) for p in items):
                raise self._bad("layers_pattern", "a string or a list of strings", pattern)
            for p in items:
                self._regex(p, "layers_pattern")
            self.layers_pattern = pattern if isinstance(pattern, str) else list(pattern)
        # Layer filtering reads the index out of the module name, which a regex target replaces.
        if isinstance(self.target_modules, str) and (layers is not None or pattern is not None):
            raise self._bad(
                "layers_to_transform", "None when target_modules is a regex", layers,
                f" (layers_pattern={pattern!r}, target_modules={self.target_modules!r})",
            )  # fmt: skip
        if pattern and layers is None:
            raise self._bad("layers_to_transform", "layer indices when layers_pattern is set", None)

    def _check_patterns(self) -> None:
        for name, positive_int in (("rank_pattern", True), ("alpha_pattern", False)):
            pattern = getattr(self, name)
            pattern = {} if pattern is None else pattern  # older files may write null
            if not isinstance(pattern, dict):
                raise self._bad(name, "a dict of {regex: value}", pattern)
            for key, value in pattern.items():
                if not isinstance(key, str):
                    raise self._bad(name, "string keys", key)
                self._regex(key, name)
                ok = (is_int(value) and value > 0) if positive_int else is_finite(value)
                if not ok:
                    expected = "a positive integer rank" if positive_int else "a finite alpha"
                    raise self._bad(f"{name}[{key!r}]", expected, value)
            setattr(self, name, dict(pattern))

    @property
    def changes_base_weights(self) -> bool:
        """PiSSA and OLoRA leave W − s·B A in the base weights (:mod:`.init`); a subclass
        with layers of its own (AdaLoRA) initialises as they do."""
        init = self.init_lora_weights
        own = type(self).PEFT_TYPE is PeftType.LORA
        return own and isinstance(init, str) and init.startswith(("pissa", "olora"))

    def get_r(self, module_name: str) -> int:
        """Rank for ``module_name`` (relative to the base model: ``transformer.h.0.attn.c_attn``),
        applying ``rank_pattern`` via :func:`get_pattern_key`."""
        return self.rank_pattern.get(get_pattern_key(self.rank_pattern.keys(), module_name), self.r)

    def get_alpha(self, module_name: str) -> float:
        """Alpha for ``module_name``, applying ``alpha_pattern`` like :meth:`get_r`."""
        key = get_pattern_key(self.alpha_pattern.keys(), module_name)
        return self.alpha_pattern.get(key, self.lora_alpha)

    def scaling_for(self, module_name: str) -> float:
        """LoRA scale s: alpha / r, or alpha / sqrt(r) with ``use_rslora``."""
        r, alpha = self.get_r(module_name), self.get_alpha(module_name)
        return alpha / math.sqrt(r) if self.use_rslora else alpha / r


register_peft_method(
    config_class=LoraConfig,
    tuner="minipeft.peft.tuners.lora.model:LoraModel",
    prefix="lora_",
    # PEFT's TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING, for the architectures we build.
    default_targets={"gpt2": ["c_attn"], "llama": ["q_proj", "v_proj"]},
    presets={
        "lora": {},
        "rslora": {"use_rslora": True},
        "dora": {"use_dora": True},
        "pissa": {"init_lora_weights": "pissa"},
        "olora": {"init_lora_weights": "olora"},
    },
)
