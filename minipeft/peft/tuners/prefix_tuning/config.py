"""``PrefixTuningConfig``: the settings of one prefix-tuning adapter (PEFT's).

Prefix tuning (Li & Liang, 2021, "Prefix-Tuning: Optimizing Continuous Prompts for Generation")
learns, for every layer, ``T_v`` keys and values that each attention layer sees before the real
tokens, as a past key/value cache. With ``prefix_projection`` they are the output of a two-layer
tanh MLP of width ``encoder_hidden_size`` over ``T_v`` embeddings (the paper's
reparameterisation, for stabler training). ``init_weights="zero"`` starts the prefix at zero.

Field names, defaults and JSON keys mirror Hugging Face PEFT 0.21.2. Importing this module
registers the method (``peft_type: "PREFIX_TUNING"``, CLI name ``prefix``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from minipeft.peft.config import PeftType
from minipeft.peft.registry import register_peft_method

from ..prompt_learning import PromptLearningConfig

__all__ = ["PrefixTuningConfig"]


@dataclass
class PrefixTuningConfig(PromptLearningConfig):
    """Prefix-tuning settings with PEFT 0.21.2's field names and defaults."""

    PEFT_TYPE: ClassVar[PeftType | None] = PeftType.PREFIX_TUNING

    init_weights: str | None = None  # None: random (N(0, 1)); "zero": the prefix starts at 0
    encoder_hidden_size: int | None = None  # h of the projection MLP; None -> token_dim
    prefix_projection: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.init_weights not in (None, "zero"):
            raise self._bad("init_weights", "None or 'zero'", self.init_weights)
        self._positive("encoder_hidden_size")
        if not isinstance(self.prefix_projection, bool):
            raise self._bad("prefix_projection", "a bool", self.prefix_projection)


register_peft_method(
    config_class=PrefixTuningConfig,
    tuner="minipeft.peft.tuners.prefix_tuning.model:PrefixEncoder",
    prefix="prompt_encoder.",
    presets={"prefix": {"num_virtual_tokens": 20}},
)
