"""``LoraModel``: finds the target layers of a model and wraps them in :class:`LoraLayer`
(linear layers) or :class:`LoraEmbedding` (embedding tables).

This is PEFT's tuner (``peft.tuners.lora.LoraModel``): it holds the user's model as
``self.model`` — so parameter names gain the ``base_model.model.`` prefix PEFT uses — and does all
module surgery through ``get_submodule`` / ``set_submodule``. After injection only adapter
parameters (``lora_`` in the name), ``modules_to_save`` copies and, per ``bias``, some biases
require grad: freezing is a name filter.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

from ..nn import Module
from .config import PeftConfig, resolve_target_modules
from .lora import LoraLayer, is_linear
from .lora_config import LoraConfig
from .lora_embedding import LoraEmbedding, is_embedding
from .matching import find_targets, is_module_to_save
from .modules_to_save import ModulesToSaveWrapper

__all__ = ["LoraModel", "model_type_of"]

ADAPTER_PREFIX = "lora_"


def model_type_of(model: Module) -> str | None:
    """``config.model_type`` of a model with an HF-style config ("gpt2", "llama"), else None."""
    config = getattr(model, "config", None)
    return getattr(config, "model_type", None)


class LoraModel(Module):
    """The model with LoRA layers injected; ``peft_config`` maps adapter names to configs."""

    prefix = ADAPTER_PREFIX

    def __init__(self, model: Module, config: LoraConfig, adapter_name: str = "default") -> None:
        super().__init__()
        self.model = model
        self.peft_config: dict[str, PeftConfig] = {}
        self.active_adapter = adapter_name
        self.inject_adapter(config, adapter_name)

    # ------------------------------------------------------------------ injection
    def inject_adapter(self, config: LoraConfig, adapter_name: str) -> None:
        """Wrap every target of ``config`` (or add the adapter to an existing LoRA layer).

        Nothing is changed unless every step can succeed: targets are resolved first, and a
        target that is neither a linear nor an embedding layer raises before any wrapping.
        Embeddings are wrapped in :class:`LoraEmbedding`, every other target in
        :class:`LoraLayer`.
        """
        if not isinstance(config, LoraConfig):
            raise TypeError(f"expected a LoraConfig, found {type(config).__name__}")
        if adapter_name in self.peft_config:
            raise ValueError(f"adapter {adapter_name!r} already exists; pick another name")
        model_type = model_type_of(self.model)
        modules = dict(self.model.named_modules())
        names = [n for n in modules if n and not _inside_adapter(n)]
        # A LoraLayer is itself linear (in/out features, and a weight through its base layer);
        # embeddings are never "all-linear" targets (PEFT excludes them too).
        linear_names = {
            n
            for n in names
            if not isinstance(modules[n], LoraEmbedding)
            and (isinstance(modules[n], LoraLayer) or is_linear(modules[n]))
        }
        targets = find_targets(names, config, model_type=model_type, linear_names=linear_names)
        for name in targets:
            module = modules[name]
            if not (isinstance(module, LoraLayer) or is_linear(module) or is_embedding(module)):
                raise TypeError(
                    f"target module {name!r} is a {type(module).__name__}; LoRA supports linear "
                    "layers (in_features, out_features, weight) and embedding layers "
                    "(num_embeddings, embedding_dim, weight) only"
                )
        to_save = self._modules_to_save_names(list(config.modules_to_save or []))
        for name in targets:
            module = modules[name]
            if not isinstance(module, LoraLayer):
                layer = LoraEmbedding if is_embedding(module) else LoraLayer
                wrapped = module
                module = layer(module, fan_in_fan_out=config.fan_in_fan_out)
                if isinstance(module, LoraEmbedding):
                    module.tied_to = _tied_output(self.model, wrapped)
                self.model.set_submodule(name, module)
            module.update_layer(
                adapter_name,
                r=config.get_r(name),
                lora_alpha=config.get_alpha(name),
                lora_dropout=config.lora_dropout,
                init_lora_weights=config.init_lora_weights,
                use_rslora=config.use_rslora,
            )
        for name in to_save:
            module = self.model.get_submodule(name)
            if isinstance(module, ModulesToSaveWrapper):
                module.update(adapter_name)
            else:
                self.model.set_submodule(name, ModulesToSaveWrapper(module, adapter_name))
        if config.target_modules is None:  # like PEFT, record (and save) the default it used
            config.target_modules = resolve_target_modules(config, model_type)
        self.peft_config[adapter_name] = config
        self.targeted_module_names = targets
        self._mark_only_adapters_as_trainable(config)
        if self.active_adapter != adapter_name:  # a new adapter starts inactive, like PEFT
            self.set_adapter(self.active_adapter)

    def _modules_to_save_names(self, to_save: list[str]) -> list[str]:
        """Names of the modules to train whole; raises (before any wrapping) when none match."""
        if not to_save:
            return []
        names = [
            name
            for name, _ in self.model.named_modules()
            if name and not _inside_adapter(name) and is_module_to_save(name, to_save)
        ]
        if not names:
            raise ValueError(f"modules_to_save {to_save} matched no module of the model")
        return names

    def _mark_only_adapters_as_trainable(self, config: LoraConfig) -> None:
        for name, p in self.model.named_parameters():
            if self.prefix not in name and ".modules_to_save." not in name:
                p.requires_grad_(False)
        if config.bias == "all":
            for name, p in self.model.named_parameters():
                if name.endswith("bias") and ".original_module." not in name:
                    p.requires_grad_(True)
        elif config.bias == "lora_only":
            for module in self.lora_layers():
                bias = getattr(module.base_layer, "bias", None)
                if bias is not None:
                    bias.requires_grad_(True)

    # ------------------------------------------------------------------ adapters
    def lora_layers(self) -> Iterator[LoraLayer]:
        for module in self.model.modules():
            if isinstance(module, LoraLayer):
                yield module

    def _wrappers(self) -> Iterator[Module]:
        for module in self.model.modules():
            if isinstance(module, (LoraLayer, ModulesToSaveWrapper)):
                yield module

    def set_adapter(self, adapter_name: str) -> None:
        """Make ``adapter_name`` the active (and only trainable) adapter."""
        if adapter_name not in self.peft_config:
            raise ValueError(
                f"adapter {adapter_name!r} not found; available: {sorted(self.peft_config)}"
            )
        switching = adapter_name != self.active_adapter
        if switching and any(layer.merged for layer in self.lora_layers()):  # nothing half-done
            raise ValueError("unmerge the merged adapters before switching the active one")
        for module in self._wrappers():
            module.set_adapter(adapter_name)
        self.active_adapter = adapter_name

    def delete_adapter(self, adapter_name: str) -> None:
        if adapter_name not in self.peft_config:
            raise ValueError(
                f"adapter {adapter_name!r} not found; available: {sorted(self.peft_config)}"
            )
        if adapter_name == self.active_adapter:
            raise ValueError(
                f"adapter {adapter_name!r} is the active adapter; set_adapter() another one "
                "before deleting it"
            )
        merged = [m for m in self.lora_layers() if adapter_name in m.merged_adapters]
        if merged:
            raise ValueError(
                f"adapter {adapter_name!r} is merged into the base weights; unmerge_adapter() "
                "before deleting it"
            )
        for module in self._wrappers():
            module.delete_adapter(adapter_name)
        del self.peft_config[adapter_name]

    def set_adapters_enabled(self, enabled: bool) -> None:
        for module in self._wrappers():
            module.disable_adapters = not enabled

    # ------------------------------------------------------------------ merging
    def merge_adapter(self, safe_merge: bool = False) -> None:
        layers = list(self.lora_layers())
        for layer in layers:  # e.g. an embedding tied to lm_head: refused before any change
            layer.check_merge_allowed()
        if safe_merge:  # check every layer before touching any: nothing half-applied
            for layer in layers:
                for name in layer.active_adapters:
                    if name not in layer.merged_adapters:
                        delta = layer.get_delta_weight(name)
                        merged = layer.base_layer.weight.data + delta
                        if not bool((merged == merged).all() and abs(merged).max() < float("inf")):
                            raise ValueError(
                                f"NaNs or infs detected in the merged weights of adapter "
                                f"{name!r}: the adapter seems broken; nothing was merged"
                            )
        for layer in layers:
            layer.merge(safe_merge=safe_merge)

    def unmerge_adapter(self) -> None:
        """Undo every merge; with nothing merged, warn once (as PEFT does) and do nothing."""
        merged = [layer for layer in self.lora_layers() if layer.merged]
        if not merged:
            warnings.warn("Already unmerged. Nothing to do.", stacklevel=3)
        for layer in merged:
            layer.unmerge()

    def _unload(self, merge: bool, safe_merge: bool = False) -> Module:
        if merge:
            self.merge_adapter(safe_merge=safe_merge)
        for name, module in list(self.model.named_modules()):
            if isinstance(module, LoraLayer):
                self.model.set_submodule(name, module.base_layer)
            elif isinstance(module, ModulesToSaveWrapper):
                self.model.set_submodule(name, module.active_module if merge else
                                         module.original_module)  # fmt: skip
        return self.model

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)


def _tied_output(model: Module, embedding: Module) -> str | None:
    """Name of the module whose weight *is* this embedding's table (a tied lm_head), if any."""
    for name, module in model.named_modules():
        if module is not embedding and getattr(module, "weight", None) is embedding.weight:
            if not hasattr(module, "num_embeddings"):
                return name
    return None


def _inside_adapter(name: str) -> bool:
    """Names inside a wrapper's adapter containers are never targets themselves."""
    parts = name.split(".")
    return any(p.startswith(ADAPTER_PREFIX) for p in parts) or "modules_to_save" in parts or (
        "original_module" in parts) or "base_layer" in parts  # fmt: skip
