"""Bottleneck adapters (AdapterHub's seq_bn, double_seq_bn, par_bn) on the tuner seam."""

from __future__ import annotations

from .config import AdapterConfig, DoubleSeqBnConfig, ParBnConfig, SeqBnConfig
from .layer import Bottleneck, BottleneckLayer
from .model import BottleneckModel, Stack

__all__ = [
    "AdapterConfig",
    "Bottleneck",
    "BottleneckLayer",
    "BottleneckModel",
    "DoubleSeqBnConfig",
    "ParBnConfig",
    "SeqBnConfig",
    "Stack",
]
