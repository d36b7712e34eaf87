"""Optional plots: matplotlib on its file-only backend, and PNGs written atomically.

matplotlib is an optional dependency (the ``plots`` extra). Every plot in minipeft (AdaLoRA's
rank report, ``rank-analysis``, ``compare``) asks :func:`pyplot` for it and, when it returns
None, prints :data:`MISSING` once and goes on without the picture.
"""

from __future__ import annotations

import io
import os
from typing import Any

from .fileio import atomic_write_bytes

__all__ = ["MISSING", "pyplot", "save_png"]

MISSING = "matplotlib is not installed (pip install 'minipeft[plots]')"


def pyplot() -> Any | None:
    """``matplotlib.pyplot`` on the Agg backend (files only, no display), or None."""
    try:
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        return None
    return plt


def save_png(fig: Any, path: str | os.PathLike[str], dpi: int = 120) -> str:
    """Render ``fig`` to PNG bytes, write them atomically at ``path``, close the figure."""
    import matplotlib.pyplot as plt  # noqa: PLC0415  (only reached when pyplot() worked)

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return os.fspath(path)
