"""IA3 (Liu et al., 2022) on the tuner seam: one learned scaling vector per target linear layer,
on its output (attention-side) or its input (feed-forward); config, layer and tuner."""

from __future__ import annotations

from .config import IA3Config
from .layer import IA3Layer
from .model import IA3Model

__all__ = ["IA3Config", "IA3Layer", "IA3Model"]
