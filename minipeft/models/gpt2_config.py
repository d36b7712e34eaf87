"""``GPT2Config``: GPT-2's architecture sizes with transformers' field names and defaults.

Reads and writes the ``config.json`` of a transformers GPT-2 checkpoint (``model_type: "gpt2"``);
loading, saving, labels and unknown keys are handled by the base :class:`ModelConfig`. Importing
this module registers the class with :func:`minipeft.models.config.config_from_dict`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .config import SUPPORTED_ACTIVATIONS, ModelConfig, _fail, register_model_config

__all__ = ["GPT2Config"]


@register_model_config
@dataclass(kw_only=True)
class GPT2Config(ModelConfig):
    """GPT-2 with transformers' field names and defaults (``GPT2Config().to_dict()``).

    Sizes: V = vocab_size, C = n_embd, H = n_head, D = C / H, L = n_layer, inner = n_inner or 4 C.
    """

    model_type: ClassVar[str] = "gpt2"
    architecture_names: ClassVar[dict[str, str]] = {
        "causal_lm": "GPT2LMHeadModel",
        "seq_cls": "GPT2ForSequenceClassification",
        "base": "GPT2Model",
    }
    aliases: ClassVar[dict[str, str]] = {
        "hidden_size": "n_embd",
        "max_position_embeddings": "n_positions",
        "num_attention_heads": "n_head",
        "num_hidden_layers": "n_layer",
    }

    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: int | None = None
    activation_function: str = "gelu_new"
    resid_pdrop: float = 0.1
    embd_pdrop: float = 0.1
    attn_pdrop: float = 0.1
    layer_norm_epsilon: float = 1e-5
    initializer_range: float = 0.02
    summary_type: str = "cls_index"
    summary_use_proj: bool = True
    summary_activation: str | None = None
    summary_proj_to_labels: bool = True
    summary_first_dropout: float = 0.1
    scale_attn_weights: bool = True
    use_cache: bool = True
    bos_token_id: int | None = 50256
    eos_token_id: int | list[int] | None = 50256
    scale_attn_by_inverse_layer_idx: bool = False
    reorder_and_upcast_attn: bool = False
    add_cross_attention: bool = False
    tie_word_embeddings: bool = True

    def _validate_fields(self) -> None:
        self._check("a positive int", "vocab_size", "n_positions", "n_embd", "n_layer", "n_head")
        if self.n_inner is not None:
            self._check("a positive int", "n_inner")
        if self.n_embd % self.n_head:
            _fail(self, "n_embd", f"a multiple of n_head = {self.n_head}", self.n_embd)
        if self.activation_function not in SUPPORTED_ACTIVATIONS:
            _fail(self, "activation_function", f"one of {SUPPORTED_ACTIVATIONS}",
                  self.activation_function)  # fmt: skip
        self._check("a probability in [0, 1)", "resid_pdrop", "embd_pdrop", "attn_pdrop")
        self._check("a probability in [0, 1)", "summary_first_dropout")
        self._check("a positive number", "layer_norm_epsilon")
        self._check("a non-negative number", "initializer_range")
        self._check("True or False", "scale_attn_weights", "use_cache", "reorder_and_upcast_attn")
        self._check(
            "True or False", "tie_word_embeddings", "summary_use_proj", "summary_proj_to_labels"
        )
        for name in ("scale_attn_by_inverse_layer_idx", "add_cross_attention"):
            if getattr(self, name) is not False:  # these change the math; minipeft omits them
                _fail(self, name, "False (the only value minipeft supports)", getattr(self, name))
        self._check_token_id("bos_token_id", allow_list=False)
        self._check_token_id("eos_token_id", allow_list=True)

    # Read-only HF aliases (transformers' attribute_map) and derived sizes.
    @property
    def hidden_size(self) -> int:
        return self.n_embd

    @property
    def num_attention_heads(self) -> int:
        return self.n_head

    @property
    def num_hidden_layers(self) -> int:
        return self.n_layer

    @property
    def max_position_embeddings(self) -> int:
        return self.n_positions

    @property
    def num_key_value_heads(self) -> int:
        """GPT-2 has one key/value head per query head."""
        return self.n_head

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def inner_dim(self) -> int:
        """MLP width: n_inner, or 4 * n_embd when n_inner is None."""
        return self.n_inner if self.n_inner is not None else 4 * self.n_embd
