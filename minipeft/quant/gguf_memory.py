"""What keeping a model in llama.cpp blocks saves: bytes per layer type, packed beside float32.

For a LinearGGUF holding n weights (n a multiple of 32) the packed bytes are

    Q4_0: 18 n / 32  (4.5 bits per weight)   Q4_1: 20 n / 32  (5.0)   Q8_0: 34 n / 32  (8.5)

against 4 n bytes in float32; every other parameter (embeddings, norms, a float lm_head, a bias)
counts its own bytes on both sides (``float32`` counts it as 4 bytes per element). A parameter
shared by two modules (tied embeddings) is counted once.
"""

from __future__ import annotations

from typing import Any

from ..nn import Module
from .linear_gguf import LinearGGUF

__all__ = ["format_gguf_memory", "gguf_memory_report"]


def _label(module: Module) -> str:
    if isinstance(module, LinearGGUF):
        return f"LinearGGUF({module.type_name})"
    return type(module).__name__


def gguf_memory_report(model: Module) -> dict[str, dict[str, int]]:
    """``{layer type: {"layers", "params", "bytes", "float32_bytes"}}`` plus a ``"total"`` row.
    ``params`` counts weights (a LinearGGUF's out × in, not its bytes); ``bytes`` is what the
    model holds now, ``float32_bytes`` what the same parameters take as float32."""
    rows: dict[str, dict[str, int]] = {}
    seen: set[int] = set()
    for _, module in model.named_modules():
        own = [p for p in module._parameters.values() if p is not None and id(p) not in seen]
        seen.update(id(p) for p in own)
        if not own:
            continue
        row = rows.setdefault(
            _label(module), {"layers": 0, "params": 0, "bytes": 0, "float32_bytes": 0}
        )
        row["layers"] += 1
        for p in own:
            n = p.numel()
            if isinstance(module, LinearGGUF) and p is module.weight:
                n = module.in_features * module.out_features
            row["params"] += n
            row["bytes"] += int(p.data.nbytes)
            row["float32_bytes"] += 4 * n
    total = {k: sum(r[k] for r in rows.values()) for k in ("layers", "params", "bytes",
                                                            "float32_bytes")}  # fmt: skip
    return {**rows, "total": total}


def format_gguf_memory(report: dict[str, dict[str, Any]]) -> str:
    """The report as a table: layer type, layers, params, MiB packed, MiB float32, bits/param."""
    lines = [f"{'layer type':<22} {'layers':>6} {'params':>12} {'MiB':>9} {'fp32 MiB':>9} "
             f"{'bits/param':>10}"]  # fmt: skip
    for name, r in report.items():
        bits = 8 * r["bytes"] / max(r["params"], 1)
        lines.append(
            f"{name:<22} {r['layers']:>6} {r['params']:>12,d} {r['bytes'] / 2**20:>9.3f} "
            f"{r['float32_bytes'] / 2**20:>9.3f} {bits:>10.3f}"
        )
    return "\n".join(lines)
