"""How many threads the CPU's BLAS (OpenBLAS, MKL) may use: ``set_num_threads(n)``.

Why it matters: minipeft's CPU matmuls are small (a 1M-parameter model's are 128 × 512), and a
BLAS thread that finds its core busy with another process is not just slow, it stalls the
others at every barrier. Measured on a 2-core machine whose cores were shared with another
busy process (README, "Threads"): a 30-step fine-tune took several times longer with OpenBLAS's
default two threads than with one, while on an idle machine the two settings tied within 10%.
So the command line uses **one BLAS thread by default**; ``--threads N`` or
``MINIPEFT_NUM_THREADS=N`` choose another count (0 = the library's own default).

The count is changed at run time through ``threadpoolctl``, which finds the BLAS that NumPy
actually loaded; no environment variable has to be set before NumPy is imported.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["DEFAULT_CLI_THREADS", "get_num_threads", "set_num_threads", "threads_from_env"]

DEFAULT_CLI_THREADS = 1
ENV = "MINIPEFT_NUM_THREADS"
_limiter: Any = None  # keeps the active limit alive (threadpoolctl restores on release)


def _threadpoolctl() -> Any:
    import threadpoolctl  # noqa: PLC0415

    from . import backend  # noqa: F401, PLC0415  (loads NumPy's BLAS, so threadpoolctl finds it)

    return threadpoolctl


def set_num_threads(n: int) -> None:
    """Let the BLAS use ``n`` threads (``n >= 1``), or restore its default with ``n = 0``."""
    global _limiter
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ValueError(f"threads: expected an integer >= 0 (0 = the BLAS default), found {n!r}")
    if _limiter is not None:
        _limiter.restore_original_limits()
        _limiter = None
    if n:
        _limiter = _threadpoolctl().threadpool_limits(limits=n, user_api="blas")


def get_num_threads() -> int | None:
    """The BLAS thread count now in force (None when no BLAS library was found)."""
    counts = [
        i["num_threads"] for i in _threadpoolctl().threadpool_info() if i["user_api"] == "blas"
    ]
    return max(counts) if counts else None


def threads_from_env(flag: int | None) -> int:
    """The count the CLI uses: ``--threads``, else ``$MINIPEFT_NUM_THREADS``, else 1."""
    if flag is not None:
        return flag
    raw = os.environ.get(ENV, "").strip()
    if not raw:
        return DEFAULT_CLI_THREADS
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{ENV}: expected an integer >= 0, found {raw!r}") from None
