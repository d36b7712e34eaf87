"""Neural-network building blocks: ``Module``, ``Parameter``, layers, containers, ``init``.

import minipeft.nn as nn

class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 8)
        self.out = nn.Linear(8, 2)

    def forward(self, x):
        return self.out(self.fc(x).relu())
"""

from __future__ import annotations

from . import init
from .containers import ModuleDict, ModuleList, ParameterDict, Sequential
from .layers import (
    GELU,
    Dropout,
    Embedding,
    Identity,
    LayerNorm,
    Linear,
    ReLU,
    Residual,
    RMSNorm,
    SiLU,
    Tanh,
)
from .module import IncompatibleKeys, Module, Parameter

__all__ = [
    "Module", "Parameter", "IncompatibleKeys", "Linear", "Embedding", "LayerNorm", "RMSNorm",
    "Dropout", "Identity", "Residual", "ReLU", "GELU", "SiLU", "Tanh", "Sequential", "ModuleList",
    "ModuleDict", "ParameterDict", "init",
]  # fmt: skip
