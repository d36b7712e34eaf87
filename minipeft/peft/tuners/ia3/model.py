"""``IA3Model``: finds the target linear layers of a model and wraps them in :class:`IA3Layer`.

This is PEFT's ``peft.tuners.ia3.IA3Model`` on the tuner seam
(:class:`~minipeft.peft.tuners.base.BaseTuner`): the base class resolves the targets (PEFT's
``target_modules`` rules), freezes by the ``ia3_`` prefix, writes set / delete / merge / unload
once and keys the files as PEFT does (``...c_attn.ia3_l``). This class decides, per target,
whether it is feed-forward (its input is scaled, l (1, d_in)) or not (its output is scaled,
l (d_out, 1)); the trainable count is Σ_targets d_in (feed-forward) or d_out (the others).
"""

from __future__ import annotations

import re
import warnings
from typing import Any

from ....nn import Module
from ..base import BaseTuner, is_linear, model_type_of
from .config import IA3Config, resolve_feedforward_modules
from .layer import IA3Layer

__all__ = ["IA3Model", "is_feedforward_module"]


def is_feedforward_module(name: str, feedforward_modules: list[str] | str) -> bool:
    """PEFT's ``_check_target_module_feedforward``: a regex must ``re.fullmatch`` the module
    name; a list entry must be a plain string suffix of it (``name.endswith(entry)``, no dot
    boundary, as in PEFT)."""
    if isinstance(feedforward_modules, str):
        return re.fullmatch(feedforward_modules, name) is not None
    return any(name.endswith(entry) for entry in feedforward_modules)


class IA3Model(BaseTuner):
    """The model with IA3 layers injected; ``peft_config`` maps adapter names to configs."""

    prefix = "ia3_"
    layer_class = IA3Layer
    config_class = IA3Config

    def _feedforward_modules(self, config: IA3Config) -> list[str] | str:
        return resolve_feedforward_modules(config, model_type_of(self.model))

    def _check_target(self, name: str, module: Module, config: Any) -> None:
        if not (isinstance(module, IA3Layer) or is_linear(module)):
            raise TypeError(
                f"target module {name!r} is a {type(module).__name__}; IA3 supports linear "
                "layers (in_features, out_features, weight) only"
            )
        self._feedforward_modules(config)  # no default for this model: raise before any change

    def _create_and_replace(self, config: IA3Config, adapter_name: str, target_name: str,
                            target: Module) -> None:  # fmt: skip
        feedforward = is_feedforward_module(target_name, self._feedforward_modules(config))
        module = target
        if not isinstance(module, IA3Layer):
            module = IA3Layer(target, is_feedforward=feedforward,
                              fan_in_fan_out=config.fan_in_fan_out)  # fmt: skip
            self.model.set_submodule(target_name, module)
        elif module.is_feedforward != feedforward:  # PEFT keeps the layer's kind, silently
            warnings.warn(
                f"adapter {adapter_name!r}: {target_name!r} is "
                f"{'' if module.is_feedforward else 'not '}a feed-forward IA3 layer for its first "
                "adapter; the new adapter is applied the same way (as PEFT does)",
                stacklevel=4,
            )
        module.update_layer(adapter_name, init_ia3_weights=config.init_ia3_weights)

    def _record_defaults(self, config: Any) -> None:
        """Record (and save) the default ``target_modules`` and ``feedforward_modules``."""
        super()._record_defaults(config)
        if config.feedforward_modules is None:
            config.feedforward_modules = self._feedforward_modules(config)
