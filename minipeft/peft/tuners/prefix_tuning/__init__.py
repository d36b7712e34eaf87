"""Prefix tuning (Li & Liang, 2021): learned keys and values every attention layer sees first."""

from __future__ import annotations

from .config import PrefixTuningConfig
from .model import PrefixEncoder

__all__ = ["PrefixEncoder", "PrefixTuningConfig"]
