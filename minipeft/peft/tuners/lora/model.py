"""``LoraModel``: finds the target layers of a model and wraps them in :class:`LoraLayer`
(linear layers) or :class:`LoraEmbedding` (embedding tables).

This is PEFT's ``peft.tuners.lora.LoraModel`` on the tuner seam
(:class:`~minipeft.peft.tuners.base.BaseTuner`): the base class resolves the targets, freezes by
the ``lora_`` prefix and writes set / delete / merge / unload once; this class only says what a
LoRA target is and how one is wrapped. Besides the adapters, ``bias`` may train some biases.
DoRA's magnitudes are saved under PEFT's key ``...lora_magnitude_vector`` (in memory
``...lora_magnitude_vector.<adapter>.weight``, as in PEFT); a PiSSA / OLoRA adapter can be
saved converted to plain LoRA for the original base (:func:`.init.convert_to_lora`).
"""

from __future__ import annotations

import os
from typing import Any

from ....nn import Module
from ...adapter_io import load_adapter_files
from ..base import BaseTuner, is_embedding, is_linear
from .config import LoraConfig
from .embedding import LoraEmbedding
from .init import check_base_weight_init, check_convertible, convert_to_lora
from .layer import LoraLayer

_MAGNITUDE = ".lora_magnitude_vector"  # PEFT's on-disk key for DoRA's m (no adapter, no .weight)

__all__ = ["LoraModel", "lora_shape_hints"]


def lora_shape_hints(shapes: list[tuple[str, tuple[int, ...], tuple[int, ...]]]) -> list[str]:
    """Explain 2-D LoRA shape mismatches: A is (r, d_in) and B (d_out, r), so a differing r is
    another rank and a differing d_in / d_out another model (expected vs found)."""
    ranks: set[tuple[int, int]] = set()
    widths: set[tuple[int, int]] = set()
    for key, e, f in shapes:
        if len(e) != 2 or len(f) != 2:
            continue
        name = next((part for part in reversed(key.split(".")) if part.startswith("lora_")), "")
        if name in ("lora_A", "lora_embedding_A"):
            r_axis = 0
        elif name in ("lora_B", "lora_embedding_B"):
            r_axis = 1
        else:
            continue
        if e[r_axis] != f[r_axis]:
            ranks.add((e[r_axis], f[r_axis]))
        if e[1 - r_axis] != f[1 - r_axis]:
            widths.add((e[1 - r_axis], f[1 - r_axis]))
    hints = []
    if ranks:
        pairs = ", ".join(f"r={e} vs r={f}" for e, f in sorted(ranks))
        hints.append(
            f"hint: lora_A rows / lora_B columns differ ({pairs}): the adapter has another rank"
        )
    if widths:
        pairs = ", ".join(f"{e} vs {f}" for e, f in sorted(widths))
        hints.append(
            f"hint: lora_A columns (d_in) / lora_B rows (d_out) differ ({pairs}): the adapter "
            "was made for a model with another hidden size"
        )
    return hints


