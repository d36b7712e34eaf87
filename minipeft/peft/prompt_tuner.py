"""Prompt-side methods (prompt tuning, prefix tuning, P-tuning): learned inputs, no weight touched.

They change what the model *sees*, not what it computes: ``T_v`` learned vectors are either
prepended to the token embeddings (prompt tuning, Lester et al. 2021; P-tuning, Liu et al.
2021, whose vectors come out of a small MLP) or handed to every layer as a key/value past
(prefix tuning, Li & Liang 2021)::

    prompt / P-tuning   inputs_embeds = [P ; E[ids]]            P (B, T_v, C), E[ids] (B, T, C)
    prefix              past_key_values[l] = (K_l, V_l)         each (B, H_kv, T_v, D)

:class:`PromptTuner` holds the encoders (in the PeftModel's ``prompt_encoder`` dict, PEFT's
place, so keys read ``prompt_encoder.default.embedding.weight``) and offers what PeftModel needs:
:meth:`prepare` turns a forward's arguments into the base model's (extending the attention mask
with ones for the virtual positions, labels with -100, dropping explicit position ids as PEFT
does), for a forward or for ``generate``. It sits beside weight-side tuners in
``PeftModel.tuners``, so a prefix and a bottleneck adapter can train together (AdapterHub's MAM
adapter).
"""

from __future__ import annotations

import inspect
import warnings
from typing import Any

from ..backend import xp_of
from ..nn import Module, ModuleDict
from ..ops.api import cat
from ..tensor import Tensor, int64
from .config import PeftConfig, PeftType
from .modules_to_save import ModulesToSaveWrapper
from .tuners.base import (
    adapter_factory,
    modules_to_save_names,
    restore_modules,
    wrap_modules_to_save,
)

__all__ = ["PromptTuner", "is_prefix"]

SAVED_KEY = "prompt_embeddings"  # PEFT's one on-disk key for every prompt-learning method


