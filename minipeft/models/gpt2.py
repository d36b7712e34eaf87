"""GPT-2 (Radford et al. 2019) with Hugging Face's module names, so HF checkpoints load as is.

    h_0 = drop(wte[ids] + wpe[positions])                              (B, T, C)
    a   = h + resid_drop(c_proj(attention(ln_1(h))))                   pre-LN blocks
    h'  = a + drop(mlp.c_proj(gelu_tanh(mlp.c_fc(ln_2(a)))))
    logits = ln_f(h_L) @ wteᵀ                                          (B, T, V), tied lm_head

``c_attn`` is one ``Linear(C, 3C)`` whose output splits into q, k, v (HF's Conv1D weights are
transposed by :mod:`minipeft.models.checkpoint`). Paths: ``transformer.wte``, ``transformer.wpe``,
``transformer.h.{i}.ln_1``, ``.attn.c_attn``, ``.attn.c_proj``, ``.ln_2``, ``.mlp.c_fc``,
``.mlp.c_proj``, ``transformer.ln_f``, ``lm_head``, ``score``.

Shapes: B batch, T new tokens, T_past cached tokens, C = n_embd, H = n_head, D = C / H.
"""

from __future__ import annotations

from typing import Any

from .. import functional as F
from .. import nn
from ..nn import init
from ..ops.api import cat
from ..tensor import Tensor
from .generation import GenerationMixin
from .gpt2_config import GPT2Config
from .heads import CausalLMHead, PreTrainedModel, SequenceClassificationHead, get_activation
from .inputs import (
    build_attention_mask,
    check_model_inputs,
    check_past_key_values,
    position_ids_for,
)
from .outputs import BaseModelOutput

__all__ = ["GPT2Model", "GPT2LMHeadModel", "GPT2ForSequenceClassification"]


class GPT2Attention(nn.Module):
    """Causal multi-head self-attention with a fused q/k/v projection and an optional cache."""

    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        C = config.n_embd
        self.n_head, self.head_dim = config.n_head, C // config.n_head
        self.scale = None if config.scale_attn_weights else 1.0  # None: 1 / sqrt(D)
        self.c_attn = nn.Linear(C, 3 * C)
        self.c_proj = nn.Linear(C, C)
        self.attn_dropout = nn.Dropout(config.attn_pdrop)
        self.resid_dropout = nn.Dropout(config.resid_pdrop)

    def forward(
        self, x: Tensor, mask: Tensor | None, past: tuple[Tensor, Tensor] | None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        B, T, C = x.shape
        qkv = self.c_attn(x).reshape(B, T, 3, self.n_head, self.head_dim)
        qkv = qkv.permute(2, 0, 3, 1, 4)  # (3, B, H, T, D)
        q, k, v = qkv[0], qkv[1], qkv[2]
        if past is not None:  # a new tensor each step: the cache is never mutated in place
            k = cat([past[0], k], dim=2)  # (B, H, T_past + T, D)
            v = cat([past[1], v], dim=2)
        p = self.attn_dropout.p if self.training else 0.0
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=p, is_causal=True, scale=self.scale
        )  # (B, H, T, D)
        y = y.permute(0, 2, 1, 3).reshape(B, T, C)
        return self.resid_dropout(self.c_proj(y)), (k, v)


class GPT2MLP(nn.Module):
    """c_proj(act(c_fc(x))) with act = tanh-GELU ("gelu_new") by default, then dropout."""

    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, config.inner_dim)
        self.c_proj = nn.Linear(config.inner_dim, config.n_embd)
        self.act = get_activation(config.activation_function)
        self.dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


class GPT2Block(nn.Module):
    """Pre-LN block: x + attn(ln_1(x)), then + mlp(ln_2(·)); the two adds are the
    ``attn_residual`` / ``mlp_residual`` modules (no parameters; see :class:`nn.Residual`)."""

    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        eps = config.layer_norm_epsilon
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=eps)
        self.attn = GPT2Attention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=eps)
        self.mlp = GPT2MLP(config)
        self.attn_residual = nn.Residual()
        self.mlp_residual = nn.Residual()

    def forward(self, x: Tensor, mask: Tensor | None, past: Any) -> tuple[Tensor, Any]:
        a, present = self.attn(self.ln_1(x), mask, past)
        x = self.attn_residual(a, x)  # x + a
        return self.mlp_residual(self.mlp(self.ln_2(x)), x), present


