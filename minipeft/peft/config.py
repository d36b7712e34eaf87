"""PEFT configurations: validated dataclasses that read and write PEFT's ``adapter_config.json``.

A config names *which* modules get an adapter and *how big* it is; it holds no tensors. The field
names, defaults and JSON layout mirror Hugging Face PEFT 0.21.2, so a folder written here loads with
``peft.LoraConfig.from_pretrained`` and a folder written by PEFT loads here.

LoRA (Hu et al., 2021) replaces ``y = x W^T`` by ``y = x W^T + s * (dropout(x) A^T) B^T`` with
A (r, in), B (out, r) and the scaling ``s = lora_alpha / r`` (or ``lora_alpha / sqrt(r)`` with
rank-stabilised LoRA, Kalajdzievski 2023). ``rank_pattern`` / ``alpha_pattern`` override r and
alpha per module (see :func:`get_pattern_key`).

This module is pure Python: it never imports the engine, so configs can be read without a model.
"""

from __future__ import annotations

import enum
import json
import math
import os
import re
import warnings
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from minipeft.fileio import atomic_write_text

__all__ = [
    "CONFIG_NAME",
    "DEFAULT_LORA_TARGETS",
    "PEFT_FORMAT_VERSION",
    "LoraConfig",
    "PeftConfig",
    "PeftType",
    "TaskType",
    "config_class_for",
    "default_target_modules",
    "get_pattern_key",
    "register_config",
    "resolve_target_modules",
    "supported_peft_types",
]

CONFIG_NAME = "adapter_config.json"
# Written to `peft_version`: the PEFT release whose file format we mirror, tagged as ours (PEP 440).
PEFT_FORMAT_VERSION = "0.21.2+minipeft"


class PeftType(str, enum.Enum):
    """Every method name PEFT 0.21.2 knows, so any ``adapter_config.json`` parses."""

    PROMPT_TUNING = "PROMPT_TUNING"
    MULTITASK_PROMPT_TUNING = "MULTITASK_PROMPT_TUNING"
    P_TUNING = "P_TUNING"
    PREFIX_TUNING = "PREFIX_TUNING"
    LORA = "LORA"
    ADALORA = "ADALORA"
    ADAMSS = "ADAMSS"
    BOFT = "BOFT"
    ADAPTION_PROMPT = "ADAPTION_PROMPT"
    IA3 = "IA3"
    BEFT = "BEFT"
    LILY = "LILY"
    LOHA = "LOHA"
    LOKR = "LOKR"
    OFT = "OFT"
    POLY = "POLY"
    LN_TUNING = "LN_TUNING"
    VERA = "VERA"
    FROD = "FROD"
    PVERA = "PVERA"
    FOURIERFT = "FOURIERFT"
    GLORA = "GLORA"
    XLORA = "XLORA"
    HRA = "HRA"
    VBLORA = "VBLORA"
    UNILORA = "UNILORA"
    CPT = "CPT"
    MISS = "MISS"
    RANDLORA = "RANDLORA"
    ROAD = "ROAD"
    TRAINABLE_TOKENS = "TRAINABLE_TOKENS"
    HIRA = "HIRA"
    SHIRA = "SHIRA"
    C3A = "C3A"
    WAVEFT = "WAVEFT"
    OSF = "OSF"
    DELORA = "DELORA"
    GRALORA = "GRALORA"
    CARTRIDGE = "CARTRIDGE"
    TINYLORA = "TINYLORA"
    PSOFT = "PSOFT"
    PEANUT = "PEANUT"
    SHADOW = "SHADOW"
    SUPERTUNING = "SUPERTUNING"
    DEFT = "DEFT"


class TaskType(str, enum.Enum):
    """The model head a PEFT model wraps (PEFT's values)."""

    SEQ_CLS = "SEQ_CLS"
    SEQ_2_SEQ_LM = "SEQ_2_SEQ_LM"
    CAUSAL_LM = "CAUSAL_LM"
    TOKEN_CLS = "TOKEN_CLS"
    QUESTION_ANS = "QUESTION_ANS"
    FEATURE_EXTRACTION = "FEATURE_EXTRACTION"


# PEFT's TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING, for the architectures we build.
DEFAULT_LORA_TARGETS: dict[str, list[str]] = {"gpt2": ["c_attn"], "llama": ["q_proj", "v_proj"]}

