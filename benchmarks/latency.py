"""Benchmark: inference latency per token of the base model and of each PEFT method on it.

The model is train_step.py's **cpu-tiny** preset (GPT-2 architecture, vocab 4096, n_positions
128, n_embd 256, n_layer 4, n_head 4, dropout off), in eval mode under ``no_grad``. Variants,
each its own copy of the same seeded base:

    base            the plain GPT2LMHeadModel
    lora            LoRA r=8, α=16 on the default targets (GPT-2: c_attn), unmerged
    lora merged     the same after ``merge_adapter()``: W' = W + (α/r)·B·A
    seq_bn          bottleneck adapter after each MLP (m = C/16)
    double_seq_bn   bottleneck adapters after attention and after the MLP (m = C/16)
    par_bn          scaled bottleneck adapter beside each MLP (m = C/2)
    ia3, ia3 merged IA3 with its default targets, unmerged and merged (when minipeft has IA3)

Every adapter parameter is perturbed by N(0, 0.02²) before timing, so LoRA's B, par_bn's W_up
and IA3's vectors are non-zero and no zero-update shortcut applies (the ``Δ logits`` column
shows each variant's largest change of the logits against the base, and a line after the table
how far each merged variant's logits are from its unmerged twin: float32 rounding).

Two measurements per variant:

- **generate**: greedy ``generate`` of ``--new-tokens`` (32) tokens from a ``--prompt-len`` (8)
  token prompt, batch 1, with the KV cache: ms per new token (the prompt's one prefill step is
  included, spread over the new tokens). This is the chat / autoregressive case: each step runs
  the whole model on one token, so per-module overhead shows.
- **forward**: one forward of a ``--batch`` × ``--seq`` block (train_step's 8 × 128): ms per
  token. This is the scoring / prefill case, where the matmuls dominate.

Each number is the median of ``--repeats`` runs after warm-up; the runs go round-robin over all
(variant, measurement) pairs, so machine noise hits every variant alike. BLAS uses one thread
(``minipeft.threads.set_num_threads(1)``, as the command line does; ``--threads`` or
``MINIPEFT_NUM_THREADS`` change it). The script prints ratios to the base measured in the same
run and asserts nothing about time — machines here are shared and noisy.

    python benchmarks/latency.py [--device cpu|cuda] [--repeats 25] [--json out.json]

How to read it: a bottleneck adapter or an unmerged LoRA/IA3 adds modules on the forward path,
so it costs latency (ratio > 1), more in ``generate``, where each token is a small step, than in
``forward``. Merged LoRA and IA3 run exactly the base's matmuls (the update is inside W), so
their ratio is ≈ 1.00; bottleneck adapters are nonlinear and cannot be merged away.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

import numpy as np
from train_step import BATCH, PRESET, SEQ, measure  # the cpu-tiny preset and its timer

import minipeft as mp
from minipeft.models import GPT2Config, GPT2LMHeadModel
from minipeft.peft import AdapterConfig, LoraConfig, get_peft_model
from minipeft.peft.registry import preset
from minipeft.threads import get_num_threads, set_num_threads, threads_from_env


def _ia3_config() -> Any:
    """IA3's default config, or None where this minipeft has no IA3."""
    try:
        return preset("ia3")
    except ValueError:
        return None


def variants() -> list[tuple[str, Any, bool]]:
    """(name, config or None for the base, merge?) for every variant this minipeft has."""
    rows: list[tuple[str, Any, bool]] = [
        ("base", None, False),
        ("lora", LoraConfig(r=8, lora_alpha=16), False),
        ("lora merged", LoraConfig(r=8, lora_alpha=16), True),
        ("seq_bn", AdapterConfig(adapter_type="seq_bn"), False),
        ("double_seq_bn", AdapterConfig(adapter_type="double_seq_bn"), False),
        ("par_bn", AdapterConfig(adapter_type="par_bn"), False),
    ]
    if _ia3_config() is not None:
        rows += [("ia3", _ia3_config(), False), ("ia3 merged", _ia3_config(), True)]
    return rows


