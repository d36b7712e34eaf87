"""Whole models on llama.cpp blocks: quantize a float model, or load a GGUF file's blocks as is.

    quantize_model_gguf(model, type="q4_0", skip=("lm_head",))   # nn.Linear → LinearGGUF
    model = load_gguf_quantized("x.gguf")     # LinearGGUF straight from the file's blocks
    peft_model = get_peft_model(model, LoraConfig(r=8))          # LoRA on the packed base

:func:`quantize_model_gguf` replaces every ``nn.Linear`` (exactly that type) not matched by
``skip`` (transformers' module-name rule, :func:`~minipeft.quant.model.should_convert_module`).
:func:`load_gguf_quantized` builds the LLaMA trunk without its decoder layers, then each layer
in turn, swapping its Linears whose tensors the file stores in Q8_0/Q4_0/Q4_1 for LinearGGUF
layers on a copy of the file's bytes (q/k rows already in HF's order, from the reader) before
the next layer is built; only the rest (embeddings, norms, F32/F16 tensors) is dequantized. So
the base's float weights never exist together: the peak is the packed model, the float
embeddings and one layer's float placeholders.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..nn import Linear, Module
from ..nn.init import skip_init
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


def _pack_linears(module: Module, prefix: str, tensors: dict[str, Any]) -> set[str]:
    """Swap each plain Linear under ``module`` whose weight the file stores in blocks for a
    LinearGGUF on a copy of those bytes (the file is a read-only map); returns the names used."""
    used = set()
    for name, child in list(module.named_modules()):
        key = f"{prefix}{name}.weight"
        t = tensors.get(key)
        if name and _is_plain_linear(child) and t is not None and t.type_name.lower() in TYPE_SIZES:
            raw = np.array(t.data, dtype=np.uint8)
            module.set_submodule(name, LinearGGUF.from_blocks(raw, t.type_name, t.shape))
            used.add(key)
    return used


def load_gguf_quantized(path: str | os.PathLike, device: str = "cpu", cls: Any = None) -> Module:
    """A ``LlamaForCausalLM`` (or ``cls``) from a GGUF file, its Q8_0/Q4_0/Q4_1 linear weights
    kept packed as LinearGGUF layers, everything else float32; eval mode, on ``device``.

    The decoder layers are built one at a time and packed at once, so at most one layer's float
    placeholders exist at any moment (the float model is never materialized)."""
    import gguf  # noqa: PLC0415  (the optional extra; read_gguf says so when absent)

    from ..models.gguf import read_gguf  # noqa: PLC0415
    from ..models.llama import LlamaDecoderLayer, LlamaForCausalLM  # noqa: PLC0415

    cls = cls or LlamaForCausalLM
    ckpt = read_gguf(path)
    config = ckpt.config
    n_layers = config.num_hidden_layers
    tensors = {t.name: t for t in ckpt.tensors()}  # raw views (q/k rows copied, in HF order)
    config.num_hidden_layers = 0  # the trunk without its layers, then one layer at a time
    with skip_init():  # the checkpoint fills every weight next
        model = cls(config, init_weights=False)
    config.num_hidden_layers = n_layers  # the same object every module holds
    trunk = model.get_submodule(cls.base_model_prefix) if cls.task != "base" else model
    prefix = "" if cls.task == "base" else f"{cls.base_model_prefix}."
    loaded = _pack_linears(model, "", tensors)
    for i in range(n_layers):
        with skip_init():
            layer = LlamaDecoderLayer(config)
        loaded |= _pack_linears(layer, f"{prefix}layers.{i}.", tensors)
        trunk.layers.append(layer)
    own = model.state_dict()
    for name, t in tensors.items():
        if name in loaded:
            continue
        if name not in own:
            raise ValueError(f"{ckpt.path}: tensor {name!r} has no place in {cls.__name__}")
        w = gguf.quants.dequantize(t.data, gguf.GGMLQuantizationType[t.type_name])
        own[name].data[...] = np.asarray(w, dtype=np.float32).reshape(t.shape)
        loaded.add(name)
    model.tie_weights()
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    missing = [k for k in own if k not in loaded and k not in tied]
    if missing:
        raise ValueError(f"{ckpt.path}: tensors missing from the GGUF file: {missing}")
    model.name_or_path = ckpt.path
    return model.to(device).eval()
