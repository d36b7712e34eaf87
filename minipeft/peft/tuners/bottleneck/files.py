"""Bottleneck adapter folders in AdapterHub ``adapters`` 1.3's layout, with safetensors.

    <folder>/adapter_config.json   {"config": {BnConfig fields}, "hidden_size": C,
                                    "model_class": ..., "model_name": ..., "model_type": ...,
                                    "name": <adapter>, "version": "adapters.1.3.0"}
    <folder>/adapter.safetensors   transformer.h.0.output_adapters.adapters.<adapter>.
                                   adapter_down.0.weight, ... (AdapterHub's keys)

so ``model.load_adapter(folder, use_safetensors=True)`` in AdapterHub reads what is saved here,
and the other way round. Keys differ from the in-memory ones in two places only: the site name
(our blocks' ``attn_residual`` / ``mlp_residual`` are AdapterHub's ``attention_adapters`` /
``output_adapters``) and PEFT's ``base_model.model.`` prefix. minipeft's own settings
(``task_type``, ``modules_to_save``, ``base_model_name_or_path``) go under a ``"minipeft"`` key
AdapterHub ignores; a SEQ_CLS head is saved beside the adapter under its module's name
(``score.weight``). A pickled ``pytorch_adapter.bin`` is refused. Pure Python: no engine.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import fields
from typing import Any

from minipeft.fileio import atomic_write_text
from minipeft.peft.adapter_io import CONFIG_NAME, AdapterFiles, register_file_format
from minipeft.peft.config import PeftConfig

from .config import AdapterConfig

__all__ = ["HUB_SITES", "AdapterHubFiles", "from_hub_keys", "hub_key", "to_hub_keys"]

HUB_VERSION = "adapters.1.3.0"
HUB_SITES = {"attn_residual": "attention_adapters", "mlp_residual": "output_adapters"}
PEFT_PREFIX = "base_model.model."
_OWN_FIELDS = ("task_type", "modules_to_save", "base_model_name_or_path", "revision")


def hub_key(key: str, adapter_name: str) -> str | None:
    """AdapterHub's key for one in-memory key of adapter ``adapter_name`` (None: not its):
    ``base_model.model.transformer.h.0.mlp_residual.adapters.a.adapter_up.weight`` ->
    ``transformer.h.0.output_adapters.adapters.a.adapter_up.weight``; a modules_to_save copy
    ``score.modules_to_save.a.weight`` -> ``score.weight``."""
    parts = key.removeprefix(PEFT_PREFIX).split(".")
    for i in range(len(parts) - 3):
        if parts[i] in HUB_SITES and parts[i + 1] == "adapters":
            if parts[i + 2] != adapter_name:
                return None
            return ".".join([*parts[:i], HUB_SITES[parts[i]], *parts[i + 1 :]])
    for i in range(len(parts) - 2):
        if parts[i] == "modules_to_save":
            return ".".join(parts[:i] + parts[i + 2 :]) if parts[i + 1] == adapter_name else None
    return None


def to_hub_keys(state_dict: dict[str, Any], adapter_name: str, ln_before: bool = False) -> dict:
    """Adapter ``adapter_name``'s entries of a PeftModel state dict under AdapterHub's keys.
    With ``ln_before`` the input LayerNorm (``adapter_down.0``) is also written as
    ``adapter_norm_before``, as AdapterHub's state dict has it twice."""
    out = {}
    for key, value in state_dict.items():
        disk = hub_key(key, adapter_name)
        if disk is None:
            continue
        out[disk] = value
        if ln_before and ".adapter_down.0." in disk:
            out[disk.replace(".adapter_down.0.", ".adapter_norm_before.")] = value
    if not out:
        raise ValueError(
            f"no tensors of bottleneck adapter {adapter_name!r} in the state dict; expected keys "
            f"like '...mlp_residual.adapters.{adapter_name}.adapter_up.weight'"
        )
    return out


def from_hub_keys(tensors: dict[str, Any], saved_as: str, adapter_name: str) -> dict[str, Any]:
    """AdapterHub's keys of an adapter saved as ``saved_as``, renamed for ``adapter_name`` (the
    name is part of every key), without the duplicate ``adapter_norm_before`` entries."""
    old, new = f".adapters.{saved_as}.", f".adapters.{adapter_name}."
    return {
        k.replace(old, new, 1): v for k, v in tensors.items() if ".adapter_norm_before." not in k
    }


def _adapter_type(config: dict[str, Any]) -> str:
    """AdapterHub's files record fields, not the preset; name the closest one."""
    if config.get("is_parallel"):
        return "par_bn"
    return (
        "double_seq_bn" if config.get("mh_adapter") and config.get("output_adapter") else "seq_bn"
    )


class AdapterHubFiles(AdapterFiles):
    """AdapterHub's adapter folder (bottleneck adapters)."""

    name = "adapterhub"
    weights_name = "adapter.safetensors"
    pickle_name = "pytorch_adapter.bin"
    how_to_convert = (
        "Re-save it with AdapterHub in a trusted environment: "
        "model.save_adapter(folder, name, use_safetensors=True)."
    )

    def claims(self, data: dict[str, Any]) -> bool:
        return "peft_type" not in data and isinstance(data.get("config"), dict)

    def read_config(self, data: dict[str, Any], path: str) -> PeftConfig:
        hub = dict(data["config"])
        architecture = hub.pop("architecture", None)
        if architecture is not None:
            raise ValueError(
                f"{os.path.join(path, CONFIG_NAME)}: expected an AdapterHub bottleneck adapter "
                f"(no 'architecture'), found architecture {architecture!r}, which minipeft "
                "reads only in PEFT's format"
            )
        known = {f.name for f in fields(AdapterConfig) if f.init}
        unknown = sorted(k for k in hub if k not in known or k in _OWN_FIELDS)
        if unknown:
            warnings.warn(f"{path}: ignoring AdapterHub config keys {unknown}", stacklevel=3)
        own = data.get("minipeft") or {}
        values = {k: v for k, v in hub.items() if k in known and k not in _OWN_FIELDS}
        values.update({k: own[k] for k in _OWN_FIELDS if own.get(k) is not None})
        config = AdapterConfig(adapter_type=own.get("adapter_type") or _adapter_type(hub),
                               **values)  # fmt: skip
        config.hub_model = {
            k: data.get(k)
            for k in ("hidden_size", "model_class", "model_name", "model_type", "name")  # fmt: skip
        }
        return config

    def write_config(self, folder: str, config: PeftConfig, adapter_name: str) -> None:
        model = dict(getattr(config, "hub_model", None) or {})
        own = {"adapter_type": config.adapter_type}
        own.update({k: _json(getattr(config, k)) for k in _OWN_FIELDS if getattr(config, k)})
        data = {
            "config": config.hub_fields(),
            "hidden_size": model.get("hidden_size"),
            "model_class": model.get("model_class"),
            "model_name": model.get("model_name") or "",
            "model_type": model.get("model_type"),
            "name": adapter_name,
            "version": HUB_VERSION,
            "minipeft": own,
        }
        text = json.dumps(data, indent=2, sort_keys=True)
        atomic_write_text(os.path.join(folder, CONFIG_NAME), text)


def _json(value: Any) -> Any:
    return getattr(value, "value", value)


register_file_format(AdapterHubFiles())
