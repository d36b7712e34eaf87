"""How ``minipeft finetune --method NAME`` turns a method name into PEFT configs.

The registered config of the method (:mod:`minipeft.peft.registry`) from its defaults, the short
flags (:data:`SHORT_FLAGS`) and ``--set`` field overrides; a combination (``mam``) gives one
config per part, and a quantized method (``qlora``) its adapter's config, its base stored in 4
bits first (:func:`quantize_base`). No method is named here.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from ..nn import Module
from ..peft import PeftConfig, TaskType
from ..peft.registry import COMBINATIONS, QUANTIZED, method_for, preset, preset_class

__all__ = ["RUN_DEFAULTS", "SHORT_FLAGS", "build_peft_config", "build_peft_configs",
           "quantize_base"]  # fmt: skip

# Short flags and the config field each one sets, the first the method's config has.
SHORT_FLAGS: dict[str, tuple[str, ...]] = {
    "r": ("r",),
    "alpha": ("lora_alpha",),
    "dropout": ("lora_dropout", "dropout"),
    "targets": ("target_modules",),
    "reduction_factor": ("reduction_factor",),
    "non_linearity": ("non_linearity",),
}
# Config fields that, when a method's config has them and they are not given, take a setting of
# the run: AdaLoRA's schedule spans the whole run (total_step = --steps).
RUN_DEFAULTS: dict[str, str] = {"total_step": "steps"}


def quantize_base(model: Module, model_path: Any, log: Any) -> None:
    """QLoRA's base: every linear but the head in NF4 with double quantization, prepared for
    k-bit training; prints the memory report (:mod:`minipeft.jobs.quantize`)."""
    from ..quant.memory import format_report  # noqa: PLC0415
    from ..quant.model import prepare_model_for_kbit_training, quantize_model  # noqa: PLC0415
    from .quantize import _quantizable_weights, step_memory  # noqa: PLC0415

    n = _quantizable_weights(model, ("lm_head", "score"))
    prepare_model_for_kbit_training(quantize_model(model, skip=("lm_head", "score")))
    log(format_report(n, 64, step_memory(model_path)))


def build_peft_configs(method: str, settings: dict[str, Any], model: Module | None = None,
                       task_kind: str = "causal_lm") -> list[tuple[str, PeftConfig]]:  # fmt: skip
    """``[(adapter name, config)]``: one "default" adapter, or for a combination one per part
    ("default" first, then each part by its method name). A short flag or ``--set`` field goes
    to every part that has it, and must fit at least one."""
    method = QUANTIZED.get(method, method)
    if method not in COMBINATIONS:
        return [("default", build_peft_config(method, settings, model, task_kind))]
    parts = COMBINATIONS[method]
    fields_of = {part: {f.name for f in fields(preset_class(part)) if f.init} for part in parts}
    given = dict(settings.get("set") or {})
    flags = {flag: settings[flag] for flag in SHORT_FLAGS if settings.get(flag) is not None}
    for key in given:
        if not any(key in names for names in fields_of.values()):
            raise ValueError(f"--set {key}: no part of {method!r} ({', '.join(parts)}) has it")
    for flag in flags:
        if not any(c in names for c in SHORT_FLAGS[flag] for names in fields_of.values()):
            raise ValueError(f"--{flag.replace('_', '-')}: no part of {method!r} has it")
    out = []
    for i, part in enumerate(parts):
        names = fields_of[part]
        mine = {k: v for k, v in given.items() if k in names}
        own_flags = {f: v for f, v in flags.items() if any(c in names for c in SHORT_FLAGS[f])}
        part_settings = {**settings, **dict.fromkeys(SHORT_FLAGS), **own_flags, "set": mine}
        config = build_peft_config(part, part_settings, model, task_kind)
        out.append(("default" if i == 0 else part, config))
    return out


def build_peft_config(method: str, settings: dict[str, Any], model: Module | None = None,
                      task_kind: str = "causal_lm") -> PeftConfig:  # fmt: skip
    """The registered config of ``method`` from its defaults, the short flags and the
    ``set`` field overrides; a flag or field the method does not have is an error naming it.
    ``embeddings`` (with no targets given) adds the model's input embedding to the method's
    default targets."""
    cls = preset_class(method)
    names = {f.name for f in fields(cls) if f.init}
    values: dict[str, Any] = dict(settings.get("set") or {})
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"--set {unknown[0]}: {cls.__name__} has no field {unknown[0]!r}; "
                         f"its fields: {', '.join(sorted(names))}")  # fmt: skip
    for flag, candidates in SHORT_FLAGS.items():
        if settings.get(flag) is None:
            continue
        field_name = next((c for c in candidates if c in names), None)
        if field_name is None:
            flag_name = flag.replace("_", "-")
            raise ValueError(f"--{flag_name}: method {method!r} has no such setting "
                             f"({cls.__name__} has no {' or '.join(candidates)})")  # fmt: skip
        values.setdefault(field_name, settings[flag])  # --set wins over flags and defaults
    for field_name, setting in RUN_DEFAULTS.items():
        if field_name in names and values.get(field_name) is None and setting in settings:
            values[field_name] = settings[setting]
    targets = values.get("target_modules")
    if isinstance(targets, (list, tuple)) and list(targets) == ["all-linear"]:
        values["target_modules"] = "all-linear"
    if settings.get("embeddings") and "target_modules" in names and targets is None and model:
        embed = next(n for n, m in model.named_modules() if m is model.get_input_embeddings())
        defaults = method_for(cls).default_target_modules(model.config.model_type)
        values["target_modules"] = [*defaults, embed.rsplit(".", 1)[-1]]
    task = TaskType.SEQ_CLS if task_kind == "seq_cls" else TaskType.CAUSAL_LM
    return preset(method, task_type=task, **values)
