"""``minipeft finetune`` and ``minipeft merge``: LoRA on a base checkpoint folder.

A task from :mod:`minipeft.tasks` decides the head: ``causal_lm`` tasks fine-tune the language
model (metric: held-out loss), ``seq_cls`` tasks add a classification head (``score``, trained
and saved with the adapter, as PEFT's ``SEQ_CLS`` does; metric: accuracy).
"""

from __future__ import annotations

import os
import re
import shutil
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data import classification_batches, iterate_batches, lm_blocks, tokenize_documents
from ..models import AutoModelForCausalLM, AutoModelForSequenceClassification, load_config
from ..nn import Module
from ..peft import LoraConfig, PeftModel, TaskType, get_peft_model
from ..tasks import Task, get_task
from ..tokenizer import Tokenizer
from ..train import TrainConfig, Trainer, evaluate

__all__ = [
    "FinetuneResult",
    "TaskData",
    "finetune",
    "merge",
    "task_data",
    "load_base",
    "folder_bytes",
]

Batches = Callable[[int, int], Iterator[dict[str, Any]]]


@dataclass
class TaskData:
    """A task turned into batch factories ``(seed, epoch) -> iterator`` for the Trainer."""

    task: Task
    train: Batches
    test: Batches
    metric: str  # "loss" (lower is better) or "accuracy"


def task_data(task: Task, tokenizer: Tokenizer, block_size: int, batch_size: int) -> TaskData:
    """Tokenize a task once and return deterministic batch factories over it."""
    if task.kind == "causal_lm":
        train_blocks = lm_blocks(tokenize_documents(tokenizer, task.train_texts), block_size)
        test_blocks = lm_blocks(tokenize_documents(tokenizer, task.test_texts), block_size)
        return TaskData(
            task,
            lambda s, e: iterate_batches(train_blocks, batch_size, True, s, True, epoch=e),
            lambda s, e: iterate_batches(test_blocks, batch_size, shuffle=False),
            "loss",
        )
    if task.kind == "seq_cls":

        def batches(texts: Any, labels: Any, shuffle: bool) -> Batches:  # noqa: E306
            return lambda s, e: classification_batches(
                tokenizer, texts, labels, batch_size, block_size, shuffle=shuffle, seed=s + e
            )

        return TaskData(task, batches(task.train_texts, task.train_labels, True),
                        batches(task.test_texts, task.test_labels, False), "accuracy")  # fmt: skip
    raise ValueError(f"task {task.name!r} has unknown kind {task.kind!r}")


def load_base(model_path: str | os.PathLike[str], task: Task, tokenizer: Tokenizer,
              device: str = "cpu", seed: int = 0) -> Module:  # fmt: skip
    """The base model with the head the task needs (a fresh ``score`` for classification)."""
    if task.kind == "seq_cls":
        model = AutoModelForSequenceClassification.from_pretrained(
            model_path, device=device, seed=seed, num_labels=task.num_labels,
            pad_token_id=tokenizer.pad_token_id,
        )  # fmt: skip
    else:
        model = AutoModelForCausalLM.from_pretrained(model_path, device=device)
    return model


def folder_bytes(path: str | os.PathLike[str]) -> int:
    """Total size of the files in a folder (an adapter's footprint on disk)."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


@dataclass
class FinetuneResult:
    adapter_path: str
    metric: str
    before: dict[str, float]
    after: dict[str, float]
    trainable_params: int
    all_params: int
    adapter_bytes: int
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)


def finetune(
    model_path: str | os.PathLike[str],
    task: str = "docstrings",
    out: str | os.PathLike[str] | None = None,
    method: str = "lora",
    r: int = 8,
    alpha: float = 16,
    dropout: float = 0.0,
    targets: list[str] | str | None = None,
    steps: int = 150,
    lr: float = 1e-2,
    batch_size: int = 16,
    block_size: int = 128,
    device: str = "cpu",
    seed: int = 0,
    progress: bool = True,
    log: Any = print,
) -> FinetuneResult:
    """LoRA-fine-tune the checkpoint at ``model_path`` on ``task``; save the adapter to ``out``."""
    if method != "lora":
        raise ValueError(f"unknown method {method!r}; this version supports: ['lora']")
    if isinstance(targets, (list, tuple)) and list(targets) == ["all-linear"]:
        targets = "all-linear"
    # Checked now (e.g. steps=0), not after loading the model and the "before" evaluation.
    cfg = TrainConfig(max_steps=steps, lr=lr, warmup_steps=max(1, steps // 10), device=device,
                      seed=seed, progress=progress, eval_every=0)  # fmt: skip
    start = time.perf_counter()
    the_task = get_task(task)
    tokenizer = Tokenizer.from_pretrained(model_path)
    block_size = min(block_size, load_config(model_path).max_position_embeddings)
    data = task_data(the_task, tokenizer, block_size, batch_size)
    model = load_base(model_path, the_task, tokenizer, device, seed)
    config = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
        task_type=TaskType.SEQ_CLS if the_task.kind == "seq_cls" else TaskType.CAUSAL_LM,
    )  # fmt: skip
    before = evaluate(model, data.test(seed, 0), device)
    peft_model = get_peft_model(model, config)
    trainable, total = peft_model.get_nb_trainable_parameters()
    log(f"trainable params: {trainable:,d} || all params: {total:,d} || "
        f"trainable%: {100 * trainable / total:.4f}")  # fmt: skip
    result = Trainer(peft_model, cfg, data.train, data.test).train()
    after = result.metrics  # the Trainer evaluates after its last step
    out_dir = Path(out) if out is not None else Path("runs") / f"lora-{the_task.name}"
    peft_model.save_pretrained(out_dir)
    return FinetuneResult(str(out_dir), data.metric, before, after, trainable, total,
                          folder_bytes(out_dir), time.perf_counter() - start,
                          result.history)  # fmt: skip


def merge(model_path: str | os.PathLike[str], adapter: str | os.PathLike[str],
          out: str | os.PathLike[str], device: str = "cpu") -> Module:  # fmt: skip
    """Load base + adapter, merge (W ← W + s·B A, checked finite) and save a plain HF folder."""
    from ..peft.adapter_io import PEFT_PREFIX, load_adapter_files  # noqa: PLC0415

    config, tensors = load_adapter_files(adapter)
    task = getattr(config.task_type, "value", config.task_type)
    if task == TaskType.SEQ_CLS.value:
        # The head's size comes from the adapter (it saved the trained ``score``), its padding
        # token from the base model's tokenizer (the classifier pools the last real token).
        heads = [k for k in tensors if k.endswith(("score.weight", "classifier.weight"))]
        overrides: dict[str, Any] = {"num_labels": tensors[heads[0]].shape[0]} if heads else {}
        if (Path(model_path) / "tokenizer.json").is_file():
            overrides["pad_token_id"] = Tokenizer.from_pretrained(model_path).pad_token_id
        with warnings.catch_warnings():
            if heads:  # "newly initialised" is false here: the adapter's head replaces it
                fresh = [k.removeprefix(PEFT_PREFIX) for k in heads]
                warnings.filterwarnings(
                    "ignore", message=rf".*{re.escape(str(fresh))} not found in the checkpoint"
                )
            base: Module = AutoModelForSequenceClassification.from_pretrained(
                model_path, device=device, **overrides
            )
    else:
        base = AutoModelForCausalLM.from_pretrained(model_path, device=device)
    merged = PeftModel.from_pretrained(base, adapter).merge_and_unload(safe_merge=True)
    merged.save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        src = Path(model_path) / name
        if src.is_file():
            shutil.copyfile(src, Path(out) / name)
    return merged
