"""``PeftModel`` and ``get_peft_model``: Hugging Face PEFT's API on minipeft models.

    model = AutoModelForCausalLM.from_pretrained("base/")
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16))
    peft_model.print_trainable_parameters()
    ... train ...
    peft_model.save_pretrained("adapter/")        # adapter_config.json + adapter_model.safetensors
    merged = peft_model.merge_and_unload()        # a plain model, W ← W + s·B A

Parameter names, adapter files and printed lines are PEFT's, so an adapter trained here loads in
PEFT on the same transformers model and the other way round.
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Iterator
from typing import Any

from ..autograd import no_grad
from ..backend import to_device, to_numpy
from ..fileio import atomic_folder
from ..nn import Module
from .adapter_io import (
    adapter_metadata,
    check_adapter_keys,
    from_peft_keys,
    load_adapter_files,
    save_adapter,
    to_peft_keys,
)
from .config import PeftConfig, TaskType
from .lora_config import LoraConfig
from .lora_embedding import LoraEmbedding
from .matching import SEQ_CLS_HEAD_NAMES
from .provenance import (
    FINGERPRINT_KEY,
    base_fingerprint,
    base_mismatch,
    labels_metadata,
    warn_base_mismatch,
)
from .tuner import LoraModel

__all__ = ["PeftModel", "get_peft_model"]

PREFIX = "base_model.model."


def _prepare_config(config: PeftConfig) -> PeftConfig:
    """A copy of the config; SEQ_CLS adds the classification head to ``modules_to_save``."""
    config = copy.deepcopy(config)
    if _task(config) == TaskType.SEQ_CLS.value:
        names = list(config.modules_to_save or [])
        for head in ("classifier", "score"):  # SEQ_CLS_HEAD_NAMES in PEFT's (saved) order
            if head not in names:
                names.append(head)
        config.modules_to_save = names
    return config


def _task(config: PeftConfig) -> str | None:
    task = getattr(config, "task_type", None)
    return getattr(task, "value", task)


class PeftModel(Module):
    """A base model with one or more adapters; ``base_model`` is the :class:`LoraModel`."""

    def __init__(self, model: Module, peft_config: PeftConfig, adapter_name: str = "default"):
        super().__init__()
        if not isinstance(peft_config, LoraConfig):
            raise TypeError(
                f"minipeft's PeftModel supports LoraConfig, found {type(peft_config).__name__}"
            )
        config = _prepare_config(peft_config)
        if _task(config) == TaskType.SEQ_CLS.value and not any(
            n.split(".")[-1] in SEQ_CLS_HEAD_NAMES for n, _ in model.named_modules()
        ):
            raise ValueError("task_type SEQ_CLS needs a model with a 'score' or 'classifier' head")
        # Recorded before injection, while the weights are the base's own (see provenance).
        self.base_fingerprint = base_fingerprint(model, config.modules_to_save)
        self.base_model = LoraModel(model, config, adapter_name)

    # ------------------------------------------------------------------ pass-through
    @property
    def peft_config(self) -> dict[str, PeftConfig]:
        return self.base_model.peft_config

    @property
    def active_adapter(self) -> str:
        return self.base_model.active_adapter

    @property
    def config(self) -> Any:
        return getattr(self.base_model.model, "config", None)

    def get_base_model(self) -> Module:
        return self.base_model.model

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.base_model.model(*args, **kwargs)

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        return self.base_model.model.generate(*args, **kwargs)

    # ------------------------------------------------------------------ parameters
    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        """(trainable, all) parameter counts, each tied weight counted once."""
        trainable = total = 0
        for _, p in self.named_parameters():
            n = p.numel()
            total += n
            if p.requires_grad:
                trainable += n
        return trainable, total

    def print_trainable_parameters(self) -> None:
        """Print PEFT's exact line: ``trainable params: … || all params: … || trainable%: …``."""
        trainable, total = self.get_nb_trainable_parameters()
        print(
            f"trainable params: {trainable:,d} || all params: {total:,d} || "
            f"trainable%: {100 * trainable / total:.4f}"
        )

    # ------------------------------------------------------------------ adapters
    def add_adapter(self, adapter_name: str, peft_config: PeftConfig) -> None:
        """Add another adapter (inactive until :meth:`set_adapter`)."""
        self.base_model.inject_adapter(_prepare_config(peft_config), adapter_name)

    def set_adapter(self, adapter_name: str) -> None:
        self.base_model.set_adapter(adapter_name)

    def delete_adapter(self, adapter_name: str) -> None:
        self.base_model.delete_adapter(adapter_name)

    @contextlib.contextmanager
    def disable_adapter(self) -> Iterator[None]:
        """Inside the block the model is exactly the base model (merged adapters are unmerged)."""
        self.base_model.set_adapters_enabled(False)
        try:
            yield
        finally:
            self.base_model.set_adapters_enabled(True)

    def merge_adapter(self, safe_merge: bool = False) -> None:
        self.base_model.merge_adapter(safe_merge=safe_merge)

    def unmerge_adapter(self) -> None:
        self.base_model.unmerge_adapter()

    def merge_and_unload(self, safe_merge: bool = False) -> Module:
        """Merge the active adapter into the base weights and return the plain base model."""
        return self.base_model._unload(merge=True, safe_merge=safe_merge)

    def unload(self) -> Module:
        """Remove the adapters without merging; return the original base model."""
        return self.base_model._unload(merge=False)

    # ------------------------------------------------------------------ files
    def adapter_state_dict(self, adapter_name: str = "default") -> dict[str, Any]:
        """The adapter's tensors under PEFT's on-disk keys (host NumPy arrays)."""
        config = self.peft_config[adapter_name]
        sd = {k: to_numpy(v.data) for k, v in self.state_dict().items()}
        return to_peft_keys(sd, adapter_name, bias=getattr(config, "bias", "none"))

    def save_pretrained(self, save_directory: str | os.PathLike[str],
                        selected_adapters: list[str] | None = None) -> None:  # fmt: skip
        """Write each adapter as PEFT does (non-default ones into ``save_directory/<name>/``).

        The folder is written as a whole (a failure leaves the previous content); entries this
        save does not write (other adapters, a run's checkpoint and logs) are kept. Besides
        PEFT's files, the weights' metadata records the base fingerprint and, for a classifier,
        the class names (:mod:`minipeft.peft.provenance`).
        """
        names = selected_adapters or list(self.peft_config)
        for name in names:
            if name not in self.peft_config:
                raise ValueError(f"adapter {name!r} not found; available: {list(self.peft_config)}")
        base = self.get_base_model()
        metadata = {FINGERPRINT_KEY: self.base_fingerprint, **labels_metadata(base)}
        with atomic_folder(save_directory, keep=lambda entry: True) as tmp:
            for name in names:
                config = copy.deepcopy(self.peft_config[name])
                if not getattr(config, "base_model_name_or_path", None):
                    config.base_model_name_or_path = getattr(base, "name_or_path", None)
                save_adapter(tmp, config, self.adapter_state_dict(name), name, metadata)

    @classmethod
    def from_pretrained(
        cls,
        model: Module,
        model_id: str | os.PathLike[str],
        adapter_name: str = "default",
        is_trainable: bool = False,
        strict: bool = False,
    ) -> PeftModel:
        """Wrap ``model`` and load the adapter saved in ``model_id`` (frozen unless
        ``is_trainable``). Missing or unexpected keys and shape mismatches raise, leaving the
        model as it was. An adapter recorded for another base warns
        (:class:`~minipeft.peft.provenance.BaseModelMismatchWarning`), or raises with
        ``strict``."""
        config, tensors = load_adapter_files(model_id, adapter_name)
        mismatch = base_mismatch(
            adapter_metadata(model_id, adapter_name), model, _prepare_config(config), model_id,
            strict,
        )  # fmt: skip
        config.inference_mode = not is_trainable
        original = dict(model.named_modules())
        flags = [(p, p.requires_grad) for p in model.parameters()]
        peft_model = cls(model, config, adapter_name)
        try:
            peft_model._load_adapter_tensors(tensors, adapter_name, model_id)
        except Exception:
            peft_model.unload()
            _restore(model, original, flags)
            raise
        if not is_trainable:
            peft_model.requires_grad_(False)
        warn_base_mismatch(mismatch)
        return peft_model

    def load_adapter(self, model_id: str | os.PathLike[str], adapter_name: str,
                     is_trainable: bool = False) -> None:  # fmt: skip
        """Load another saved adapter into this model under ``adapter_name``."""
        config, tensors = load_adapter_files(model_id, adapter_name)
        config.inference_mode = not is_trainable
        model = self.get_base_model()
        original = dict(model.named_modules())
        flags = [(p, p.requires_grad) for p in model.parameters()]
        self.add_adapter(adapter_name, config)
        try:
            self._load_adapter_tensors(tensors, adapter_name, model_id)
        except Exception:
            self.base_model.delete_adapter(adapter_name)
            _restore(model, original, flags)  # unwrap layers only this adapter had wrapped
            raise
        if not is_trainable:
            for name, p in self.named_parameters():
                if f".{adapter_name}." in name:
                    p.requires_grad_(False)

    def _load_adapter_tensors(self, tensors: dict[str, Any], adapter_name: str,
                              source: Any) -> None:  # fmt: skip
        config = self.peft_config[adapter_name]
        own = self.state_dict()
        expected_disk = to_peft_keys(
            {k: v.shape for k, v in own.items()}, adapter_name, bias=config.bias
        )
        # PEFT also saves the whole table of a targeted embedding named like a vocabulary
        # layer (save_embedding_layers="auto", for resized vocabularies): load it into the base.
        tables = {
            k: tensors[k]
            for k in tensors
            if k.endswith(".base_layer.weight")
            and isinstance(self._module_at(k.removesuffix(".base_layer.weight")), LoraEmbedding)
        }
        tensors = {k: v for k, v in tensors.items() if k not in tables}
        check_adapter_keys(expected_disk, tensors, source)
        memory = {**from_peft_keys(tensors, adapter_name, config.modules_to_save), **tables}
        params = dict(self.named_parameters(remove_duplicate=False))
        buffers = dict(self.named_buffers())
        with no_grad():
            for key, value in memory.items():
                target = params.get(key, buffers.get(key))
                if target is None:
                    raise ValueError(f"{source}: adapter key {key!r} has no place in the model")
                target.data[...] = to_device(value.astype(target.dtype), target.device)

    def _module_at(self, name: str) -> Module | None:
        try:
            return self.get_submodule(name)
        except AttributeError:
            return None


def _restore(model: Module, modules: dict[str, Module], flags: list[tuple[Any, bool]]) -> None:
    """Undo a failed injection: put back the recorded modules (LoRA layers and modules_to_save
    wrappers it added) and the recorded ``requires_grad`` flags (injection freezes the model)."""
    for name, module in modules.items():
        if name:
            with contextlib.suppress(AttributeError):
                model.set_submodule(name, module)
    for p, flag in flags:
        p.requires_grad_(flag)


def get_peft_model(
    model: Module, peft_config: PeftConfig, adapter_name: str = "default"
) -> PeftModel:
    """Wrap ``model`` with a fresh adapter; only adapter parameters stay trainable."""
    return PeftModel(model, peft_config, adapter_name)
