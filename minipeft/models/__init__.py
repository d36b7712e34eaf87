"""Transformers with Hugging Face's module names: GPT-2 and LLaMA, their heads, loading/saving.

from minipeft.models import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel
model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=100), seed=0)
out = model(input_ids=ids, labels=ids)          # out.logits (B, T, V), out.loss
model.save_pretrained("ckpt")                   # loads in transformers, and back
"""

from __future__ import annotations

from .config import ModelConfig, config_from_dict, load_config
from .generation import GenerationMixin, top_k_filter, top_p_filter
from .gpt2 import GPT2ForSequenceClassification, GPT2LMHeadModel, GPT2Model
from .gpt2_config import GPT2Config
from .heads import PreTrainedModel, causal_lm_loss
from .hub import AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification
from .llama import LlamaForCausalLM, LlamaForSequenceClassification, LlamaModel
from .llama_config import LlamaConfig
from .outputs import BaseModelOutput, CausalLMOutput, SequenceClassifierOutput
from .rope import RotaryEmbedding, apply_rotary_pos_emb, rotate_half

__all__ = [
    "ModelConfig", "GPT2Config", "LlamaConfig", "config_from_dict", "load_config",
    "PreTrainedModel", "GenerationMixin", "causal_lm_loss", "top_k_filter", "top_p_filter",
    "GPT2Model", "GPT2LMHeadModel", "GPT2ForSequenceClassification",
    "LlamaModel", "LlamaForCausalLM", "LlamaForSequenceClassification",
    "AutoModel", "AutoModelForCausalLM", "AutoModelForSequenceClassification",
    "BaseModelOutput", "CausalLMOutput", "SequenceClassifierOutput",
    "RotaryEmbedding", "apply_rotary_pos_emb", "rotate_half",
]  # fmt: skip