_CONFIG_REGISTRY: dict[PeftType, type[PeftConfig]] = {}


def _plain(value: Any) -> Any:
    """JSON-ready copy: enums -> their value, sets -> sorted lists, tuples -> lists."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (set, frozenset)):
        return sorted(_plain(v) for v in value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _enum_value(enum_cls: type[enum.Enum], value: Any, what: str) -> enum.Enum:
    try:
        return enum_cls(value.value if isinstance(value, enum.Enum) else value)
    except ValueError:
        names = ", ".join(m.value for m in enum_cls)
        raise ValueError(f"{what}: expected one of {names}; found {value!r}") from None


def register_config(cls: type[PeftConfig]) -> type[PeftConfig]:
    """Class decorator: make ``PeftConfig.from_dict`` build ``cls`` for ``cls.PEFT_TYPE``."""
    if cls.PEFT_TYPE is None:
        raise ValueError(f"{cls.__name__} must set the class attribute PEFT_TYPE to be registered")
    known = _CONFIG_REGISTRY.get(cls.PEFT_TYPE)
    if known is not None and known is not cls:
        raise ValueError(
            f"peft_type {cls.PEFT_TYPE.value} is already registered to {known.__name__}; "
            f"cannot register {cls.__name__}"
        )
    _CONFIG_REGISTRY[cls.PEFT_TYPE] = cls
    return cls


def supported_peft_types() -> list[str]:
    """The ``peft_type`` values this library can build a config for."""
    return sorted(t.value for t in _CONFIG_REGISTRY)


def config_class_for(peft_type: str | PeftType) -> type[PeftConfig]:
    """Config class registered for ``peft_type``; a clear error names the supported ones."""
    key = peft_type.value if isinstance(peft_type, PeftType) else peft_type
    for t, cls in _CONFIG_REGISTRY.items():
        if t.value == key:
            return cls
    known = "a PEFT method" if key in {t.value for t in PeftType} else "an unknown peft_type"
    raise ValueError(
        f"peft_type {key!r} is {known} that minipeft does not support; "
        f"supported: {', '.join(supported_peft_types())}"
    )


@dataclass
class PeftConfig:
    """Fields every PEFT config carries (PEFT's ``PeftConfigMixin`` + ``PeftConfig``)."""

    PEFT_TYPE: ClassVar[PeftType | None] = None  # set by each method's subclass

    task_type: str | TaskType | None = None
    peft_type: str | PeftType | None = None
    auto_mapping: dict | None = None
    peft_version: str | None = None
    base_model_name_or_path: str | None = None
    revision: str | None = None
    inference_mode: bool = False

    def __post_init__(self) -> None:
        self._extra_fields: dict[str, Any] = {}  # keys from newer PEFT versions, kept for saving
        name = type(self).__name__
        expected = type(self).PEFT_TYPE
        if self.peft_type is None:
            self.peft_type = expected
        if self.peft_type is not None:
            self.peft_type = _enum_value(PeftType, self.peft_type, f"{name}.peft_type")
            if expected is not None and self.peft_type is not expected:
                raise ValueError(
                    f"{name}.peft_type: expected {expected.value!r}, found {self.peft_type.value!r}"
                )
        if self.task_type is not None:
            self.task_type = _enum_value(TaskType, self.task_type, f"{name}.task_type")
        if self.peft_version is None:
            self.peft_version = PEFT_FORMAT_VERSION
        for attr in ("peft_version", "base_model_name_or_path", "revision"):
            value = getattr(self, attr)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"{name}.{attr}: expected a string or None, found {value!r}")
        if not isinstance(self.inference_mode, bool):
            raise ValueError(
                f"{name}.inference_mode: expected a bool, found {self.inference_mode!r}"
            )
        if self.auto_mapping is not None and not isinstance(self.auto_mapping, dict):
            raise ValueError(
                f"{name}.auto_mapping: expected a dict or None, found {self.auto_mapping!r}"
            )

    @property
    def is_prompt_learning(self) -> bool:
        """True for methods that learn virtual tokens instead of wrapping modules."""
        return False

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-ready dict with exactly the keys PEFT writes (plus kept unknown keys)."""
        out = {f.name: _plain(getattr(self, f.name)) for f in fields(self)}
        for key, value in self._extra_fields.items():
            out.setdefault(key, value)
        return out

    def to_json_string(self) -> str:
        """The ``adapter_config.json`` text: sorted keys, indent 2, like PEFT."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def save_pretrained(self, save_directory: str | os.PathLike) -> str:
        """Write ``<save_directory>/adapter_config.json`` atomically; return its path."""
        save_directory = os.fspath(save_directory)
        if os.path.isfile(save_directory):
            raise ValueError(
                f"save_pretrained: expected a folder, found the file {save_directory!r}"
            )
        os.makedirs(save_directory, exist_ok=True)
        path = os.path.join(save_directory, CONFIG_NAME)
        atomic_write_text(path, self.to_json_string())
        return path

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PeftConfig:
        """Build the config class named by ``data['peft_type']`` (or ``cls`` when it is absent).

        Keys this version does not know (written by a newer PEFT) are kept on the object and written
        back by :meth:`to_dict`, with a warning, instead of crashing.
        """
        if not isinstance(data, dict):
            raise ValueError(
                f"{cls.__name__}.from_dict: expected a dict, found {type(data).__name__}"
            )
        data = dict(data)
        if "runtime_config" in data:  # PEFT drops it the same way: runtime-only settings
            warnings.warn(
                "ignoring the `runtime_config` key: it is only valid at runtime", stacklevel=2
            )
            del data["runtime_config"]
        peft_type = data.get("peft_type")
        if peft_type is None:
            if cls.PEFT_TYPE is None:
                raise ValueError(
                    "config has no 'peft_type' key; expected one of "
                    f"{', '.join(supported_peft_types())}"
                )
            target = cls
        else:
            target = config_class_for(peft_type)
            if not issubclass(target, cls):
                raise ValueError(
                    f"{cls.__name__}.from_dict: expected peft_type "
                    f"{cls.PEFT_TYPE.value if cls.PEFT_TYPE else '?'!r}, found {str(peft_type)!r}"
                )
        known = {f.name for f in fields(target) if f.init}
        unknown = {k: data.pop(k) for k in sorted(data) if k not in known}
        if unknown:
            warnings.warn(
                f"{target.__name__}: keeping unknown keys {sorted(unknown)} unused; they were "
                "probably written by a newer PEFT version and have no effect here",
                stacklevel=2,
            )
        config = target(**data)
        config._extra_fields = unknown
        return config

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> PeftConfig:
        """Read one ``adapter_config.json`` (returns the config, not the raw dict as PEFT does)."""
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"adapter config not found: expected a file at {path!r}")
        with open(path, encoding="utf-8") as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as exc:
                raise ValueError(
                    f"{path}: expected valid JSON, found a parse error ({exc})"
                ) from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object, found {type(data).__name__}")
        return cls.from_dict(data)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, subfolder: str | None = None) -> PeftConfig:
        """Load ``<folder>[/<subfolder>]/adapter_config.json`` (local folders only)."""
        path = os.fspath(folder) if subfolder is None else os.path.join(folder, subfolder)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"adapter folder not found: expected a folder at {path!r}")
        return cls.from_json_file(os.path.join(path, CONFIG_NAME))


