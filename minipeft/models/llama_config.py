"""``LlamaConfig``: LLaMA's architecture sizes with transformers' field names and defaults.

Reads and writes the ``config.json`` of a transformers LLaMA checkpoint (``model_type: "llama"``),
including RoPE's base in either the transformers 5 ``rope_parameters`` form or the transformers 4
top-level ``rope_theta``; only plain RoPE is supported. Loading, saving, labels and unknown keys
are handled by the base :class:`ModelConfig`. Importing this module registers the class with
:func:`minipeft.models.config.config_from_dict`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from .config import (
    SUPPORTED_ACTIVATIONS,
    ModelConfig,
    _fail,
    _is_number,
    register_model_config,
)

__all__ = ["LlamaConfig"]


@register_model_config
@dataclass(kw_only=True)
class LlamaConfig(ModelConfig):
    """LLaMA with transformers' field names and defaults (``LlamaConfig().to_dict()``).

    Sizes: C = hidden_size, H = num_attention_heads, H_kv = num_key_value_heads (grouped-query
    attention when H_kv < H), D = head_dim (default C / H), inner = intermediate_size.
    """

    model_type: ClassVar[str] = "llama"
    architecture_names: ClassVar[dict[str, str]] = {
        "causal_lm": "LlamaForCausalLM",
        "seq_cls": "LlamaForSequenceClassification",
        "base": "LlamaModel",
    }

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None  # None -> num_attention_heads
    hidden_act: str = "silu"
    max_position_embeddings: int = 2048
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-6
    use_cache: bool = True
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    pretraining_tp: int = 1
    tie_word_embeddings: bool = False
    rope_theta: float = 10000.0
    attention_bias: bool = False
    attention_dropout: float = 0.0
    mlp_bias: bool = False
    head_dim: int | None = None  # None -> hidden_size // num_attention_heads

    def _validate_fields(self) -> None:
        self._check("a positive int", "vocab_size", "hidden_size", "intermediate_size")
        self._check("a positive int", "num_hidden_layers", "num_attention_heads")
        self._check("a positive int", "max_position_embeddings", "pretraining_tp")
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        self._check("a positive int", "num_key_value_heads")
        if self.num_attention_heads % self.num_key_value_heads:
            _fail(self, "num_attention_heads",
                  f"a multiple of num_key_value_heads = {self.num_key_value_heads}",
                  self.num_attention_heads)  # fmt: skip
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                _fail(self, "hidden_size",
                      f"a multiple of num_attention_heads = {self.num_attention_heads} "
                      "(or set head_dim)", self.hidden_size)  # fmt: skip
            self.head_dim = self.hidden_size // self.num_attention_heads
        self._check("a positive int", "head_dim")
        if self.head_dim % 2:  # RoPE rotates pairs of features
            _fail(self, "head_dim", "an even number (RoPE rotates feature pairs)", self.head_dim)
        if self.hidden_act not in SUPPORTED_ACTIVATIONS:
            _fail(self, "hidden_act", f"one of {SUPPORTED_ACTIVATIONS}", self.hidden_act)
        self._check("a positive number", "rms_norm_eps", "rope_theta")
        self._check("a probability in [0, 1)", "attention_dropout")
        self._check("a non-negative number", "initializer_range")
        self._check(
            "True or False", "use_cache", "tie_word_embeddings", "attention_bias", "mlp_bias"
        )
        self._check_token_id("bos_token_id", allow_list=False)
        self._check_token_id("eos_token_id", allow_list=True)

    def _write_special(self, d: dict[str, Any]) -> None:
        # transformers 5 reads rope_parameters; transformers 4 reads the top-level rope_theta.
        d["rope_parameters"] = {"rope_theta": float(self.rope_theta), "rope_type": "default"}
        d["rope_theta"] = float(self.rope_theta)

    @classmethod
    def _read_special(cls, d: dict[str, Any]) -> None:
        """Fold ``rope_parameters`` (transformers 5) / ``rope_scaling`` (4) into rope_theta."""
        thetas = []
        if d.get("rope_theta") is not None:
            thetas.append(("rope_theta", d.pop("rope_theta")))
        for key in ("rope_parameters", "rope_scaling"):
            params = d.pop(key, None)
            if params is None:
                continue
            if not isinstance(params, dict):
                raise ValueError(f"LlamaConfig.{key}: expected a dict or null, found {params!r}")
            original, params = params, dict(params)
            rope_type = params.pop("rope_type", params.pop("type", "default"))
            if rope_type != "default":
                raise ValueError(
                    f"LlamaConfig.{key}: expected rope_type 'default' (plain RoPE, the only "
                    f"kind minipeft supports), found {rope_type!r}"
                )
            if params.pop("partial_rotary_factor", 1.0) != 1.0:
                raise ValueError(
                    f"LlamaConfig.{key}: expected partial_rotary_factor 1.0 (RoPE on all "
                    f"features), found {original!r}"
                )
            if "rope_theta" in params:
                thetas.append((f"{key}.rope_theta", params.pop("rope_theta")))
            if params:
                raise ValueError(
                    f"LlamaConfig.{key}: expected only rope_theta/rope_type for plain RoPE, "
                    f"found unsupported keys {sorted(params)}"
                )
        if len({float(t) for _, t in thetas if _is_number(t)}) > 1:
            raise ValueError(f"LlamaConfig.rope_theta: expected one value, found {thetas}")
        if thetas:
            d["rope_theta"] = thetas[0][1]
