"""What the prompt-side methods share: ``PromptLearningConfig``, sizing it from a model, and the
encoders' save/load/fold mechanics (PEFT 0.21.2's ``PromptLearningConfig``,
``_prepare_prompt_learning_config`` and ``BasePromptEncoder``).

Prompt tuning, prefix tuning and P-tuning learn ``T_v`` virtual tokens instead of wrapping
modules. Their configs carry the model's sizes (``token_dim`` C, ``num_layers`` L,
``num_attention_heads`` H), filled in from the model's config by
:func:`prepare_prompt_learning_config` when a PeftModel is built.

On disk every method keeps one tensor, ``prompt_embeddings``: the encoder's *output* for every
virtual token (PEFT's ``get_prompt_embedding_to_save``). For a reparameterised encoder (prefix
tuning with ``prefix_projection``, P-tuning's MLP) that output cannot be turned back into the
embedding + MLP that made it, so a loaded encoder is **folded**: it holds the saved rows in
``embedding.weight`` and its forward is a plain row lookup (PEFT builds such an encoder when
``inference_mode=True`` and reads ``embedding.weight`` directly in ``get_prompt``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ... import nn
from ...autograd import no_grad
from ...backend import to_numpy
from ...creation import as_array
from ..config import PeftConfig, TaskType, is_int

__all__ = ["PromptEncoderBase", "PromptLearningConfig", "prepare_prompt_learning_config"]

_SIZES = ("num_layers", "token_dim", "num_attention_heads")


@dataclass
class PromptLearningConfig(PeftConfig):
    """Fields every prompt-learning config carries (PEFT's names and defaults, all None until
    :func:`prepare_prompt_learning_config` reads them off the model)."""

    num_virtual_tokens: int | None = None  # T_v (required by use time)
    token_dim: int | None = None  # C; prefix tuning on GQA: H_kv · D
    num_transformer_submodules: int | None = None  # 1 decoder-only, 2 encoder-decoder
    num_attention_heads: int | None = None  # H; prefix tuning on GQA: H_kv
    num_layers: int | None = None  # L
    modules_to_save: list[str] | None = None  # fully trained, saved copies (e.g. "score")

    @property
    def is_prompt_learning(self) -> bool:
        return True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_virtual_tokens is not None:
            self.check_num_virtual_tokens()
        for name in ("token_dim", "num_attention_heads", "num_layers"):
            self._positive(name)
        n = self.num_transformer_submodules
        if n is not None and (not is_int(n) or n not in (1, 2)):
            raise self._bad("num_transformer_submodules",
                            "None, 1 (decoder-only) or 2 (encoder-decoder)", n)  # fmt: skip
        self.modules_to_save = self._module_list(self.modules_to_save, "modules_to_save")

    def check_num_virtual_tokens(self) -> None:
        n = self.num_virtual_tokens
        if not is_int(n) or n < 1:
            raise self._bad("num_virtual_tokens", "an integer >= 1", n)

    def _positive(self, name: str) -> None:
        value = getattr(self, name)
        if value is not None and (not is_int(value) or value < 1):
            raise self._bad(name, "None or an integer >= 1", value)


# ------------------------------------------------------------------------- sizing from a model
def _read(model_config: Any, *names: str) -> int | None:
    """The first of ``names`` the model config has (a config object or a config.json dict)."""
    for name in names:
        value = (model_config.get(name) if isinstance(model_config, dict)
                 else getattr(model_config, name, None))  # fmt: skip
        if value is not None:
            return value
    return None


def _model_sizes(config: PromptLearningConfig, model_config: Any) -> dict[str, Any]:
    """PEFT's sizes for this config on this model, and how to describe each one in an error."""
    if isinstance(model_config, dict) and "text_config" in model_config:
        model_config = model_config["text_config"]  # a VLM: its language model (as PEFT)
    layers = _read(model_config, "num_hidden_layers", "num_layers", "n_layer")
    hidden = _read(model_config, "hidden_size", "n_embd", "d_model")
    heads = _read(model_config, "num_attention_heads", "n_head", "num_heads",
                  "encoder_attention_heads")  # fmt: skip
    sizes = {
        "num_layers": (layers, f"{layers} layers"),
        "token_dim": (hidden, f"hidden size {hidden}"),
        "num_attention_heads": (heads, f"{heads} attention heads"),
    }
    kv_heads = _read(model_config, "num_key_value_heads")
    if config.peft_type == "PREFIX_TUNING" and kv_heads is not None and hidden and heads:
        # Grouped-query attention (PEFT #1901): the prefix is keys and values, H_kv heads of D.
        head_dim = _read(model_config, "head_dim") or hidden // heads
        width = head_dim * kv_heads
        what = (
            f"hidden size {hidden}"
            if width == hidden
            else f"key/value width {width} (head_dim {head_dim} x {kv_heads} key/value heads)"
        )
        sizes["token_dim"] = (width, what)
        sizes["num_attention_heads"] = (kv_heads, f"{kv_heads} key/value heads")
    return sizes


