"""Offline corpora, train/validation splits and batching into host ``np.int64`` arrays.

Everything here works on NumPy on the host; the training loop moves batches to the device.

Causal language modelling follows the Hugging Face convention (``run_clm.py``'s
``group_texts``): documents are tokenized, joined with an eos token after each one, and the
stream is cut into non-overlapping blocks of ``block_size`` tokens. A batch holds
``input_ids`` (B, T) and ``labels`` (B, T) with **labels == input_ids**: the *model* shifts
them, predicting ``labels[:, t + 1]`` from the logits at position ``t``, so a block of T tokens
gives T - 1 next-token predictions::

    tokens   x0 x1 x2 x3          input_ids = labels = [x0 x1 x2 x3]
    logits   ^  ^  ^              loss = CE(logits[:, :-1], labels[:, 1:])
    targets  x1 x2 x3

Sequence classification batches are ``input_ids`` / ``attention_mask`` (B, T), right-padded
with the tokenizer's pad id, and ``labels`` (B,).

The default corpus is the Python documentation's reference topics shipped with every CPython
(``pydoc_data.topics``, ~465 KB of English prose); the fine-tuning tasks are in
``minipeft.tasks``.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .tokenizer import Tokenizer

__all__ = [
    "BatchStream",
    "TokenBlockDataset",
    "batch_stream",
    "classification_batches",
    "default_corpus",
    "iterate_batches",
    "lm_blocks",
    "load_corpus",
    "tokenize_documents",
    "train_val_split",
]


# --------------------------------------------------------------------------------- corpora
def default_corpus() -> list[str]:
    """The Python reference-manual topics (``pydoc_data.topics``), one document per topic.

    Ordered by topic name, so the result is the same on every run of a given CPython.
    """
    from pydoc_data.topics import topics

    return [topics[key] for key in sorted(topics)]


def _read_text_file(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"'{path}' is not UTF-8 text ({e.reason} at byte {e.start}); "
            "expected a plain-text .txt file"
        ) from None


def load_corpus(path: str | os.PathLike | None = None) -> list[str]:
    """Load documents: ``None`` -> ``default_corpus()``; a ``.txt`` file -> ``[its text]``;
    a folder -> the text of every ``*.txt`` file below it, in sorted path order.

    Empty files are skipped. Raises ``FileNotFoundError`` for a missing path and ``ValueError``
    for a non-``.txt`` file, a non-UTF-8 file, or a folder holding no non-empty ``.txt`` file.
    """
    if path is None:
        return default_corpus()
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"corpus path not found: '{path}' (expected a .txt file or folder)")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise ValueError(f"corpus folder '{path}' holds no .txt files (expected at least one)")
    elif path.suffix.lower() == ".txt":
        files = [path]
    else:
        raise ValueError(
            f"corpus file '{path}' has suffix '{path.suffix}'; expected a .txt file or a folder"
        )
    documents = [text for text in map(_read_text_file, files) if text.strip()]
    if not documents:
        raise ValueError(f"corpus '{path}' is empty: every .txt file in it is blank")
    return documents


def train_val_split(
    documents: Sequence[str], val_fraction: float = 0.1, seed: int = 0
) -> tuple[list[str], list[str]]:
    """Split documents into (train, val) by a seeded permutation, keeping the original order.

    ``n_val = round(val_fraction * N)`` clipped to ``[1, N - 1]``, so neither side is empty when
    ``N >= 2``. A single document is first split at its blank lines (paragraphs), so a one-file
    corpus still gets a validation set. Deterministic in ``seed``.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    documents = list(documents)
    if len(documents) == 1:
        documents = [p for p in documents[0].split("\n\n") if p.strip()]
    n = len(documents)
    if n < 2:
        raise ValueError(
            f"train_val_split needs >= 2 documents (or one with >= 2 paragraphs), got {n}"
        )
    n_val = min(max(round(val_fraction * n), 1), n - 1)
    perm = np.random.default_rng(seed).permutation(n)
    is_val = np.zeros(n, dtype=bool)
    is_val[perm[:n_val]] = True
    train = [d for d, v in zip(documents, is_val) if not v]
    val = [d for d, v in zip(documents, is_val) if v]
    return train, val


