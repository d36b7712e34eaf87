"""``Switch``: the on/off flag of a fast path (fused kernels, the fused LoRA layer).

use_kernels = Switch()          # on by default
if use_kernels.on: ...          # the fast path
with use_kernels(False): ...    # the reference path inside the block (tests, benchmarks)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

__all__ = ["Switch"]


class Switch:
    """A flag, on by default; calling it with a bool gives a context manager that sets the flag
    for the block and restores it after (nesting and exceptions included)."""

    def __init__(self) -> None:
        self.on = True

    @contextlib.contextmanager
    def __call__(self, on: bool) -> Iterator[None]:
        before, self.on = self.on, bool(on)
        try:
            yield
        finally:
            self.on = before
