"""Loading a base (+ an adapter) to run, and merging an adapter into its base.

``load_for_inference`` is the one path every job that runs a trained result takes (generate,
predict, eval, merge, combine, export-gguf): the task kind comes from the adapter's
``task_type`` (else the model's ``architectures``), a classifier gets a head of the size it
saved and the class names it recorded, and a combination's parts load together.
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path
from typing import Any

from ..fileio import atomic_folder, check_output_path
from ..models import AutoModelForCausalLM, AutoModelForSequenceClassification, load_config
from ..nn import Module
from ..peft import PeftModel, TaskType
from ..peft.adapter_io import adapter_metadata, load_adapter_files
from ..peft.provenance import labels_from_metadata
from ..peft.registry import COMBINATIONS, preset
from ..tokenizer import Tokenizer

__all__ = ["TOKENIZER_FILES", "load_for_inference", "merge"]

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def load_for_inference(
    model_path: str | os.PathLike[str],
    adapter: str | os.PathLike[str] | None,
    device: str = "cpu",
    strict: bool = False,
) -> tuple[Module, str]:
    """Base (+ adapter) ready to run, and its kind ("causal_lm" or "seq_cls").

    The kind comes from the adapter's ``task_type``, else from the model's ``architectures``.
    A classification adapter gets a head of the size it saved and the class names it recorded.
    """
    if adapter is None:
        config = load_config(model_path)
        arch = " ".join(getattr(config, "architectures", None) or [])
        cls = AutoModelForSequenceClassification if "SequenceClassification" in arch else None
        if cls is None:
            return AutoModelForCausalLM.from_pretrained(model_path, device=device), "causal_lm"
        return cls.from_pretrained(model_path, device=device), "seq_cls"
    config, tensors = load_adapter_files(adapter)
    task = getattr(config.task_type, "value", config.task_type)
    if task == TaskType.SEQ_CLS.value:
        heads = [k for k in tensors if k.endswith(("score.weight", "classifier.weight"))]
        overrides: dict[str, Any] = {"num_labels": tensors[heads[0]].shape[0]} if heads else {}
        labels = labels_from_metadata(adapter_metadata(adapter))
        if labels and len(labels) == overrides.get("num_labels", len(labels)):
            overrides.update(id2label=labels, label2id={v: k for k, v in labels.items()})
        if (Path(model_path) / "tokenizer.json").is_file():
            overrides["pad_token_id"] = Tokenizer.from_pretrained(model_path).pad_token_id
        with warnings.catch_warnings():
            # "newly initialised" is false here: the adapter's head replaces it.
            warnings.filterwarnings("ignore", message=r".*not found in the checkpoint; newly init")
            base: Module = AutoModelForSequenceClassification.from_pretrained(
                model_path, device=device, **overrides
            )
        kind = "seq_cls"
    else:
        base = AutoModelForCausalLM.from_pretrained(model_path, device=device)
        kind = "causal_lm"
    peft_model = PeftModel.from_pretrained(base, adapter, strict=strict)
    folder = Path(adapter)
    others = sorted(p.name for p in folder.iterdir() if (p / "adapter_config.json").is_file())
    combined = any(  # a combination's other parts are saved beside its first, and run with it
        sorted(parts[1:]) == others and preset(parts[0]).peft_type == config.peft_type
        for parts in COMBINATIONS.values()
    )
    if combined:
        for name in others:
            peft_model.load_adapter(folder / name, name)
        peft_model.set_adapter(["default", *others])
    return peft_model, kind


def merge(model_path: str | os.PathLike[str], adapter: str | os.PathLike[str],
          out: str | os.PathLike[str], device: str = "cpu", strict: bool = False,
          overwrite: bool = False) -> Module:  # fmt: skip
    """Load base + adapter, merge (W ← W + s·B A, checked finite) and save a plain HF folder.

    ``out`` may not be, hold or lie inside the base or the adapter; an existing ``out`` is
    replaced only with ``overwrite``. The folder appears whole or not at all.
    """
    check_output_path(out, {"the base model": model_path, "the adapter": adapter})
    if Path(out).exists() and any(Path(out).iterdir()) and not overwrite:
        raise ValueError(f"--out {os.fspath(out)!r} already exists and is not empty; pass "
                         "--overwrite to replace it, or another --out")  # fmt: skip
    peft_model, _ = load_for_inference(model_path, adapter, device, strict)
    merged = peft_model.merge_and_unload(safe_merge=True)
    with atomic_folder(out) as tmp:
        merged.save_pretrained(tmp)
        for name in TOKENIZER_FILES:
            src = Path(model_path) / name
            if src.is_file():
                shutil.copyfile(src, tmp / name)
    return merged
