"""Cache blocking for the CPU's multi-pass ops: run a pass sequence block by block, in cache.

A NumPy expression such as GELU's makes one pass over memory per operator. On a (1024, 1024)
float32 activation (4 MiB) every pass streams from L3 or DRAM; cut into blocks of
:data:`BLOCK_ELEMENTS` values, the same passes run on data that stays in the core's L2 cache
(the block, its output and a temporary or two: about 1 MiB), and each block's passes cost a
fraction of a full-array pass. Measured on a (1024, 1024) GELU forward (this machine, one
thread): 3.2 ms as whole-array NumPy, 1.9 ms blocked (``benchmarks/README.md``).

The kernels (:mod:`minipeft.ops.cpu_kernels`) stay plain NumPy on slices; every one is
row-wise or elementwise, so a block computes the very same float operations as the whole array
would. The ops' whole-array code is kept as their readable reference and is what runs under
``cpu_kernels.use_kernels(False)``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["BLOCK_ELEMENTS", "row_slices"]

BLOCK_ELEMENTS = 1 << 16  # 256 KiB of float32 per block array: several fit a 2 MiB L2


def row_slices(array: Any, row_len: int | None = None) -> list[slice]:
    """Slices over axis 0 of ``array`` covering about BLOCK_ELEMENTS values each (whole rows of
    ``row_len`` values, by default the product of the other axes); one slice for a small array."""
    n = array.shape[0] if array.ndim else 1
    if row_len is None:
        row_len = array.size // max(n, 1)
    if array.size <= BLOCK_ELEMENTS:
        return [slice(0, n)]
    rows = max(1, BLOCK_ELEMENTS // max(row_len, 1))
    return [slice(i, min(i + rows, n)) for i in range(0, n, rows)]
