"""What the models return: small dataclasses with Hugging Face's field names.

Shapes: B batch, T new tokens, T_past cached tokens, C hidden size, V vocabulary, H_kv key/value
heads, D head size, L layers.

- ``past_key_values``: a list of L ``(key, value)`` pairs, each ``(B, H_kv, T_past + T, D)``,
  or ``None`` when the caller did not ask for a cache (``use_cache=False``).
- ``hidden_states``: with ``output_hidden_states=True``, a tuple of L + 1 tensors ``(B, T, C)``:
  the embeddings, then each block's output (the last one after the final norm), as in HF.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["BaseModelOutput", "CausalLMOutput", "SequenceClassifierOutput"]


@dataclass
class BaseModelOutput:
    """The trunk's output: ``last_hidden_state`` (B, T, C) after the final norm."""

    last_hidden_state: Any
    past_key_values: Any = None
    hidden_states: Any = None


@dataclass
class CausalLMOutput:
    """``logits`` (B, T, V); ``loss`` the mean next-token cross-entropy when labels were given."""

    loss: Any
    logits: Any
    past_key_values: Any = None
    hidden_states: Any = None


@dataclass
class SequenceClassifierOutput:
    """``logits`` (B, num_labels) pooled at each row's last non-padding token."""

    loss: Any
    logits: Any
    past_key_values: Any = None
    hidden_states: Any = None