def build(config: Any, merge: bool, device: str, seed: int) -> tuple[Any, int]:
    """The variant's model (eval mode) and its number of adapter parameters."""
    model = GPT2LMHeadModel(
        GPT2Config(**PRESET, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0), seed=0
    ).to(device)
    if config is None:
        return model.eval(), 0
    mp.manual_seed(seed)  # the same adapter init (LoRA's A, ...) for the unmerged and merged copy
    model = get_peft_model(model, config)
    rng = np.random.default_rng(seed)
    for p in model.parameters():
        if p.requires_grad:  # an adapter parameter: make it non-zero (B, W_up, IA3's l)
            noise = rng.normal(0.0, 0.02, p.shape).astype(p.dtype)
            p.data[...] = p.data + mp.tensor(noise, device=device).data
    trainable = model.get_nb_trainable_parameters()[0]
    if merge:
        model.merge_adapter()
    return model.eval(), trainable


def cases(model: Any, device: str, args: argparse.Namespace) -> list[Callable[[], None]]:
    """[generate, forward] for one model; .numpy() waits for the GPU."""
    rng = np.random.default_rng(0)
    prompt = mp.tensor(rng.integers(0, PRESET["vocab_size"], (1, args.prompt_len)), device=device)
    block = mp.tensor(rng.integers(0, PRESET["vocab_size"], (args.batch, args.seq)), device=device)

    def generate() -> None:
        model.generate(prompt, max_new_tokens=args.new_tokens).numpy()

    def forward() -> None:
        with mp.no_grad():
            model(input_ids=block).logits.numpy()

    return [generate, forward]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=25)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--prompt-len", type=int, default=8)
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--seq", type=int, default=SEQ)
    parser.add_argument("--threads", type=int, default=None, help="BLAS threads (default 1)")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    set_num_threads(threads_from_env(args.threads))
    print(f"cpu-tiny preset {PRESET}, device {args.device}, BLAS threads {get_num_threads()}")
    print(f"generate: batch 1, prompt {args.prompt_len}, {args.new_tokens} new tokens (KV cache);"
          f" forward: batch {args.batch}x{args.seq}; median of {args.repeats}")  # fmt: skip

    models, fns, rows = [], [], []
    for name, config, merge in variants():
        model, trainable = build(config, merge, args.device, seed=0)  # merged = unmerged weights
        models.append(model)
        fns += cases(model, args.device, args)
        rows.append({"variant": name, "trainable": trainable})
    check = mp.tensor(np.random.default_rng(1).integers(0, PRESET["vocab_size"], (2, 16)),
                      device=args.device)  # fmt: skip
    with mp.no_grad():
        out = {r["variant"]: m(input_ids=check).logits.numpy() for r, m in zip(rows, models)}
    for row in rows:  # each variant's change of the logits; a merged one's against its unmerged
        row["max_abs_dlogits"] = float(np.abs(out[row["variant"]] - out["base"]).max())
        unmerged = row["variant"].removesuffix(" merged")
        if unmerged != row["variant"]:
            row["merge_err"] = float(np.abs(out[row["variant"]] - out[unmerged]).max())

    times = measure(fns, args.repeats, warmup=args.warmup)  # round-robin over every case
    tokens = args.batch * args.seq
    for i, row in enumerate(rows):
        row["generate_ms_per_token"] = times[2 * i] * 1e3 / args.new_tokens
        row["forward_ms_per_token"] = times[2 * i + 1] * 1e3 / tokens
    base = rows[0]
    for row in rows:
        row["generate_ratio"] = row["generate_ms_per_token"] / base["generate_ms_per_token"]
        row["forward_ratio"] = row["forward_ms_per_token"] / base["forward_ms_per_token"]

    print(f"\n{'variant':<15}{'adapter params':>15}{'generate ms/tok':>17}{'ratio':>7}"
          f"{'forward ms/tok':>16}{'ratio':>7}{'Δ logits':>10}")  # fmt: skip
    for r in rows:
        print(f"{r['variant']:<15}{r['trainable']:>15,d}{r['generate_ms_per_token']:>17.2f}"
              f"{r['generate_ratio']:>7.2f}{r['forward_ms_per_token']:>16.4f}"
              f"{r['forward_ratio']:>7.2f}{r['max_abs_dlogits']:>10.1e}")  # fmt: skip
    print("ratio = variant time / base time, same run (1.00 = no added latency); "
          "Δ logits = max |variant − base| logits")  # fmt: skip
    for r in rows:
        if "merge_err" in r:
            print(f"{r['variant']}: max |merged − unmerged logits| = {r['merge_err']:.1e}")
    if _ia3_config() is None:
        print("(no IA3 in this minipeft: its rows are left out)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"device": args.device, "preset": PRESET, "threads": get_num_threads(),
                       "args": vars(args), "rows": rows}, f, indent=2)  # fmt: skip


if __name__ == "__main__":
    main()
