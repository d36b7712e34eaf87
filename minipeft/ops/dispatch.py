"""Which kernels an op's arrays take, and the float32 upcast of half-precision statistics."""

from __future__ import annotations

from typing import Any

from . import cpu_kernels as C
from . import cuda_kernels as K

__all__ = ["kernels_for", "float32_if_half"]


def kernels_for(xp: Any) -> Any:
    """The kernel module for ``xp``'s arrays — CUDA on CuPy (:mod:`.cuda_kernels`), the blocked
    passes on NumPy (:mod:`.cpu_kernels`) — or None where switched off (``use_kernels(False)``:
    the op's array code is then the path, and the reference)."""
    return K if K.enabled(xp) else C if C.enabled(xp) else None


def float32_if_half(*arrays: Any) -> list[Any]:
    """float16 arrays as float32 (for sums and statistics); other arrays and None unchanged."""
    return [a.astype("float32") if a is not None and a.dtype == "float16" else a for a in arrays]
