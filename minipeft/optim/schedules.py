"""Learning-rate schedules: ``LambdaLR`` and Hugging Face's warmup schedules (same names, same
formulas, so a run configured like a ``transformers.Trainer`` run follows the same lr curve).

``LambdaLR`` sets ``group["lr"] = base_lr · λ(step)`` for every param group. It applies
λ(0) when created (so warmup starts at lr 0) and λ(k) after the k-th ``scheduler.step()``;
call ``scheduler.step()`` right after ``optimizer.step()``. With w warmup and N total steps:

    warmup (all):  λ(s) = s / max(1, w)                              for s < w
    linear:        λ(s) = max(0, (N − s) / max(1, N − w))
    cosine:        λ(s) = max(0, ½·(1 + cos(π · 2c · p))),  p = (s − w) / max(1, N − w), c = 0.5
    constant:      λ(s) = 1
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from .optimizers import Optimizer

__all__ = [
    "LambdaLR", "get_constant_schedule", "get_constant_schedule_with_warmup",
    "get_linear_schedule_with_warmup", "get_cosine_schedule_with_warmup",
    "get_cosine_with_hard_restarts_schedule_with_warmup",
    "get_polynomial_decay_schedule_with_warmup", "get_schedule", "SCHEDULES",
]  # fmt: skip


class LambdaLR:
    """lr of group i = ``base_lrs[i] · lr_lambda(last_epoch)`` (PyTorch's ``LambdaLR``).

    ``lr_lambda`` is one function or one per param group. ``base_lrs`` are the groups' lrs when
    the scheduler is made (remembered as ``group["initial_lr"]``).
    """

    def __init__(
        self,
        optimizer: Optimizer,
        lr_lambda: Callable[[int], float] | Sequence[Callable[[int], float]],
        last_epoch: int = -1,
    ) -> None:
        self.optimizer = optimizer
        n = len(optimizer.param_groups)
        if callable(lr_lambda):
            self.lr_lambdas = [lr_lambda] * n
        else:
            self.lr_lambdas = list(lr_lambda)
            if len(self.lr_lambdas) != n:
                raise ValueError(f"expected {n} lr_lambdas (one per group), found {len(lr_lambda)}")
        for g in optimizer.param_groups:
            g.setdefault("initial_lr", g["lr"])
        self.base_lrs = [g["initial_lr"] for g in optimizer.param_groups]
        self.last_epoch = last_epoch
        self._last_lr: list[float] = []
        self.step()

    def get_lr(self) -> list[float]:
        return [base * lam(self.last_epoch) for base, lam in zip(self.base_lrs, self.lr_lambdas)]

    def step(self) -> None:
        """Advance one step and write the new lr into every param group."""
        self.last_epoch += 1
        self._apply()

    def _apply(self) -> None:
        for g, lr in zip(self.optimizer.param_groups, self.get_lr()):
            g["lr"] = lr
        self._last_lr = [g["lr"] for g in self.optimizer.param_groups]

    def get_last_lr(self) -> list[float]:
        """The lr of each group as last set by the scheduler."""
        return list(self._last_lr)

    def state_dict(self) -> dict[str, Any]:
        """JSON-able: ``{"last_epoch", "base_lrs", "_last_lr"}`` (the lambdas are code)."""
        return {"last_epoch": self.last_epoch, "base_lrs": list(self.base_lrs),
                "_last_lr": list(self._last_lr)}  # fmt: skip

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume at the saved step; also re-applies that step's lr to the optimizer."""
        self.last_epoch = int(state_dict["last_epoch"])
        self.base_lrs = [float(b) for b in state_dict["base_lrs"]]
        self._apply()


# ---------------------------------------------------------------- HF's lambdas (same names)
def _warmup(step: int, num_warmup_steps: int) -> float:
    return float(step) / float(max(1, num_warmup_steps))


def _constant_warmup_lambda(step: int, *, num_warmup_steps: int) -> float:
    return _warmup(step, num_warmup_steps) if step < num_warmup_steps else 1.0


def _linear_lambda(step: int, *, num_warmup_steps: int, num_training_steps: int) -> float:
    if step < num_warmup_steps:
        return _warmup(step, num_warmup_steps)
    remaining = float(num_training_steps - step)
    return max(0.0, remaining / float(max(1, num_training_steps - num_warmup_steps)))


def _progress(step: int, num_warmup_steps: int, num_training_steps: int) -> float:
    return float(step - num_warmup_steps) / float(max(1, num_training_steps - num_warmup_steps))


def _cosine_lambda(
    step: int, *, num_warmup_steps: int, num_training_steps: int, num_cycles: float
) -> float:
    if step < num_warmup_steps:
        return _warmup(step, num_warmup_steps)
    progress = _progress(step, num_warmup_steps, num_training_steps)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * float(num_cycles) * 2.0 * progress)))


def _cosine_restarts_lambda(
    step: int, *, num_warmup_steps: int, num_training_steps: int, num_cycles: int
) -> float:
    if step < num_warmup_steps:
        return _warmup(step, num_warmup_steps)
    progress = _progress(step, num_warmup_steps, num_training_steps)
    if progress >= 1.0:
        return 0.0
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * ((float(num_cycles) * progress) % 1.0))))


