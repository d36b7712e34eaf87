"""Saving and loading a :class:`~minipeft.peft.PeftModel`'s adapters (PEFT's files, or the
method's own, e.g. AdapterHub's for bottleneck adapters).

    peft_model.save_pretrained("adapter/")                  # every adapter; non-default ones in
                                                            # adapter/<name>/
    peft_model = PeftModel.from_pretrained(model, "adapter/")
    peft_model.load_adapter("other/", "other")

Loading checks every on-disk tensor against the model before anything is copied and leaves the
model as it was on failure; saving writes the folder whole (temp + rename).
"""

from __future__ import annotations

import copy
import os
from typing import Any

from ..autograd import no_grad
from ..backend import to_device, to_numpy
from ..fileio import atomic_folder
from ..nn import Module
from .adapter_io import adapter_metadata, load_adapter_files, save_adapter
from .provenance import FINGERPRINT_KEY, base_mismatch, labels_metadata, warn_base_mismatch
from .registry import method_for
from .tuners.base import restore_modules

__all__ = ["AdapterFilesMixin"]


class AdapterFilesMixin:
    """``adapter_state_dict``, ``save_pretrained``, ``from_pretrained``, ``load_adapter``: the
    file side of :class:`~minipeft.peft.PeftModel` (which supplies ``tuner_of``,
    ``peft_config``, ``add_adapter`` and the module methods)."""

    def adapter_state_dict(self, adapter_name: str = "default") -> dict[str, Any]:
        """The adapter's tensors under its method's on-disk keys (host NumPy arrays)."""
        tuner = self.tuner_of(adapter_name)
        sd = {k: to_numpy(v.data) for k, v in self.state_dict().items()}
        return tuner.to_disk_keys(sd, adapter_name)

    def save_pretrained(self, save_directory: str | os.PathLike[str],
                        selected_adapters: list[str] | None = None,
                        path_initial_model_for_weight_conversion: str | os.PathLike[str] | None
                        = None) -> None:  # fmt: skip
        """Write each adapter in its method's format (PEFT's, or AdapterHub's for bottleneck
        adapters); non-default ones go into ``save_directory/<name>/``.

        ``path_initial_model_for_weight_conversion`` (PEFT's): the folder where this adapter was
        saved right after a PiSSA / OLoRA initialisation; the adapter is then saved as plain
        LoRA (rank 2r) that applies to the original base weights (the tuner's
        ``convert_for_initial_model``). Unlike PEFT, that folder is only read, never rewritten.

        The folder is written as a whole (a failure leaves the previous content); entries this
        save does not write (other adapters, a run's checkpoint and logs) are kept. Besides
        the method's files, the weights' metadata records the base fingerprint and, for a
        classifier, the class names (:mod:`minipeft.peft.provenance`).
        """
        names = selected_adapters or list(self.peft_config)
        for name in names:
            if name not in self.peft_config:
                raise ValueError(f"adapter {name!r} not found; available: {list(self.peft_config)}")
        base = self.get_base_model()
        metadata = {FINGERPRINT_KEY: self.base_fingerprint, **labels_metadata(base)}
        with atomic_folder(save_directory, keep=lambda entry: True) as tmp:
            for name in names:
                tuner = self.tuner_of(name)
                config = copy.deepcopy(tuner.peft_config[name])
                if not getattr(config, "base_model_name_or_path", None):
                    config.base_model_name_or_path = getattr(base, "name_or_path", None)
                config = tuner.config_for_saving(config, name)
                tensors = self.adapter_state_dict(name)
                if path_initial_model_for_weight_conversion is not None:
                    initial = path_initial_model_for_weight_conversion
                    config, tensors = tuner.convert_for_initial_model(config, tensors, name,
                                                                      initial)  # fmt: skip
                save_adapter(tmp, config, tensors, name, metadata,
                             fmt=method_for(config).files)  # fmt: skip

    @classmethod
    def from_pretrained(
        cls,
        model: Module,
        model_id: str | os.PathLike[str],
        adapter_name: str = "default",
        is_trainable: bool = False,
        strict: bool = False,
    ) -> Any:
        """Wrap ``model`` and load the adapter saved in ``model_id`` (frozen unless
        ``is_trainable``). Missing or unexpected keys and shape mismatches raise, leaving the
        model as it was. An adapter recorded for another base warns
        (:class:`~minipeft.peft.provenance.BaseModelMismatchWarning`), or raises with
        ``strict``."""
        from .peft_model import PeftModel, _prepare_config, peft_model_class  # noqa: PLC0415

        config, tensors = load_adapter_files(model_id, adapter_name)
        mismatch = base_mismatch(
            adapter_metadata(model_id, adapter_name), model, _prepare_config(config), model_id,
            strict,
        )  # fmt: skip
        config.inference_mode = not is_trainable
        original = dict(model.named_modules())
        flags = [(p, p.requires_grad) for p in model.parameters()]
        if cls is PeftModel:  # PEFT: the task class the adapter's task_type names
            cls = peft_model_class(config)
        peft_model = cls(model, config, adapter_name)
        try:
            peft_model._load_adapter_tensors(tensors, adapter_name, model_id)
        except Exception:
            peft_model.unload()
            restore_modules(model, original, flags)
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
        tuners = dict(self.tuners)
        self.add_adapter(adapter_name, config)
        try:
            self._load_adapter_tensors(tensors, adapter_name, model_id)
        except Exception:
            tuner = self.tuner_of(adapter_name)
            if tuner.peft_config.keys() == {adapter_name}:  # a tuner made for this adapter
                tuner.unload()
            else:
                tuner.delete_adapter(adapter_name)
            self.tuners = tuners
            restore_modules(model, original, flags)  # unwrap layers only this adapter wrapped
            raise
        if not is_trainable:
            for name, p in self.named_parameters():
                if f".{adapter_name}." in name or name.endswith(f".{adapter_name}"):
                    p.requires_grad_(False)

    def _load_adapter_tensors(self, tensors: dict[str, Any], adapter_name: str,
                              source: Any) -> None:  # fmt: skip
        """Check the on-disk tensors against the model (one error listing every mismatch),
        then copy them into the adapter's parameters."""
        tuner = self.tuner_of(adapter_name)
        shapes = {k: v.shape for k, v in self.state_dict().items()}
        memory = tuner.from_disk_keys(tensors, adapter_name, shapes, source)
        params = dict(self.named_parameters(remove_duplicate=False))
        buffers = dict(self.named_buffers())
        with no_grad():
            for key, value in memory.items():
                target = params.get(key, buffers.get(key))
                if target is None:
                    raise ValueError(f"{source}: adapter key {key!r} has no place in the model")
                target.data[...] = to_device(value.astype(target.dtype), target.device)
