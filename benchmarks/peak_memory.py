"""Peak resident memory of one (side, row) of train_step.py, measured in a fresh child process.

The parent runs ``python train_step.py --memory-child SIDE ROW --preset P --weights W``, once per
side and row, and reads the JSON object on the child's last line of output. The child:

1. imports its own library only (minipeft, or torch + transformers + peft) and reads ``VmRSS``
   from ``/proc/self/status``: the **baseline** (interpreter + libraries);
2. loads the model: ``load_peak`` = ``VmHWM`` (the high-water mark of resident memory) − baseline;
3. builds the row (adapters, optimizer, quantization), resets the high-water mark to the memory
   in use now (writing ``5`` to ``/proc/self/clear_refs``), and runs the row twice (the first
   run allocates the optimizer state, the second shows steady state): ``row_peak`` = ``VmHWM`` −
   baseline. That is the whole process's memory for that work — the model, adapters, optimizer
   state, activations and whatever the allocator keeps — not just what the row adds.

Where ``clear_refs`` is not writable (not Linux, or a locked-down container) the high-water mark
cannot be reset: both figures then come from ``ru_maxrss`` (the peak over the whole child, so
``row_peak`` includes whatever loading needed) and ``method`` says ``ru_maxrss``.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from typing import Any

MIB = 1024 * 1024


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _maxrss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # macOS says bytes, Linux KiB


def _reset_high_water_mark() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def child(side: str, row: str, preset_name: str, weights: str, attn: str) -> dict[str, Any]:
    """Run in the child: measure ``side``'s ``row`` and return the figures (MiB)."""
    import bench_cases as cases  # noqa: PLC0415 — imports minipeft (numpy) only

    preset = cases.PRESETS[preset_name]
    if side == "torch":
        import peft  # noqa: F401, PLC0415 — part of the baseline, as minipeft is on its side
        import torch  # noqa: F401, PLC0415
        import transformers  # noqa: F401, PLC0415

    use_proc = _status_kib("VmRSS") is not None
    if use_proc:
        _reset_high_water_mark()  # so a transient peak while importing does not count as load
    baseline = _status_kib("VmRSS") * 1024 if use_proc else _maxrss_bytes()

    def peak() -> int:
        return _status_kib("VmHWM") * 1024 if use_proc else _maxrss_bytes()

    if side == "torch":
        model = cases.load_torch(weights, attn)
    else:
        model = cases.load_minipeft(weights)
    load_peak = peak() - baseline
    build = cases.torch_row if side == "torch" else cases.minipeft_row
    case = build(row, model, preset)
    reset = use_proc and _reset_high_water_mark()
    for _ in range(2):
        case()
    return {
        "side": side,
        "row": row,
        "load_peak_mib": load_peak / MIB,
        "row_peak_mib": (peak() - baseline) / MIB,
        "baseline_mib": baseline / MIB,
        "method": "VmHWM after clear_refs" if reset else "ru_maxrss (high-water mark not reset)",
    }


def run_child(script: str, side: str, row: str, preset: str, weights: str, threads: int,
              attn: str) -> dict[str, Any]:  # fmt: skip
    """Start the child for one (side, row) and return its JSON (or {"error": ...})."""
    cmd = [sys.executable, script, "--memory-child", side, row, "--preset", preset,
           "--weights", weights, "--threads", str(threads), "--torch-attn", attn]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"side": side, "row": row, "error": f"exit {proc.returncode}: {tail[0]}"}
    return json.loads(lines[-1])