def _polynomial_lambda(
    step: int, *, num_warmup_steps: int, num_training_steps: int, lr_end: float, power: float,
    lr_init: float,
) -> float:  # fmt: skip
    if step < num_warmup_steps:
        return _warmup(step, num_warmup_steps)
    if step > num_training_steps:
        return lr_end / lr_init  # LambdaLR multiplies by lr_init
    pct_remaining = 1 - (step - num_warmup_steps) / (num_training_steps - num_warmup_steps)
    return ((lr_init - lr_end) * pct_remaining**power + lr_end) / lr_init


def get_constant_schedule(optimizer: Optimizer, last_epoch: int = -1) -> LambdaLR:
    """λ(s) = 1."""
    return LambdaLR(optimizer, lambda _: 1.0, last_epoch)


def get_constant_schedule_with_warmup(
    optimizer: Optimizer, num_warmup_steps: int, last_epoch: int = -1
) -> LambdaLR:
    """Linear warmup from 0, then constant."""
    fn = partial(_constant_warmup_lambda, num_warmup_steps=num_warmup_steps)
    return LambdaLR(optimizer, fn, last_epoch)


def get_linear_schedule_with_warmup(
    optimizer: Optimizer, num_warmup_steps: int, num_training_steps: int, last_epoch: int = -1
) -> LambdaLR:
    """Linear warmup from 0 to lr, then linear decay to 0 at ``num_training_steps``."""
    fn = partial(_linear_lambda, num_warmup_steps=num_warmup_steps,
                 num_training_steps=num_training_steps)  # fmt: skip
    return LambdaLR(optimizer, fn, last_epoch)


def get_cosine_schedule_with_warmup(
    optimizer: Optimizer,
    num_warmup_steps: int,
    num_training_steps: int,
    num_cycles: float = 0.5,
    last_epoch: int = -1,
) -> LambdaLR:
    """Linear warmup, then a cosine from lr down to 0 (``num_cycles=0.5``: half a period)."""
    fn = partial(_cosine_lambda, num_warmup_steps=num_warmup_steps,
                 num_training_steps=num_training_steps, num_cycles=num_cycles)  # fmt: skip
    return LambdaLR(optimizer, fn, last_epoch)


def get_cosine_with_hard_restarts_schedule_with_warmup(
    optimizer: Optimizer,
    num_warmup_steps: int,
    num_training_steps: int,
    num_cycles: int = 1,
    last_epoch: int = -1,
) -> LambdaLR:
    """Linear warmup, then ``num_cycles`` cosine decays, each restarting at lr."""
    fn = partial(_cosine_restarts_lambda, num_warmup_steps=num_warmup_steps,
                 num_training_steps=num_training_steps, num_cycles=num_cycles)  # fmt: skip
    return LambdaLR(optimizer, fn, last_epoch)


def get_polynomial_decay_schedule_with_warmup(
    optimizer: Optimizer,
    num_warmup_steps: int,
    num_training_steps: int,
    lr_end: float = 1e-7,
    power: float = 1.0,
    last_epoch: int = -1,
) -> LambdaLR:
    """Linear warmup, then (lr − lr_end)·(1 − p)^power + lr_end (lr: the optimizer default)."""
    lr_init = optimizer.defaults["lr"]
    if not lr_init > lr_end:
        raise ValueError(f"lr_end ({lr_end}) must be smaller than the initial lr ({lr_init})")
    fn = partial(_polynomial_lambda, num_warmup_steps=num_warmup_steps,
                 num_training_steps=num_training_steps, lr_end=lr_end, power=power,
                 lr_init=lr_init)  # fmt: skip
    return LambdaLR(optimizer, fn, last_epoch)


SCHEDULES: dict[str, Callable[..., LambdaLR]] = {
    "linear": get_linear_schedule_with_warmup,
    "cosine": get_cosine_schedule_with_warmup,
    "cosine_with_restarts": get_cosine_with_hard_restarts_schedule_with_warmup,
    "polynomial": get_polynomial_decay_schedule_with_warmup,
    "constant": get_constant_schedule,
    "constant_with_warmup": get_constant_schedule_with_warmup,
}


def get_schedule(
    name: str,
    optimizer: Optimizer,
    num_warmup_steps: int = 0,
    num_training_steps: int | None = None,
    **kwargs: Any,
) -> LambdaLR:
    """A schedule by Hugging Face's ``lr_scheduler_type`` name (see ``SCHEDULES``)."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; expected one of {sorted(SCHEDULES)}")
    if name == "constant":
        return get_constant_schedule(optimizer, **kwargs)
    if name == "constant_with_warmup":
        return get_constant_schedule_with_warmup(optimizer, num_warmup_steps, **kwargs)
    if num_training_steps is None:
        raise ValueError(f"schedule {name!r} needs num_training_steps")
    return SCHEDULES[name](optimizer, num_warmup_steps, num_training_steps, **kwargs)
