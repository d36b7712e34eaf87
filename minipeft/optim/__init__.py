"""Optimizers, learning-rate schedules and gradient clipping.

opt = AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-4)
sched = get_schedule("cosine", opt, num_warmup_steps=10, num_training_steps=100)
loss.backward(); clip_grad_norm_(model.parameters(), 1.0); opt.step(); sched.step()
opt.zero_grad()
"""

from __future__ import annotations

from .clip import clip_grad_norm_
from .loss_scaler import LossScaler
from .optimizers import SGD, AdamW, Optimizer, flatten_state_dict, unflatten_state_dict
from .schedules import (
    SCHEDULES,
    LambdaLR,
    get_constant_schedule,
    get_constant_schedule_with_warmup,
    get_cosine_schedule_with_warmup,
    get_cosine_with_hard_restarts_schedule_with_warmup,
    get_linear_schedule_with_warmup,
    get_polynomial_decay_schedule_with_warmup,
    get_schedule,
)

__all__ = [
    "Optimizer", "SGD", "AdamW", "flatten_state_dict", "unflatten_state_dict", "LambdaLR",
    "get_constant_schedule", "get_constant_schedule_with_warmup",
    "get_linear_schedule_with_warmup", "get_cosine_schedule_with_warmup",
    "get_cosine_with_hard_restarts_schedule_with_warmup",
    "get_polynomial_decay_schedule_with_warmup", "get_schedule", "SCHEDULES", "clip_grad_norm_",
    "LossScaler",
]  # fmt: skip