class GPT2PreTrainedModel(PreTrainedModel):
    """GPT-2's init: HF's, plus c_proj weights ~ N(0, (initializer_range / sqrt(2 L))²)."""

    config_class = GPT2Config
    base_model_prefix = "transformer"

    def _init_module(self, module: nn.Module, rng: Any) -> None:
        super()._init_module(module, rng)
        if isinstance(module, (GPT2Attention, GPT2MLP)):
            # Two residual projections per block add up over depth (GPT-2 paper, sec. 2.3).
            std = self.config.initializer_range / (2 * self.config.n_layer) ** 0.5
            init.normal_(module.c_proj.weight, 0.0, std, generator=rng)


class GPT2Model(GPT2PreTrainedModel):
    """The trunk: embeddings, L blocks, final LayerNorm → hidden states (B, T, C)."""

    task = "base"

    def __init__(
        self, config: GPT2Config, seed: int | None = None, init_weights: bool = True
    ) -> None:
        super().__init__(config)
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.n_positions, config.n_embd)
        self.drop = nn.Dropout(config.embd_pdrop)
        self.h = nn.ModuleList([GPT2Block(config) for _ in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.post_init(seed, init_weights)

    def get_input_embeddings(self) -> nn.Module:
        return self.wte

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
        cfg, device = self.config, self.wte.weight.device
        input_ids, inputs_embeds = check_model_inputs(
            "GPT2", input_ids, inputs_embeds, cfg.vocab_size, cfg.n_embd, device
        )
        if inputs_embeds is None:
            inputs_embeds = self.wte(input_ids)  # (B, T, C)
        B, T, _ = inputs_embeds.shape
        t_past = check_past_key_values(
            "GPT2", past_key_values, cfg.n_layer, B, cfg.n_head, cfg.n_embd // cfg.n_head
        )
        pos = position_ids_for(
            "GPT2", position_ids, B, T, t_past, cfg.n_positions, "n_positions", device
        )
        mask = build_attention_mask("GPT2", attention_mask, B, T, t_past, device)
        x = self.drop(inputs_embeds + self.wpe(pos))  # (B, T, C); positions broadcast over B
        hidden = [x] if output_hidden_states else None
        presents = []
        for i, block in enumerate(self.h):
            x, present = block(x, mask, None if past_key_values is None else past_key_values[i])
            presents.append(present)
            if hidden is not None and i < len(self.h) - 1:
                hidden.append(x)
        x = self.ln_f(x)
        if hidden is not None:
            hidden.append(x)
        return BaseModelOutput(
            last_hidden_state=x,
            past_key_values=presents if use_cache else None,
            hidden_states=tuple(hidden) if hidden is not None else None,
        )


class GPT2LMHeadModel(CausalLMHead, GPT2PreTrainedModel, GenerationMixin):
    """GPT-2 with the language-model head (tied to ``wte`` by default)."""

    task = "causal_lm"

    def __init__(
        self, config: GPT2Config, seed: int | None = None, init_weights: bool = True
    ) -> None:
        super().__init__(config)
        self.transformer = GPT2Model(config, init_weights=False)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.post_init(seed, init_weights)


class GPT2ForSequenceClassification(SequenceClassificationHead, GPT2PreTrainedModel):
    """GPT-2 with ``score`` = Linear(C, num_labels, bias=False) at the last non-padding token."""

    task = "seq_cls"

    def __init__(
        self, config: GPT2Config, seed: int | None = None, init_weights: bool = True
    ) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.transformer = GPT2Model(config, init_weights=False)
        self.score = nn.Linear(config.n_embd, config.num_labels, bias=False)
        self.post_init(seed, init_weights)
