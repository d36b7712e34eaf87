"""LoRA (Hu et al., 2021) on the tuner seam: config, layers (linear, embedding) and tuner."""

from __future__ import annotations

from .config import LoraConfig
from .embedding import LoraEmbedding
from .layer import LoraLayer
from .model import LoraModel

__all__ = ["LoraConfig", "LoraEmbedding", "LoraLayer", "LoraModel"]
