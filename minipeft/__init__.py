"""minipeft: a from-scratch, readable deep-learning engine and the PEFT methods built on it.

import minipeft as mp
import minipeft.functional as F

x = mp.tensor([[1.0, 2.0]], requires_grad=True)
y = F.softmax(x @ x.T, dim=-1).sum()
y.backward()
"""

from __future__ import annotations

from .autograd import Function, enable_grad, is_grad_enabled, no_grad, set_grad_enabled
from .backend import DeviceError, backend_info, check_device, cuda_available, manual_seed
from .creation import (
    arange,
    empty,
    full,
    ones,
    ones_like,
    rand,
    randint,
    randn,
    tensor,
    zeros,
    zeros_like,
)
from .gradcheck import GradcheckError, gradcheck
from .ops.api import (
    cat,
    chunk,
    clip,
    exp,
    log,
    matmul,
    maximum,
    mean,
    minimum,
    split,
    sqrt,
    stack,
    where,
)
from .tensor import Tensor, bool_, float16, float32, float64, int32, int64
from .threads import get_num_threads, set_num_threads

__version__ = "0.1.0"

__all__ = [
    "__version__", "Tensor", "Function", "tensor", "zeros", "ones", "full", "empty", "arange",
    "randn", "rand", "randint", "zeros_like", "ones_like", "no_grad", "enable_grad",
    "is_grad_enabled", "set_grad_enabled", "manual_seed", "cuda_available", "check_device",
    "backend_info", "DeviceError", "gradcheck", "GradcheckError", "float16", "float32", "float64",
    "int32", "int64", "bool_", "cat", "stack", "split", "chunk", "where", "matmul", "maximum",
    "minimum", "clip", "exp", "log", "sqrt", "mean", "set_num_threads", "get_num_threads",
]  # fmt: skip
