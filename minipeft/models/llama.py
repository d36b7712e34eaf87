"""LLaMA (Touvron et al. 2023) with Hugging Face's module names, so HF checkpoints load as is.

    h_0    = embed_tokens[ids]                                               (B, T, C)
    x      = input_layernorm(h)
    a      = h + o_proj(attention(rope(q_proj x), rope(k_proj x), v_proj x))
    y      = post_attention_layernorm(a)
    h'     = a + down_proj(silu(gate_proj y) * up_proj y)
    logits = lm_head(norm(h_L))                                              (B, T, V)

RMSNorm instead of LayerNorm, rotary positions (:mod:`minipeft.models.rope`) instead of learned
ones, the SwiGLU MLP (Shazeer 2020), and grouped-query attention: H query heads share H_kv
key/value heads, H / H_kv queries per group (Ainslie et al. 2023). No biases unless
``attention_bias`` / ``mlp_bias``. Paths: ``model.embed_tokens``, ``model.layers.{i}.self_attn.
{q,k,v,o}_proj``, ``.mlp.{gate,up,down}_proj``, ``.input_layernorm``,
``.post_attention_layernorm``, ``model.norm``, ``model.rotary_emb``, ``lm_head``, ``score``.

Shapes: B batch, T new tokens, T_past cached, C hidden_size, H heads, H_kv kv heads, D head_dim.
"""

from __future__ import annotations

from typing import Any

from .. import functional as F
from .. import nn
from ..ops.api import cat
from ..tensor import Tensor
from .generation import GenerationMixin
from .heads import CausalLMHead, PreTrainedModel, SequenceClassificationHead, get_activation
from .inputs import (
    build_attention_mask,
    check_model_inputs,
    check_past_key_values,
    position_ids_for,
)
from .llama_config import LlamaConfig
from .outputs import BaseModelOutput
from .rope import RotaryEmbedding, apply_rotary_pos_emb

__all__ = ["LlamaModel", "LlamaForCausalLM", "LlamaForSequenceClassification"]


