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
from collections.abc import Iterator
from typing import Any

from ..autograd import no_grad
from ..backend import xp_of
from ..nn import Module, ModuleDict
from ..ops.api import cat
from ..tensor import Tensor, int64
from .config import PeftConfig, TaskType
from .matching import SEQ_CLS_HEAD_NAMES
from .mixed_batch import adapter_names_context, check_adapter_names
from .peft_model_files import AdapterFilesMixin
from .prompt_tuner import PromptTuner, is_prefix
from .provenance import (
    base_fingerprint,
)
from .registry import PeftMethod, method_for
from .tuners.base import BaseTuner

__all__ = [
    "PeftModel",
    "PeftModelForCausalLM",
    "PeftModelForSequenceClassification",
    "get_peft_model",
    "peft_model_class",
]

PREFIX = "base_model.model."


def _prepare_config(config: PeftConfig) -> PeftConfig:
    """A copy of the config; SEQ_CLS adds the classification head to ``modules_to_save``."""
    if not isinstance(config, PeftConfig):
        raise TypeError(f"expected a PeftConfig (LoraConfig, IA3Config, AdapterConfig, ...), "
                        f"found {type(config).__name__}")  # fmt: skip
    config = copy.deepcopy(config)
    if _task(config) == TaskType.SEQ_CLS.value and hasattr(config, "modules_to_save"):
        names = list(config.modules_to_save or [])
        for head in ("classifier", "score"):  # SEQ_CLS_HEAD_NAMES in PEFT's (saved) order
            if head not in names:
                names.append(head)
        config.modules_to_save = names
    return config


def _task(config: PeftConfig) -> str | None:
    task = getattr(config, "task_type", None)
    return getattr(task, "value", task)


