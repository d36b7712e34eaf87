"""The training loop's settings: :class:`TrainConfig`, a validated dataclass."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .precision import PRECISIONS

__all__ = ["TrainConfig"]


@dataclass
class TrainConfig:
    """Hyper-parameters of :class:`Trainer` (validated; errors name the field)."""

    max_steps: int = 100
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 0
    schedule: str = "cosine"  # "cosine" | "linear" | "constant"
    grad_clip: float | None = 1.0
    grad_accum_steps: int = 1
    eval_every: int = 0  # 0: only at the end
    eval_batches: int | None = None  # cap on batches per evaluation
    log_every: int = 10
    output_dir: str | None = None  # metrics.jsonl and checkpoints go here
    save_every: int = 0  # 0: only at the end (when output_dir is set)
    seed: int = 0
    device: str = "cpu"
    precision: str = "fp32"  # "fp32" | "tf32" | "fp16" | "bf16" (see minipeft.precision)
    progress: bool = True

    def __post_init__(self) -> None:
        # field -> (is the value valid?, what was expected); a wrong type counts as invalid.
        positive = (lambda v: _is_int(v) and v >= 1, "an integer >= 1")
        count = (lambda v: _is_int(v) and v >= 0, "an integer >= 0")
        checks: dict[str, tuple[Callable[[Any], bool], str]] = {
            "max_steps": positive,
            "lr": (lambda v: v > 0 and math.isfinite(v), "a finite number > 0"),
            "weight_decay": (lambda v: v >= 0, "a number >= 0"),
            "betas": (lambda v: len(v) == 2 and all(0 <= b < 1 for b in v), "2 numbers in [0, 1)"),
            "eps": (lambda v: v > 0, "a number > 0"),
            "warmup_steps": (lambda v: _is_int(v) and 0 <= v <= self.max_steps,
                             f"an integer in [0, max_steps={self.max_steps}]"),
            "schedule": (lambda v: v in ("cosine", "linear", "constant"),
                         "'cosine', 'linear' or 'constant'"),
            "grad_clip": (lambda v: v is None or v > 0, "None or a number > 0"),
            "grad_accum_steps": positive,
            "eval_every": count,
            "eval_batches": (lambda v: v is None or positive[0](v), "None or an integer >= 1"),
            "log_every": positive,
            "save_every": count,
            "device": (lambda v: v in ("cpu", "cuda", "cuda:0"), "'cpu' or 'cuda'"),
            "precision": (lambda v: v in PRECISIONS, ", ".join(map(repr, PRECISIONS))),
        }  # fmt: skip
        for name, (ok, expected) in checks.items():
            value = getattr(self, name)
            try:
                valid = bool(ok(value))
            except TypeError:
                valid = False
            if not valid:
                raise ValueError(f"TrainConfig.{name}: expected {expected}, found {value!r}")


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)
