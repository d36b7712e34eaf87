"""``minipeft combine``: a new LoRA adapter from trained ones, saved as a PEFT adapter folder.

    minipeft combine --adapters runs/a/adapter runs/b/adapter --weights 0.5 0.5 --type ties \\
        --density 0.5 --out runs/ab

Loads the base model once with every adapter (named ``a0``, ``a1``, … in the order given), calls
:meth:`~minipeft.peft.PeftModel.add_weighted_adapter` (PEFT's combination types) and saves the
combined adapter alone, so ``minipeft generate --adapter runs/ab`` or PEFT itself can use it.
``--out`` may not be, hold or lie inside the base or any input adapter, and appears whole.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ..fileio import atomic_folder, check_output_path
from ..peft import PeftModel
from .inference import load_for_inference

__all__ = ["combine"]


def combine(
    model_path: str | os.PathLike[str],
    adapters: Sequence[str | os.PathLike[str]],
    weights: Sequence[float],
    out: str | os.PathLike[str],
    combination_type: str = "svd",
    svd_rank: int | None = None,
    density: float | None = None,
    majority_sign_method: str = "total",
    seed: int = 0,
    device: str = "cpu",
    overwrite: bool = False,
) -> PeftModel:
    """Combine ``adapters`` (folders) with ``weights`` into one adapter saved at ``out``."""
    if len(adapters) < 1 or len(weights) != len(adapters):
        raise ValueError(f"--weights: expected {len(adapters)} numbers (one per --adapters "
                         f"folder), found {len(weights)}")  # fmt: skip
    inputs = {"the base model": model_path}
    inputs.update({f"adapter {i}": a for i, a in enumerate(adapters)})
    check_output_path(out, inputs)
    if Path(out).exists() and any(Path(out).iterdir()) and not overwrite:
        raise ValueError(f"--out {os.fspath(out)!r} already exists and is not empty; pass "
                         "--overwrite to replace it, or another --out")  # fmt: skip
    model, _ = load_for_inference(model_path, adapters[0], device)
    names = ["default"]
    for i, folder in enumerate(adapters[1:], start=1):
        model.load_adapter(folder, f"a{i}")
        names.append(f"a{i}")
    try:
        model.add_weighted_adapter(names, list(weights), "combined",
                                   combination_type=combination_type, svd_rank=svd_rank,
                                   density=density, majority_sign_method=majority_sign_method,
                                   seed=seed)  # fmt: skip
    except ValueError as exc:  # say which folder each adapter name is
        folders = ", ".join(f"{n!r} = {os.fspath(a)}" for n, a in zip(names, adapters))
        raise ValueError(f"{exc} (adapters: {folders})") from exc
    with atomic_folder(out) as tmp:
        model.save_pretrained(tmp, selected_adapters=["combined"])
        for entry in (tmp / "combined").iterdir():  # the adapter at the folder's top
            entry.rename(tmp / entry.name)
        (tmp / "combined").rmdir()
    return model