# --------------------------------------------------------------------------------- LM blocks
def tokenize_documents(tokenizer: Tokenizer, documents: Sequence[str]) -> np.ndarray:
    """One token stream: ``doc_0 <eos> doc_1 <eos> ...`` as a 1-D ``np.int64`` array.

    The eos after each document tells the model where one text ends and the next begins (GPT-2
    trains the same way), so a block may span a document boundary.
    """
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("tokenize_documents needs a tokenizer with an eos token, got none")
    rows = tokenizer(list(documents))["input_ids"]
    pieces = []
    for row in rows:
        pieces += [row, np.array([eos], dtype=np.int64)]
    return np.concatenate(pieces).astype(np.int64) if pieces else np.zeros(0, dtype=np.int64)


def lm_blocks(token_ids: np.ndarray, block_size: int) -> np.ndarray:
    """Cut a 1-D token stream into non-overlapping blocks: (N,) -> (N // T, T), T = block_size.

    The tail shorter than a block is dropped (as in HF ``group_texts``). Each row is both the
    input and the label of one training example, giving T - 1 next-token targets (see the
    module docstring); pass ``block_size = context + 1`` for ``context`` targets per row.
    """
    token_ids = np.asarray(token_ids)
    if token_ids.ndim != 1:
        raise ValueError(f"token_ids must be 1-D (N,), got shape {token_ids.shape}")
    if not np.issubdtype(token_ids.dtype, np.integer):
        raise TypeError(f"token_ids must be integers, got dtype {token_ids.dtype}")
    if int(block_size) < 2:
        raise ValueError(f"block_size must be >= 2 (one next-token target), got {block_size}")
    n_blocks = len(token_ids) // block_size
    if n_blocks == 0:
        raise ValueError(
            f"{len(token_ids)} tokens make no block of block_size={block_size}; "
            "use a larger corpus or a smaller block_size"
        )
    return token_ids[: n_blocks * block_size].astype(np.int64).reshape(n_blocks, block_size)


class TokenBlockDataset:
    """Blocks of a token stream for causal LM; item ``i`` is ``{"input_ids", "labels"}`` (T,).

    ``blocks`` is the (N, T) ``np.int64`` array from ``lm_blocks``; labels equal input ids
    (the model shifts them).
    """

    def __init__(self, token_ids: np.ndarray, block_size: int) -> None:
        self.block_size = int(block_size)
        self.blocks = lm_blocks(token_ids, self.block_size)

    @classmethod
    def from_documents(
        cls, tokenizer: Tokenizer, documents: Sequence[str], block_size: int
    ) -> TokenBlockDataset:
        """Tokenize ``documents`` (eos after each) and cut the stream into blocks."""
        return cls(tokenize_documents(tokenizer, documents), block_size)

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        row = self.blocks[i]
        return {"input_ids": row.copy(), "labels": row.copy()}

    def __repr__(self) -> str:
        return f"TokenBlockDataset(num_blocks={len(self)}, block_size={self.block_size})"


def _as_blocks(blocks: np.ndarray | TokenBlockDataset) -> np.ndarray:
    blocks = blocks.blocks if isinstance(blocks, TokenBlockDataset) else np.asarray(blocks)
    if blocks.ndim != 2:
        raise ValueError(f"blocks must be 2-D (N, T), got shape {blocks.shape}")
    return blocks


def _batch_order(
    n: int, batch_size: int, shuffle: bool, rng: np.random.Generator, drop_last: bool
) -> list[np.ndarray]:
    """Index arrays of each batch in one epoch: a permutation (or arange) cut into chunks."""
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = rng.permutation(n) if shuffle else np.arange(n)
    stop = n - n % batch_size if drop_last else n
    return [order[i : i + batch_size] for i in range(0, stop, batch_size)]


