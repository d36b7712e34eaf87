"""Per-op profiler: where a forward and backward spend their time, one row per Function.

    with profile() as prof:
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
    print(prof.table())

While a profile is active, :meth:`Function.apply` times each op's ``forward`` and the backward
walk times each node's ``backward``; a row is (op name, phase) with its call count and seconds.
The ``autograd`` row of phase ``backward`` is the walk's own work outside the ops' backwards
(ordering the graph, summing gradients that meet, casting them): the bookkeeping a fused op saves.
Time outside any op (Python glue in modules, the optimizer) is what a caller's wall clock has
beyond :attr:`OpProfile.total`.

On a GPU the ops only enqueue work, so with ``sync=True`` (the default) every timed call ends
with a device synchronisation: the rows are then real kernel times, and the run is slower than
an unprofiled one. When no profile is active the cost is one global lookup per op.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

from . import autograd

__all__ = ["OpProfile", "profile"]


class OpProfile:
    """Accumulated (calls, seconds) per (op name, phase); phases are "forward" and "backward"."""

    def __init__(self, sync: bool = True) -> None:
        self.sync = sync
        self.rows: dict[tuple[str, str], list[float]] = {}

    def time(self, name: str, phase: str, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        """Run ``fn(*args, **kw)`` and add its wall time to the row (name, phase)."""
        start = time.perf_counter()
        out = fn(*args, **kw)
        if self.sync:
            _synchronize(out)
        self.add(name, phase, time.perf_counter() - start)
        return out

    def add(self, name: str, phase: str, seconds: float, calls: int = 1) -> None:
        row = self.rows.setdefault((name, phase), [0, 0.0])
        row[0] += calls
        row[1] += seconds

    @property
    def total(self) -> float:
        """Seconds inside profiled ops and the backward walk, all rows together."""
        return sum(r[1] for r in self.rows.values())

    def summary(self) -> list[dict[str, Any]]:
        """Rows as dicts (op, phase, calls, seconds, share of the total), slowest first."""
        total = self.total or 1.0
        out = [
            {"op": n, "phase": p, "calls": int(c), "seconds": s, "share": s / total}
            for (n, p), (c, s) in self.rows.items()
        ]
        return sorted(out, key=lambda r: -r["seconds"])

    def table(self, per: int = 1, top: int | None = None) -> str:
        """A Markdown table of the rows; ``per`` divides calls and times (e.g. steps profiled)."""
        lines = ["| op | phase | calls | ms | share |", "|---|---|---:|---:|---:|"]
        rows = self.summary()
        for r in rows[:top]:
            lines.append(
                f"| {r['op']} | {r['phase']} | {r['calls'] / per:g} | "
                f"{r['seconds'] * 1e3 / per:.1f} | {r['share']:.1%} |"
            )
        lines.append(f"| **total** | | | {self.total * 1e3 / per:.1f} | 100% |")
        return "\n".join(lines)


def _synchronize(out: Any) -> None:
    """Wait for the GPU when ``out`` holds CuPy arrays (a no-op for NumPy)."""
    for a in out if isinstance(out, tuple) else (out,):
        if a is not None and type(a).__module__.startswith("cupy"):
            import cupy  # noqa: PLC0415 — only reached with CuPy arrays

            cupy.cuda.get_current_stream().synchronize()
            return


@contextlib.contextmanager
def profile(sync: bool = True) -> Iterator[OpProfile]:
    """Profile the ops run inside the block; profiles do not nest (an inner one raises)."""
    if autograd._profiler is not None:
        raise RuntimeError("profile(): a profile is already active")
    prof = OpProfile(sync)
    autograd._profiler = prof
    try:
        yield prof
    finally:
        autograd._profiler = None
