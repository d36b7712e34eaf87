"""P-tuning (Liu et al., 2021): virtual-token embeddings made by a small MLP prompt encoder."""

from __future__ import annotations

from .config import PromptEncoderConfig, PromptEncoderReparameterizationType
from .model import PromptEncoder

__all__ = ["PromptEncoder", "PromptEncoderConfig", "PromptEncoderReparameterizationType"]