def get_pattern_key(pattern_keys: Any, key_to_match: str) -> str:
    """PEFT's rule for ``rank_pattern`` / ``alpha_pattern``: the first key (in dict order) that,
    read as a regex, matches the *end* of ``key_to_match`` at a ``.`` boundary, i.e.
    ``re.match(rf"(.*\\.)?({key})$", key_to_match)``. Without a match, ``key_to_match`` itself is
    returned (so an exact literal key still hits ``pattern.get(name)``).
    """
    for key in pattern_keys:
        if re.match(rf"(.*\.)?({key})$", key_to_match):
            return key
    return key_to_match


def default_target_modules(model_type: str) -> list[str]:
    """PEFT's default LoRA targets for ``model_type``; unknown types ask for ``target_modules``."""
    if model_type not in DEFAULT_LORA_TARGETS:
        raise ValueError(
            f"no default LoRA target_modules for model_type {model_type!r} (known: "
            f"{', '.join(sorted(DEFAULT_LORA_TARGETS))}); pass target_modules=[...] explicitly"
        )
    return list(DEFAULT_LORA_TARGETS[model_type])


def resolve_target_modules(config: Any, model_type: str | None = None) -> list[str] | str:
    """``config.target_modules``, or the architecture default when it is None."""
    if config.target_modules is not None:
        return config.target_modules
    if model_type is None:
        raise ValueError("target_modules is None and no model_type was given; pass target_modules")
    return default_target_modules(model_type)


