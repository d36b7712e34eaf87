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
from ..fileio import atomic_folder
from ..models import GPT2Config, GPT2LMHeadModel
from ..tokenizer import Tokenizer, train_bpe_tokenizer
from ..train import TrainConfig, Trainer
from .runs import RUN_FILE, finish_run, prepare_run

__all__ = [
    "DEFAULTS",
    "PRESETS",
    "PretrainResult",
    "default_base_dir",
    "pretrain",
    "unigram_cross_entropy",
]

# Model sizes by name. "default" is what `pretrain` builds, "cpu-tiny" the benchmark preset and
# "nano" a seconds-long smoke test (tests and CI use it).
PRESETS: dict[str, dict[str, int]] = {
    "nano": {"vocab_size": 512, "n_positions": 64, "n_embd": 32, "n_layer": 1, "n_head": 2},
    "default": {"vocab_size": 2048, "n_positions": 128, "n_embd": 128, "n_layer": 4, "n_head": 4},
    "cpu-tiny": {"vocab_size": 4096, "n_positions": 128, "n_embd": 256, "n_layer": 4, "n_head": 4},
}


DEFAULTS: dict[str, Any] = {
    "corpus": None, "preset": "default", "steps": 400, "batch_size": 16, "lr": 3e-3, "seed": 0,
    "warmup": None, "grad_accum": 1, "eval_every": None, "save_every": 100,
}  # fmt: skip
RUN_STATE = (RUN_FILE, "metrics.jsonl", "checkpoint")  # kept beside the model until done


def _train_config(s: dict[str, Any], **kw: Any) -> TrainConfig:
    """The Trainer's settings for pretraining (validated: a bad value names its field)."""
    steps = s["steps"]
    warm = s["warmup"] if s["warmup"] is not None else max(1, steps // 20)
    every = s["eval_every"] if s["eval_every"] is not None else max(1, steps // 4)
    return TrainConfig(max_steps=steps, lr=s["lr"], weight_decay=0.1, betas=(0.9, 0.95),
                       warmup_steps=warm, schedule="cosine", grad_clip=1.0, eval_every=every,
                       seed=s["seed"], grad_accum_steps=s["grad_accum"],
                       save_every=s["save_every"], **kw)  # fmt: skip


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
    preset: str | None = None,
    steps: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    device: str = "cpu",
    precision: str = "fp32",
    seed: int | None = None,
    warmup: int | None = None,
    grad_accum: int | None = None,
    eval_every: int | None = None,
    save_every: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    log: Any = print,
) -> PretrainResult:
    """Train a tokenizer and a GPT-2 on ``corpus`` and save both into ``out`` (an HF folder).

    ``out`` (default: the cache) holding a model already is refused unless ``overwrite``;
    ``resume`` continues an interrupted run there. Ctrl-C raises
    :class:`~minipeft.train.TrainingInterrupted` after saving a checkpoint.
    """
    given = {"corpus": None if corpus is None else os.fspath(corpus), "preset": preset,
             "steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed, "warmup": warmup,
             "grad_accum": grad_accum, "eval_every": eval_every,
             "save_every": save_every}  # fmt: skip
    fresh = {**DEFAULTS, **{k: v for k, v in given.items() if v is not None}}
    if fresh["preset"] not in PRESETS:
        raise ValueError(f"unknown preset {fresh['preset']!r}; expected one of {sorted(PRESETS)}")
    if not isinstance(fresh["batch_size"], int) or fresh["batch_size"] < 1:
        raise ValueError(f"batch_size: expected an int >= 1, found {fresh['batch_size']!r}")
    _train_config(fresh, progress=False)  # checked now, not after minutes of tokenizer training
    out_dir = Path(out) if out is not None else default_base_dir()
    if not (resume or overwrite) and (out_dir / "config.json").is_file():
        cached = " (the cached base model)" if out is None else ""
        raise ValueError(
            f"{out_dir}{cached} already holds a model; adapters trained on it would not fit a "
            "new one. Pass --overwrite to replace it, or --out DIR to build another"
        )
    settings = prepare_run("pretrain", out_dir, {"the corpus": corpus}, fresh, given,
                           resume=resume, overwrite=overwrite)  # fmt: skip
    steps, batch_size, seed = settings["steps"], settings["batch_size"], settings["seed"]
    cfg = _train_config(settings, device=device, precision=precision, progress=progress,
                        output_dir=os.fspath(out_dir))  # fmt: skip
    start = time.perf_counter()
    preset = settings["preset"]
    size = PRESETS[preset]
    docs = load_corpus(settings["corpus"])
    train_docs, val_docs = train_val_split(docs, val_fraction=0.1, seed=seed)
    log(f"corpus: {len(docs)} documents, {sum(map(len, docs)):,} characters")
    # The tokenizer is part of the run's state: a resumed run reuses the one it trained.
    saved_tokenizer = out_dir / "checkpoint" / "tokenizer.json"
    if resume and saved_tokenizer.is_file():
        tokenizer = Tokenizer.from_file(saved_tokenizer)
    else:
        tokenizer = train_bpe_tokenizer(train_docs, vocab_size=size["vocab_size"])
    train_ids = tokenize_documents(tokenizer, train_docs)
    val_ids = tokenize_documents(tokenizer, val_docs)
    block = size["n_positions"]
    _check_enough_blocks(len(train_ids), len(val_ids), block, batch_size, preset)
    train_blocks, val_blocks = lm_blocks(train_ids, block), lm_blocks(val_ids, block)
    log(f"tokens: {len(train_ids):,} train / {len(val_ids):,} validation "
        f"(vocab {tokenizer.vocab_size})")  # fmt: skip
    saved_tokenizer.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(saved_tokenizer)

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

    result = Trainer(model, cfg, train_data, eval_data).train(resume=resume)
    val = result.metrics["loss"]  # the Trainer evaluates after its last step
    entropy = unigram_cross_entropy(train_ids, val_ids, tokenizer.vocab_size)

    # The model folder appears whole; the run's own files (settings, log) stay beside it.
    with atomic_folder(out_dir, keep=lambda name: name in RUN_STATE) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    finish_run(out_dir)
    seconds = time.perf_counter() - start
    log(f"validation loss {val:.3f} nats/token (perplexity {math.exp(val):.1f}) vs unigram "
        f"entropy {entropy:.3f}; saved to {out_dir} in {seconds:.0f} s")  # fmt: skip
    return PretrainResult(str(out_dir), val, entropy, len(train_ids), model.num_parameters(),
                          seconds, steps)  # fmt: skip