def iterate_batches(
    blocks: np.ndarray | TokenBlockDataset,
    batch_size: int,
    shuffle: bool = True,
    seed: int = 0,
    drop_last: bool = False,
    epoch: int = 0,
) -> Iterator[dict[str, np.ndarray]]:
    """One epoch of LM batches ``{"input_ids": (B, T), "labels": (B, T)}`` (``np.int64``).

    ``labels`` is a copy of ``input_ids`` (HF convention: the loss shifts internally). Each
    block appears exactly once per epoch; the last batch is smaller unless ``drop_last``. The
    shuffle depends only on ``(seed, epoch)``, so runs are reproducible.
    """
    data = _as_blocks(blocks)
    rng = np.random.default_rng([int(seed), int(epoch)])
    for idx in _batch_order(len(data), int(batch_size), shuffle, rng, drop_last):
        x = data[idx].astype(np.int64)
        yield {"input_ids": x, "labels": x.copy()}


class BatchStream:
    """An endless iterator over LM batches, reshuffled each epoch: ``next(stream)`` -> batch.

    ``epoch`` is the epoch the last batch came from and ``step`` how many batches were served,
    so a training loop can log both. Epoch ``e`` is exactly ``iterate_batches(..., epoch=e)``.
    """

    def __init__(
        self,
        blocks: np.ndarray | TokenBlockDataset,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = True,
    ) -> None:
        self.blocks = _as_blocks(blocks)
        self.batch_size = int(batch_size)
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        n = len(self.blocks)
        per_epoch = n // self.batch_size if drop_last else -(-n // self.batch_size)  # ceil
        if per_epoch == 0:
            raise ValueError(
                f"{len(self.blocks)} blocks give no batch of batch_size={batch_size} with "
                f"drop_last={drop_last}; use fewer per batch or drop_last=False"
            )
        self.batches_per_epoch = per_epoch
        self.epoch, self.step = 0, 0
        self._it = self._generate()

    def _generate(self) -> Iterator[dict[str, np.ndarray]]:
        for epoch in itertools.count():
            self.epoch = epoch
            args = (self.blocks, self.batch_size, self.shuffle, self.seed, self.drop_last)
            yield from iterate_batches(*args, epoch=epoch)

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = next(self._it)
        self.step += 1
        return batch


def batch_stream(
    blocks: np.ndarray | TokenBlockDataset,
    batch_size: int,
    shuffle: bool = True,
    seed: int = 0,
    drop_last: bool = True,
) -> BatchStream:
    """Endless LM batches for a step-based training loop (see ``BatchStream``)."""
    return BatchStream(blocks, batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last)


# --------------------------------------------------------------------------------- classification
def classification_batches(
    tokenizer: Tokenizer,
    texts: Sequence[str],
    labels: Sequence[int],
    batch_size: int,
    max_length: int,
    shuffle: bool = False,
    seed: int = 0,
    drop_last: bool = False,
) -> Iterator[dict[str, np.ndarray]]:
    """One epoch of sequence-classification batches, right-padded to the longest row.

    Yields ``{"input_ids": (B, T), "attention_mask": (B, T), "labels": (B,)}``, all
    ``np.int64``, with ``T <= max_length`` (longer texts keep their first ``max_length``
    tokens) and pads equal to ``tokenizer.pad_token_id``. A classifier reads the hidden state
    of each row's last real token, found from ``attention_mask.sum(1) - 1``.
    """
    texts = list(texts)
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (len(texts),):
        raise ValueError(
            f"labels must have shape ({len(texts)},) to match texts, got {labels.shape}"
        )
    rng = np.random.default_rng(int(seed))
    for idx in _batch_order(len(texts), int(batch_size), shuffle, rng, drop_last):
        enc = tokenizer(
            [texts[i] for i in idx],
            padding=True,
            truncation=True,
            max_length=max_length,
            padding_side="right",
        )
        yield {
            "input_ids": enc["input_ids"],
            "attention_mask": enc["attention_mask"],
            "labels": labels[idx],
        }
