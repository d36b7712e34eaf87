"""The tuner seam: one base for the layers that hold adapters, one for the tuners that place them
(the layer base lives in :mod:`.base_layer`, the linear contract and base-weight protocol in
:mod:`.contract`; this module re-exports both, as the seam's one entry point).

:class:`BaseTunerLayer` wraps one base layer (``self.base_layer``, never edited except by an
explicit merge) and holds named adapters in per-adapter containers (``lora_A["default"]``). It owns
the state every method shares: which adapters are active, merged and disabled, ``set_adapter``,
``delete_adapter``, and ``merge`` / ``unmerge`` written once over two small hooks.

:class:`BaseTuner` holds the user's model as ``self.model`` (so parameter names gain PEFT's
``base_model.model.`` prefix) and does all module surgery through ``get_submodule`` /
``set_submodule``: targets are resolved once, checked, then :meth:`BaseTuner._create_and_replace`
runs per target; parameters whose names lack the method's ``prefix`` are frozen; set / delete /
disable / merge / unmerge / unload are written once for every method. A failed injection puts
back every module and ``requires_grad`` flag it changed: nothing is ever half-applied.

The base-layer weight protocol (:func:`get_base_weight` / :func:`set_base_weight`) is how merging
reads and writes a base weight: a float array in the layout the layer stores. A layer that keeps
its weight another way (a 4-bit layer) implements ``get_base_weight()`` / ``set_base_weight(w)``
itself, dequantizing and requantizing.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

from ...autograd import no_grad
from ...nn import Module
from ..adapter_io import check_adapter_keys, from_peft_keys, to_peft_keys
from ..config import PeftConfig, resolve_target_modules
from ..matching import find_targets, is_module_to_save
from ..modules_to_save import ModulesToSaveWrapper
from ..registry import parameter_prefixes
from .base_layer import AdditiveTunerLayer, BaseTunerLayer, inside_adapter
from .contract import (
    adapter_factory,
    check_finite,
    get_base_weight,
    has_sizes_and_weight,
    is_embedding,
    is_linear,
    model_type_of,
    set_base_weight,
    weight_layout,
)

__all__ = [
    "AdditiveTunerLayer",
    "BaseTuner",
    "BaseTunerLayer",
    "adapter_factory",
    "check_finite",
    "get_base_weight",
    "has_sizes_and_weight",
    "inside_adapter",
    "is_embedding",
    "is_linear",
    "model_type_of",
    "modules_to_save_names",
    "restore_modules",
    "set_base_weight",
    "weight_layout",
    "wrap_modules_to_save",
]


# ---------------------------------------------------------------------- tuners
class BaseTuner(Module):
    """Places one method's layers into a model. A subclass sets ``prefix`` and ``layer_class``
    and implements :meth:`_create_and_replace`; it may override :meth:`_find_targets` (default:
    PEFT's ``target_modules`` rules), :meth:`_check_target` and :meth:`_mark_trainable_extras`.
    """

    prefix: str = ""  # marks this method's adapter parameters in a parameter name
    layer_class: type[BaseTunerLayer] = BaseTunerLayer
    config_class: type[PeftConfig] = PeftConfig

    def __init__(self, model: Module, config: PeftConfig, adapter_name: str = "default") -> None:
        super().__init__()
        self.model = model
        self.peft_config: dict[str, PeftConfig] = {}
        self.active_adapter = adapter_name
        self.targeted_module_names: list[str] = []
        self.inject_adapter(config, adapter_name)

    # ------------------------------------------------------------------ injection
    def inject_adapter(self, config: PeftConfig, adapter_name: str) -> None:
        """Add adapter ``adapter_name`` to every target of ``config``, all or nothing."""
        if not isinstance(config, self.config_class):
            raise TypeError(
                f"{type(self).__name__} expects a {self.config_class.__name__}, found "
                f"{type(config).__name__}"
            )
        if adapter_name in self.peft_config:
            raise ValueError(f"adapter {adapter_name!r} already exists; pick another name")
        modules = dict(self.model.named_modules())
        names = [n for n in modules if n and not inside_adapter(n, modules)]
        targets = self._find_targets(config, names, modules)
        for name in targets:  # every target is checked before anything changes
            self._check_target(name, modules[name], config)
        to_save = self._modules_to_save_names(list(getattr(config, "modules_to_save", None) or []))
        saved_modules = dict(modules)
        flags = [(p, p.requires_grad) for p in self.model.parameters()]
        try:
            for name in targets:
                self._create_and_replace(config, adapter_name, name, modules[name])
            wrap_modules_to_save(self.model, to_save, adapter_name)
        except BaseException:
            self._remove_adapter_parts(adapter_name)
            restore_modules(self.model, saved_modules, flags)
            raise
        self._record_defaults(config)
        self.peft_config[adapter_name] = config
        self.targeted_module_names = targets
        self._mark_only_adapters_as_trainable(config)
        if self.active_adapter != adapter_name:  # a new adapter starts inactive, like PEFT
            self.set_adapter(self.active_adapter)

    def _find_targets(self, config: Any, names: list[str], modules: dict[str, Module]) -> list[str]:
        """PEFT's ``target_modules`` rules. ``"all-linear"`` sees the linear modules, counting
        a tuner layer on a linear as linear (a second adapter joins it); embeddings never are."""
        linear = {
            n
            for n in names
            if is_linear(modules[n])
            or (isinstance(modules[n], BaseTunerLayer) and is_linear(modules[n].base_layer))
        }
        return find_targets(names, config, model_type=model_type_of(self.model),
                            linear_names=linear)  # fmt: skip

    def _check_target(self, name: str, module: Module, config: Any) -> None:
        """Raise (before any change) when ``module`` cannot carry this method's adapter."""

    def _create_and_replace(self, config: Any, adapter_name: str, target_name: str,
                            target: Module) -> None:  # fmt: skip
        """Wrap ``target`` (or add the adapter to its existing layer). Implemented per method."""
        raise NotImplementedError

    def _record_defaults(self, config: Any) -> None:
        """Like PEFT, record (and save) the default ``target_modules`` the injection used."""
        if hasattr(config, "target_modules") and config.target_modules is None:
            config.target_modules = resolve_target_modules(config, model_type_of(self.model))

    def _remove_adapter_parts(self, adapter_name: str) -> None:
        """After a failed injection: drop what the adapter added to layers that already
        existed (layers it created are unwrapped by :func:`restore_modules`)."""
        for module in self._wrappers():
            with contextlib.suppress(Exception):
                module.delete_adapter(adapter_name)

    def _modules_to_save_names(self, to_save: list[str]) -> list[str]:
        return modules_to_save_names(self.model, to_save)

    def _mark_only_adapters_as_trainable(self, config: Any) -> None:
        """Freezing is a name filter: adapter parameters carry their method's prefix. Every
        method's prefix is spared, so a second tuner on the model (LoRA beside a bottleneck
        adapter) leaves the first one's adapters as they were."""
        spared = (*parameter_prefixes(), self.prefix, ".modules_to_save.")
        for name, p in self.model.named_parameters():
            if not any(marker in name for marker in spared):
                p.requires_grad_(False)
        self._mark_trainable_extras(config)

    def _mark_trainable_extras(self, config: Any) -> None:
        """Hook: parameters besides the adapters that train (e.g. LoRA's ``bias``)."""

    # ------------------------------------------------------------------ adapters
    def tuner_layers(self) -> Iterator[BaseTunerLayer]:
        for module in self.model.modules():
            if isinstance(module, self.layer_class):
                yield module

    def _wrappers(self) -> Iterator[Module]:
        for module in self.model.modules():
            if isinstance(module, (self.layer_class, ModulesToSaveWrapper)):
                yield module

    def _check_name(self, adapter_name: str) -> None:
        if adapter_name not in self.peft_config:
            raise ValueError(
                f"adapter {adapter_name!r} not found; available: {sorted(self.peft_config)}"
            )

    def set_adapter(self, adapter_name: str | list[str]) -> None:
        """Make ``adapter_name`` the active (and only trainable) adapter; a list activates
        several at once (applied in that order where the method composes them)."""
        names = [adapter_name] if isinstance(adapter_name, str) else list(adapter_name)
        for name in names:
            self._check_name(name)
        switching = names != self._active_list()
        if switching and any(layer.merged for layer in self.tuner_layers()):  # nothing half-done
            raise ValueError("unmerge the merged adapters before switching the active one")
        for module in self._wrappers():
            if isinstance(module, ModulesToSaveWrapper):
                owned = [n for n in names if n in module.modules_to_save]
                if owned or all(n in self.peft_config for n in module.modules_to_save.keys()):
                    module.set_adapter(owned[-1] if owned else None)  # None: the original
            else:
                module.set_adapter(names)
        # An adapter loaded for inference stays frozen when activated.
        frozen = [n for n in names if getattr(self.peft_config[n], "inference_mode", False)]
        for name, p in self.model.named_parameters():
            if any(f".{n}." in name or name.endswith(f".{n}") for n in frozen):
                p.requires_grad_(False)
        # An empty list: none active (an adapter added to a model whose others are another
        # method's starts so).
        self.active_adapter = names[0] if len(names) == 1 else names

    def _active_list(self) -> list[str]:
        active = self.active_adapter
        return [active] if isinstance(active, str) else list(active)

    def delete_adapter(self, adapter_name: str) -> None:
        self._check_name(adapter_name)
        if adapter_name in self._active_list():
            raise ValueError(
                f"adapter {adapter_name!r} is the active adapter; set_adapter() another one "
                "before deleting it"
            )
        if any(adapter_name in m.merged_adapters for m in self.tuner_layers()):
            raise ValueError(
                f"adapter {adapter_name!r} is merged into the base weights; unmerge_adapter() "
                "before deleting it"
            )
        for module in self._wrappers():
            module.delete_adapter(adapter_name)
        del self.peft_config[adapter_name]
        # A layer left without adapters goes back to its base layer.
        for name, module in list(self.model.named_modules()):
            if isinstance(module, self.layer_class) and not module.adapter_names():
                self.model.set_submodule(name, module.base_layer)

    def set_adapters_enabled(self, enabled: bool) -> None:
        for module in self._wrappers():
            module.disable_adapters = not enabled

    # ------------------------------------------------------------------ merging
    def merge_adapter(self, safe_merge: bool = False) -> None:
        """Merge the active adapters into every layer, all or nothing."""
        layers = list(self.tuner_layers())
        for layer in layers:  # e.g. an embedding tied to lm_head: refused before any change
            layer.check_merge_allowed()
        if safe_merge:  # check every layer before touching any
            with no_grad():
                for layer in layers:
                    check_finite(*layer.merged_arrays(), layer.active_adapters)
        for layer in layers:
            layer.merge(safe_merge=safe_merge)

    def unmerge_adapter(self) -> None:
        """Undo every merge; with nothing merged, warn once (as PEFT does) and do nothing."""
        merged = [layer for layer in self.tuner_layers() if layer.merged]
        if not merged:
            warnings.warn("Already unmerged. Nothing to do.", stacklevel=3)
        for layer in merged:
            layer.unmerge()

    def _unload(self, merge: bool, safe_merge: bool = False) -> Module:
        if merge:
            self.merge_adapter(safe_merge=safe_merge)
        for name, module in list(self.model.named_modules()):
            if isinstance(module, self.layer_class):
                self.model.set_submodule(name, module.base_layer)
            elif isinstance(module, ModulesToSaveWrapper):
                self.model.set_submodule(name, module.active_module if merge else
                                         module.original_module)  # fmt: skip
        return self.model

    def merge_and_unload(self, safe_merge: bool = False) -> Module:
        return self._unload(merge=True, safe_merge=safe_merge)

    def unload(self) -> Module:
        return self._unload(merge=False)

    def check_mergeable(self) -> None:
        """Raise when this method cannot fold its adapters into the base weights."""

    # ------------------------------------------------------------------ files
    def to_disk_keys(self, state_dict: dict[str, Any], adapter_name: str) -> dict[str, Any]:
        """Select adapter ``adapter_name``'s entries of a PeftModel state dict, keyed as its
        files store them (PEFT's keys by default; values pass through)."""
        config = self.peft_config[adapter_name]
        return to_peft_keys(state_dict, adapter_name, bias=getattr(config, "bias", "none"),
                            prefixes=(self.prefix,))  # fmt: skip

    def from_disk_keys(self, tensors: dict[str, Any], adapter_name: str,
                       shapes: dict[str, Any], source: Any) -> dict[str, Any]:  # fmt: skip
        """Check on-disk ``tensors`` against the model's ``shapes`` (PeftModel state-dict keys)
        and return them under in-memory keys; one error lists every mismatch."""
        config = self.peft_config[adapter_name]
        expected = self.to_disk_keys(shapes, adapter_name)
        check_adapter_keys(expected, tensors, source, hints=self.shape_hints)
        return from_peft_keys(tensors, adapter_name, getattr(config, "modules_to_save", None),
                              prefixes=(self.prefix,))  # fmt: skip

    @staticmethod
    def shape_hints(shapes: list[tuple[str, tuple[int, ...], tuple[int, ...]]]) -> list[str]:
        """Lines explaining shape mismatches (key, expected, found) in the method's terms."""
        return []

    def config_for_saving(self, config: PeftConfig, adapter_name: str) -> PeftConfig:
        """The config as written beside the weights (a method may record model facts)."""
        return config

    def convert_for_initial_model(
        self, config: PeftConfig, tensors: dict[str, Any], adapter_name: str, initial: Any
    ) -> tuple[PeftConfig, dict[str, Any]]:
        """``save_pretrained(..., path_initial_model_for_weight_conversion=initial)``: the
        (config, on-disk tensors) to save instead, for a method whose initialisation changed
        the base weights (LoRA's PiSSA / OLoRA). Other methods refuse."""
        raise ValueError(
            f"path_initial_model_for_weight_conversion: {type(self).__name__} adapters "
            f"(peft_type {config.peft_type}) leave the base weights as they are; save without it"
        )

    # ------------------------------------------------------------------ training hooks
    def regularization_loss(self) -> Any:
        """A Tensor that :class:`~minipeft.peft.peft_model.PeftModel` adds to a forward's loss
        (when the output has one), or None (the default): AdaLoRA's orthogonality penalty."""
        return None

    def report(self) -> str | None:
        """Text the finetune job prints after training (AdaLoRA: the final ranks), or None."""
        return None

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)