class LoraModel(BaseTuner):
    """The model with LoRA layers injected; ``peft_config`` maps adapter names to configs."""

    prefix = "lora_"
    layer_class = LoraLayer
    config_class = LoraConfig
    supports_mixed_batch = True  # its layers route rows (peft.mixed_batch)

    def lora_layers(self) -> Any:
        """Every LoRA layer of the model (linear and embedding)."""
        return self.tuner_layers()

    def _check_target(self, name: str, module: Module, config: Any) -> None:
        if not (isinstance(module, LoraLayer) or is_linear(module) or is_embedding(module)):
            raise TypeError(
                f"target module {name!r} is a {type(module).__name__}; LoRA supports linear "
                "layers (in_features, out_features, weight) and embedding layers "
                "(num_embeddings, embedding_dim, weight) only"
            )
        base = module.base_layer if isinstance(module, LoraLayer) else module
        check_base_weight_init(name, base, config.get_r(name), config.scaling_for(name),
                               config.init_lora_weights)  # fmt: skip

    def _create_and_replace(self, config: LoraConfig, adapter_name: str, target_name: str,
                            target: Module) -> None:  # fmt: skip
        module = target
        if not isinstance(module, LoraLayer):
            layer = LoraEmbedding if is_embedding(module) else LoraLayer
            module = layer(target, fan_in_fan_out=config.fan_in_fan_out)
            if isinstance(module, LoraEmbedding):
                module.tied_to = _tied_output(self.model, target)
            self.model.set_submodule(target_name, module)
        module.update_layer(
            adapter_name,
            r=config.get_r(target_name),
            lora_alpha=config.get_alpha(target_name),
            lora_dropout=config.lora_dropout,
            init_lora_weights=config.init_lora_weights,
            use_rslora=config.use_rslora,
            use_dora=config.use_dora,
        )

    shape_hints = staticmethod(lora_shape_hints)

    def add_weighted_adapter(self, adapters: list[str], weights: list[float], adapter_name: str,
                             combination_type: str = "svd", **kwargs: Any) -> None:  # fmt: skip
        """A new adapter combined from trained ones (:mod:`.combine`, PEFT's semantics; also
        ``svd_rank``, ``svd_clamp``, ``density``, ``majority_sign_method``, ``seed``)."""
        from .combine import add_weighted_adapter  # noqa: PLC0415 (numerics kept apart)

        add_weighted_adapter(self, adapters, weights, adapter_name, combination_type, **kwargs)

    def to_disk_keys(self, state_dict: dict[str, Any], adapter_name: str) -> dict[str, Any]:
        out = super().to_disk_keys(state_dict, adapter_name)  # ...lora_magnitude_vector.weight
        return {k.removesuffix(".weight") if k.endswith(f"{_MAGNITUDE}.weight") else k: v
                for k, v in out.items()}  # fmt: skip

    def convert_for_initial_model(
        self, config: LoraConfig, tensors: dict[str, Any], adapter_name: str, initial: Any
    ) -> tuple[LoraConfig, dict[str, Any]]:
        """The adapter as plain LoRA relative to the weights before a PiSSA / OLoRA
        initialisation, from its initial tensors saved in ``initial``."""
        check_convertible(config)  # before reading anything
        _, start = load_adapter_files(initial, adapter_name)
        return convert_to_lora(config, tensors, start, os.fspath(initial))

    def from_disk_keys(self, tensors: dict[str, Any], adapter_name: str,
                       shapes: dict[str, Any], source: Any) -> dict[str, Any]:  # fmt: skip
        # PEFT also saves the whole table of a targeted embedding named like a vocabulary
        # layer (save_embedding_layers="auto", for resized vocabularies): load it into the base.
        tables = {
            k: v
            for k, v in tensors.items()
            if k.endswith(".base_layer.weight")
            and isinstance(self._module_at(k.removesuffix(".base_layer.weight")), LoraEmbedding)
        }
        rest = {k: v for k, v in tensors.items() if k not in tables}
        memory = super().from_disk_keys(rest, adapter_name, shapes, source)
        memory = {f"{k}.weight" if k.endswith(f"{_MAGNITUDE}.{adapter_name}") else k: v
                  for k, v in memory.items()}  # fmt: skip
        return {**memory, **tables}

    def _module_at(self, peft_key: str) -> Module | None:
        """The module at a PeftModel-relative name (``base_model.model.<name>``), if any."""
        name = peft_key.removeprefix("base_model.model.")
        try:
            return self.model.get_submodule(name)
        except AttributeError:
            return None

    def _mark_trainable_extras(self, config: LoraConfig) -> None:
        if config.bias == "all":
            for name, p in self.model.named_parameters():
                if name.endswith("bias") and ".original_module." not in name:
                    p.requires_grad_(True)
        elif config.bias == "lora_only":
            for module in self.lora_layers():
                bias = getattr(module.base_layer, "bias", None)
                if bias is not None:
                    bias.requires_grad_(True)


def _tied_output(model: Module, embedding: Module) -> str | None:
    """Name of the module whose weight *is* this embedding's table (a tied lm_head), if any."""
    for name, module in model.named_modules():
        if module is not embedding and getattr(module, "weight", None) is embedding.weight:
            if not hasattr(module, "num_embeddings"):
                return name
    return None
