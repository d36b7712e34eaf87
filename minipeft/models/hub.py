"""Auto classes: pick the architecture from ``config.json``'s ``model_type``, as transformers does.

    model = AutoModelForCausalLM.from_pretrained("path/to/gpt2", device="cuda")
    clf = AutoModelForSequenceClassification.from_pretrained("path/to/gpt2")  # fresh ``score``
    model = AutoModelForCausalLM.from_config(GPT2Config(n_layer=2), seed=0)

A folder is Hugging Face's: ``config.json`` + ``model.safetensors`` (or shards with an index);
``model.save_pretrained(folder)`` writes one that transformers loads, and the other way round.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

from .config import ModelConfig, load_config
from .gpt2 import GPT2ForSequenceClassification, GPT2LMHeadModel, GPT2Model
from .heads import PreTrainedModel
from .llama import LlamaForCausalLM, LlamaForSequenceClassification, LlamaModel

__all__ = ["AutoModel", "AutoModelForCausalLM", "AutoModelForSequenceClassification"]


class _AutoClass:
    """Dispatch on ``model_type``; subclasses fill ``_mapping`` (model_type -> class)."""

    _mapping: ClassVar[dict[str, type[PreTrainedModel]]] = {}

    def __init__(self) -> None:
        raise OSError(
            f"{type(self).__name__} is not instantiated; use {type(self).__name__}."
            "from_pretrained(folder) or .from_config(config)"
        )

    @classmethod
    def _class_for(cls, model_type: str, source: str) -> type[PreTrainedModel]:
        if model_type not in cls._mapping:
            raise ValueError(
                f"{source}: unsupported model_type {model_type!r} for {cls.__name__}; "
                f"supported: {sorted(cls._mapping)}"
            )
        return cls._mapping[model_type]

    @classmethod
    def from_config(cls, config: ModelConfig, seed: int | None = None) -> PreTrainedModel:
        """A freshly initialised model for ``config`` (``seed``: a private generator)."""
        model_cls = cls._class_for(getattr(config, "model_type", type(config).__name__), "config")
        return model_cls.from_config(config, seed=seed)

    @classmethod
    def from_pretrained(
        cls,
        folder: str | os.PathLike,
        device: str = "cpu",
        dtype: Any = None,
        seed: int | None = None,
        **config_overrides: Any,
    ) -> PreTrainedModel:
        """Load a HF checkpoint folder onto ``device`` (float32 unless ``dtype``), eval mode;
        keyword arguments override config fields (``num_labels=4``). A ``.gguf`` file or a
        known checkpoint name (``smollm2-135m``) works too (:mod:`minipeft.models.gguf`)."""
        config = load_config(folder)  # raises naming the folder when config.json is bad
        model_cls = cls._class_for(config.model_type, os.fspath(folder))
        return model_cls.from_pretrained(folder, device=device, dtype=dtype, seed=seed,
                                         **config_overrides)  # fmt: skip


class AutoModel(_AutoClass):
    """The bare trunk (``GPT2Model`` / ``LlamaModel``): hidden states, no head."""

    _mapping = {"gpt2": GPT2Model, "llama": LlamaModel}


class AutoModelForCausalLM(_AutoClass):
    """``GPT2LMHeadModel`` / ``LlamaForCausalLM``."""

    _mapping = {"gpt2": GPT2LMHeadModel, "llama": LlamaForCausalLM}


class AutoModelForSequenceClassification(_AutoClass):
    """``GPT2ForSequenceClassification`` / ``LlamaForSequenceClassification``; loading a causal
    LM checkpoint initialises ``score`` fresh and warns, as transformers does."""

    _mapping = {"gpt2": GPT2ForSequenceClassification, "llama": LlamaForSequenceClassification}
