"""Dynamic loss scaling for float16 training (Micikevicius et al. 2018, "Mixed Precision
Training", §3.2), with PyTorch's ``GradScaler`` policy and defaults.

float16's smallest normal number is 2⁻¹⁴ ≈ 6.1e-5 (subnormals reach 6e-8): many gradients of a
small loss fall below it and flush to zero. Backpropagating ``S · loss`` instead multiplies every
gradient by S, lifting them into range; the fp32 master gradients are then ``g / S``.
Too large an S overflows (inf/NaN), so S is found as training runs:

* a step whose unscaled gradients are not all finite is **skipped** (no optimizer update) and
  S ← S · backoff (0.5);
* after ``growth_interval`` finite steps in a row, S ← S · growth (2).

So S settles just below the overflow point, and one overflow costs one skipped step.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["LossScaler"]


class LossScaler:
    """The scale S and its update rule (PyTorch ``torch.amp.GradScaler`` defaults).

    >>> s = LossScaler(init_scale=8.0, growth_interval=2)
    >>> s.update(found_inf=True); s.scale
    4.0
    >>> s.update(False); s.update(False); s.scale
    8.0
    """

    def __init__(
        self,
        init_scale: float = 2.0**16,
        growth_factor: float = 2.0,
        backoff_factor: float = 0.5,
        growth_interval: int = 2000,
    ) -> None:
        checks = {  # field: (value, valid?, what was expected)
            "init_scale": (init_scale, init_scale > 0 and math.isfinite(init_scale),
                           "a finite number > 0"),
            "growth_factor": (growth_factor, growth_factor > 1, "a number > 1"),
            "backoff_factor": (backoff_factor, 0 < backoff_factor < 1, "a number in (0, 1)"),
            "growth_interval": (growth_interval, isinstance(growth_interval, int)
                                and growth_interval >= 1, "an integer >= 1"),
        }  # fmt: skip
        for name, (value, ok, expected) in checks.items():
            if not ok:
                raise ValueError(f"LossScaler.{name}: expected {expected}, found {value!r}")
        self.scale = float(init_scale)
        self.growth_factor = float(growth_factor)
        self.backoff_factor = float(backoff_factor)
        self.growth_interval = growth_interval
        self.growth_tracker = 0  # finite steps since the last change of scale
        self.skipped = 0  # steps skipped so far (for logs)

    def update(self, found_inf: bool) -> None:
        """After a step: back off on overflow, grow after ``growth_interval`` clean steps."""
        if found_inf:
            self.scale *= self.backoff_factor
            self.growth_tracker = 0
            self.skipped += 1
            return
        self.growth_tracker += 1
        if self.growth_tracker == self.growth_interval:
            self.scale *= self.growth_factor
            self.growth_tracker = 0

    def state_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "growth_tracker": self.growth_tracker,
                "skipped": self.skipped}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scale = float(state["scale"])
        self.growth_tracker = int(state["growth_tracker"])
        self.skipped = int(state.get("skipped", 0))

    def __repr__(self) -> str:
        return f"LossScaler(scale={self.scale:g}, growth_tracker={self.growth_tracker})"