class PeftModel(AdapterFilesMixin, Module):
    """A base model with one or more adapters. ``base_model`` is the tuner of the first
    adapter's method (a :class:`~minipeft.peft.tuners.base.BaseTuner`: ``LoraModel``,
    ``IA3Model``, ``BottleneckModel``); an adapter of another method gets a tuner of its own
    on the same model, so one model can carry, say, a LoRA and a bottleneck adapter trained
    together (``set_adapter(["lora", "bottleneck"])``)."""

    adds_regularization = False  # tuner penalties join the loss in the task classes (PEFT's)

    def __init__(self, model: Module, peft_config: PeftConfig, adapter_name: str = "default"):
        super().__init__()
        config = _prepare_config(peft_config)
        method = method_for(config)
        if _task(config) == TaskType.SEQ_CLS.value and not any(
            n.split(".")[-1] in SEQ_CLS_HEAD_NAMES for n, _ in model.named_modules()
        ):
            raise ValueError("task_type SEQ_CLS needs a model with a 'score' or 'classifier' head")
        # Recorded before injection, while the weights are the base's own (see provenance).
        self.base_fingerprint = base_fingerprint(model, getattr(config, "modules_to_save", None))
        self.prompt_encoder = ModuleDict()  # prompt-learning encoders live here (PEFT's place)
        self.base_model = self._make_tuner(method, model, config, adapter_name)
        # Every tuner on the model, first one included; a plain dict, so that the model's
        # parameters are registered once, under base_model.
        self.tuners: dict[str, BaseTuner] = {method.peft_type.value: self.base_model}

    def _make_tuner(self, method: PeftMethod, model: Module, config: PeftConfig,
                    adapter_name: str) -> Any:  # fmt: skip
        """A weight-side tuner, or for a prompt-learning method a :class:`PromptTuner` whose
        encoders go into ``self.prompt_encoder``."""
        if config.is_prompt_learning:
            return PromptTuner(model, config, adapter_name, self.prompt_encoder,
                               method.tuner_class())  # fmt: skip
        return method.tuner_class()(model, config, adapter_name)

    # ------------------------------------------------------------------ pass-through
    @property
    def peft_config(self) -> dict[str, PeftConfig]:
        merged: dict[str, PeftConfig] = {}
        for tuner in self.tuners.values():
            merged.update(tuner.peft_config)
        return merged

    @property
    def active_adapter(self) -> str | list[str]:
        names = self.active_adapters
        return names[0] if len(names) == 1 else names

    @property
    def active_adapters(self) -> list[str]:
        """The active adapters of every tuner, in the order they were activated."""
        out: list[str] = []
        for tuner in self.tuners.values():
            out.extend(tuner._active_list())
        return out

    @property
    def config(self) -> Any:
        return getattr(self.base_model.model, "config", None)

    def get_base_model(self) -> Module:
        return self.base_model.model

    def _active_prompt(self) -> PromptTuner | None:
        """The prompt-learning tuner whose adapter is active (at most one), else None."""
        active = [t for t in self.tuners.values()
                  if isinstance(t, PromptTuner) and t.active_config() is not None]  # fmt: skip
        if len(active) > 1:
            raise ValueError("two prompt-learning adapters are active; activate one of them")
        return active[0] if active else None

    def forward(self, *args: Any, adapter_names: list[str] | None = None, **kwargs: Any) -> Any:
        """The base model's forward; an active prompt adapter inserts its virtual tokens (or
        its key/value prefix), extends ``attention_mask`` with ones and ``labels`` with -100.
        ``adapter_names``: one LoRA adapter (or ``"__base__"``) per row, a mixed batch
        (:mod:`~minipeft.peft.mixed_batch`)."""
        if adapter_names is not None:
            with self._mixed_batch(adapter_names, args, kwargs):
                return self.forward(*args, **kwargs)
        prompt = self._active_prompt()
        if prompt is None:
            return self._regularized(self.base_model.model(*args, **kwargs))
        if args:
            kwargs = {"input_ids": args[0], **kwargs}
        return self._regularized(self.base_model.model(**prompt.prepare(kwargs)))

    def _regularized(self, out: Any) -> Any:
        """Add each tuner's :meth:`~minipeft.peft.tuners.base.BaseTuner.regularization_loss`
        (AdaLoRA's orthogonality penalty) to ``out.loss`` when there is one, as PEFT does (in
        eval mode too), and, as there, only in the task classes (``task_type`` CAUSAL_LM,
        SEQ_CLS): PEFT's plain PeftModel calls the base model past its tuner's forward.
        Never inside :meth:`without_regularization`."""
        if not self.adds_regularization or getattr(self, "_no_regularization", False):
            return out
        if getattr(out, "loss", None) is None:
            return out
        for tuner in self.tuners.values():
            extra = getattr(tuner, "regularization_loss", lambda: None)()
            if extra is not None:
                out.loss = out.loss + extra
        return out

    @contextlib.contextmanager
    def without_regularization(self) -> Iterator[None]:
        """Inside the block ``out.loss`` is the data's loss alone (held-out metrics use this:
        a training penalty is no part of a perplexity)."""
        before = getattr(self, "_no_regularization", False)
        self._no_regularization = True
        try:
            yield
        finally:
            self._no_regularization = before

    def update_and_allocate(self, global_step: int) -> None:
        """Each tuner's per-step schedule after ``optimizer.step()``, before ``zero_grad()``
        (AdaLoRA's rank allocation; PEFT users call ``model.base_model.update_and_allocate``)."""
        for tuner in self.tuners.values():
            if hasattr(tuner, "update_and_allocate"):
                tuner.update_and_allocate(global_step)

    def training_state(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(host arrays, JSON-able meta) of the tuners' state that is no parameter (AdaLoRA's
        allocator), keyed by tuner; the Trainer checkpoints it, so a resumed run is exact."""
        arrays: dict[str, Any] = {}
        meta: dict[str, Any] = {}
        for key, tuner in self.tuners.items():
            tuner_arrays, tuner_meta = getattr(tuner, "training_state", lambda: ({}, {}))()
            if tuner_meta:
                meta[key] = tuner_meta
                arrays.update({f"{key}/{k}": v for k, v in tuner_arrays.items()})
        return arrays, meta

    def load_training_state(self, arrays: dict[str, Any], meta: dict[str, Any]) -> None:
        """Restore what :meth:`training_state` returned."""
        for key, tuner_meta in meta.items():
            mine = {k.removeprefix(f"{key}/"): v for k, v in arrays.items()
                    if k.startswith(f"{key}/")}  # fmt: skip
            self.tuners[key].load_training_state(mine, tuner_meta)

    def _mixed_batch(self, names: Any, args: tuple, kwargs: dict[str, Any]) -> Any:
        """The context in which layers route row i through ``names[i]`` (checked first)."""
        batch = args[0] if args else kwargs.get("input_ids", kwargs.get("inputs_embeds"))
        size = len(batch) if batch is not None else -1
        checked = check_adapter_names(self.tuners, names, size, self.training)
        return adapter_names_context(checked)

    def generate(self, input_ids: Any = None, attention_mask: Any = None,
                 adapter_names: list[str] | None = None, **kwargs: Any) -> Any:  # fmt: skip
        """The base model's ``generate`` (greedy, sampling, KV cache), with an active prompt
        adapter's virtual tokens as ``inputs_embeds`` or its prefix as ``past_key_values``;
        returns the prompt's ids and the new ones (no virtual tokens). ``adapter_names``: one
        LoRA adapter (or ``"__base__"``) per row, as in :meth:`forward`."""
        if adapter_names is not None:
            with self._mixed_batch(adapter_names, (input_ids,), kwargs):
                return self.generate(input_ids, attention_mask=attention_mask, **kwargs)
        model = self.get_base_model()
        prompt = self._active_prompt()
        if prompt is None:
            return model.generate(input_ids, attention_mask=attention_mask, **kwargs)
        device = model.get_input_embeddings().weight.device
        ids = input_ids if isinstance(input_ids, Tensor) else Tensor(input_ids, device=device)
        ids = ids.to(device).to(int64)
        with no_grad():
            learned = prompt.prompt(ids.shape[0])
            if is_prefix(prompt.active_config()):
                return model.generate(ids, attention_mask=attention_mask,
                                      past_key_values=learned, **kwargs)  # fmt: skip
            embeds = cat([learned, model.get_input_embeddings()(ids)], dim=1)
            if attention_mask is not None:
                mask = Tensor(attention_mask, device=device)
                ones = Tensor(xp_of(mask.data).ones((ids.shape[0], learned.shape[1]),
                              dtype=mask.dtype), device=device)  # fmt: skip
                attention_mask = cat([ones, mask], dim=1)
            # PEFT drops position ids here, so transformers numbers positions 0, 1, 2, ...
            return model.generate(ids, attention_mask=attention_mask, inputs_embeds=embeds,
                                  positions_from_mask=False, **kwargs)  # fmt: skip

    def tuner_of(self, adapter_name: str) -> BaseTuner:
        """The tuner holding adapter ``adapter_name``."""
        for tuner in self.tuners.values():
            if adapter_name in tuner.peft_config:
                return tuner
        raise ValueError(f"adapter {adapter_name!r} not found; available: {list(self.peft_config)}")

    def method_of(self, adapter_name: str) -> PeftMethod:
        return method_for(self.tuner_of(adapter_name).peft_config[adapter_name])

    # ------------------------------------------------------------------ parameters
    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        """(trainable, all) parameter counts, each tied weight counted once; a 4-bit weight
        counts the parameters its bytes hold (two per byte, as PEFT counts bitsandbytes')."""
        trainable = total = 0
        for _, p in self.named_parameters():
            n = p.numel() * getattr(p, "params_per_element", 1)
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
        """Add another adapter (inactive until :meth:`set_adapter`); an adapter of another
        method than the model's others gets a tuner of its own."""
        if adapter_name in self.peft_config:
            raise ValueError(f"adapter {adapter_name!r} already exists; pick another name")
        config = _prepare_config(peft_config)
        method = method_for(config)
        key = method.peft_type.value
        if key in self.tuners:
            self.tuners[key].inject_adapter(config, adapter_name)
            return
        tuner = self._make_tuner(method, self.get_base_model(), config, adapter_name)
        tuner.set_adapter([])  # inactive, like any added adapter
        self.tuners[key] = tuner

    def set_adapter(self, adapter_name: str | list[str]) -> None:
        """Activate one adapter, or several at once (a list: each tuner runs the ones it holds,
        in the given order, e.g. two bottleneck adapters stacked, or LoRA plus a bottleneck)."""
        names = [adapter_name] if isinstance(adapter_name, str) else list(adapter_name)
        if not names:
            raise ValueError("set_adapter: expected at least one adapter name, found none")
        for name in names:
            self.tuner_of(name)  # raises for an unknown name before anything changes
        for tuner in self.tuners.values():
            tuner.set_adapter([n for n in names if n in tuner.peft_config])

    def delete_adapter(self, adapter_name: str) -> None:
        self.tuner_of(adapter_name).delete_adapter(adapter_name)

    def add_weighted_adapter(self, adapters: list[str], weights: list[float], adapter_name: str,
                             combination_type: str = "svd", **kwargs: Any) -> None:  # fmt: skip
        """A new LoRA adapter combined from trained ones with PEFT's semantics (and without
        its rsLoRA/DoRA errors): :mod:`minipeft.peft.tuners.lora.combine`."""
        if not adapters:
            raise ValueError("add_weighted_adapter: adapters: expected at least one name")
        tuner = self.tuner_of(adapters[0])
        if not hasattr(tuner, "add_weighted_adapter"):
            raise ValueError(f"add_weighted_adapter combines LoRA adapters; {adapters[0]!r} is "
                             f"an adapter of {type(tuner).__name__}")  # fmt: skip
        tuner.add_weighted_adapter(adapters, weights, adapter_name, combination_type, **kwargs)

    @contextlib.contextmanager
    def disable_adapter(self) -> Iterator[None]:
        """Inside the block the model is exactly the base model (merged adapters are unmerged)."""
        for tuner in self.tuners.values():
            tuner.set_adapters_enabled(False)
        try:
            yield
        finally:
            for tuner in self.tuners.values():
                tuner.set_adapters_enabled(True)

    def merge_adapter(self, safe_merge: bool = False) -> None:
        self._check_mergeable()
        for tuner in self.tuners.values():
            tuner.merge_adapter(safe_merge=safe_merge)

    def unmerge_adapter(self) -> None:
        for tuner in self.tuners.values():
            tuner.unmerge_adapter()

    def _check_mergeable(self) -> None:
        for tuner in self.tuners.values():
            if tuner._active_list():
                tuner.check_mergeable()

    def merge_and_unload(self, safe_merge: bool = False, dequantize: bool = False) -> Module:
        """Merge the active adapters into the base weights and return the plain base model.
        On a 4-bit base the merge requantizes (with PEFT's rounding warning); ``dequantize``
        instead returns a full-precision model: dequantized, then merged exactly."""
        self._check_mergeable()
        if dequantize:  # every Linear4bit, wrapped by an adapter layer or not, becomes float
            from ..quant.model import dequantize_model  # noqa: PLC0415 (only for 4-bit bases)

            dequantize_model(self.get_base_model())
        model = self.get_base_model()
        for tuner in self.tuners.values():
            model = tuner.merge_and_unload(safe_merge=safe_merge)
        return model

    def unload(self) -> Module:
        """Remove the adapters without merging; return the original base model."""
        model = self.get_base_model()
        for tuner in self.tuners.values():
            model = tuner.unload()
        return model


class PeftModelForCausalLM(PeftModel):
    """A PEFT model over a causal LM (``task_type="CAUSAL_LM"``), PEFT's class of that name."""

    adds_regularization = True


class PeftModelForSequenceClassification(PeftModel):
    """A PEFT model over a classifier (``task_type="SEQ_CLS"``); its head trains with it."""

    adds_regularization = True


TASK_CLASSES: dict[str, type[PeftModel]] = {
    TaskType.CAUSAL_LM.value: PeftModelForCausalLM,
    TaskType.SEQ_CLS.value: PeftModelForSequenceClassification,
}


def peft_model_class(config: PeftConfig) -> type[PeftModel]:
    """PEFT's choice of class by ``task_type`` (PeftModel when it has none of ours)."""
    return TASK_CLASSES.get(_task(config) or "", PeftModel)


def get_peft_model(
    model: Module, peft_config: PeftConfig, adapter_name: str = "default"
) -> PeftModel:
    """Wrap ``model`` with a fresh adapter; only adapter parameters stay trainable. The class
    follows ``task_type`` (:class:`PeftModelForCausalLM`, ...)."""
    return peft_model_class(peft_config)(model, peft_config, adapter_name)
