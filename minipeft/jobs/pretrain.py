"""``minipeft pretrain``: a small GPT-2 trained from scratch on offline text.

Steps: load the corpus (default: the Python documentation topics every CPython ships), split it
into train/validation documents, train a byte-level BPE tokenizer on the training split, cut the
token stream into blocks, train with :class:`~minipeft.train.Trainer`, and save a Hugging Face
checkpoint folder (config.json, model.safetensors, tokenizer.json) that transformers can load.

The result is compared with the corpus's **unigram entropy** H = −Σ p(w) log p(w) (nats per
token, p estimated on the training tokens and scored on the validation tokens): the loss of the
best model that ignores context. A validation loss well below it means the model uses context.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..data import iterate_batches, lm_blocks, load_corpus, tokenize_documents, train_val_split
from ..models import GPT2Config, GPT2LMHeadModel
from ..tokenizer import train_bpe_tokenizer
from ..train import TrainConfig, Trainer

__all__ = ["PretrainResult", "pretrain", "default_base_dir", "unigram_cross_entropy", "PRESETS"]

# Model sizes by name. "default" is what `pretrain` builds, "cpu-tiny" the benchmark preset and
# "nano" a seconds-long smoke test (tests and CI use it).
PRESETS: dict[str, dict[str, int]] = {
    "nano": {"vocab_size": 512, "n_positions": 64, "n_embd": 32, "n_layer": 1, "n_head": 2},
    "default": {"vocab_size": 2048, "n_positions": 128, "n_embd": 128, "n_layer": 4, "n_head": 4},
    "cpu-tiny": {"vocab_size": 4096, "n_positions": 128, "n_embd": 256, "n_layer": 4, "n_head": 4},
}


@dataclass
class PretrainResult:
    """Where the model went and how good it is (losses in nats per token)."""

    path: str
    val_loss: float
    unigram_entropy: float
    train_tokens: int
    num_parameters: int
    seconds: float
    steps: int


def default_base_dir() -> Path:
    """The cached default base model: ``$MINIPEFT_CACHE`` or ``~/.cache/minipeft``, + base-gpt2."""
    root = os.environ.get("MINIPEFT_CACHE") or os.path.join(Path.home(), ".cache", "minipeft")
    return Path(root) / "base-gpt2"


def unigram_cross_entropy(train_ids: np.ndarray, val_ids: np.ndarray, vocab_size: int) -> float:
    """−mean log p(w) of the validation tokens under add-one-smoothed training unigram counts."""
    counts = np.bincount(train_ids, minlength=vocab_size).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    return float(-logp[val_ids].mean())


def _check_enough_blocks(
    n_train: int, n_val: int, block: int, batch_size: int, preset: str
) -> None:
    """Fail with what to do when the corpus cannot fill one batch (or one validation block)."""
    n_blocks = n_train // block
    if n_blocks < batch_size:
        fix = f" or --batch-size {n_blocks} or less" if n_blocks else ""
        raise ValueError(
            f"the corpus is too small: its training split gave {n_train:,} tokens = {n_blocks} "
            f"blocks of {block} tokens (the {preset!r} preset's n_positions), fewer than "
            f"batch_size={batch_size}; expected at least {batch_size * block:,} training tokens: "
            f"use a larger corpus{fix}"
        )
    if n_val < block:
        raise ValueError(
            f"the corpus is too small: its validation split (about 10% of the documents) gave "
            f"{n_val:,} tokens, less than one block of {block} tokens; use a larger corpus"
        )


def pretrain(
    out: str | os.PathLike[str] | None = None,
    corpus: str | os.PathLike[str] | None = None,
    preset: str = "default",
    steps: int = 400,
    batch_size: int = 16,
    lr: float = 3e-3,
    device: str = "cpu",
    seed: int = 0,
    progress: bool = True,
    log: Any = print,
) -> PretrainResult:
    """Train a tokenizer and a GPT-2 on ``corpus`` and save both into ``out`` (an HF folder)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {sorted(PRESETS)}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected an int >= 1, found {batch_size!r}")
    # Checked now (e.g. steps=0), not after minutes of tokenizer training.
    cfg = TrainConfig(max_steps=steps, lr=lr, weight_decay=0.1, betas=(0.9, 0.95),
                      warmup_steps=max(1, steps // 20), schedule="cosine", grad_clip=1.0,
                      eval_every=max(1, steps // 4), device=device, seed=seed,
                      progress=progress)  # fmt: skip
    start = time.perf_counter()
    size = PRESETS[preset]
    out_dir = Path(out) if out is not None else default_base_dir()
    docs = load_corpus(corpus)
    train_docs, val_docs = train_val_split(docs, val_fraction=0.1, seed=seed)
    log(f"corpus: {len(docs)} documents, {sum(map(len, docs)):,} characters")
    tokenizer = train_bpe_tokenizer(train_docs, vocab_size=size["vocab_size"])
    train_ids = tokenize_documents(tokenizer, train_docs)
    val_ids = tokenize_documents(tokenizer, val_docs)
    block = size["n_positions"]
    _check_enough_blocks(len(train_ids), len(val_ids), block, batch_size, preset)
    train_blocks, val_blocks = lm_blocks(train_ids, block), lm_blocks(val_ids, block)
    log(f"tokens: {len(train_ids):,} train / {len(val_ids):,} validation "
        f"(vocab {tokenizer.vocab_size})")  # fmt: skip

    config = GPT2Config(
        vocab_size=tokenizer.vocab_size, n_positions=size["n_positions"], n_embd=size["n_embd"],
        n_layer=size["n_layer"], n_head=size["n_head"], resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0, bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    model = GPT2LMHeadModel(config, seed=seed).to(device)

    def train_data(s: int, epoch: int) -> Any:
        return iterate_batches(train_blocks, batch_size, shuffle=True, seed=s, epoch=epoch,
                               drop_last=True)  # fmt: skip

    def eval_data(s: int, epoch: int) -> Any:
        return iterate_batches(val_blocks, batch_size, shuffle=False)

    result = Trainer(model, cfg, train_data, eval_data).train()
    val = result.metrics["loss"]  # the Trainer evaluates after its last step
    entropy = unigram_cross_entropy(train_ids, val_ids, tokenizer.vocab_size)

    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    seconds = time.perf_counter() - start
    log(f"validation loss {val:.3f} nats/token (perplexity {math.exp(val):.1f}) vs unigram "
        f"entropy {entropy:.3f}; saved to {out_dir} in {seconds:.0f} s")  # fmt: skip
    return PretrainResult(str(out_dir), val, entropy, len(train_ids), model.num_parameters(),
                          seconds, steps)  # fmt: skip