def modules_to_save_names(model: Module, to_save: list[str]) -> list[str]:
    """Names of the modules to train whole (PEFT's suffix rule); raises (before any wrapping)
    when none match."""
    if not to_save:
        return []
    modules = dict(model.named_modules())
    names = [
        name
        for name in modules
        if name and not inside_adapter(name, modules) and is_module_to_save(name, to_save)
    ]
    if not names:
        raise ValueError(f"modules_to_save {to_save} matched no module of the model")
    return names


def wrap_modules_to_save(model: Module, names: list[str], adapter_name: str) -> None:
    """Give each named module a trainable copy for ``adapter_name`` (wrapping it once)."""
    for name in names:
        module = model.get_submodule(name)
        if isinstance(module, ModulesToSaveWrapper):
            module.update(adapter_name)
        else:
            model.set_submodule(name, ModulesToSaveWrapper(module, adapter_name))


def restore_modules(model: Module, modules: dict[str, Module],
                    flags: list[tuple[Any, bool]]) -> None:  # fmt: skip
    """Undo a failed change: put back the recorded modules (the layers and wrappers it added)
    and the recorded ``requires_grad`` flags (injection freezes the model)."""
    for name, module in modules.items():
        if name:
            with contextlib.suppress(AttributeError):
                model.set_submodule(name, module)
    for p, flag in flags:
        p.requires_grad_(flag)