class PromptTuner(Module):
    """The prompt adapters of one method on a model (see the module docstring)."""

    def __init__(self, model: Module, config: PeftConfig, adapter_name: str,
                 encoders: ModuleDict, encoder_class: type) -> None:  # fmt: skip
        super().__init__()
        self.model = model
        object.__setattr__(self, "encoders", encoders)  # the PeftModel owns (registers) them
        self.encoder_class = encoder_class
        self.peft_config: dict[str, PeftConfig] = {}
        self.active_adapter: str | list[str] = adapter_name
        self.enabled = True
        self.inject_adapter(config, adapter_name)

    # ------------------------------------------------------------------ adapters
    def inject_adapter(self, config: Any, adapter_name: str) -> None:
        from .tuners.prompt_learning import prepare_prompt_learning_config  # noqa: PLC0415

        if adapter_name in self.encoders:
            raise ValueError(f"adapter {adapter_name!r} already exists; pick another name")
        prepare_prompt_learning_config(config, self.model.config)
        modules = dict(self.model.named_modules())
        flags = [(p, p.requires_grad) for p in self.model.parameters()]
        try:
            encoder = self._make_encoder(config)
            to_save = list(getattr(config, "modules_to_save", None) or [])
            wrap_modules_to_save(self.model, modules_to_save_names(self.model, to_save),
                                 adapter_name)  # fmt: skip
        except BaseException:
            restore_modules(self.model, modules, flags)
            raise
        self.encoders[adapter_name] = encoder
        self.peft_config[adapter_name] = config
        for name, p in self.model.named_parameters():  # the model is frozen, but for its heads
            if ".modules_to_save." not in name and not _is_adapter_param(name):
                p.requires_grad_(False)

    def _make_encoder(self, config: Any) -> Module:
        embeddings = self.model.get_input_embeddings()
        # Prompt tuning copies rows of the word embeddings at init; the others need only sizes.
        takes_words = "word_embeddings" in inspect.signature(self.encoder_class).parameters
        encoder = self.encoder_class(config, embeddings) if takes_words else self.encoder_class(
            config)  # fmt: skip
        return encoder.to(**adapter_factory(embeddings.weight))  # float32 at least

    def _active_list(self) -> list[str]:
        active = self.active_adapter
        return [active] if isinstance(active, str) else list(active)

    def set_adapter(self, adapter_name: str | list[str]) -> None:
        names = [adapter_name] if isinstance(adapter_name, str) else list(adapter_name)
        if len(names) > 1:
            raise ValueError(f"only one prompt adapter can be active at a time, found {names}")
        for name in names:
            if name not in self.peft_config:
                raise ValueError(f"adapter {name!r} not found; available: {list(self.peft_config)}")
        for name, encoder in self.encoders.items():
            if name in self.peft_config:
                trainable = name in names and not self.peft_config[name].inference_mode
                encoder.requires_grad_(trainable)
        for module in self.model.modules():
            if isinstance(module, ModulesToSaveWrapper):
                owned = [n for n in names if n in module.modules_to_save]
                if owned or all(n in self.peft_config for n in module.modules_to_save.keys()):
                    module.set_adapter(owned[-1] if owned else None)
        self.active_adapter = names[0] if len(names) == 1 else names

    def delete_adapter(self, adapter_name: str) -> None:
        if adapter_name in self._active_list():
            raise ValueError(f"adapter {adapter_name!r} is the active adapter; set_adapter() "
                             "another one before deleting it")  # fmt: skip
        del self.encoders[adapter_name]
        del self.peft_config[adapter_name]
        for module in self.model.modules():
            if isinstance(module, ModulesToSaveWrapper):
                module.delete_adapter(adapter_name)

    def set_adapters_enabled(self, enabled: bool) -> None:
        self.enabled = enabled
        for module in self.model.modules():
            if isinstance(module, ModulesToSaveWrapper):
                module.disable_adapters = not enabled

    def active_config(self) -> Any | None:
        """The config of the active prompt adapter, or None (none active, or disabled)."""
        names = self._active_list()
        return self.peft_config[names[0]] if (names and self.enabled) else None

    # ------------------------------------------------------------------ merging
    def check_mergeable(self) -> None:
        raise TypeError(
            "prompt-learning adapters cannot be merged into the base weights: they are inputs "
            "(virtual tokens or a key/value prefix), not weight changes; keep the adapter"
        )

    def merge_adapter(self, safe_merge: bool = False) -> None:
        self.check_mergeable()

    def unmerge_adapter(self) -> None:
        pass

    def merge_and_unload(self, safe_merge: bool = False) -> Module:
        self.check_mergeable()
        return self.model

    def unload(self) -> Module:
        for name, module in list(self.model.named_modules()):
            if isinstance(module, ModulesToSaveWrapper):
                self.model.set_submodule(name, module.original_module)
        for name in list(self.peft_config):
            if name in self.encoders:
                del self.encoders[name]
        return self.model

    # ------------------------------------------------------------------ inputs
    def prompt(self, batch: int) -> Any:
        """The active adapter's learned inputs for a batch: (B, T_v, C) embeddings, or for
        prefix tuning a list of L (key, value) pairs (B, H_kv, T_v, D)."""
        name = self._active_list()[0]
        config, encoder = self.peft_config[name], self.encoders[name]
        T = config.num_virtual_tokens * config.num_transformer_submodules
        indices = Tensor(xp_of(encoder.embedding.weight.data).arange(T)[None].repeat(batch, 0),
                         device=encoder.embedding.weight.device).to(int64)  # fmt: skip
        out = encoder(indices)  # (B, T_v, ·)
        if not is_prefix(config):
            return out
        L, H = config.num_layers, config.num_attention_heads
        D = config.token_dim // H
        kv = out.reshape(batch, config.num_virtual_tokens, 2 * L, H, D)
        kv = kv.permute(2, 0, 3, 1, 4)  # (2L, B, H_kv, T_v, D)
        return [(kv[2 * i], kv[2 * i + 1]) for i in range(L)]

    def prepare(self, kwargs: dict[str, Any], dtype: Any = None) -> dict[str, Any]:
        """The base model's arguments for a forward with the active prompt adapter inserted."""
        config = self.active_config()
        ids, embeds = kwargs.get("input_ids"), kwargs.get("inputs_embeds")
        source = embeds if embeds is not None else ids
        if source is None:
            raise ValueError("expected input_ids or inputs_embeds, found neither")
        source = source if isinstance(source, Tensor) else Tensor(source)
        B = source.shape[0]
        T_v = config.num_virtual_tokens
        out = dict(kwargs)
        if out.get("position_ids") is not None:
            warnings.warn("position ids are not supported with prompt learning (as in PEFT); "
                          "ignoring them", stacklevel=3)  # fmt: skip
        out["position_ids"] = None
        xp = xp_of(source.data)
        mask = out.get("attention_mask")
        if mask is not None:
            mask = mask if isinstance(mask, Tensor) else Tensor(mask)
            ones = Tensor(xp.ones((B, T_v), dtype=mask.dtype), device=mask.device)
            out["attention_mask"] = cat([ones, mask.to(ones.device)], dim=1)
        prompt = self.prompt(B)
        if is_prefix(config):
            if out.get("past_key_values") is not None:
                raise ValueError("prefix tuning provides past_key_values itself; found some given")
            out["past_key_values"] = prompt
            return out
        if embeds is None:
            embeds = self.model.get_input_embeddings()(ids)
        out["input_ids"] = None
        out["inputs_embeds"] = cat([prompt.to(embeds.dtype), embeds], dim=1)
        labels = out.get("labels")
        if labels is not None:
            labels = labels if isinstance(labels, Tensor) else Tensor(labels)
            pad = Tensor(xp.full((B, T_v), -100, dtype=labels.dtype), device=labels.device)
            out["labels"] = cat([pad, labels], dim=1)
        return out

    # ------------------------------------------------------------------ files
    def to_disk_keys(self, state_dict: dict[str, Any], adapter_name: str) -> dict[str, Any]:
        """PEFT's layout: one ``prompt_embeddings`` tensor (the encoder's output for every
        virtual token), plus any modules_to_save copy under ``base_model.<module>.<param>``."""
        out: dict[str, Any] = {SAVED_KEY: self.encoders[adapter_name].embedding_to_save()}
        marker = f".modules_to_save.{adapter_name}."
        for key, value in state_dict.items():
            if marker in key:
                module, param = key.split(marker)
                out[f"base_model.{module.removeprefix('base_model.model.')}.{param}"] = value
        return out

    def from_disk_keys(self, tensors: dict[str, Any], adapter_name: str,
                       shapes: dict[str, Any], source: Any) -> dict[str, Any]:  # fmt: skip
        from .adapter_io import check_adapter_keys  # noqa: PLC0415

        encoder = self.encoders[adapter_name]
        expected = {SAVED_KEY: tuple(encoder.embedding_to_save().shape)}
        memory: dict[str, Any] = {}
        marker = f".modules_to_save.{adapter_name}."
        for key, shape in shapes.items():
            if marker in key:
                module = key.split(marker)[0].removeprefix("base_model.model.")
                disk = f"base_model.{module}.{key.split(marker)[1]}"
                expected[disk] = tuple(shape)
                memory[disk] = key
        check_adapter_keys(expected, tensors, source)
        encoder.load_saved(tensors[SAVED_KEY])
        return {memory[k]: v for k, v in tensors.items() if k in memory}

    def config_for_saving(self, config: PeftConfig, adapter_name: str) -> PeftConfig:
        return config

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)


def is_prefix(config: Any) -> bool:
    """Prefix tuning hands its vectors to the layers as keys and values; the others prepend
    them to the embeddings."""
    return getattr(config, "peft_type", None) == PeftType.PREFIX_TUNING


def _is_adapter_param(name: str) -> bool:
    from .registry import parameter_prefixes  # noqa: PLC0415

    return any(p in name for p in parameter_prefixes())
