"""``PromptTuningConfig``: the settings of one prompt-tuning adapter (PEFT's).

Prompt tuning (Lester et al., 2021, "The Power of Scale for Parameter-Efficient Prompt Tuning")
learns ``T_v`` embedding vectors P (T_v, C) that are prepended to the token embeddings; the model
stays frozen. ``prompt_tuning_init`` picks their start: RANDOM (N(0, 1)), SAMPLE_VOCAB (rows of
random vocabulary tokens) or TEXT (the embeddings of ``prompt_tuning_init_text``, tokenized with
the tokenizer folder ``tokenizer_name_or_path``).

Field names, defaults and JSON keys mirror Hugging Face PEFT 0.21.2. Importing this module
registers the method (``peft_type: "PROMPT_TUNING"``, CLI name ``prompt``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import ClassVar

from minipeft.peft.config import PeftType, _enum_value
from minipeft.peft.registry import register_peft_method

from ..prompt_learning import PromptLearningConfig

__all__ = ["PromptTuningConfig", "PromptTuningInit"]


class PromptTuningInit(str, enum.Enum):
    """How the prompt vectors start (PEFT's values)."""

    TEXT = "TEXT"
    SAMPLE_VOCAB = "SAMPLE_VOCAB"
    RANDOM = "RANDOM"


@dataclass
class PromptTuningConfig(PromptLearningConfig):
    """Prompt-tuning settings with PEFT 0.21.2's field names and defaults."""

    PEFT_TYPE: ClassVar[PeftType | None] = PeftType.PROMPT_TUNING

    prompt_tuning_init: PromptTuningInit | str = PromptTuningInit.RANDOM
    prompt_tuning_init_text: str | None = None  # TEXT only
    tokenizer_name_or_path: str | None = None  # TEXT only: a local tokenizer folder
    tokenizer_kwargs: dict | None = None  # TEXT only (PEFT passes them to AutoTokenizer)

    def __post_init__(self) -> None:
        super().__post_init__()
        init = _enum_value(PromptTuningInit, self.prompt_tuning_init,
                           f"{type(self).__name__}.prompt_tuning_init")  # fmt: skip
        self.prompt_tuning_init = init
        text = init is PromptTuningInit.TEXT
        # PEFT's checks, in PEFT's order.
        if text and not self.tokenizer_name_or_path:
            raise self._bad("tokenizer_name_or_path",
                            "a tokenizer folder when prompt_tuning_init='TEXT'",
                            self.tokenizer_name_or_path)  # fmt: skip
        if text and self.prompt_tuning_init_text is None:
            raise self._bad(
                "prompt_tuning_init_text",
                "the text to start from when prompt_tuning_init='TEXT'",
                None,
            )
        for name in ("prompt_tuning_init_text", "tokenizer_name_or_path"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise self._bad(name, "a string or None", value)
        if self.tokenizer_kwargs is not None and not isinstance(self.tokenizer_kwargs, dict):
            raise self._bad("tokenizer_kwargs", "a dict or None", self.tokenizer_kwargs)
        if self.tokenizer_kwargs and not text:
            raise self._bad("tokenizer_kwargs", "None unless prompt_tuning_init='TEXT'",
                            self.tokenizer_kwargs)  # fmt: skip


register_peft_method(
    config_class=PromptTuningConfig,
    tuner="minipeft.peft.tuners.prompt_tuning.model:PromptEmbedding",
    prefix="prompt_encoder.",
    presets={"prompt": {"num_virtual_tokens": 20}},
)
