"""PEFT methods, one folder each, on one seam (:mod:`minipeft.peft.tuners.base`).

Built in: ``lora/`` (LoRA on linear and embedding layers), ``adalora/`` (AdaLoRA: LoRA in SVD
form with rank allocation during training), ``ia3/`` (IA3 scaling vectors) and ``bottleneck/``
(AdapterHub's bottleneck adapters: seq_bn, double_seq_bn, par_bn).

How to add a tuner
==================

A method is a folder ``tuners/<method>/`` with three small modules and one registration; no
code outside the folder changes (``get_peft_model``, ``PeftModel.from_pretrained`` /
``save_pretrained``, ``minipeft finetune --method NAME --set k=v`` and the comparison jobs all
find it through :mod:`minipeft.peft.registry`).

1. ``config.py``: a validated dataclass subclassing :class:`~minipeft.peft.config.PeftConfig`
   with ``PEFT_TYPE`` set, the reference library's field names and defaults, and errors of the
   form ``<Class>.<field>: expected ..., found ...`` (``self._bad``). Pure Python: it must not
   import the engine. At the bottom, :func:`~minipeft.peft.registry.register_peft_method`
   with the tuner's dotted path, the parameter ``prefix`` (every adapter parameter's name
   contains it: freezing and adapter-only state dicts are filters on it), per-model default
   targets, and the CLI names (``presets``). Add the module to ``registry._BUILTIN_METHODS``.
2. ``layer.py``: a :class:`~minipeft.peft.tuners.base.BaseTunerLayer` that wraps the base layer
   (``self.base_layer``; never edit it), keeps per-adapter containers named in
   ``adapter_layer_names`` (trainable) and ``other_param_names`` (the rest), and implements
   ``update_layer(adapter_name, ...)`` and ``forward`` (call ``self._disabled_or_merged()``
   first). If the method can be merged, implement ``merge_weight`` / ``unmerge_weight`` (and
   ``merge_bias`` / ``unmerge_bias`` if it changes the bias) on raw arrays: the base class
   reads and writes the weight through the base-weight protocol, so a 4-bit base layer works
   unchanged.
3. ``model.py``: a :class:`~minipeft.peft.tuners.base.BaseTuner` with ``prefix``,
   ``layer_class``, ``config_class`` and ``_create_and_replace(config, adapter_name, name,
   target)``; override ``_find_targets`` when targets are not PEFT's ``target_modules`` rules,
   ``_check_target`` to refuse a target before anything changes, ``check_mergeable`` when
   the method cannot merge, and ``to_disk_keys`` / ``from_disk_keys`` when its files are not
   PEFT's (then also register an :class:`~minipeft.peft.adapter_io.AdapterFiles`).
   Optional hooks (AdaLoRA uses them all): ``regularization_loss()`` (a Tensor the task classes
   add to a forward's loss), ``update_and_allocate(step)`` (run after every optimizer step by
   the finetune job), ``training_state()`` / ``load_training_state(arrays, meta)`` (state that
   is no parameter, kept in Trainer checkpoints) and ``report()`` (printed after training).
4. Tests: the count of trainable parameters against the formula, "at init ≡ base", disable ⇒
   base, merge ≡ unmerged, only adapter parameters get gradients, and an interop test against
   the reference library's files and logits.
"""

from __future__ import annotations

from .base import BaseTuner, BaseTunerLayer, get_base_weight, set_base_weight

__all__ = ["BaseTuner", "BaseTunerLayer", "get_base_weight", "set_base_weight"]