def prepare_prompt_learning_config(config: PromptLearningConfig, model_config: Any) -> Any:
    """Fill ``config``'s model sizes from ``model_config`` in place and return it (PEFT's
    ``_prepare_prompt_learning_config`` + the submodule default of ``_setup_prompt_encoder``).

    Sets ``num_layers`` L (``num_hidden_layers`` | ``num_layers`` | ``n_layer``), ``token_dim``
    C (``hidden_size`` | ``n_embd`` | ``d_model``) and ``num_attention_heads`` H (``..._heads``
    | ``n_head``); for prefix tuning on a model with ``num_key_value_heads`` it uses
    ``token_dim = head_dim · H_kv`` and ``num_attention_heads = H_kv``. Then
    ``num_transformer_submodules`` (2 for SEQ_2_SEQ_LM, else 1) and ``encoder_hidden_size``
    (``token_dim``) where the config has that field and it is None.

    Unlike PEFT, a size the config already carries must equal the model's: an adapter made for
    another width or depth is refused with a ValueError naming both.
    """
    config.check_num_virtual_tokens()  # None, too: it has no default
    sizes = _model_sizes(config, model_config)
    for name, (model_value, what) in sizes.items():
        given = getattr(config, name)
        if given is None and model_value is None:
            raise config._bad(name, "an integer >= 1 (the model config does not say it)", None)
        if given is not None and model_value is not None and given != model_value:
            raise ValueError(
                f"{type(config).__name__}: the prompt adapter was made for {name} {given}; "
                f"this model has {what}"
            )
    for name, (model_value, _) in sizes.items():
        if getattr(config, name) is None:
            setattr(config, name, model_value)
    if config.num_transformer_submodules is None:
        seq2seq = config.task_type == TaskType.SEQ_2_SEQ_LM
        config.num_transformer_submodules = 2 if seq2seq else 1
    if hasattr(config, "encoder_hidden_size") and config.encoder_hidden_size is None:
        config.encoder_hidden_size = config.token_dim
    return config


def require_sizes(config: Any, *names: str) -> None:
    """An encoder needs a prepared config: a clear error otherwise."""
    for name in ("num_virtual_tokens", *names):
        if getattr(config, name, None) is None:
            raise ValueError(
                f"{type(config).__name__}.{name}: expected an integer >= 1, found None "
                "(call prepare_prompt_learning_config(config, model.config) first)"
            )


# ------------------------------------------------------------------------- encoders
class PromptEncoderBase(nn.Module):
    """An encoder of virtual tokens: ``forward(indices (B, T) int) -> (B, T, width)``; its
    ``embedding`` has the T rows, one per virtual token (PEFT's ``BasePromptEncoder``).

    ``folded`` is True when forward is the plain lookup ``embedding(indices)``: always for
    prompt tuning and prefix tuning without projection; for a reparameterised encoder (the
    ``head_names`` modules) when built with ``inference_mode=True`` or after :meth:`load_saved`.
    """

    folded: bool = True
    head_names: tuple[str, ...] = ()  # the reparameterisation's modules, dropped by fold()

    def output_width(self) -> int:
        """The width of one output row (C, or 2·L·C for prefix tuning)."""
        raise NotImplementedError

    def embedding_to_save(self) -> np.ndarray:
        """PEFT's ``prompt_embeddings``: the output for indices ``0..T-1``, (T, width), as a host
        array (``get_prompt_embedding_to_save``; just ``embedding.weight`` when folded)."""
        weight = self.embedding.weight
        if self.folded:
            return to_numpy(weight.data).copy()
        indices = as_array(np.arange(weight.shape[0])[None], device=weight.device)
        with no_grad():
            return to_numpy(self(indices).data[0]).copy()

    def load_saved(self, array: Any) -> None:
        """Load a ``prompt_embeddings`` array, (T, width) (PEFT's ``_load_adapter_state_dict``).

        A folded encoder copies it into ``embedding.weight``, as PEFT does. A reparameterised
        one is folded first (embedding := the saved rows, MLP dropped), since the rows already
        are the MLP's output; PEFT, given a trainable encoder, would instead feed them through
        a fresh MLP (P-tuning) or fail on the shape (prefix projection).
        """
        array = to_numpy(as_array(array))
        expected = (self.embedding.weight.shape[0], self.output_width())
        if tuple(array.shape) != expected:
            raise ValueError(
                f"{type(self).__name__}.load_saved: expected prompt_embeddings of shape "
                f"{expected}, found {tuple(array.shape)}"
            )
        if not self.folded:
            self.fold()
        weight = self.embedding.weight
        weight.data[...] = as_array(array.astype(weight.dtype), device=weight.device)

    def fold(self) -> None:
        """Replace embedding + MLP by one embedding holding the current outputs; forward gives
        the same values, and the folded rows stay trainable if the embedding was."""
        rows, weight = self.embedding_to_save(), self.embedding.weight
        embedding = nn.Embedding(*rows.shape, device=weight.device, dtype=weight.dtype)
        embedding.weight.data[...] = as_array(rows, device=weight.device)
        embedding.requires_grad_(weight.requires_grad)
        self.embedding = embedding
        for name in self.head_names:
            if name in self._modules:
                delattr(self, name)
        self.folded = True
