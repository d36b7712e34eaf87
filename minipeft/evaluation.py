"""Held-out metrics: mean loss over every term, perplexity and (for classifiers) accuracy.

Batches are dicts of NumPy arrays; :func:`to_device_batch` turns them into Tensors on a device.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from .autograd import no_grad
from .backend import to_numpy
from .creation import tensor
from .nn import Module

__all__ = ["Batch", "count_tokens", "evaluate", "to_device_batch"]

Batch = dict[str, Any]


def to_device_batch(batch: Batch, device: str) -> Batch:
    """NumPy arrays → Tensors on ``device`` (integer ids stay int64)."""
    return {
        k: tensor(v, device=device) if isinstance(v, np.ndarray) else v for k, v in batch.items()
    }


def count_tokens(batch: Batch) -> int:
    """Real (non-padding) tokens in a batch of NumPy arrays."""
    if "attention_mask" in batch:
        return int(np.asarray(batch["attention_mask"]).sum())
    ids = batch.get("input_ids")
    return int(np.prod(ids.shape)) if ids is not None else 0


def _loss_terms(batch: Batch) -> int:
    """How many terms ``out.loss`` averages: examples (1-D labels) or next-token targets."""
    labels = batch.get("labels")
    if labels is None:
        return count_tokens(batch)
    labels = np.asarray(labels)
    if labels.ndim == 1:  # sequence classification: one label per row
        return len(labels)
    return int((labels[:, 1:] != -100).sum())  # the LM loss shifts: position t predicts t + 1


def evaluate(model: Module, batches: Iterable[Batch], device: str = "cpu",
             max_batches: int | None = None) -> dict[str, float]:  # fmt: skip
    """Mean loss over every term of every batch and, for classifiers, accuracy; under no_grad.

    Each batch's mean loss is weighted by its number of terms (next-token targets for a
    language model, examples for a classifier), so the result does not depend on how the data
    was cut into batches. A model's training penalties (AdaLoRA's orthogonality term, left out
    by its ``without_regularization()``) are not part of the loss measured here.
    """
    was_training = model.training
    model.eval()
    total, weight, correct, seen = 0.0, 0, 0, 0
    quiet = getattr(model, "without_regularization", contextlib.nullcontext)
    with no_grad(), quiet():
        for i, batch in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            n = _loss_terms(batch)
            if n == 0:  # every label is ignored: this batch has no loss to average
                continue
            out = model(**to_device_batch(batch, device))
            total += float(out.loss.item()) * n
            weight += n
            labels = batch.get("labels")
            if labels is not None and np.asarray(labels).ndim == 1:  # sequence classification
                pred = to_numpy(out.logits.data).argmax(-1)
                correct += int((pred == np.asarray(labels)).sum())
                seen += len(labels)
    model.train(was_training)
    if weight == 0:
        raise ValueError("evaluate: the evaluation data yielded no batch with a loss term")
    metrics = {"loss": total / weight}
    metrics["perplexity"] = float(math.exp(min(metrics["loss"], 50.0)))
    if seen:
        metrics["accuracy"] = correct / seen
    return metrics
