"""``PromptEmbedding``: the learned prompt vectors of prompt tuning (PEFT's module and names)."""

from __future__ import annotations

import math
import os
import warnings
from typing import Any

import numpy as np

from ....autograd import no_grad
from ....backend import get_rng, to_numpy
from ....creation import as_array
from ....nn import Embedding, Module
from ..prompt_learning import PromptEncoderBase, require_sizes
from .config import PromptTuningInit

__all__ = ["PromptEmbedding", "text_init_ids"]


def text_init_ids(config: Any, total: int) -> list[int]:
    """PEFT's TEXT init ids: ``tokenizer(text)["input_ids"]`` cut to ``total``, or repeated
    ⌈total / n⌉ times and then cut, so exactly ``total`` ids."""
    from ....tokenizer import Tokenizer  # noqa: PLC0415 (only TEXT init needs `tokenizers`)

    name = config.tokenizer_name_or_path
    if not os.path.isdir(name):
        raise ValueError(
            f"{type(config).__name__}.tokenizer_name_or_path: expected a local tokenizer folder "
            f"(minipeft does not download), found {name!r}"
        )
    kwargs = dict(config.tokenizer_kwargs or {})
    kwargs.pop("trust_remote_code", None)  # PEFT drops it too (security)
    if kwargs:
        warnings.warn(f"tokenizer_kwargs {sorted(kwargs)} are ignored: minipeft's "
                      "Tokenizer.from_pretrained takes none", stacklevel=3)  # fmt: skip
    ids = [int(i) for i in Tokenizer.from_pretrained(name)(config.prompt_tuning_init_text)
           ["input_ids"]]  # fmt: skip
    if not ids:
        raise ValueError(
            f"{type(config).__name__}.prompt_tuning_init_text: expected a text with at least "
            f"one token, found {config.prompt_tuning_init_text!r}"
        )
    if len(ids) < total:
        ids = ids * math.ceil(total / len(ids))
    return ids[:total]


class PromptEmbedding(PromptEncoderBase):
    """P = embedding(indices).   indices (B, T) int → P (B, T, C);  embedding.weight (T, C).

    T = num_virtual_tokens · num_transformer_submodules, C = token_dim. Trainable: T·C.
    Init (skipped with ``inference_mode``, where the weights get loaded): RANDOM N(0, 1) (the
    Embedding default); SAMPLE_VOCAB rows ``word_embeddings(ids)``, ids uniform in [0, V);
    TEXT the rows of :func:`text_init_ids`. Copied rows are float32, as in PEFT.
    """

    def __init__(self, config: Any, word_embeddings: Module) -> None:
        super().__init__()
        require_sizes(config, "num_transformer_submodules", "token_dim")
        self.total_virtual_tokens = config.num_virtual_tokens * config.num_transformer_submodules
        self.token_dim = config.token_dim
        self.embedding = Embedding(self.total_virtual_tokens, self.token_dim)
        init = config.prompt_tuning_init
        if config.inference_mode or init == PromptTuningInit.RANDOM:
            return
        if init == PromptTuningInit.SAMPLE_VOCAB:
            vocab = getattr(word_embeddings, "num_embeddings", word_embeddings.weight.shape[0])
            ids = get_rng("cpu").integers(0, vocab, size=self.total_virtual_tokens)
        else:
            ids = np.asarray(text_init_ids(config, self.total_virtual_tokens))
        with no_grad():
            rows = word_embeddings(as_array(ids.astype(np.int64),
                                            device=word_embeddings.weight.device))  # fmt: skip
        self.embedding.weight.data[...] = to_numpy(rows.data).astype(np.float32)

    def output_width(self) -> int:
        return self.token_dim

    def forward(self, indices: Any) -> Any:
        return self.embedding(indices)
