"""What 4-bit storage saves: bytes of the base weights per storage format, and the peak memory
of one training step.

For n weights in blocks of B with double quantization (8-bit absmax in blocks of 256, a float32
scale and offset per 256 blocks):

    fp32: 32 n bits    fp16: 16 n bits    NF4: 4 n + 32 n / B bits
    NF4 + DQ: 4 n + 8 n / B + 32 n / (256 B) bits

(a float32 scale per 256 blocks, and one float32 offset per tensor), so at B = 64: 4.5 bits
per weight without double quantization, 4.127 with it (QLoRA, §2).
Peak step memory is measured with ``tracemalloc`` (NumPy reports its buffers to it): the most
bytes held during one forward + backward + optimizer step, the model's own weights included.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from typing import Any

__all__ = ["bits_per_parameter", "format_report", "peak_bytes", "storage_bytes"]


def storage_bytes(sizes: list[int], blocksize: int = 64) -> dict[str, float]:
    """Bytes to store weight tensors of these sizes: fp32, fp16, NF4 (a float32 absmax per
    block), NF4 + double quantization (8-bit absmax, a float32 scale per 256 blocks and one
    offset per tensor). The 16- and 256-entry codebooks are shared and not counted."""
    out = {"fp32": 0.0, "fp16": 0.0, "nf4": 0.0, "nf4+dq": 0.0}
    for n in sizes:
        blocks = -(-n // blocksize)
        packed = -(-n // 2)
        out["fp32"] += 4.0 * n
        out["fp16"] += 2.0 * n
        out["nf4"] += packed + 4.0 * blocks
        out["nf4+dq"] += packed + blocks + 4.0 * -(-blocks // 256) + 4
    return out


def bits_per_parameter(n: int, blocksize: int = 64, double_quant: bool = True) -> float:
    """Storage bits per weight, codebooks not counted (they are per tensor, not per weight)."""
    blocks = -(-n // blocksize)
    if not double_quant:
        return (4 * n + 32 * blocks) / n
    return (4 * n + 8 * blocks + 32 * -(-blocks // 256)) / n


def peak_bytes(setup: Callable[[], Any], step: Callable[[Any], Any]) -> int:
    """Peak bytes held while ``step(setup())`` runs: what ``setup`` left allocated (the model,
    its optimizer) plus the step's own peak. Traced from before ``setup``, so a model's
    weights count in the storage they end up in (fp32, or 4 bits after quantization)."""
    tracemalloc.start()
    try:
        state = setup()
        tracemalloc.reset_peak()
        step(state)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak


def format_report(sizes: list[int], blocksize: int, rows: dict[str, int] | None = None) -> str:
    """The table ``minipeft quantize`` / ``finetune --method qlora`` print: storage of the
    quantized layers' weights (``sizes``: one entry per layer) and peak step memory."""
    n = sum(sizes)
    stored = storage_bytes(sizes, blocksize)
    lines = [f"base weights: {n:,d} in {len(sizes)} quantized layers (blocksize {blocksize})"]
    for name, label in (("fp32", "fp32"), ("fp16", "fp16"), ("nf4", "NF4"),
                        ("nf4+dq", "NF4 + double quant")):  # fmt: skip
        bits = 8 * stored[name] / n
        lines.append(f"  {label:<20} {stored[name] / 2**20:10.3f} MiB  {bits:6.3f} bits/param")
    for name, value in (rows or {}).items():
        lines.append(f"  peak step memory, {name:<8} {value / 2**20:9.2f} MiB")
    return "\n".join(lines)
