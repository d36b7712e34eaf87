"""The PEFT method registry: one record per :class:`PeftType`, the only place methods are listed.

A method registers itself from its own ``tuners/<method>/config.py``::

    register_peft_method(
        config_class=LoraConfig,                               # reads/writes its config files
        tuner="minipeft.peft.tuners.lora.model:LoraModel",     # imported on first use
        prefix="lora_",                                        # marks its adapter parameters
        default_targets={"gpt2": ["c_attn"], "llama": ["q_proj", "v_proj"]},
        presets={"lora": {}},                                  # CLI names -> config fields
    )

``get_peft_model``, ``PeftModel.from_pretrained`` / ``save_pretrained``, the adapter files, the
CLI's ``--method NAME`` and the comparison jobs all go through :func:`method_for` /
:func:`preset`; none of them names a method. The tuner class is given as a dotted path so that
this module (and every config module) stays pure Python: configs are read without the engine.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from minipeft.peft.config import PeftConfig, PeftType

__all__ = [
    "COMBINATIONS",
    "PeftMethod",
    "QUANTIZED",
    "method_for",
    "parameter_prefixes",
    "preset",
    "preset_class",
    "preset_names",
    "register_peft_method",
    "registered_methods",
]

# Packages whose import registers a built-in method (each tuner's config module). Imported on the
# first lookup, so `PeftConfig.from_pretrained` finds every built-in config class even when only
# `minipeft.peft.config` was imported.
_BUILTIN_METHODS = (
    "minipeft.peft.tuners.lora.config",
    "minipeft.peft.tuners.adalora.config",
    "minipeft.peft.tuners.ia3.config",
    "minipeft.peft.tuners.bottleneck.files",  # its config, and AdapterHub's file layout
    "minipeft.peft.tuners.prompt_tuning.config",
    "minipeft.peft.tuners.prefix_tuning.config",
    "minipeft.peft.tuners.p_tuning.config",
)
_METHODS: dict[PeftType, PeftMethod] = {}
# Methods that are several adapters trained together, named by their parts' method names.
# MAM (He et al. 2021; AdapterHub's MAMConfig): prefix tuning + a parallel bottleneck adapter.
COMBINATIONS: dict[str, tuple[str, ...]] = {"mam": ("prefix", "par_bn")}
# Methods that train another method's adapter on a base stored in 4 bits (QLoRA, Dettmers et
# al. 2023): ``finetune`` quantizes the base (minipeft.quant) first.
QUANTIZED: dict[str, str] = {"qlora": "lora"}


@dataclass(frozen=True)
class PeftMethod:
    """What the rest of the library needs to know about one method."""

    peft_type: PeftType
    config_class: type[PeftConfig]
    tuner: str  # "package.module:ClassName" of its BaseTuner subclass
    prefix: str  # substring of every adapter parameter's name ("lora_", "ia3_", "adapters.")
    default_targets: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    presets: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    files: str = "peft"  # adapter folder layout: "peft" (adapter_model.safetensors) | "adapterhub"

    def tuner_class(self) -> type:
        module, _, name = self.tuner.partition(":")
        return getattr(importlib.import_module(module), name)

    def default_target_modules(self, model_type: str | None) -> list[str]:
        """The method's default ``target_modules`` for ``model_type`` (PEFT's mappings)."""
        if model_type not in self.default_targets:
            known = ", ".join(sorted(self.default_targets)) or "none"
            raise ValueError(
                f"no default {self.peft_type.value} target_modules for model_type {model_type!r} "
                f"(known: {known}); pass target_modules=[...] explicitly"
            )
        return list(self.default_targets[model_type])


def register_peft_method(
    *,
    config_class: type[PeftConfig],
    tuner: str,
    prefix: str,
    default_targets: Mapping[str, list[str]] | None = None,
    presets: Mapping[str, Mapping[str, Any]] | None = None,
    files: str = "peft",
) -> PeftMethod:
    """Register a method (idempotent for the same config class); returns its record."""
    peft_type = config_class.PEFT_TYPE
    if peft_type is None:
        raise ValueError(f"{config_class.__name__} must set the class attribute PEFT_TYPE")
    if files not in ("peft", "adapterhub"):
        raise ValueError(f"files: expected 'peft' or 'adapterhub', found {files!r}")
    known = _METHODS.get(peft_type)
    if known is not None and known.config_class is not config_class:
        raise ValueError(
            f"peft_type {peft_type.value} is already registered to "
            f"{known.config_class.__name__}; cannot register {config_class.__name__}"
        )
    taken = {
        name: m for m in _METHODS.values() if m.peft_type is not peft_type for name in m.presets
    }
    for name in presets or {}:
        if name in taken:
            raise ValueError(
                f"method name {name!r} is already used by {taken[name].peft_type.value}"
            )
    method = PeftMethod(
        peft_type=peft_type,
        config_class=config_class,
        tuner=tuner,
        prefix=prefix,
        default_targets={k: tuple(v) for k, v in (default_targets or {}).items()},
        presets={k: dict(v) for k, v in (presets or {}).items()},
        files=files,
    )
    _METHODS[peft_type] = method
    return method


def _load_builtins() -> None:
    for module in _BUILTIN_METHODS:
        importlib.import_module(module)  # cached after the first call; registers on first import


def registered_methods() -> list[PeftMethod]:
    """Every registered method, in PeftType value order."""
    _load_builtins()
    return sorted(_METHODS.values(), key=lambda m: m.peft_type.value)


def method_for(key: PeftConfig | PeftType | str) -> PeftMethod:
    """The record for a config (instance or class), a PeftType or its value; a clear error names
    the supported ones."""
    _load_builtins()
    if isinstance(key, PeftConfig) or (isinstance(key, type) and issubclass(key, PeftConfig)):
        key = key.PEFT_TYPE if isinstance(key, type) else key.peft_type
    value = key.value if isinstance(key, PeftType) else key
    for method in _METHODS.values():
        if method.peft_type.value == value:
            return method
    supported = ", ".join(m.peft_type.value for m in registered_methods())
    known = "a PEFT method" if value in {t.value for t in PeftType} else "an unknown peft_type"
    raise ValueError(
        f"peft_type {value!r} is {known} that minipeft does not support; supported: {supported}"
    )


def parameter_prefixes() -> tuple[str, ...]:
    """Every method's parameter marker: a parameter whose name contains one is an adapter's."""
    return tuple(m.prefix for m in registered_methods())


def preset_names() -> list[str]:
    """The method names ``minipeft finetune --method`` accepts (besides ``full``)."""
    return sorted(name for m in registered_methods() for name in m.presets)


def preset_class(name: str) -> type[PeftConfig]:
    """The config class a method name builds, without building one (some configs have required
    fields: AdaLoRA's ``total_step``)."""
    for method in registered_methods():
        if name in method.presets:
            return method.config_class
    raise ValueError(f"unknown method {name!r}; expected one of {', '.join(preset_names())}")


def preset(name: str, **fields: Any) -> PeftConfig:
    """The config a method name stands for, with ``fields`` overriding its defaults:
    ``preset("seq_bn", reduction_factor=8)`` is ``AdapterConfig(adapter_type="seq_bn", ...)``."""
    for method in registered_methods():
        if name in method.presets:
            return method.config_class(**{**method.presets[name], **fields})
    raise ValueError(f"unknown method {name!r}; expected one of {', '.join(preset_names())}")