class LlamaAttention(nn.Module):
    """Grouped-query attention, RoPE on q and k; the cache holds rotated keys (B, H_kv, ·, D)."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        C, D, bias = config.hidden_size, config.head_dim, config.attention_bias
        self.n_heads, self.n_kv_heads, self.head_dim = (
            config.num_attention_heads, config.num_key_value_heads, D,
        )  # fmt: skip
        self.attention_dropout = config.attention_dropout
        self.q_proj = nn.Linear(C, self.n_heads * D, bias=bias)
        self.k_proj = nn.Linear(C, self.n_kv_heads * D, bias=bias)
        self.v_proj = nn.Linear(C, self.n_kv_heads * D, bias=bias)
        self.o_proj = nn.Linear(self.n_heads * D, C, bias=bias)

    def forward(
        self, x: Tensor, cos_sin: tuple[Tensor, Tensor], mask: Tensor | None, past: Any
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        B, T, _ = x.shape
        D = self.head_dim
        q = self.q_proj(x).reshape(B, T, self.n_heads, D).transpose(1, 2)  # (B, H, T, D)
        k = self.k_proj(x).reshape(B, T, self.n_kv_heads, D).transpose(1, 2)  # (B, H_kv, T, D)
        v = self.v_proj(x).reshape(B, T, self.n_kv_heads, D).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, *cos_sin)
        if past is not None:  # new tensors: a (learned) prefix cache is never mutated
            k = cat([past[0], k], dim=2)  # (B, H_kv, T_past + T, D)
            v = cat([past[1], v], dim=2)
        p = self.attention_dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=p, is_causal=True,
            enable_gqa=self.n_kv_heads != self.n_heads,
        )  # fmt: skip  # (B, H, T, D)
        y = y.transpose(1, 2).reshape(B, T, self.n_heads * D)
        return self.o_proj(y), (k, v)


class LlamaMLP(nn.Module):
    """SwiGLU: down_proj(act(gate_proj x) * up_proj x), act = silu."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        C, inner, bias = config.hidden_size, config.intermediate_size, config.mlp_bias
        self.gate_proj = nn.Linear(C, inner, bias=bias)
        self.up_proj = nn.Linear(C, inner, bias=bias)
        self.down_proj = nn.Linear(inner, C, bias=bias)
        self.act = get_activation(config.hidden_act)
        self.fused = config.hidden_act == "silu"  # silu(g) ⊙ u as one Function (F.silu_mul)

    def forward(self, x: Tensor) -> Tensor:
        if self.fused:
            return self.down_proj(F.silu_mul(self.gate_proj(x), self.up_proj(x)))
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class LlamaDecoderLayer(nn.Module):
    """Pre-norm block: x + self_attn(input_layernorm(x)), then + mlp(post_attention_layernorm);
    the two adds are the ``attn_residual`` / ``mlp_residual`` modules (see :class:`nn.Residual`)."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.self_attn = LlamaAttention(config)
        self.mlp = LlamaMLP(config)
        self.input_layernorm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.attn_residual = nn.Residual()
        self.mlp_residual = nn.Residual()

    def forward(self, x: Tensor, cos_sin: Any, mask: Tensor | None, past: Any) -> tuple:
        a, present = self.self_attn(self.input_layernorm(x), cos_sin, mask, past)
        x = self.attn_residual(a, x)  # x + a
        return self.mlp_residual(self.mlp(self.post_attention_layernorm(x)), x), present


class LlamaPreTrainedModel(PreTrainedModel):
    config_class = LlamaConfig
    base_model_prefix = "model"

    def _init_module(self, module: nn.Module, rng: Any) -> None:
        super()._init_module(module, rng)
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            module.weight.data[module.padding_idx] = 0  # HF zeroes the padding row


class LlamaModel(LlamaPreTrainedModel):
    """The trunk: embeddings, L decoder layers, final RMSNorm → hidden states (B, T, C)."""

    task = "base"

    def __init__(
        self, config: LlamaConfig, seed: int | None = None, init_weights: bool = True
    ) -> None:
        super().__init__(config)
        pad = config.pad_token_id
        pad = pad if pad is not None and pad < config.vocab_size else None
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=pad)
        self.layers = nn.ModuleList(
            [LlamaDecoderLayer(config) for _ in range(config.num_hidden_layers)]
        )
        self.norm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config.head_dim, config.rope_theta)
        self.post_init(seed, init_weights)

    def get_input_embeddings(self) -> nn.Module:
        return self.embed_tokens

    def forward(
        self,
        input_ids: Any = None,
        inputs_embeds: Tensor | None = None,
        attention_mask: Any = None,
        past_key_values: Any = None,
        use_cache: bool = False,
        position_ids: Any = None,
        output_hidden_states: bool = False,
    ) -> BaseModelOutput:
        cfg, device = self.config, self.embed_tokens.weight.device
        input_ids, inputs_embeds = check_model_inputs(
            "Llama", input_ids, inputs_embeds, cfg.vocab_size, cfg.hidden_size, device
        )
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, C)
        B, T, _ = x.shape
        t_past = check_past_key_values(
            "Llama", past_key_values, cfg.num_hidden_layers, B, cfg.num_key_value_heads,
            cfg.head_dim,
        )  # fmt: skip
        pos = position_ids_for(
            "Llama", position_ids, B, T, t_past, cfg.max_position_embeddings,
            "max_position_embeddings", device,
        )  # fmt: skip
        mask = build_attention_mask("Llama", attention_mask, B, T, t_past, device)
        cos_sin = self.rotary_emb(x, pos)  # each (B or 1, T, D), shared by every layer
        hidden = [x] if output_hidden_states else None
        presents = []
        for i, layer in enumerate(self.layers):
            past = None if past_key_values is None else past_key_values[i]
            x, present = layer(x, cos_sin, mask, past)
            presents.append(present)
            if hidden is not None and i < len(self.layers) - 1:
                hidden.append(x)
        x = self.norm(x)
        if hidden is not None:
            hidden.append(x)
        return BaseModelOutput(
            last_hidden_state=x,
            past_key_values=presents if use_cache else None,
            hidden_states=tuple(hidden) if hidden is not None else None,
        )


class LlamaForCausalLM(CausalLMHead, LlamaPreTrainedModel, GenerationMixin):
    """LLaMA with ``lm_head`` (untied by default; tied when ``tie_word_embeddings``)."""

    task = "causal_lm"

    def __init__(
        self, config: LlamaConfig, seed: int | None = None, init_weights: bool = True
    ) -> None:
        super().__init__(config)
        self.model = LlamaModel(config, init_weights=False)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init(seed, init_weights)


class LlamaForSequenceClassification(SequenceClassificationHead, LlamaPreTrainedModel):
    """LLaMA with ``score`` = Linear(C, num_labels, bias=False) at the last non-padding token."""

    task = "seq_cls"

    def __init__(
        self, config: LlamaConfig, seed: int | None = None, init_weights: bool = True
    ) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = LlamaModel(config, init_weights=False)
        self.score = nn.Linear(config.hidden_size, config.num_labels, bias=False)
        self.post_init(seed, init_weights)
