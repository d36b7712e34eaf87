"""PEFT configurations: the base ``PeftConfig`` that reads and writes ``adapter_config.json``.

A config names *which* modules get an adapter and *how big* it is; it holds no tensors. The field
names, defaults and JSON layout mirror Hugging Face PEFT 0.21.2, so a folder written here loads with
``peft.LoraConfig.from_pretrained`` and a folder written by PEFT loads here.

This module holds what every method shares: the ``PeftType`` / ``TaskType`` enums, ``PeftConfig``
(validation, JSON round trip, unknown keys kept) and PEFT's ``rank_pattern`` / target-module
helpers. Each method's config lives in ``tuners/<method>/config.py`` and registers itself in
:mod:`minipeft.peft.registry`, which maps a file's ``peft_type`` to its config class.

This module is pure Python: it never imports the engine, so configs can be read without a model.
"""

from __future__ import annotations

import enum
import json
import math
import os
import re
import warnings
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from minipeft.fileio import atomic_write_text

__all__ = [
    "CONFIG_NAME",
    "PEFT_FORMAT_VERSION",
    "PeftConfig",
    "PeftType",
    "TaskType",
    "config_class_for",
    "default_target_modules",
    "get_pattern_key",
    "is_finite",
    "is_int",
    "read_json_object",
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
    # minipeft's own: AdapterHub's bottleneck adapters, which PEFT does not have. Their files are
    # AdapterHub's, not PEFT's, so this value never appears in a PEFT adapter_config.json.
    BOTTLENECK = "BOTTLENECK"


class TaskType(str, enum.Enum):
    """The model head a PEFT model wraps (PEFT's values)."""

    SEQ_CLS = "SEQ_CLS"
    SEQ_2_SEQ_LM = "SEQ_2_SEQ_LM"
    CAUSAL_LM = "CAUSAL_LM"
    TOKEN_CLS = "TOKEN_CLS"
    QUESTION_ANS = "QUESTION_ANS"
    FEATURE_EXTRACTION = "FEATURE_EXTRACTION"


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


def read_json_object(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON file that must hold one object; a clear error otherwise."""
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: expected valid JSON, found a parse error ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def is_int(value: Any) -> bool:
    """An int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_finite(value: Any) -> bool:
    """A finite int or float that is not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _enum_value(enum_cls: type[enum.Enum], value: Any, what: str) -> enum.Enum:
    try:
        return enum_cls(value.value if isinstance(value, enum.Enum) else value)
    except ValueError:
        names = ", ".join(m.value for m in enum_cls)
        raise ValueError(f"{what}: expected one of {names}; found {value!r}") from None


def supported_peft_types() -> list[str]:
    """The ``peft_type`` values this library can build a config for."""
    from minipeft.peft.registry import registered_methods  # noqa: PLC0415 (it imports this module)

    return [m.peft_type.value for m in registered_methods()]


def config_class_for(peft_type: str | PeftType) -> type[PeftConfig]:
    """Config class registered for ``peft_type``; a clear error names the supported ones."""
    from minipeft.peft.registry import method_for  # noqa: PLC0415 (it imports this module)

    return method_for(peft_type).config_class


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

    # ---------------------------------------------------------------- validation helpers
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

    def _module_list(self, value: Any, name: str) -> list[str] | None:
        """None or a list of module names (``modules_to_save``)."""
        if value is None:
            return None
        if isinstance(value, str) or not all(isinstance(m, str) for m in value):
            raise self._bad(name, "None or a list of module names", value)
        return list(value)

    @property
    def is_prompt_learning(self) -> bool:
        """True for methods that learn virtual tokens instead of wrapping modules."""
        return False

    @property
    def changes_base_weights(self) -> bool:
        """True when injecting the adapter rewrites base weights (LoRA's PiSSA / OLoRA keep a
        residual there), so that its files apply to the original base only once converted
        (``save_pretrained(..., path_initial_model_for_weight_conversion=...)``)."""
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
        return cls.from_dict(read_json_object(path))

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


def default_target_modules(peft_type: str | PeftType, model_type: str | None) -> list[str]:
    """The registered default ``target_modules`` of a method for ``model_type`` (PEFT's
    mappings); unknown types ask for ``target_modules``."""
    from minipeft.peft.registry import method_for  # noqa: PLC0415 (it imports this module)

    return method_for(peft_type).default_target_modules(model_type)


def resolve_target_modules(config: Any, model_type: str | None = None) -> list[str] | str:
    """``config.target_modules``, or the method's default for the architecture when it is None."""
    if config.target_modules is not None:
        return config.target_modules
    if model_type is None:
        raise ValueError("target_modules is None and no model_type was given; pass target_modules")
    return default_target_modules(config.peft_type, model_type)
