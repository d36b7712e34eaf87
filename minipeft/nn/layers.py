"""Layers: ``Linear``, ``Embedding``, ``LayerNorm``, ``RMSNorm``, ``Dropout`` and activations.

Each layer owns its Parameters and calls one function of :mod:`minipeft.functional` in
``forward``; the math (and its fused backward) lives there. Shapes: B batch, T time, C channels,
V vocabulary.

``Linear`` is **the linear contract** PEFT relies on: anything with ``in_features``,
``out_features`` and ``forward(x)`` is a linear layer to a LoRA wrapper (the 4-bit ``Linear4bit``
too). Initialisation follows PyTorch so a model built here starts where a PyTorch one would.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import functional as F
from ..autograd import Context
from ..backend import DeviceError, check_device
from ..creation import as_array, ones, zeros
from ..ops.movement import Embedding as _EmbeddingFn
from ..tensor import Tensor, float32
from . import init
from .module import Module, Parameter

__all__ = [
    "Linear", "Embedding", "LayerNorm", "RMSNorm", "Dropout", "Identity", "Residual", "ReLU",
    "GELU", "SiLU", "Tanh",
]  # fmt: skip


def _factory(device: Any, dtype: Any) -> dict[str, Any]:
    """``device=``/``dtype=`` for new parameters (float32 on cpu by default; floats only)."""
    dt = float32 if dtype is None else np.dtype(dtype)
    if dt.kind != "f":
        raise TypeError(f"layer parameters must have a float dtype, found {dt}")
    return {"device": check_device(device), "dtype": dt}


class Linear(Module):
    """y = x Wᵀ + b.   x (..., in_features) → y (..., out_features);  W (out, in), b (out,).

    Init (PyTorch's): W ~ kaiming_uniform(a=√5) = U(−1/√in, 1/√in) and b ~ U(−1/√in, 1/√in).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        kw = _factory(device, dtype)
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.weight = Parameter(zeros(self.out_features, self.in_features, **kw))
        self.bias = Parameter(zeros(self.out_features, **kw)) if bias else None
        self.reset_parameters()

    def reset_parameters(self, generator: Any = None) -> None:
        init.kaiming_uniform_(self.weight, a=math.sqrt(5), generator=generator)
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features) if self.in_features > 0 else 0.0
            init.uniform_(self.bias, -bound, bound, generator=generator)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim == 0 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"Linear(in_features={self.in_features}, out_features={self.out_features}): "
                f"expected input (..., {self.in_features}), found shape {x.shape} "
                f"(weight shape {self.weight.shape})"
            )
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}"
        )


class _PaddedEmbeddingFn(_EmbeddingFn):
    """The embedding lookup whose weight gradient is zero on the ``padding_idx`` row."""

    @staticmethod
    def forward(ctx: Context, weight: Any, ids: Any, padding_idx: int = 0) -> Any:
        ctx.padding_idx = padding_idx
        return _EmbeddingFn.forward(ctx, weight, ids)

    @staticmethod
    def backward(ctx: Context, g: Any) -> Any:
        dw = _EmbeddingFn.backward(ctx, g)
        dw[ctx.padding_idx] = 0  # the padding vector is never trained (PyTorch semantics)
        return dw


