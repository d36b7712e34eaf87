"""Benchmark: a forward pass and a training step, minipeft vs PyTorch + transformers (+ PEFT).

The **cpu-tiny** preset: GPT-2 architecture, vocab 4096, n_positions 128, n_embd 256, n_layer 4,
n_head 4, batch 8 × sequence 128, AdamW, dropout off. Both sides get the same weights; each
measurement is the median of ``--repeats`` runs after warm-up, and the two libraries alternate
run by run so machine noise hits both alike. The script prints ratios (minipeft time / PyTorch
time); it asserts nothing about time — machines here are shared and noisy.

    python benchmarks/train_step.py [--device cpu|cuda] [--repeats 10] [--json out.json]

Rows: ``forward`` (eval, no grad), ``full FT step`` (forward + backward + AdamW over all
parameters), ``LoRA step`` (r=8 on c_attn: frozen base, so backward skips weight gradients and
the optimizer touches 0.4% of the parameters — "frozen means free").
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import numpy as np

import minipeft as mp
from minipeft.models import GPT2Config, GPT2LMHeadModel
from minipeft.optim import AdamW
from minipeft.peft import LoraConfig, get_peft_model

PRESET = {"vocab_size": 4096, "n_positions": 128, "n_embd": 256, "n_layer": 4, "n_head": 4}
BATCH, SEQ = 8, 128


def _config() -> GPT2Config:
    return GPT2Config(**PRESET, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)


def minipeft_case(device: str, lora: bool) -> tuple[Callable[[], None], Callable[[], None]]:
    model = GPT2LMHeadModel(_config(), seed=0).to(device)
    if lora:
        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = AdamW(params, lr=1e-4)
    rng = np.random.default_rng(0)
    ids = mp.tensor(rng.integers(0, PRESET["vocab_size"], (BATCH, SEQ)), device=device)

    def forward() -> None:
        model.eval()
        with mp.no_grad():
            model(input_ids=ids).logits.numpy()  # .numpy() waits for the GPU

    def step() -> None:
        model.train()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        loss.item()

    return forward, step


def torch_case(device: str, lora: bool) -> tuple[Callable[[], None], Callable[[], None]] | None:
    try:
        import torch  # noqa: PLC0415
        import transformers  # noqa: PLC0415
    except ImportError:
        return None
    cfg = transformers.GPT2Config(**PRESET, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(cfg).to(device)
    if lora:
        try:
            import peft  # noqa: PLC0415
        except ImportError:
            return None
        model = peft.get_peft_model(model, peft.LoraConfig(r=8, lora_alpha=16,
                                                           target_modules=["c_attn"]))  # fmt: skip
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4,
                            foreach=False)  # fmt: skip
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, PRESET["vocab_size"], (BATCH, SEQ), generator=gen).to(device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def forward() -> None:
        model.eval()
        with torch.no_grad():
            model(input_ids=ids).logits.sum().item()
        sync()

    def step() -> None:
        model.train()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        loss.item()
        sync()

    return forward, step


def measure(fns: list[Callable[[], None]], repeats: int, warmup: int = 2) -> list[float]:
    """Median seconds of each function, running them alternately."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            times[i].append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    tokens = BATCH * SEQ
    print(f"cpu-tiny preset {PRESET}, batch {BATCH}x{SEQ}, device {args.device}")
    rows = []
    for name, lora in (("full", False), ("lora", True)):
        mine = minipeft_case(args.device, lora)
        ref = torch_case(args.device, lora)
        which = [0, 1] if name == "full" else [1]  # forward is timed once, on the full model
        for kind in which:
            fns = [mine[kind]] + ([ref[kind]] if ref else [])
            t = measure(fns, args.repeats)
            label = "forward" if kind == 0 else f"{'full FT' if name == 'full' else 'LoRA'} step"
            row = {"case": label, "minipeft_ms": t[0] * 1e3,
                   "torch_ms": t[1] * 1e3 if ref else None,
                   "ratio": t[0] / t[1] if ref else None,
                   "minipeft_tok_s": tokens / t[0]}  # fmt: skip
            rows.append(row)
    print(f"\n{'case':<14}{'minipeft ms':>13}{'torch ms':>11}{'ratio':>8}{'tokens/s':>11}")
    for r in rows:
        torch_ms = f"{r['torch_ms']:.1f}" if r["torch_ms"] is not None else "n/a"
        ratio = f"{r['ratio']:.2f}" if r["ratio"] is not None else "n/a"
        print(f"{r['case']:<14}{r['minipeft_ms']:>13.1f}{torch_ms:>11}{ratio:>8}"
              f"{r['minipeft_tok_s']:>11,.0f}")  # fmt: skip
    print("ratio = minipeft time / PyTorch time (lower is better; 1.00 = parity)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"device": args.device, "preset": PRESET, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
