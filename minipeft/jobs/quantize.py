"""``minipeft quantize``: a base checkpoint stored in 4 bits, in transformers + bitsandbytes'
layout, with a memory report; and the memory measurement ``finetune --method qlora`` prints.

The report gives the bytes of the quantized layers' weights in fp32, fp16, NF4 and NF4 with
double quantization (bits per parameter, :mod:`minipeft.quant.memory`), and the peak memory of
one training step for full fine-tuning, LoRA and QLoRA on the same model and batch.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..fileio import check_output_path
from ..models import AutoModelForCausalLM
from ..nn import Module
from ..optim import AdamW
from ..quant.files import save_quantized
from ..quant.memory import format_report, peak_bytes
from ..quant.model import prepare_model_for_kbit_training, quantize_model

__all__ = ["quantize", "step_memory"]


def _quantizable_weights(model: Module, skip: tuple[str, ...]) -> list[int]:
    """The weight sizes quantize_model turns into 4 bits (every Linear not under ``skip``)."""
    from ..nn import Linear  # noqa: PLC0415

    return [
        m.weight.numel()
        for name, m in model.named_modules()
        if isinstance(m, Linear) and not any(name.endswith(s) for s in skip)
    ]


def step_memory(model_path: str | os.PathLike[str], batch: int = 4, seq: int = 64,
                seed: int = 0) -> dict[str, int]:  # fmt: skip
    """Peak bytes of one forward + backward + AdamW step, the model's weights, gradients and
    optimizer state included: full FT, LoRA, QLoRA on the same batch."""
    from ..peft import LoraConfig, get_peft_model  # noqa: PLC0415

    rows: dict[str, int] = {}
    for kind in ("full FT", "LoRA", "QLoRA"):

        def setup(kind: str = kind) -> tuple[Any, Any, Any]:
            model = AutoModelForCausalLM.from_pretrained(model_path)
            if kind == "QLoRA":
                prepare_model_for_kbit_training(quantize_model(model))
            if kind != "full FT":
                model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16))
            ids = np.random.default_rng(seed).integers(0, model.config.vocab_size, (batch, seq))
            opt = AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
            return model, opt, ids

        def step(state: tuple[Any, Any, Any]) -> None:
            model, opt, ids = state
            model(input_ids=ids, labels=ids).loss.backward()
            opt.step()  # AdamW's moments are allocated here, on the first step
            opt.zero_grad()

        rows[kind] = peak_bytes(setup, step)
    return rows


def quantize(
    model_path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    quant_type: str = "nf4",
    blocksize: int = 64,
    double_quant: bool = True,
    overwrite: bool = False,
    measure_steps: bool = True,
    log: Any = print,
) -> str:
    """Quantize the model at ``model_path`` to 4 bits and save it to ``out``; print the report."""
    check_output_path(out, {"the model": model_path})
    if os.path.exists(out) and os.listdir(out) and not overwrite:
        raise ValueError(f"--out {os.fspath(out)!r} already holds files; pass --overwrite")
    skip = ("lm_head",)
    model = AutoModelForCausalLM.from_pretrained(model_path)
    n = _quantizable_weights(model, skip)
    quantize_model(model, quant_type=quant_type, blocksize=blocksize,
                   compress_statistics=double_quant, skip=skip)  # fmt: skip
    save_quantized(model, out)
    from ..tokenizer import Tokenizer  # noqa: PLC0415

    if os.path.isfile(os.path.join(model_path, "tokenizer.json")):
        Tokenizer.from_pretrained(model_path).save_pretrained(out)
    rows = step_memory(model_path) if measure_steps else None
    log(format_report(n, blocksize, rows))
    return os.fspath(out)
