"""What ``minipeft compare`` writes from its results: the terminal table, ``results.csv``,
``report.md`` (the table, the seed's claims checked against the measured rows) and PNG plots.

Plots need matplotlib (the ``plots`` extra); without it they are skipped with one line saying
so, and ``report.md`` is written all the same. Every file is written atomically.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

from ..fileio import atomic_write_text
from ..plotting import MISSING, pyplot, save_png

__all__ = ["CSV_FIELDS", "claims", "format_table", "plot", "write_outputs"]

CSV_FIELDS = ("method", "status", "trainable_params", "all_params", "trainable_pct",
              "stored_bytes", "peak_step_bytes", "resident_bytes", "transient_bytes", "step_ms",
              "train_s", "lr", "steps", "eval_loss", "eval_perplexity", "eval_accuracy",
              "pretrain_loss", "forgetting", "latency_ms_per_token", "latency_vs_base", "mergeable",
              "latency_merged_ms_per_token", "latency_merged_vs_base", "merged_logit_drift",
              "reason")  # fmt: skip


GLOSSARY = (
    "*trainable*: parameters that get a gradient (% of the model's). *on disk*: the files one "
    "task needs beyond the shared base (a whole model for full fine-tuning). *peak step*: the "
    "model's arrays and AdamW's moments, plus the most bytes one training step allocates at "
    "once. *ms/step*: median wall time of an optimizer step. *eval loss*, *ppl* (or accuracy): "
    "the held-out metric after training. *forgetting*: the rise of the loss on the pretraining "
    "corpus's validation text with the adapter active. *ms/token*: inference latency per token, "
    "in parentheses its ratio to the untuned base timed in turn; *merged*: the same with the "
    "adapter merged into the weights, for the methods that merge. Every figure but the "
    "timings repeats on a re-run.",
)


def _size(n: float | None) -> str:
    if n is None:
        return "-"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


def _num(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def _latency(ms: float | None, ratio: float | None) -> str:
    if ms is None:
        return "-"
    return f"{ms:.2f}" if ratio is None else f"{ms:.2f} ({ratio:.2f}x)"


def _cells(row: dict[str, Any], classify: bool) -> list[str]:
    if row.get("status") != "ok":
        return [row["method"], *["-"] * 10]
    metric = _num(row["eval_accuracy"], ".3f") if classify else _num(row["eval_perplexity"], ".1f")
    return [row["method"], f"{row['trainable_params']:,}", f"{row['trainable_pct']:.2f}%",
            _size(row["stored_bytes"]), _size(row["peak_step_bytes"]), _num(row["step_ms"], ".0f"),
            f"{row['eval_loss']:.4f}", metric, f"{row['forgetting']:+.4f}",
            _latency(row["latency_ms_per_token"], row.get("latency_vs_base")),
            _latency(row["latency_merged_ms_per_token"],
                     row.get("latency_merged_vs_base"))]  # fmt: skip


def _header(classify: bool) -> list[str]:
    return ["method", "trainable", "%", "on disk", "peak step", "ms/step", "eval loss",
            "accuracy" if classify else "ppl", "forgetting", "ms/token (vs base)",
            "merged ms/token"]  # fmt: skip


def format_table(results: dict[str, Any], markdown: bool = False) -> str:
    """One row per method (the base first, for reference), the seed's columns measured."""
    classify = results["settings"]["task"] == "docstring-topic"
    base = results["base"]
    metric = base["eval"].get("accuracy") if classify else math.exp(base["eval"]["loss"])
    first = ["base (untuned)", "0", "0.00%", "-", "-", "-", f"{base['eval']['loss']:.4f}",
             _num(metric, ".3f" if classify else ".1f"), "+0.0000",
             _num(base["latency_ms_per_token"], ".2f"), "-"]  # fmt: skip
    rows = [_header(classify), first] + [_cells(r, classify) for r in results["methods"]]
    skipped = [f"{r['method']}: {r['status']}: {r['reason']}" for r in results["methods"]
               if r.get("status") != "ok"]  # fmt: skip
    if markdown:
        lines = ["| " + " | ".join(r) + " |" for r in rows]
        lines.insert(1, "|" + "|".join("---" if i == 0 else "---:" for i in range(len(rows[0])))
                     + "|")  # fmt: skip
        return "\n".join(lines + ([""] + [f"- {s}" for s in skipped] if skipped else []))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                       enumerate(zip(r, widths, strict=True))) for r in rows]  # fmt: skip
    return "\n".join(lines + skipped)


