"""AdaLoRA (Zhang et al., 2023) on the tuner seam: LoRA in SVD form (ΔW = B diag(E) A) whose
ranks are pruned during training by importance; config, layer, rank allocator, tuner, report."""

from __future__ import annotations

from .allocator import RankAllocator, budget_schedule
from .config import AdaLoraConfig
from .layer import AdaLoraLayer
from .model import AdaLoraModel
from .report import RankRow, format_rank_table, plot_rank_report, print_rank_report, rank_rows

__all__ = [
    "AdaLoraConfig",
    "AdaLoraLayer",
    "AdaLoraModel",
    "RankAllocator",
    "RankRow",
    "budget_schedule",
    "format_rank_table",
    "plot_rank_report",
    "print_rank_report",
    "rank_rows",
]
