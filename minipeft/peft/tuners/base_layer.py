"""``BaseTunerLayer``: one wrapped base layer holding named adapters, with the state every method
shares (active, merged, disabled) and merge / unmerge written once over small hooks."""

from __future__ import annotations

import warnings
from typing import Any

from ...autograd import no_grad
from ...nn import Module
from ..mixed_batch import current_adapter_names, mixed_batch_output
from ..modules_to_save import ModulesToSaveWrapper
from .contract import adapter_factory, check_finite, get_base_weight, is_linear, set_base_weight

__all__ = ["AdditiveTunerLayer", "BaseTunerLayer", "inside_adapter"]


def inside_adapter(name: str, modules: dict[str, Module]) -> bool:
    """Whether module ``name`` lies inside a tuner layer or a modules_to_save wrapper (its base
    layer, adapter containers, copies): such modules are never targets themselves. Decided by
    the modules above it, not by spelling, so it holds for every method."""
    parts = name.split(".")
    for i in range(len(parts) - 1, 0, -1):
        if isinstance(modules.get(".".join(parts[:i])), (BaseTunerLayer, ModulesToSaveWrapper)):
            return True
    return False


# ---------------------------------------------------------------------- layers
class BaseTunerLayer(Module):
    """One wrapped base layer holding named adapters.

    A subclass names its trainable per-adapter containers in ``adapter_layer_names`` (the first
    one tells which adapters the layer holds), its other per-adapter containers and dicts in
    ``other_param_names``, and implements ``update_layer`` and ``forward``. A mergeable method
    also implements :meth:`merge_weight` / :meth:`unmerge_weight` (and, when it changes the
    bias, :meth:`merge_bias` / :meth:`unmerge_bias`).
    """

    adapter_layer_names: tuple[str, ...] = ()
    other_param_names: tuple[str, ...] = ()

    def _wrap_linear(self, base_layer: Module, method: str) -> None:
        """Hold ``base_layer`` after checking the linear contract; copy its sizes."""
        if not is_linear(base_layer):
            raise TypeError(
                f"{method} wraps linear layers (in_features, out_features, weight), found "
                f"{type(base_layer).__name__}"
            )
        self.base_layer = base_layer
        self.in_features = base_layer.in_features
        self.out_features = base_layer.out_features

    def _adapter_factory_kwargs(self) -> dict[str, Any]:
        """Device and dtype of new adapter weights: the base weight's, but at least float32, so
        a float16 base keeps float32 adapters (PEFT's ``autocast_adapter_dtype=True``)."""
        return adapter_factory(self.base_layer.weight)

    def _init_adapter_state(self) -> None:
        self.merged_adapters: list[str] = []
        self.active_adapters: list[str] = []
        self.disable_adapters = False

    # ------------------------------------------------------------------ adapters
    def adapter_names(self) -> list[str]:
        """The adapters this layer holds."""
        return list(getattr(self, self.adapter_layer_names[0]).keys())

    def _activate_first(self, adapter_name: str) -> None:
        if not self.active_adapters:
            self.active_adapters = [adapter_name]

    def set_adapter(self, adapter_names: str | list[str]) -> None:
        """Activate these adapters; only they are trainable (PEFT's behaviour)."""
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        held = self.adapter_names()
        for attr in self.adapter_layer_names:
            container = getattr(self, attr)
            for key in held:
                if key in container:
                    container[key].requires_grad_(key in names)
        self.active_adapters = [n for n in names if n in held]

    def delete_adapter(self, adapter_name: str) -> None:
        for attr in self.adapter_layer_names + self.other_param_names:
            container = getattr(self, attr)
            if adapter_name in container:
                del container[adapter_name]
        self.active_adapters = [a for a in self.active_adapters if a != adapter_name]

    # ------------------------------------------------------------------ merging
    @property
    def merged(self) -> bool:
        return bool(self.merged_adapters)

    def check_merge_allowed(self) -> None:
        """Raise if merging this layer would change what the model computes."""

    def merge_weight(self, weight: Any, adapter_name: str) -> Any:
        """The merged base weight (a raw array in the base layout) for one adapter."""
        raise TypeError(f"{type(self).__name__} cannot be merged into its base layer")

    def unmerge_weight(self, weight: Any, adapter_name: str) -> Any:
        """Inverse of :meth:`merge_weight`."""
        raise TypeError(f"{type(self).__name__} cannot be unmerged from its base layer")

    def merge_bias(self, bias: Any, adapter_name: str) -> Any:
        """The merged base bias (default: unchanged)."""
        return bias

    def unmerge_bias(self, bias: Any, adapter_name: str) -> Any:
        return bias

    def _pending(self, adapter_names: list[str] | None) -> list[str]:
        names = self.active_adapters if adapter_names is None else adapter_names
        held = self.adapter_names()
        done = [n for n in names if n in self.merged_adapters]
        if done:
            warnings.warn(f"adapters {done} are already merged; merging them again is a no-op",
                          stacklevel=4)  # fmt: skip
        return [n for n in names if n in held and n not in self.merged_adapters]

    def merged_arrays(self, adapter_names: list[str] | None = None) -> tuple[Any, Any]:
        """(weight, bias) after merging the pending adapters, computed on copies."""
        weight = get_base_weight(self.base_layer)
        bias_param = getattr(self.base_layer, "bias", None)
        bias = None if bias_param is None else bias_param.data
        for name in self._pending(adapter_names):
            weight = self.merge_weight(weight, name)
            if bias is not None:
                bias = self.merge_bias(bias, name)
        return weight, bias

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Fold each active (or named) adapter not merged yet into the base weight.

        ``safe_merge`` computes the merged weight first and raises, leaving the layer
        untouched, if it is not finite.
        """
        self.check_merge_allowed()
        todo = self._pending(adapter_names)
        if not todo:
            return
        with no_grad():
            weight, bias = self.merged_arrays(todo)
            if safe_merge:
                check_finite(weight, bias, todo)
            set_base_weight(self.base_layer, weight)
            if bias is not None:
                self.base_layer.bias.data[...] = bias
        self.merged_adapters.extend(todo)

    def unmerge(self) -> None:
        """Undo every merge, last merged first (PEFT warns if nothing is merged)."""
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.", stacklevel=2)
            return
        with no_grad():
            while self.merged_adapters:
                name = self.merged_adapters.pop()
                weight = self.unmerge_weight(get_base_weight(self.base_layer), name)
                set_base_weight(self.base_layer, weight)
                bias = getattr(self.base_layer, "bias", None)
                if bias is not None:
                    bias.data[...] = self.unmerge_bias(bias.data, name)

    def _disabled_or_merged(self) -> bool:
        """Forward helper, called before the base layer runs: with adapters disabled, undo
        merges; True when the base layer's output alone is the answer (disabled, or the active
        adapters already merged)."""
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return True
        return self.merged


class AdditiveTunerLayer(BaseTunerLayer):
    """A tuner layer whose adapters *add* to the base output, ``y = base(x) + Σ_a Δ_a(x)``
    (LoRA and its family). ``forward`` is written once here: the base output, then each
    active adapter's :meth:`add_adapter_output`, or, in a mixed batch
    (:mod:`~minipeft.peft.mixed_batch`), each row's own adapter on its rows."""

    def forward(self, x: Any) -> Any:
        base_only = self._disabled_or_merged()  # first: disabling unmerges
        result = self.base_layer(x)
        if base_only:
            return result
        names = current_adapter_names()  # a mixed batch: one adapter (or the base) per row
        if names is not None:
            return mixed_batch_output(self, x, result, names)
        for name in self.active_adapters:
            if self.holds(name):
                result = self.add_adapter_output(name, x, result)
        return result

    def holds(self, adapter_name: str) -> bool:
        """Whether this layer has adapter ``adapter_name`` (a layer may lack some)."""
        return adapter_name in getattr(self, self.adapter_layer_names[0])

    def add_adapter_output(self, name: str, x: Any, result: Any) -> Any:
        """``result`` (the base output for these rows of x) plus adapter ``name``'s update."""
        raise NotImplementedError
