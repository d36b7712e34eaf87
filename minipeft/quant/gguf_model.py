"""Whole models on llama.cpp blocks: quantize a float model, or load a GGUF file's blocks as is.

    quantize_model_gguf(model, type="q4_0", skip=("lm_head",))   # nn.Linear → LinearGGUF
    model = load_gguf_quantized("x.gguf")     # LinearGGUF straight from the file's blocks
    peft_model = get_peft_model(model, LoraConfig(r=8))          # LoRA on the packed base

:func:`quantize_model_gguf` replaces every ``nn.Linear`` (exactly that type) not matched by
``skip`` (transformers' module-name rule, :func:`~minipeft.quant.model.should_convert_module`).
:func:`load_gguf_quantized` builds the LLaMA with ``init_weights=False`` (its float weights are
untouched zero pages), swaps each Linear whose tensor the file stores in Q8_0/Q4_0/Q4_1 for a
:class:`LinearGGUF` on a copy of the file's bytes (q/k rows already put in HF's order by the
reader), and dequantizes only the rest (embeddings, norms, F32/F16 tensors) into the model —
so the base's float weights never exist.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..nn import Linear, Module
from .gguf_blocks import TYPE_SIZES, check_type
from .linear_gguf import LinearGGUF
from .model import should_convert_module

__all__ = ["load_gguf_quantized", "quantize_model_gguf"]


def quantize_model_gguf(model: Module, type: str = "q4_0", skip: Any = ("lm_head",)) -> Module:
    """Replace every ``nn.Linear`` not matched by ``skip`` by a LinearGGUF of ``type``, in
    place; returns ``model``. Raises, before changing anything, for an unknown type, a model
    holding adapters, a Linear whose in_features is not a multiple of 32, and a Linear whose
    weight is shared with another module (a tied lm_head: keep it in ``skip``)."""
    name = check_type(type)
    skip = [skip] if isinstance(skip, str) else list(skip or [])
    modules = dict(model.named_modules())
    if any(hasattr(m, "base_layer") for m in modules.values()):
        raise ValueError(
            f"{_type_name(model)} holds adapter layers; quantize the base model first, then add "
            "the adapters"
        )
    targets = [
        n
        for n, m in modules.items()
        if n and _is_plain_linear(m) and should_convert_module(n, skip)
    ]
    owners: dict[int, list[str]] = {}
    for mname, module in modules.items():
        for pname, p in module._parameters.items():
            owners.setdefault(id(p), []).append(f"{mname}.{pname}" if mname else pname)
    for t in targets:
        layer = modules[t]
        if layer.in_features % 32:
            raise ValueError(
                f"{t}: in_features = {layer.in_features} is not a multiple of 32, the block "
                f"size of {name}; add {t!r} to skip"
            )
        shared = [o for o in owners[id(layer.weight)] if o != f"{t}.weight"]
        if shared:
            raise ValueError(
                f"{t}.weight is shared with {', '.join(shared)} (tied weights); quantizing it "
                f"would untie them: add {t!r} to skip"
            )
    for t in targets:
        model.set_submodule(t, LinearGGUF.from_linear(modules[t], name))
    return model


def _type_name(model: Any) -> str:
    return type(model).__name__


def _is_plain_linear(module: Any) -> bool:
    return type(module) is Linear


def load_gguf_quantized(path: str | os.PathLike, device: str = "cpu", cls: Any = None) -> Module:
    """A ``LlamaForCausalLM`` (or ``cls``) from a GGUF file, its Q8_0/Q4_0/Q4_1 linear weights
    kept packed as LinearGGUF layers, everything else float32; eval mode, on ``device``."""
    import gguf  # noqa: PLC0415  (the optional extra; read_gguf says so when absent)

    from ..models.gguf import read_gguf  # noqa: PLC0415
    from ..models.llama import LlamaForCausalLM  # noqa: PLC0415

    cls = cls or LlamaForCausalLM
    ckpt = read_gguf(path)
    model = cls(ckpt.config, init_weights=False)
    modules = dict(model.named_modules())
    own = model.state_dict()
    loaded = set()
    for t in ckpt.tensors():
        owner = t.name.rpartition(".")[0]
        if t.type_name.lower() in TYPE_SIZES and _is_plain_linear(modules.get(owner)):
            raw = np.array(t.data, dtype=np.uint8)  # own bytes (the file is a read-only map)
            model.set_submodule(owner, LinearGGUF.from_blocks(raw, t.type_name, t.shape))
            loaded.add(t.name)
            continue
        if t.name not in own:
            raise ValueError(f"{ckpt.path}: tensor {t.name!r} has no place in {cls.__name__}")
        w = gguf.quants.dequantize(t.data, gguf.GGMLQuantizationType[t.type_name])
        own[t.name].data[...] = np.asarray(w, dtype=np.float32).reshape(t.shape)
        loaded.add(t.name)
    model.tie_weights()
    tied = {"lm_head.weight"} if getattr(model.config, "tie_word_embeddings", False) else set()
    missing = [k for k in own if k not in loaded and k not in tied]
    if missing:
        raise ValueError(f"{ckpt.path}: tensors missing from the GGUF file: {missing}")
    model.name_or_path = ckpt.path
    return model.to(device).eval()
