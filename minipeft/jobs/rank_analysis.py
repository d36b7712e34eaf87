"""``minipeft rank-analysis``: the low intrinsic rank of fine-tuning, measured (LoRA §7).

1. Fully fine-tune the base on a task (:func:`~minipeft.jobs.finetune.finetune`,
   ``method="full"``) and take ΔW = W_ft − W_base for every 2-D weight of the Transformer blocks
   (GPT-2's Conv1D stores W as (in, out): singular values do not care). For each, the fraction
   of ‖ΔW‖_F² that its top r singular directions hold, E(r) (:mod:`~minipeft.jobs.rank_math`),
   per layer and averaged over layers per module type, beside a Gaussian matrix of the same
   shape; embeddings and heads are reported apart.
2. Train two LoRA adapters on the same task (ranks ``lora_r``, seeds ``seed`` and ``seed + 1``,
   α = 2r) and compute the subspace similarity φ(A_1, A_2, i, j) of their A matrices for every
   i ≤ r_1, j ≤ r_2, beside the random-subspace expectation max(i, j)/d.
3. Print both tables, write ``results.json`` and, when matplotlib imports, ``energy.png``
   (E(r) per module type) and ``subspace.png`` (the φ heatmap, as the LoRA paper's figure 3).

The output folder holds the three fine-tunes' run folders (``full``, ``lora-r<r>-seed<s>``)
beside those files.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..fileio import atomic_write_text, check_output_path, load_safetensors
from ..models import AutoModelForCausalLM
from ..models.checkpoints import resolve_model
from ..peft.adapter_io import adapter_dir
from ..plotting import MISSING, pyplot, save_png
from .finetune import finetune
from .rank_math import (
    energy_fraction,
    random_energy_fraction,
    random_subspace_similarity,
    rank_for_energy,
    subspace_similarity_grid,
)

__all__ = ["DEFAULT_LORA_R", "DEFAULT_RANKS", "DEFAULT_STEPS", "rank_analysis"]

DEFAULT_RANKS = (1, 2, 4, 8, 16, 32)
DEFAULT_LORA_R = (8, 64)  # the LoRA paper's pair (figure 3)
DEFAULT_STEPS = 100  # ~40 s per fine-tune of the default base on one CPU core
BLOCK = re.compile(r"^(?P<pre>.*?\.(?:h|layers))\.(?P<layer>\d+)\.(?P<type>.+?)(?:\.weight)?$")


def _positive_ints(name: str, values: Any, count: int | None = None) -> tuple[int, ...]:
    values = tuple(values) if isinstance(values, (list, tuple)) else (values,)
    what = "an integer" if count == 1 else "integers"
    for v in values:
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name}: expected {what} >= 1, found {v!r}")
    if count is not None and len(values) != count:
        raise ValueError(f"{name}: expected {count} values, found {len(values)}: {list(values)}")
    if not values:
        raise ValueError(f"{name}: expected at least one value, found none")
    return tuple(int(v) for v in values)


def _model_path(model_path: Any) -> str:
    """``--model`` resolved and checked, or the cached base's folder (built later if absent)."""
    from .pretrain import default_base_dir  # noqa: PLC0415

    if model_path is None:
        return os.fspath(default_base_dir())
    path = os.fspath(resolve_model(model_path))
    if not ((Path(path) / "config.json").is_file() or path.lower().endswith(".gguf")):
        raise ValueError(f"model: {path!r} is not a model (expected a Hugging Face folder with "
                         "config.json, a .gguf file or a known checkpoint name)")  # fmt: skip
    return path


def _build_default_base(base: Path, device: str, progress: bool, log: Any) -> None:
    """Pretrain the cached base when it is absent (resuming an interrupted pretraining)."""
    from .pretrain import pretrain  # noqa: PLC0415

    if (base / "config.json").is_file():
        return
    unfinished = (base / "checkpoint" / "trainer_state.json").is_file()
    log(f"no cached base model at {base}: pretraining one (a few minutes)")
    pretrain(out=base, device=device, progress=progress, log=log, resume=unfinished,
             overwrite=not unfinished)  # fmt: skip


