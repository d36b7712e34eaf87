"""Where AdaLoRA put its budget: each module's initial and final rank, as a table or a PNG.

The final rank of a module is the number of triplets its ``rank_pattern`` entry keeps (the
allocation recorded in the config), or its current rank when nothing was pruned yet (no
pattern). The table's first line gives the totals: Σ final / Σ init triplets and the average.

    rows = rank_rows(peft_model.base_model)       # [RankRow(module, init_r, final_r), ...]
    print_rank_report(peft_model.base_model)      # prints the table, returns the rows
    plot_rank_report(rows, "ranks.png")           # a bar chart (needs matplotlib)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from .allocator import lookup

__all__ = ["RankRow", "format_rank_table", "plot_rank_report", "print_rank_report", "rank_rows"]


@dataclass(frozen=True)
class RankRow:
    """One adapted module: its name (relative to the base model), ``init_r`` and final rank."""

    module: str
    init_r: int
    final_r: int


def rank_rows(tuner: Any, adapter_name: str = "default") -> list[RankRow]:
    """Per-module ranks of adapter ``adapter_name`` of an ``AdaLoraModel``, in model order."""
    from .layer import AdaLoraLayer  # noqa: PLC0415 (keeps this module light to import)

    config = tuner.peft_config[adapter_name]
    pattern = config.rank_pattern or {}
    rows = []
    for name, module in tuner.model.named_modules():
        if isinstance(module, AdaLoraLayer) and module.holds(adapter_name):
            keep = lookup(pattern, name, adapter_name)
            final = module.r[adapter_name] if keep is None else sum(bool(v) for v in keep)
            rows.append(RankRow(name, config.init_r, int(final)))
    return rows


def format_rank_table(rows: list[RankRow], adapter_name: str = "default") -> str:
    """A plain-text table: a totals line, then ``module  init_r  final r`` per module."""
    if not rows:
        return f"AdaLoRA ranks (adapter {adapter_name!r}): no adapted modules"
    init, final = sum(r.init_r for r in rows), sum(r.final_r for r in rows)
    width = max(len("module"), *(len(r.module) for r in rows))
    lines = [
        f"AdaLoRA ranks (adapter {adapter_name!r}): {final}/{init} triplets kept, "
        f"average rank {final / len(rows):.2f} over {len(rows)} modules",
        f"{'module':<{width}}  init_r  final r",
    ]
    lines += [f"{r.module:<{width}}  {r.init_r:>6}  {r.final_r:>7}" for r in rows]
    return "\n".join(lines)


def print_rank_report(tuner: Any, adapter_name: str = "default") -> list[RankRow]:
    """Print the table of :func:`rank_rows` and return the rows."""
    rows = rank_rows(tuner, adapter_name)
    print(format_rank_table(rows, adapter_name))
    return rows


def plot_rank_report(rows: list[RankRow], path: str | os.PathLike[str]) -> str | None:
    """A bar chart of the final ranks (the initial rank dashed) written as a PNG at ``path``;
    returns the path, or None (saying so in one line) when matplotlib is not installed."""
    from ....plotting import MISSING, pyplot, save_png  # noqa: PLC0415

    plt = pyplot()
    if plt is None:
        print(f"rank plot skipped: {MISSING}")
        return None
    fig, ax = plt.subplots(figsize=(max(4.0, 0.5 * len(rows) + 2), 3.5))
    ax.bar(range(len(rows)), [r.final_r for r in rows], color="tab:blue", label="final rank")
    if rows:
        ax.axhline(rows[0].init_r, color="gray", linestyle="--", label="init_r")
    ax.set_xticks(range(len(rows)), [r.module for r in rows], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("rank")
    ax.set_title("AdaLoRA: final rank per module")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_png(fig, path)
