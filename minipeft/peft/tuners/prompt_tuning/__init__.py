"""Prompt tuning (Lester et al., 2021): learned vectors prepended to the token embeddings."""

from __future__ import annotations

from .config import PromptTuningConfig, PromptTuningInit
from .model import PromptEmbedding

__all__ = ["PromptEmbedding", "PromptTuningConfig", "PromptTuningInit"]
