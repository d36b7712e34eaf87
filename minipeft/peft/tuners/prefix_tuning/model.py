"""``PrefixEncoder``: the learned key/value prefix of prefix tuning (PEFT's module and names)."""

from __future__ import annotations

from typing import Any

from ....nn import Embedding, Linear, Sequential, Tanh, init
from ..prompt_learning import PromptEncoderBase, require_sizes

__all__ = ["PrefixEncoder"]


class PrefixEncoder(PromptEncoderBase):
    """prefix (B, T) int → (B, T, 2·L·d): every layer's T keys and values, flattened.

    T = num_virtual_tokens, L = num_layers, d = token_dim = H_kv·D (after
    ``prepare_prompt_learning_config``; = C without grouped-query attention), h =
    encoder_hidden_size. PeftModel views the output as (B, T, 2L, H_kv, D).

    - without projection: ``embedding`` (T, 2·L·d).  Trainable: T·2·L·H_kv·D.
    - ``prefix_projection``: ``embedding`` (T, d), then ``transform`` = Linear(d, h), Tanh,
      Linear(h, 2·L·d).  Trainable: T·d + d·h + h + h·2·L·d + 2·L·d.
      With ``inference_mode`` (PEFT's loading layout) it is built folded: ``embedding``
      (T, 2·L·d) and no ``transform``.

    ``init_weights="zero"`` zeroes the embedding (no projection) or the last Linear (with one).
    """

    head_names = ("transform",)

    def __init__(self, config: Any) -> None:
        super().__init__()
        require_sizes(config, "token_dim", "num_layers")
        self.prefix_projection = config.prefix_projection
        d, T = config.token_dim, config.num_virtual_tokens
        self.width = 2 * config.num_layers * d
        zero = config.init_weights == "zero"
        if self.prefix_projection and not config.inference_mode:
            require_sizes(config, "encoder_hidden_size")
            h = config.encoder_hidden_size
            self.embedding = Embedding(T, d)
            self.transform = Sequential(Linear(d, h), Tanh(), Linear(h, self.width))
            self.folded = False
            if zero:
                init.zeros_(self.transform[-1].weight)
                init.zeros_(self.transform[-1].bias)
        else:
            self.embedding = Embedding(T, self.width)
            if zero:
                init.zeros_(self.embedding.weight)

    def output_width(self) -> int:
        return self.width

    def forward(self, prefix: Any) -> Any:
        rows = self.embedding(prefix)  # (B, T, d) or, folded, (B, T, 2·L·d)
        return rows if self.folded else self.transform(rows)
