"""``PromptEncoder``: P-tuning's MLP prompt encoder (PEFT's module and names)."""

from __future__ import annotations

import warnings
from typing import Any

from ....nn import Embedding, Linear, ReLU, Sequential
from ..prompt_learning import PromptEncoderBase, require_sizes

__all__ = ["PromptEncoder"]


class PromptEncoder(PromptEncoderBase):
    """P = mlp_head(embedding(indices)).   indices (B, T) int → P (B, T, d).

    T = num_virtual_tokens · num_transformer_submodules, d = token_dim, h =
    encoder_hidden_size. ``embedding`` (T, d); ``mlp_head`` = Linear(d, h), ReLU,
    Linear(h, h), ReLU, Linear(h, d) (PEFT's MLP; ``encoder_num_layers`` and ``encoder_dropout``
    are not used by it).  Trainable: T·d + (d·h + h) + (h·h + h) + (h·d + d).
    With ``inference_mode`` (PEFT's loading layout) it is built folded: only ``embedding``,
    whose rows are the prompt itself.
    """

    head_names = ("mlp_head",)

    def __init__(self, config: Any) -> None:
        super().__init__()
        require_sizes(config, "num_transformer_submodules", "token_dim")
        self.token_dim = d = config.token_dim
        self.hidden_size = h = config.encoder_hidden_size
        self.total_virtual_tokens = config.num_virtual_tokens * config.num_transformer_submodules
        self.encoder_type = config.encoder_reparameterization_type
        self.embedding = Embedding(self.total_virtual_tokens, d)
        if config.inference_mode:
            return
        require_sizes(config, "encoder_hidden_size")
        if config.encoder_num_layers != 2:  # PEFT's warning (2 is the field's default)
            warnings.warn("for MLP, the argument `encoder_num_layers` is ignored. Exactly 2 MLP "
                          "layers are used.", stacklevel=2)  # fmt: skip
        self.mlp_head = Sequential(Linear(d, h), ReLU(), Linear(h, h), ReLU(), Linear(h, d))
        self.folded = False

    def output_width(self) -> int:
        return self.token_dim

    def forward(self, indices: Any) -> Any:
        rows = self.embedding(indices)  # (B, T, d)
        return rows if self.folded else self.mlp_head(rows)
