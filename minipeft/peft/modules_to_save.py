"""``modules_to_save``: modules trained *whole* next to the adapters (e.g. a classifier head).

The wrapper keeps the frozen ``original_module`` and one trainable copy per adapter in
``modules_to_save[adapter_name]``, the names PEFT uses, so the saved keys match PEFT's
(``score.modules_to_save.default.weight`` in memory, ``score.weight`` on disk).
"""

from __future__ import annotations

import copy
from typing import Any

from ..nn import Module, ModuleDict
from .mixed_batch import current_adapter_names, route_rows

__all__ = ["ModulesToSaveWrapper"]

_OWN = {"original_module", "modules_to_save", "active_adapter", "disable_adapters"}


class ModulesToSaveWrapper(Module):
    """Routes ``forward`` to the active adapter's copy, or to the original when disabled."""

    def __init__(self, module_to_save: Module, adapter_name: str) -> None:
        super().__init__()
        self.original_module = module_to_save
        self.modules_to_save = ModuleDict()
        self.active_adapter: str | None = None
        self.disable_adapters = False
        self.update(adapter_name)

    def update(self, adapter_name: str) -> None:
        """Add a trainable copy of the original for ``adapter_name`` and make it active."""
        clone = copy.deepcopy(self.original_module)
        clone.requires_grad_(True)
        self.modules_to_save[adapter_name] = clone
        self.original_module.requires_grad_(False)
        self.active_adapter = adapter_name

    def set_adapter(self, adapter_name: str) -> None:
        """Only ``adapter_name``'s copy trains and runs; an adapter without its own copy of this
        module sees the frozen original (as in PEFT)."""
        for name, module in self.modules_to_save.items():
            module.requires_grad_(name == adapter_name)
        self.active_adapter = adapter_name if adapter_name in self.modules_to_save else None

    def delete_adapter(self, adapter_name: str) -> None:
        if adapter_name in self.modules_to_save:
            del self.modules_to_save[adapter_name]
        if self.active_adapter == adapter_name:
            self.active_adapter = next(iter(self.modules_to_save.keys()), None)

    @property
    def active_module(self) -> Module:
        if self.disable_adapters or self.active_adapter not in self.modules_to_save:
            return self.original_module
        return self.modules_to_save[self.active_adapter]

    def __getattr__(self, name: str) -> Any:
        # Callers read attributes of the wrapped layer (e.g. ``score.weight``, ``out_features``).
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name.startswith("_") or name in _OWN:
                raise
            return getattr(self.active_module, name)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        names = current_adapter_names()
        if names is None or self.disable_adapters or len(set(names)) == 1:
            if names is not None and not self.disable_adapters:
                return self._module_for(names[0])(*args, **kwargs)
            return self.active_module(*args, **kwargs)
        # A mixed batch: row i through adapter names[i]'s copy (or the original).
        x = args[0]
        return route_rows(
            names, x.device, lambda name, rows: self._module_for(name)(x[rows], *args[1:], **kwargs)
        )

    def _module_for(self, adapter_name: str) -> Module:
        return self.modules_to_save[adapter_name] if adapter_name in self.modules_to_save \
            else self.original_module  # fmt: skip