class Embedding(Module):
    """z = W[ids].   ids (...) int → z (..., embedding_dim);  W (num_embeddings, C) ~ N(0, 1).

    With ``padding_idx`` that row starts at zero and receives no gradient.
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        padding_idx: int | None = None,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        kw = _factory(device, dtype)
        self.num_embeddings = int(num_embeddings)
        self.embedding_dim = int(embedding_dim)
        if padding_idx is not None:
            if not -self.num_embeddings <= padding_idx < self.num_embeddings:
                raise ValueError(
                    f"padding_idx must be in [-{num_embeddings}, {num_embeddings}), "
                    f"found {padding_idx}"
                )
            padding_idx %= self.num_embeddings
        self.padding_idx = padding_idx
        self.weight = Parameter(zeros(self.num_embeddings, self.embedding_dim, **kw))
        self.reset_parameters()

    def reset_parameters(self, generator: Any = None) -> None:
        init.normal_(self.weight, generator=generator)
        if self.padding_idx is not None:
            self.weight.data[self.padding_idx] = 0

    def forward(self, ids: Any) -> Tensor:
        if self.padding_idx is None:
            return F.embedding(ids, self.weight)
        if isinstance(ids, Tensor) and ids.device != self.weight.device:
            raise DeviceError(
                f"Embedding: expected ids on {self.weight.device} like the weight, "
                f"found {ids.device}"
            )
        arr = as_array(ids, device=self.weight.device)
        if arr.dtype.kind not in "iu":
            raise TypeError(f"Embedding expects integer ids, found dtype {arr.dtype}")
        if arr.size and (int(arr.min()) < 0 or int(arr.max()) >= self.num_embeddings):
            raise IndexError(
                f"Embedding ids must be in [0, {self.num_embeddings}), "
                f"found min {int(arr.min())} and max {int(arr.max())}"
            )
        return _PaddedEmbeddingFn.apply(self.weight, ids=arr, padding_idx=self.padding_idx)

    def extra_repr(self) -> str:
        pad = "" if self.padding_idx is None else f", padding_idx={self.padding_idx}"
        return f"{self.num_embeddings}, {self.embedding_dim}{pad}"


class LayerNorm(Module):
    """y = (x − mean) / √(var + eps) · γ + β over the last ``len(normalized_shape)`` dims.

    x (..., *normalized_shape); γ ones and β zeros of shape ``normalized_shape``.
    """

    def __init__(
        self,
        normalized_shape: int | tuple[int, ...],
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        bias: bool = True,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        kw = _factory(device, dtype)
        if isinstance(normalized_shape, int):
            normalized_shape = (normalized_shape,)
        self.normalized_shape = tuple(int(n) for n in normalized_shape)
        self.eps = float(eps)
        self.elementwise_affine = bool(elementwise_affine)
        self.weight = Parameter(ones(self.normalized_shape, **kw)) if elementwise_affine else None
        affine_bias = elementwise_affine and bias
        self.bias = Parameter(zeros(self.normalized_shape, **kw)) if affine_bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return (
            f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"
        )


class RMSNorm(Module):
    """y = x / √(mean(x²) + eps) · γ over the last dim (LLaMA's norm; HF ``LlamaRMSNorm``).

    x (..., hidden_size); γ = ``weight`` (hidden_size,) starts at ones. HF calls eps
    ``variance_epsilon``; both names work (as an argument and as an attribute).
    """

    def __init__(
        self,
        hidden_size: int,
        eps: float = 1e-6,
        device: Any = None,
        dtype: Any = None,
        *,
        variance_epsilon: float | None = None,
    ) -> None:
        super().__init__()
        kw = _factory(device, dtype)
        self.hidden_size = int(hidden_size)
        self.eps = float(eps if variance_epsilon is None else variance_epsilon)
        self.weight = Parameter(ones(self.hidden_size, **kw))

    @property
    def variance_epsilon(self) -> float:
        return self.eps

    @variance_epsilon.setter
    def variance_epsilon(self, value: float) -> None:
        self.eps = float(value)

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x, (self.hidden_size,), self.weight, self.eps)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.eps}"


class Dropout(Module):
    """Zero each element with probability p and scale the rest by 1/(1 − p) while training;
    the identity in eval mode (``model.eval()``)."""

    def __init__(self, p: float = 0.1) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:  # p == 1 zeroes everything while training, as in PyTorch
            raise ValueError(f"dropout probability must be in [0, 1], found {p}")
        self.p = float(p)

    def forward(self, x: Tensor) -> Tensor:
        return F.dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Residual(Module):
    """The residual add of a pre-norm block: ``forward(h, x) = x + h``, with x (B, T, C) the
    stream entering a sub-block and h (B, T, C) the sub-block's output.

    It has no parameters; it is a module so that a tuner can *wrap* the place where a sub-block
    joins the residual stream (bottleneck adapters insert themselves here, as AdapterHub does in
    its ``attention_adapters`` / ``output_adapters`` layers) without editing the block.
    """

    def forward(self, h: Any, x: Any) -> Any:
        return x + h


class Identity(Module):
    """Returns its input unchanged (a placeholder, e.g. for a removed layer)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()

    def forward(self, x: Any) -> Any:
        return x


class ReLU(Module):
    """max(x, 0)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x)


class GELU(Module):
    """x·Φ(x) (``approximate="tanh"``: GPT-2's tanh approximation)."""

    def __init__(self, approximate: str = "none") -> None:
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ValueError(f"approximate must be 'none' or 'tanh', found {approximate!r}")
        self.approximate = approximate

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(x, approximate=self.approximate)

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}"


class SiLU(Module):
    """x·σ(x) (LLaMA's MLP activation)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.silu(x)


class Tanh(Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.tanh()
