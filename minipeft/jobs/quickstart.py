"""``minipeft quickstart``: the whole story in one offline command.

1. Build the default base model if it is not cached (``minipeft pretrain``: a small GPT-2 on the
   Python documentation topics).
2. LoRA-fine-tune it on the default task (stdlib docstrings: a new domain).
3. Merge the adapter into the weights (and check the merged model computes the same logits).
4. Print a before/after table: task loss, pretraining-domain loss (forgetting), trainable
   parameters, adapter size on disk, time.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..autograd import no_grad
from ..creation import tensor
from ..data import iterate_batches, lm_blocks, load_corpus, tokenize_documents, train_val_split
from ..models import AutoModelForCausalLM
from ..nn import Module
from ..tokenizer import Tokenizer
from ..train import evaluate
from .finetune import finetune, folder_bytes, merge
from .pretrain import default_base_dir, pretrain

__all__ = ["quickstart"]


def _pretrain_domain_loss(model: Module, tokenizer: Tokenizer, device: str) -> float:
    """Loss on the validation split of the pretraining corpus (same split as ``pretrain``)."""
    _, val_docs = train_val_split(load_corpus(None), val_fraction=0.1, seed=0)
    block = min(128, model.config.max_position_embeddings)  # a small base has a short context
    blocks = lm_blocks(tokenize_documents(tokenizer, val_docs), block)
    return evaluate(model, iterate_batches(blocks, 16, shuffle=False), device)["loss"]


def _kb(n: int) -> str:
    return f"{n / 1024:,.0f} KiB" if n < 1024**2 else f"{n / 1024**2:,.1f} MiB"


def quickstart(
    out: str = "runs/quickstart",
    steps: int = 150,
    device: str = "cpu",
    seed: int = 0,
    progress: bool = True,
    log: Any = print,
) -> dict[str, Any]:
    """Run the four steps above; return the figures printed in the table.

    ``seed`` seeds the fine-tune (LoRA's initialisation and the order of the data); the cached
    base is always pretrained with seed 0, so every seed starts from the same base. An
    interrupted pretraining is resumed where it stopped. The outputs under ``out`` are this
    command's own and are replaced on every run.
    """
    start = time.perf_counter()
    base = default_base_dir()
    pretrain_s = 0.0
    if not (base / "config.json").is_file():
        unfinished = (base / "checkpoint" / "trainer_state.json").is_file()
        if unfinished:
            log(f"[1/3] resuming the interrupted pretraining of the base model in {base}")
        else:
            log(f"[1/3] no cached base model at {base}: pretraining one (a few minutes)")
        pretrain_s = pretrain(out=base, device=device, progress=progress, log=log,
                              resume=unfinished, overwrite=not unfinished).seconds  # fmt: skip
    else:
        log(f"[1/3] using the cached base model at {base}")
    tokenizer = Tokenizer.from_pretrained(base)
    base_model = AutoModelForCausalLM.from_pretrained(base, device=device)
    base_domain = _pretrain_domain_loss(base_model, tokenizer, device)

    log("[2/3] LoRA fine-tuning on the 'docstrings' task (stdlib API docstrings)")
    adapter = Path(out) / "adapter"
    ft = finetune(base, task="docstrings", out=adapter, steps=steps, device=device, seed=seed,
                  overwrite=True, progress=progress, log=log)  # fmt: skip

    log("[3/3] merging the adapter into the base weights")
    merged_dir = Path(out) / "merged"
    merged = merge(base, adapter, merged_dir, device=device, overwrite=True)
    reloaded = AutoModelForCausalLM.from_pretrained(merged_dir, device=device)
    probe = tensor(np.arange(32)[None, :] % tokenizer.vocab_size, device=device)
    with no_grad():
        drift = float(np.abs(merged(input_ids=probe).logits.numpy()
                             - reloaded(input_ids=probe).logits.numpy()).max())  # fmt: skip
    merged_domain = _pretrain_domain_loss(reloaded, tokenizer, device)

    rows = [
        ("docstrings held-out loss", f"{ft.before['loss']:.3f}", f"{ft.after['loss']:.3f}"),
        ("docstrings perplexity", f"{math.exp(ft.before['loss']):.1f}",
         f"{math.exp(ft.after['loss']):.1f}"),
        ("pydoc (pretraining) loss", f"{base_domain:.3f}", f"{merged_domain:.3f}"),
        ("parameters trained", f"{ft.all_params - ft.trainable_params:,} (full FT)",
         f"{ft.trainable_params:,} ({100 * ft.trainable_params / ft.all_params:.2f}%)"),
        ("size on disk", _kb(folder_bytes(base)), f"{_kb(ft.adapter_bytes)} adapter"),
        ("time", f"{pretrain_s:.0f} s pretrain" if pretrain_s else "cached",
         f"{ft.seconds:.0f} s fine-tune"),
    ]  # fmt: skip
    width = max(len(r[0]) for r in rows)
    log("")
    log(f"{'':{width}}  {'base':>18}  {'LoRA merged':>22}")
    for name, a, b in rows:
        log(f"{name:{width}}  {a:>18}  {b:>22}")
    log(f"\nmerged model: {merged_dir} (max |logit| drift after reload {drift:.1e}); "
        f"total {time.perf_counter() - start:.0f} s")  # fmt: skip
    return {"before": ft.before, "after": ft.after, "pretrain_domain": (base_domain, merged_domain),
            "trainable": ft.trainable_params, "adapter_bytes": ft.adapter_bytes,
            "seconds": time.perf_counter() - start}  # fmt: skip
