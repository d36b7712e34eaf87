"""``Parameter``: a Tensor that a Module registers as trainable.

Assigning one as a Module attribute (``self.weight = Parameter(...)``) registers it in
``_parameters``; that is the only difference from a plain Tensor (which is how PyTorch does it).
"""

from __future__ import annotations

from typing import Any

from ..creation import as_array
from ..tensor import Tensor

__all__ = ["Parameter"]


class Parameter(Tensor):
    """A Tensor that a Module registers as trainable (``requires_grad=True`` by default).

    ``Parameter(t)`` shares ``t``'s array (no copy), like ``torch.nn.Parameter``; array-likes
    are converted with the usual rules (Python floats become float32). Ops on a Parameter
    return plain Tensors.
    """

    def __init__(self, data: Any = None, requires_grad: bool = True) -> None:
        if data is None:
            data = as_array([], dtype="float32")
        self._init(data.data if isinstance(data, Tensor) else as_array(data), requires_grad)

    def __repr__(self) -> str:
        return "Parameter containing:\n" + super().__repr__()