# PEFT initialisations that need data, an SVD or a quantiser; named so the error can say so.
_UNSUPPORTED_INITS = ("eva", "olora", "pissa", "corda", "loftq", "orthogonal", "mica", "lora_ga")
# Fields that switch on a LoRA variant we do not implement: (value meaning "off", what it enables).
_UNSUPPORTED_FEATURES: dict[str, tuple[Any, str]] = {
    "use_dora": (False, "DoRA"),
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


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@register_config
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
        to_save = self.modules_to_save
        if to_save is not None:
            if isinstance(to_save, str) or not all(isinstance(m, str) for m in to_save):
                raise self._bad("modules_to_save", "None or a list of module names", to_save)
            self.modules_to_save = list(to_save)
        self._check_layers()
        self._check_patterns()

    def _bad(self, name: str, expected: str, found: Any, note: str = "") -> ValueError:
        """The one error shape: ``<Class>.<field>: expected ..., found ...``."""
        return ValueError(
            f"{type(self).__name__}.{name}: expected {expected}, found {found!r}{note}"
        )

    def _regex(self, pattern: str, name: str) -> None:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise self._bad(name, "a valid regular expression", pattern, f" ({exc})") from None

    def _names(self, value: Any, name: str) -> list[str] | str | None:
        """None | regex str | collection of module names -> None | str | sorted unique list."""
        if isinstance(value, str):
            self._regex(value, name)
            return value
        if value is None:
            return None
        if isinstance(value, (list, tuple, set, frozenset)) and all(
            isinstance(v, str) for v in value
        ):
            return sorted(set(value))
        raise self._bad(name, "None, a regex string or a list of module names", value)

    def _check_unsupported(self) -> None:
        for name, (off, feature) in _UNSUPPORTED_FEATURES.items():
            if getattr(self, name) != off:
                note = f" (minipeft does not implement {feature})"
                raise self._bad(name, repr(off), getattr(self, name), note)
        init = self.init_lora_weights
        if not isinstance(init, bool) and init != "gaussian":
            known = isinstance(init, str) and (
                init in _UNSUPPORTED_INITS or init.startswith(("pissa_niter_", "corda"))
            )
            note = ", a PEFT initialisation minipeft does not implement" if known else ""
            raise self._bad("init_lora_weights", "True, False or 'gaussian'", init, note)
        if self.loftq_config:
            warnings.warn("LoraConfig: `loftq_config` is ignored (no LoftQ here)", stacklevel=3)
            self.loftq_config = {}
        for name in _INIT_ONLY_CONFIGS:
            if getattr(self, name) is not None:
                warnings.warn(f"LoraConfig: `{name}` is ignored by init={init!r}", stacklevel=3)

    def _check_sizes(self) -> None:
        if not _is_int(self.r) or self.r <= 0:
            raise self._bad("r", "a positive integer", self.r)
        if not _is_finite(self.lora_alpha):
            raise self._bad("lora_alpha", "a finite number", self.lora_alpha)
        if not _is_finite(self.lora_dropout) or not 0.0 <= self.lora_dropout < 1.0:
            raise self._bad("lora_dropout", "a number in [0, 1)", self.lora_dropout)
        if self.bias not in ("none", "all", "lora_only"):
            raise self._bad("bias", "'none', 'all' or 'lora_only'", self.bias)
        for name in ("fan_in_fan_out", "use_rslora"):
            if not isinstance(getattr(self, name), bool):
                raise self._bad(name, "a bool", getattr(self, name))

    def _check_layers(self) -> None:
        layers, pattern = self.layers_to_transform, self.layers_pattern
        if layers is not None:
            items = list(layers) if isinstance(layers, (list, tuple)) else [layers]
            if not all(_is_int(i) and i >= 0 for i in items):
                raise self._bad(
                    "layers_to_transform", "a layer index >= 0 or a list of them", layers
                )
            self.layers_to_transform = layers if _is_int(layers) else items
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
                ok = (_is_int(value) and value > 0) if positive_int else _is_finite(value)
                if not ok:
                    expected = "a positive integer rank" if positive_int else "a finite alpha"
                    raise self._bad(f"{name}[{key!r}]", expected, value)
            setattr(self, name, dict(pattern))

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