def _weights(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Every 2-D parameter of a causal LM as a float64 array (tied ones once)."""
    model = AutoModelForCausalLM.from_pretrained(path)
    return {n: p.numpy().astype(np.float64) for n, p in model.named_parameters()
            if p.ndim == 2}  # fmt: skip


def _energy(base: dict, tuned: dict, ranks: tuple[int, ...], seed: int) -> dict[str, Any]:
    per_module: dict[str, Any] = {}
    for name, w in base.items():
        delta = tuned[name] - w  # (m, n)
        m = BLOCK.match(name)
        per_module[name] = {
            "type": m["type"] if m else "other", "layer": int(m["layer"]) if m else None,
            "shape": list(delta.shape), "norm": float(np.linalg.norm(delta)),
            "fraction": energy_fraction(delta, ranks), "r90": rank_for_energy(delta, 0.9),
        }  # fmt: skip
    by_type: dict[str, Any] = {}
    for t in dict.fromkeys(v["type"] for v in per_module.values() if v["type"] != "other"):
        rows = [v for v in per_module.values() if v["type"] == t]
        shape = tuple(rows[0]["shape"])
        by_type[t] = {
            "shape": list(shape), "layers": len(rows),
            "fraction": {r: float(np.mean([v["fraction"][r] for v in rows])) for r in ranks},
            "r90": float(np.mean([v["r90"] for v in rows])),
            "random": random_energy_fraction(shape, ranks, seed),
        }  # fmt: skip
    return {"per_module": per_module, "by_type": by_type}


def _lora_a(folder: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    tensors = load_safetensors(Path(adapter_dir(folder)) / "adapter_model.safetensors")
    return {k.removeprefix("base_model.model.").removesuffix(".lora_A.weight"): v
            for k, v in tensors.items() if k.endswith("lora_A.weight")}  # fmt: skip


def _table(log: Any, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(r[c])) for r in [header, *rows]) for c in range(len(header))]
    for row in [header, *rows]:
        log("  ".join(f"{str(x):<{w}}" if c == 0 else f"{str(x):>{w}}"
                      for c, (x, w) in enumerate(zip(row, widths))))  # fmt: skip


def _print_energy(log: Any, energy: dict[str, Any], ranks: tuple[int, ...], steps: int) -> None:
    log(
        f"\nenergy of ΔW in its top r singular directions, E(r) = Σ_(i≤r) σ_i² / Σ σ_i² "
        f"(full fine-tune, {steps} steps; mean over layers; random = a Gaussian matrix)"
    )
    rows = []
    for t, v in energy["by_type"].items():
        rows.append(
            [
                f"{t} (×{v['layers']})",
                "×".join(map(str, v["shape"])),
                *(f"{v['fraction'][r]:.3f}" for r in ranks),
                f"{v['r90']:.1f}",
            ]
        )
        rows.append(["  random", "", *(f"{v['random'][r]:.3f}" for r in ranks), ""])
    for name, v in energy["per_module"].items():
        if v["type"] == "other":
            rows.append(
                [
                    name,
                    "×".join(map(str, v["shape"])),
                    *(f"{v['fraction'][r]:.3f}" for r in ranks),
                    str(v["r90"]),
                ]
            )
    _table(log, ["module", "shape", *(f"r={r}" for r in ranks), "r90"], rows)
    per_layer = [(n, v) for n, v in energy["per_module"].items() if v["type"] != "other"]
    if len(per_layer) <= 32:
        log("\nper layer (r90: the smallest r holding 90% of the energy)")
        _table(log, ["module", *(f"r={r}" for r in ranks), "r90"],
               [[n, *(f"{v['fraction'][r]:.3f}" for r in ranks), str(v["r90"])]
                for n, v in per_layer])  # fmt: skip


def _print_subspace(log: Any, sub: dict[str, Any]) -> None:
    grid, d = np.asarray(sub["mean"]), sub["d_in"]
    (r1, s1), (r2, s2) = zip(sub["ranks"], sub["seeds"])
    i_s = [k for k in (1, 2, 4, 8, 16, 32, 64) if k <= grid.shape[0]]
    j_s = [k for k in (1, 2, 4, 8, 16, 32, 64) if k <= grid.shape[1]]
    log(f"\nsubspace similarity φ(A_r={r1}, A_r={r2}, i, j) = ‖U_1^(i)ᵀ U_2^(j)‖_F² / min(i, j) "
        f"of LoRA's A (seeds {s1}, {s2}; mean over {len(sub['per_module'])} modules); "
        f"random subspaces in parentheses: max(i, j)/{d}")  # fmt: skip
    rows = [[str(i), *(f"{grid[i - 1, j - 1]:.3f} ({random_subspace_similarity(i, j, d):.3f})"
                      for j in j_s)] for i in i_s]  # fmt: skip
    _table(log, ["i \\ j", *map(str, j_s)], rows)


def _plots(out: Path, result: dict[str, Any], log: Any) -> list[str]:
    plt = pyplot()
    if plt is None:
        log(f"plots skipped: {MISSING}")
        return []
    ranks = result["ranks"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for t, v in result["energy"]["by_type"].items():
        line = ax.plot(ranks, [v["fraction"][r] for r in ranks], marker="o", label=t)[0]
        ax.plot(ranks, [v["random"][r] for r in ranks], ls="--", color=line.get_color(), lw=1)
    ax.set(xscale="log", xlabel="r", ylabel="E(r): energy in the top r directions",
           title="ΔW of a full fine-tune (dashed: a Gaussian matrix)", ylim=(0, 1.02))  # fmt: skip
    ax.set_xticks(ranks, [str(r) for r in ranks])
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_png(fig, out / "energy.png")
    sub = result["subspace"]
    fig, ax = plt.subplots(figsize=(7, 3))
    grid = np.asarray(sub["mean"])  # (k_1, k_2); entry [i-1, j-1] is φ at (i, j)
    extent = (0.5, grid.shape[1] + 0.5, grid.shape[0] + 0.5, 0.5)
    im = ax.imshow(grid, aspect="auto", vmin=0, vmax=1, cmap="viridis", extent=extent)
    r1, r2 = sub["ranks"]
    title = "φ(A_1, A_2, i, j), mean over modules"
    ax.set(xlabel=f"j (A, r={r2})", ylabel=f"i (A, r={r1})", title=title)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    save_png(fig, out / "subspace.png")
    return [os.fspath(out / "energy.png"), os.fspath(out / "subspace.png")]


def rank_analysis(
    model_path: str | os.PathLike[str] | None = None,
    task: str = "docstrings",
    steps: int = DEFAULT_STEPS,
    ranks: tuple[int, ...] = DEFAULT_RANKS,
    lora_r: tuple[int, int] = DEFAULT_LORA_R,
    device: str = "cpu",
    seed: int = 0,
    out: str | os.PathLike[str] = "runs/rank-analysis",
    overwrite: bool = False,
    progress: bool = True,
    log: Any = print,
) -> dict[str, Any]:
    """Run the three steps above and return what ``results.json`` holds.

    ``ranks``: the r at which E(r) is reported; ``lora_r``: the two LoRA ranks compared (equal
    ranks compare two seeds). ``out`` must not be or lie inside the model, and an ``out`` that
    holds files is refused unless ``overwrite``. Bad values raise ``ValueError`` naming them.
    """
    start = time.perf_counter()
    steps = _positive_ints("steps", steps, 1)[0]
    ranks = tuple(sorted(set(_positive_ints("ranks", ranks))))
    lora_r = _positive_ints("lora_r", lora_r, 2)
    out_dir = Path(out)
    default = model_path is None
    model_path = _model_path(model_path)
    check_output_path(out_dir, {"the base model": model_path})
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {os.fspath(out)!r} is a file; expected a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise ValueError(f"--out {os.fspath(out)!r} already holds files; pass --overwrite to "
                         "replace them, or another --out")  # fmt: skip
    if default:
        _build_default_base(Path(model_path), device, progress, log)
    common = {"task": task, "steps": steps, "device": device, "overwrite": True,
              "progress": progress, "log": log}  # fmt: skip

    log(f"[1/3] full fine-tune of {model_path} on {task!r} ({steps} steps)")
    full = finetune(model_path, out=out_dir / "full", method="full", seed=seed, **common)
    log(f"  {full.metric} {full.before[full.metric]:.4f} -> {full.after[full.metric]:.4f}")
    energy = _energy(_weights(model_path), _weights(full.adapter_path), ranks, seed)

    seeds = (seed, seed + 1)
    log(f"[2/3] LoRA r={lora_r[0]} and r={lora_r[1]} (seeds {seeds[0]}, {seeds[1]}, α = 2r)")
    a_mats = []
    for r, s in zip(lora_r, seeds):
        run = finetune(model_path, out=out_dir / f"lora-r{r}-seed{s}", method="lora", r=r,
                       alpha=2.0 * r, seed=s, **common)  # fmt: skip
        log(f"  r={r}: {run.metric} {run.before[run.metric]:.4f} -> {run.after[run.metric]:.4f}")
        a_mats.append(_lora_a(run.adapter_path))
    grids = {k: subspace_similarity_grid(a_mats[0][k], a_mats[1][k]) for k in a_mats[0]}
    d_in = next(iter(a_mats[0].values())).shape[1]
    same_d = [g for k, g in grids.items() if a_mats[0][k].shape[1] == d_in]
    subspace = {"ranks": list(lora_r), "seeds": list(seeds), "d_in": d_in,
                "mean": np.mean(same_d, axis=0).tolist(),
                "per_module": {k: g.tolist() for k, g in grids.items()}}  # fmt: skip

    result = {"model": model_path, "task": task, "steps": steps, "seed": seed,
              "ranks": list(ranks),
              "full_finetune": {"before": full.before, "after": full.after,
                                "seconds": full.seconds},
              "energy": energy, "subspace": subspace}  # fmt: skip
    log("[3/3] singular values and subspaces")
    _print_energy(log, energy, ranks, steps)
    _print_subspace(log, subspace)
    result["plots"] = _plots(out_dir, result, log)
    result["seconds"] = time.perf_counter() - start
    atomic_write_text(out_dir / "results.json", json.dumps(result, indent=1) + "\n")
    log(f"\nresults: {out_dir / 'results.json'}; total {result['seconds']:.0f} s")
    return result
