"""``PromptEncoderConfig``: the settings of one P-tuning adapter (PEFT's).

P-tuning (Liu et al., 2021, "GPT Understands, Too") prepends ``T_v`` virtual-token embeddings
like prompt tuning, but makes them with a small network over learned inputs (the *prompt
encoder*), which trains more stably than free vectors. PEFT offers an MLP (three Linear layers,
ReLU between) or a bidirectional LSTM; minipeft implements the MLP, PEFT's recommended one.

Field names, defaults and JSON keys mirror Hugging Face PEFT 0.21.2. Importing this module
registers the method (``peft_type: "P_TUNING"``, CLI name ``ptuning``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import ClassVar

from minipeft.peft.config import PeftType, _enum_value, is_finite, is_int
from minipeft.peft.registry import register_peft_method

from ..prompt_learning import PromptLearningConfig

__all__ = ["PromptEncoderConfig", "PromptEncoderReparameterizationType"]


class PromptEncoderReparameterizationType(str, enum.Enum):
    """The prompt encoder's network (PEFT's values)."""

    MLP = "MLP"
    LSTM = "LSTM"


@dataclass
class PromptEncoderConfig(PromptLearningConfig):
    """P-tuning settings with PEFT 0.21.2's field names and defaults."""

    PEFT_TYPE: ClassVar[PeftType | None] = PeftType.P_TUNING

    encoder_reparameterization_type: PromptEncoderReparameterizationType | str = (
        PromptEncoderReparameterizationType.MLP
    )
    encoder_hidden_size: int | None = None  # h; None -> token_dim
    encoder_num_layers: int = 2  # LSTM only (the MLP always has PEFT's 3 Linear layers)
    encoder_dropout: float = 0.0  # LSTM only

    def __post_init__(self) -> None:
        super().__post_init__()
        name = "encoder_reparameterization_type"
        kind = _enum_value(PromptEncoderReparameterizationType, getattr(self, name),
                           f"{type(self).__name__}.{name}")  # fmt: skip
        if kind is PromptEncoderReparameterizationType.LSTM:
            raise self._bad(name, "'MLP'", kind.value, " (minipeft does not implement the LSTM "
                            f"prompt encoder; use {name}='MLP')")  # fmt: skip
        self.encoder_reparameterization_type = kind
        self._positive("encoder_hidden_size")
        if not is_int(self.encoder_num_layers) or self.encoder_num_layers < 1:
            raise self._bad("encoder_num_layers", "an integer >= 1", self.encoder_num_layers)
        if not is_finite(self.encoder_dropout) or not 0 <= self.encoder_dropout < 1:
            raise self._bad("encoder_dropout", "a number in [0, 1)", self.encoder_dropout)


register_peft_method(
    config_class=PromptEncoderConfig,
    tuner="minipeft.peft.tuners.p_tuning.model:PromptEncoder",
    prefix="prompt_encoder.",
    presets={"ptuning": {"num_virtual_tokens": 20}},
)
