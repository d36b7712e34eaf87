"""``BottleneckModel``: places bottleneck adapters at the residual adds of every block.

Targets are not PEFT's ``target_modules``: they are the blocks' ``attn_residual`` (when
``mh_adapter``) and ``mlp_residual`` (when ``output_adapter``) sites, minus the layers in
``leave_out``, exactly where AdapterHub puts its ``attention_adapters`` / ``output_adapters``.
Each inserted adapter has 2·C·m + C + m parameters (m = C // reduction_factor), plus 2·C for
``ln_before`` / ``ln_after``, C + 1 for a gate and 1 or C for a learned scaling.

Several named adapters can sit at one site; ``set_adapter("a")`` swaps tasks and
``set_adapter(Stack("a", "b"))`` (or a list) runs them in sequence, as AdapterHub's ``Stack``.
Bottleneck adapters add a module on the forward path, so they cannot be merged into the base
weights: that is their latency cost (``benchmarks/latency.py``). Files are AdapterHub's
(:mod:`minipeft.peft.tuners.bottleneck.files`).
"""

from __future__ import annotations

import copy
from typing import Any

from ....nn import Module
from ...adapter_io import check_adapter_keys
from ...matching import layer_index
from ..base import BaseTuner, adapter_factory, model_type_of
from .config import AdapterConfig
from .files import from_hub_keys, hub_key, to_hub_keys
from .layer import BottleneckLayer, is_residual

__all__ = ["BottleneckModel", "Stack", "hidden_size_of"]

# Where a block joins its sub-blocks to the stream (models/: nn.Residual modules), per config
# switch, with AdapterHub's name for the same place.
SITES = {"mh_adapter": "attn_residual", "output_adapter": "mlp_residual"}


class Stack(tuple):
    """Adapters applied in sequence at every site: ``set_adapter(Stack("a", "b"))`` (AdapterHub's
    ``Stack``). The same as passing the list ``["a", "b"]``."""

    def __new__(cls, *names: str) -> Stack:
        return super().__new__(cls, names)


def hidden_size_of(model: Module) -> int:
    """The model's residual width C (``hidden_size``, GPT-2's ``n_embd``)."""
    config = getattr(model, "config", None)
    size = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None)
    if not isinstance(size, int):
        raise ValueError(
            f"bottleneck adapters need the model's hidden size: expected config.hidden_size, "
            f"found a {type(model).__name__} without one"
        )
    return size


class BottleneckModel(BaseTuner):
    """The model with bottleneck adapters at its residual sites."""

    prefix = ".adapters."
    layer_class = BottleneckLayer
    config_class = AdapterConfig

    def _find_targets(self, config: AdapterConfig, names: list[str],
                      modules: dict[str, Module]) -> list[str]:  # fmt: skip
        sites = [site for switch, site in SITES.items() if getattr(config, switch)]
        found = [
            n
            for n in names
            if n.rsplit(".", 1)[-1] in sites
            and (is_residual(modules[n]) or isinstance(modules[n], BottleneckLayer))
        ]
        if not found:
            raise ValueError(
                f"bottleneck adapters go where a block adds a sub-block to the residual stream "
                f"(modules named {' / '.join(sites)}, nn.Residual); found none in "
                f"{type(self.model).__name__}"
            )
        kept = [n for n in found if layer_index(n) not in config.leave_out]
        if not kept:
            raise ValueError(
                f"AdapterConfig.leave_out: expected to keep at least one layer, found "
                f"{config.leave_out} leaving out all {len(found)} sites"
            )
        return kept

    def _check_target(self, name: str, module: Module, config: AdapterConfig) -> None:
        hidden = hidden_size_of(self.model)
        recorded = getattr(config, "hub_model", {}) or {}
        made_for, this = recorded.get("model_type"), model_type_of(self.model)
        if made_for and this and made_for != this:
            raise ValueError(
                f"the adapter was made for a {made_for} model ({recorded.get('model_class')}); "
                f"this is a {this} model ({type(self.model).__name__}), whose blocks differ"
            )
        if recorded.get("hidden_size") not in (None, hidden):
            raise ValueError(
                f"the adapter was made for a model with hidden size {recorded['hidden_size']} "
                f"({recorded.get('model_type') or 'unknown type'}); this "
                f"{type(self.model).__name__} has hidden size {hidden}"
            )
        config.bottleneck_size(hidden, layer_index(name))  # m >= 1, before anything changes

    def _create_and_replace(self, config: AdapterConfig, adapter_name: str, target_name: str,
                            target: Module) -> None:  # fmt: skip
        hidden = hidden_size_of(self.model)
        layer = target
        if not isinstance(layer, BottleneckLayer):
            layer = BottleneckLayer(target, hidden)
            self.model.set_submodule(target_name, layer)
        layer.update_layer(adapter_name, config, config.bottleneck_size(hidden,
                           layer_index(target_name)), **self._factory())  # fmt: skip

    def _factory(self) -> dict[str, Any]:
        """Adapters live on the model's device, in its dtype but at least float32."""
        return adapter_factory(next(iter(self.model.parameters())))

    def check_mergeable(self) -> None:
        raise TypeError(
            "bottleneck adapters cannot be merged into the base weights: they add a nonlinear "
            "module on the forward path (their latency cost). Keep them, or unload() them"
        )

    # ------------------------------------------------------------------ files
    def to_disk_keys(self, state_dict: dict[str, Any], adapter_name: str) -> dict[str, Any]:
        ln_before = self.peft_config[adapter_name].ln_before
        return to_hub_keys(state_dict, adapter_name, ln_before=ln_before)

    def from_disk_keys(self, tensors: dict[str, Any], adapter_name: str,
                       shapes: dict[str, Any], source: Any) -> dict[str, Any]:  # fmt: skip
        config = self.peft_config[adapter_name]
        saved_as = (getattr(config, "hub_model", None) or {}).get("name") or adapter_name
        renamed = from_hub_keys(tensors, saved_as, adapter_name)
        disk_to_memory = {
            disk: key for key in shapes if (disk := hub_key(key, adapter_name)) is not None
        }
        expected = {disk: shapes[key] for disk, key in disk_to_memory.items()}
        check_adapter_keys(expected, renamed, source)
        return {disk_to_memory[disk]: value for disk, value in renamed.items()}

    def config_for_saving(self, config: AdapterConfig, adapter_name: str) -> AdapterConfig:
        """Record the model facts AdapterHub's adapter_config.json carries."""
        config = copy.copy(config)
        config.hub_model = {
            "hidden_size": hidden_size_of(self.model),
            "model_class": type(self.model).__name__,
            "model_name": getattr(self.model, "name_or_path", None) or "",
            "model_type": model_type_of(self.model),
            "name": adapter_name,
        }
        return config
