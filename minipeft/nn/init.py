"""Weight initialisers that fill a Parameter's array **in place** (PyTorch's ``nn.init``).

Random values come from the tensor's device generator (:func:`minipeft.backend.get_rng`, reseeded
by :func:`minipeft.manual_seed`) or from an explicit ``generator`` (a NumPy/CuPy ``Generator``).
Samples are drawn in float64 and rounded once to the tensor's dtype.

For a weight W of shape (out, in, *k): fan_in = in·∏k and fan_out = out·∏k. Kaiming (He)
initialisation keeps activations' variance constant through a layer:

    std = gain / √fan,  gain = √(2 / (1 + a²))   (leaky ReLU with negative slope a)
    kaiming_uniform_: U(−bound, bound), bound = √3 · std

With a = √5 (what ``nn.Linear`` uses) this is U(−1/√fan_in, 1/√fan_in).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

from ..autograd import no_grad
from ..backend import get_rng
from ..tensor import Tensor

__all__ = [
    "calculate_gain", "calculate_fan_in_and_fan_out", "uniform_", "normal_", "constant_",
    "zeros_", "ones_", "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_",
    "xavier_normal_", "skip_init",
]  # fmt: skip

_SKIP = [False]


@contextlib.contextmanager
def skip_init() -> Iterator[None]:
    """Inside the block, every initialiser leaves its tensor as it is (no random draws).

    For building a model whose weights a checkpoint overwrites next (transformers'
    ``no_init_weights``): parameters stay the zeros they were created as, which NumPy takes
    from ``calloc`` — pages not touched until the checkpoint writes them — so loading never
    holds a random copy of a weight, nor the float64 draws behind it, nor an untied lm_head's
    own matrix. Measured on SmolLM2-135M: the load's peak above the baseline fell from 1229 to
    792 MiB (benchmarks/README.md). The global random stream is not advanced either.
    """
    before, _SKIP[0] = _SKIP[0], True
    try:
        yield
    finally:
        _SKIP[0] = before


def _fill(tensor: Tensor, values: Any) -> Tensor:
    """Write ``values`` into ``tensor``'s array (same object, so views and optimizers see it)."""
    if tensor.dtype.kind != "f":
        raise TypeError(f"initialisers fill float tensors, found dtype {tensor.dtype}")
    if _SKIP[0]:
        return tensor
    with no_grad():
        tensor.data[...] = values
    return tensor


def _rng(tensor: Tensor, generator: Any) -> Any:
    return generator if generator is not None else get_rng(tensor.device)


def calculate_fan_in_and_fan_out(tensor: Tensor) -> tuple[int, int]:
    """(fan_in, fan_out) of a weight shaped (out, in, *kernel); needs at least 2 dims."""
    if tensor.ndim < 2:
        raise ValueError(
            f"fan in/out needs a tensor with at least 2 dims (out, in, ...), found {tensor.shape}"
        )
    receptive = math.prod(tensor.shape[2:])
    return tensor.shape[1] * receptive, tensor.shape[0] * receptive


def calculate_gain(nonlinearity: str, param: float | None = None) -> float:
    """The recommended gain for a nonlinearity (PyTorch's table)."""
    if nonlinearity in ("linear", "conv1d", "conv2d", "sigmoid", "identity"):
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else float(param)
        return math.sqrt(2.0 / (1 + slope**2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"unsupported nonlinearity {nonlinearity!r}")


def uniform_(tensor: Tensor, a: float = 0.0, b: float = 1.0, generator: Any = None) -> Tensor:
    """Fill with U(a, b)."""
    if _SKIP[0]:
        return tensor
    u = _rng(tensor, generator).random(tensor.shape)  # float64 in [0, 1)
    return _fill(tensor, a + (b - a) * u)


def normal_(tensor: Tensor, mean: float = 0.0, std: float = 1.0, generator: Any = None) -> Tensor:
    """Fill with N(mean, std²)."""
    if _SKIP[0]:
        return tensor
    z = _rng(tensor, generator).standard_normal(tensor.shape)
    return _fill(tensor, mean + std * z)


def constant_(tensor: Tensor, val: float) -> Tensor:
    return _fill(tensor, val)


def zeros_(tensor: Tensor) -> Tensor:
    return _fill(tensor, 0)


def ones_(tensor: Tensor) -> Tensor:
    return _fill(tensor, 1)


def _kaiming_std(tensor: Tensor, a: float, mode: str, nonlinearity: str) -> float:
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"mode must be 'fan_in' or 'fan_out', found {mode!r}")
    fan_in, fan_out = calculate_fan_in_and_fan_out(tensor)
    fan = fan_in if mode == "fan_in" else fan_out
    return calculate_gain(nonlinearity, a) / math.sqrt(fan) if fan else 0.0


def kaiming_uniform_(
    tensor: Tensor,
    a: float = 0.0,
    mode: str = "fan_in",
    nonlinearity: str = "leaky_relu",
    generator: Any = None,
) -> Tensor:
    """Fill with U(−b, b), b = gain·√(3 / fan) (He et al. 2015, uniform variant)."""
    bound = math.sqrt(3.0) * _kaiming_std(tensor, a, mode, nonlinearity)
    return uniform_(tensor, -bound, bound, generator)


def kaiming_normal_(
    tensor: Tensor,
    a: float = 0.0,
    mode: str = "fan_in",
    nonlinearity: str = "leaky_relu",
    generator: Any = None,
) -> Tensor:
    """Fill with N(0, std²), std = gain / √fan."""
    return normal_(tensor, 0.0, _kaiming_std(tensor, a, mode, nonlinearity), generator)


def xavier_uniform_(tensor: Tensor, gain: float = 1.0, generator: Any = None) -> Tensor:
    """Fill with U(−b, b), b = gain·√(6 / (fan_in + fan_out)) (Glorot & Bengio 2010)."""
    fan_in, fan_out = calculate_fan_in_and_fan_out(tensor)
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return uniform_(tensor, -bound, bound, generator)


def xavier_normal_(tensor: Tensor, gain: float = 1.0, generator: Any = None) -> Tensor:
    """Fill with N(0, std²), std = gain·√(2 / (fan_in + fan_out))."""
    fan_in, fan_out = calculate_fan_in_and_fan_out(tensor)
    return normal_(tensor, 0.0, gain * math.sqrt(2.0 / (fan_in + fan_out)), generator)
