"""``minipeft predict`` and ``minipeft eval``: use what ``finetune`` made.

``predict`` runs a classifier (a fine-tuned model folder, or a base plus a SEQ_CLS adapter) on
texts and prints, per text, the likeliest class name and the class probabilities
softmax(logits). ``eval`` scores a model (and adapter) on a task's held-out split: accuracy and
loss for a classification task, loss and perplexity for a language-modelling one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..autograd import no_grad
from ..data import classification_batches
from ..tasks import get_task
from ..tokenizer import Tokenizer
from ..train import evaluate, to_device_batch
from .finetune import task_data
from .inference import load_for_inference

__all__ = ["Prediction", "evaluate_task", "predict"]


@dataclass
class Prediction:
    text: str
    label: str
    probabilities: dict[str, float]  # class name -> p, in id order


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(-1, keepdims=True)  # stable: exp of numbers <= 0
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def predict(model_path: str | os.PathLike[str], texts: list[str], adapter: Any = None,
            device: str = "cpu", strict: bool = False, batch_size: int = 16,
            max_length: int = 128) -> list[Prediction]:  # fmt: skip
    """Classify ``texts`` with the model at ``model_path`` (+ ``adapter``)."""
    if not texts:
        raise ValueError("predict: expected at least one text, found none")
    model, kind = load_for_inference(model_path, adapter, device, strict)
    if kind != "seq_cls":
        what = f"the adapter {os.fspath(adapter)!r}" if adapter else f"{os.fspath(model_path)!r}"
        raise ValueError(
            f"predict needs a classifier; {what} is a causal language model (use minipeft "
            "generate for it, or fine-tune a classifier: minipeft finetune --task docstring-topic)"
        )
    tokenizer = Tokenizer.from_pretrained(model_path)
    id2label = model.config.id2label
    length = min(max_length, model.config.max_position_embeddings)
    out: list[Prediction] = []
    model.eval()
    with no_grad():
        batches = classification_batches(tokenizer, texts, [0] * len(texts), batch_size, length)
        for batch in batches:
            batch.pop("labels")
            logits = model(**to_device_batch(batch, device)).logits.numpy().astype(np.float64)
            for p in _softmax(logits):
                names = [id2label.get(i, f"LABEL_{i}") for i in range(len(p))]
                out.append(Prediction("", names[int(p.argmax())],
                                      {n: float(v) for n, v in zip(names, p)}))  # fmt: skip
    for pred, text in zip(out, texts):
        pred.text = text
    return out


def evaluate_task(model_path: str | os.PathLike[str], task: str, adapter: Any = None,
                  device: str = "cpu", strict: bool = False, batch_size: int = 16,
                  block_size: int = 128) -> dict[str, float]:  # fmt: skip
    """The held-out metrics of ``task`` for the model (+ adapter)."""
    the_task = get_task(task)
    model, kind = load_for_inference(model_path, adapter, device, strict)
    if kind != the_task.kind:
        raise ValueError(
            f"task {task!r} needs a {the_task.kind} model; this one is {kind} (a classifier "
            "needs --task docstring-topic, a language model --task docstrings)"
        )
    if kind == "seq_cls" and model.config.num_labels != the_task.num_labels:
        raise ValueError(
            f"task {task!r} has {the_task.num_labels} classes; the model predicts "
            f"{model.config.num_labels}"
        )
    tokenizer = Tokenizer.from_pretrained(model_path)
    length = min(block_size, model.config.max_position_embeddings)
    data = task_data(the_task, tokenizer, length, batch_size)
    return evaluate(model, data.test(0, 0), device)