def claims(results: dict[str, Any]) -> list[str]:
    """The seed's claims, each with the figures that confirm or contradict it on this run
    (only the claims whose methods were measured)."""
    rows = {r["method"]: r for r in results["methods"] if r.get("status") == "ok"}
    out = []
    full, lora = rows.get("full"), rows.get("lora")
    if full and lora:
        ratio = full["trainable_params"] / lora["trainable_params"]
        out.append(f"**Trainable parameters.** LoRA trains {lora['trainable_pct']:.2f}% of the "
                   f"weights, {ratio:,.0f}x fewer than full fine-tuning; its file is "
                   f"{full['stored_bytes'] / lora['stored_bytes']:,.0f}x smaller "
                   f"({_size(lora['stored_bytes'])} against "
                   f"{_size(full['stored_bytes'])}).")  # fmt: skip
        gap = lora["eval_loss"] - full["eval_loss"]
        verdict = "comparable (within 0.05)" if abs(gap) <= 0.05 else \
            ("better" if gap < 0 else "worse")  # fmt: skip
        out.append(f"**Accuracy comparable to full fine-tuning.** Held-out loss: LoRA "
                   f"{lora['eval_loss']:.4f}, full FT {full['eval_loss']:.4f} (LoRA {verdict}"
                   f", {gap:+.4f}).")  # fmt: skip
        out.append(f"**Forgetting.** The pretraining corpus's loss changed by "
                   f"{full['forgetting']:+.4f} with full fine-tuning and {lora['forgetting']:+.4f} "
                   "with LoRA (> 0: forgotten).")  # fmt: skip
        mem = lora["peak_step_bytes"] / full["peak_step_bytes"]
        out.append(f"**Training memory.** A full fine-tuning step peaks at "
                   f"{_size(full['peak_step_bytes'])}, LoRA's at {_size(lora['peak_step_bytes'])} "
                   f"({mem:.2f}x full's); resident (weights + AdamW): "
                   f"{_size(full['resident_bytes'])} against "
                   f"{_size(lora['resident_bytes'])}.")  # fmt: skip
    if lora and lora.get("latency_merged_vs_base") is not None:
        out.append(f"**No inference latency once merged.** LoRA per token: "
                   f"{lora['latency_vs_base']:.2f}x the base unmerged, "
                   f"{lora['latency_merged_vs_base']:.2f}x merged (each measured in turn with "
                   "the base).")  # fmt: skip
    bottleneck = [rows[m] for m in ("seq_bn", "double_seq_bn", "par_bn") if m in rows]
    if bottleneck:
        parts = ", ".join(f"{r['method']} {r['latency_vs_base']:.2f}x" for r in bottleneck)
        out.append(f"**Adapters add latency (they cannot be merged).** Per token against the "
                   f"base: {parts}.")  # fmt: skip
    prompt = [rows[m] for m in ("prompt", "prefix", "ptuning") if m in rows]
    if prompt:
        parts = ", ".join(f"{r['method']} {r['trainable_params']:,} params, loss "
                          f"{r['eval_loss']:.4f}" for r in prompt)  # fmt: skip
        out.append(f"**Prompt-side methods** (no weight changes, nothing to merge): {parts}.")
    return out


def _csv(results: dict[str, Any]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore",
                            lineterminator="\n")  # fmt: skip
    writer.writeheader()
    for row in results["methods"]:
        writer.writerow({k: row.get(k) for k in CSV_FIELDS})
    return buf.getvalue()


def plot(out: Path, results: dict[str, Any]) -> list[str]:
    """Write the PNGs; return their names ([] without matplotlib)."""
    plt = pyplot()
    if plt is None:
        return []
    rows = [r for r in results["methods"] if r.get("status") == "ok"]
    classify = results["settings"]["task"] == "docstring-topic"
    metric = "eval_accuracy" if classify else "eval_loss"
    label = "held-out accuracy" if classify else "held-out loss"
    names = []

    def save(fig: Any, name: str) -> None:
        save_png(fig, out / name, dpi=110)
        names.append(name)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        steps, losses = zip(*r["curve"], strict=True) if r["curve"] else ((), ())
        ax.plot(steps, losses, label=r["method"])
    ax.set(xlabel="step", ylabel="training loss", title="Training curves")
    ax.legend(fontsize=7, ncol=3)
    save(fig, "curves.png")
    for name, x, xlabel, xlog in (
        ("metric_vs_params.png", "trainable_params", "trainable parameters", True),
        ("forgetting_vs_metric.png", "forgetting", "forgetting (pretraining loss rise)", False),
    ):
        fig, ax = plt.subplots(figsize=(6, 4.5))
        for r in rows:
            ax.scatter(r[x], r[metric])
            ax.annotate(r["method"], (r[x], r[metric]), fontsize=7)
        ax.set(xlabel=xlabel, ylabel=label, xscale="log" if xlog else "linear")
        save(fig, name)
    fig, ax = plt.subplots(figsize=(8, 4))
    xs = range(len(rows))
    unmerged = [r["latency_vs_base"] for r in rows]
    merged = [r["latency_merged_vs_base"] or 0 for r in rows]
    ax.bar([i - 0.2 for i in xs], unmerged, 0.4, label="unmerged")
    ax.bar([i + 0.2 for i in xs], merged, 0.4, label="merged")
    ax.axhline(1.0, color="k", lw=1, ls="--", label="base")
    ax.set_xticks(list(xs), [r["method"] for r in rows], rotation=45, ha="right")
    ax.set(
        ylabel="ms per token / the base's", title="Inference latency (timed in turn with the base)"
    )
    ax.legend()
    save(fig, "latency.png")
    return names


def write_outputs(out: Path, results: dict[str, Any], log: Any = print) -> None:
    """The table on the terminal; results.csv, the plots and report.md in ``out``."""
    table = format_table(results)
    log("\n" + table)
    atomic_write_text(out / "results.csv", _csv(results))
    pngs = plot(out, results)
    if not pngs:
        log(f"plots skipped: {MISSING}")
    s = results["settings"]
    lines = [f"# minipeft compare: {s['task']}, {s['steps']} steps, seed {s['seed']}", "",
             f"Base model: `{s['model']}`; device {results['device']}; minipeft "
             f"{results['minipeft']}{'; --quick' if s['quick'] else ''}.", "",
             format_table(results, markdown=True), "", *GLOSSARY, "",
             "## The seed's claims, measured", ""]  # fmt: skip
    lines += [f"- {c}" for c in claims(results)] or ["- (no claim's methods were measured)"]
    lines += ["", *(f"![{p[:-4]}]({p})" for p in pngs)]
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
    log(f"\nresults: {out / 'results.json'}, {out / 'results.csv'}, {out / 'report.md'}")
